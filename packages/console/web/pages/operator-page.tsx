/** Operator view (operator keys only): credits by account class, fees, reserve, and the ledger check shown as passing or failing. */
import { useEffect, useState } from 'preact/hooks';
import type { Api } from '../lib/api.ts';
import type { OperatorReport } from '../lib/types.ts';

const CLASS_NAMES: Record<string, string> = {
  available: 'available balances',
  hold: 'held for jobs',
  escrow: 'lease escrow',
  earned: 'earned, not yet settled',
  stake: 'provider stake',
  unbonding: 'unbonding stake',
  fees: 'protocol fees',
  reserve: 'reserve',
  world: 'outside world (deposits − withdrawals)',
};

export function OperatorPage({ api, version }: { api: Api; version: unknown }) {
  const [report, setReport] = useState<OperatorReport | undefined>();
  const [error, setError] = useState<string | undefined>();
  useEffect(() => {
    api
      .json<OperatorReport>('GET', '/v1/operator/ledger')
      .then(setReport)
      .catch((err: Error) => setError(err.message));
  }, [api, version]);
  return (
    <section aria-labelledby="operator-title">
      <h2 id="operator-title">Operator</h2>
      {error && (
        <p role="alert" class="error">
          {error}
        </p>
      )}
      {report && (
        <>
          <p data-testid="ledger-check" class={report.ledger.ok ? 'ok' : 'error'}>
            Ledger check: <strong>{report.ledger.ok ? 'passing' : 'FAILING'}</strong> — {report.ledger.transactions} transactions, {report.ledger.postings}{' '}
            postings, sum {report.ledger.total}
            {report.ledger.mismatched.length > 0 && `; balances differing from their postings: ${report.ledger.mismatched.join(', ')}`}
            {report.ledger.negative.length > 0 && `; negative accounts: ${report.ledger.negative.join(', ')}`}
          </p>
          <ul class="cards">
            <li class="card">
              <span class="big">{report.fees}</span> protocol fees
            </li>
            <li class="card">
              <span class="big">{report.reserve}</span> reserve
            </li>
          </ul>
          <table>
            <caption>Credits by account class</caption>
            <thead>
              <tr>
                <th scope="col">Class</th>
                <th scope="col">Credits</th>
              </tr>
            </thead>
            <tbody>
              {Object.entries(report.totals).map(([k, v]) => (
                <tr key={k}>
                  <th scope="row">{CLASS_NAMES[k] ?? k}</th>
                  <td>{v}</td>
                </tr>
              ))}
            </tbody>
          </table>
        </>
      )}
    </section>
  );
}
