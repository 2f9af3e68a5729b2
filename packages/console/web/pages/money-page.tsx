/**
 * Money: your balance (available, held for jobs, stake, unbonding) and ledger history; as a
 * provider, what your leases earned and the fee and reserve shares taken from them. Refreshes
 * when your jobs end or your leases settle (the network feed's lease counts change).
 */
import { useEffect, useState } from 'preact/hooks';
import type { Api } from '../lib/api.ts';
import { ago } from '../lib/format.ts';
import { formatMicros, toMicros } from '../lib/money.ts';
import type { Balance, HistoryEntry } from '../lib/types.ts';

export function MoneyPage({ api, version }: { api: Api; version: unknown }) {
  const [balance, setBalance] = useState<Balance | undefined>();
  const [history, setHistory] = useState<HistoryEntry[]>([]);
  const [error, setError] = useState<string | undefined>();
  const [tick, setTick] = useState(0);
  const [faucet, setFaucet] = useState<string | undefined>();
  useEffect(() => {
    Promise.all([api.json<Balance>('GET', '/v1/account'), api.json<{ entries: HistoryEntry[] }>('GET', '/v1/account/history?limit=200')])
      .then(([b, h]) => {
        setBalance(b);
        setHistory(h.entries);
      })
      .catch((err: Error) => setError(err.message));
  }, [api, version, tick]);
  if (error)
    return (
      <p role="alert" class="error">
        {error}
      </p>
    );
  if (!balance) return <p>Loading…</p>;
  let earned = 0n;
  let fees = 0n;
  let reserve = 0n;
  for (const e of history) {
    if (e.kind !== 'lease.settle') continue;
    earned += toMicros(e.change);
    for (const p of e.postings) {
      if (p.account === 'sys:fees') fees += toMicros(p.amount);
      if (p.account === 'sys:reserve') reserve += toMicros(p.amount);
    }
  }
  return (
    <section aria-labelledby="money-title">
      <h2 id="money-title">Money</h2>
      <ul class="cards" aria-label="Balances in credits">
        <li class="card">
          <span class="big" data-testid="balance-available">
            {balance.available}
          </span>{' '}
          available
        </li>
        <li class="card">
          <span class="big" data-testid="balance-held">
            {balance.held}
          </span>{' '}
          held for jobs
        </li>
        <li class="card">
          <span class="big">{balance.stake}</span> stake
        </li>
        <li class="card">
          <span class="big">{balance.unbonding}</span> unbonding
        </li>
      </ul>
      <form
        class="inline"
        onSubmit={async (e) => {
          e.preventDefault();
          setFaucet(undefined);
          try {
            await api.json('POST', '/v1/account/deposit', { amount: '10', idempotencyKey: `console-${crypto.randomUUID()}` });
            setTick((t) => t + 1);
          } catch (err) {
            setFaucet((err as Error).message);
          }
        }}
      >
        <button type="submit">Get 10 test credits</button> <small>(coordinators started with --dev, as in gridwork demo)</small>
      </form>
      {faucet && <p role="alert">{faucet}</p>}
      {earned > 0n && (
        <>
          <h3>As a provider</h3>
          <p data-testid="provider-earnings">
            Your leases earned {formatMicros(earned + fees + reserve)} credits: {formatMicros(earned)} paid to you, {formatMicros(fees)} protocol fees,{' '}
            {formatMicros(reserve)} to the reserve.
          </p>
        </>
      )}
      <h3>History</h3>
      <div class="scroll">
        <table>
          <caption class="sr-only">Ledger transactions touching your account, newest first</caption>
          <thead>
            <tr>
              <th scope="col">When</th>
              <th scope="col">Kind</th>
              <th scope="col">Change (available)</th>
              <th scope="col">Postings</th>
            </tr>
          </thead>
          <tbody>
            {history.map((e) => (
              <tr key={e.id} data-testid="history-row">
                <td>{ago(e.at)}</td>
                <td>{e.kind}</td>
                <td class={e.change.startsWith('-') ? 'neg' : 'pos'}>{e.change}</td>
                <td>
                  <small>{e.postings.map((p) => `${p.account.replace(/^(acct|job|lease):([^:]{8})[^:]*/, '$1:$2…')} ${p.amount}`).join('; ')}</small>
                </td>
              </tr>
            ))}
          </tbody>
        </table>
      </div>
    </section>
  );
}
