/** Market: standing asks by resource class, free capacity, the price plot, and explain (why a spec would or would not match). */
import { useState } from 'preact/hooks';
import { PricePlot } from '../components/price-plot.tsx';
import type { Api } from '../lib/api.ts';
import type { LiveState } from '../lib/live.ts';
import { parseSpecText } from '../lib/spec.ts';
import type { MatchExplanation, NetworkSnapshot } from '../lib/types.ts';

export function MarketPage({ live, api }: { live: LiveState<NetworkSnapshot>; api: Api }) {
  const snap = live.value;
  const [spec, setSpec] = useState('');
  const [result, setResult] = useState<MatchExplanation | undefined>();
  const [error, setError] = useState<string | undefined>();
  const explain = async (e: Event) => {
    e.preventDefault();
    setError(undefined);
    setResult(undefined);
    try {
      setResult(await api.json<MatchExplanation>('POST', '/v1/market/explain', { spec: parseSpecText(spec) }));
    } catch (err) {
      setError((err as Error).message);
    }
  };
  return (
    <section aria-labelledby="market-title">
      <h2 id="market-title">Market</h2>
      {!snap ? (
        <p>Connecting…</p>
      ) : (
        <>
          <div class="scroll">
            <table>
              <caption>Standing asks by resource class (credits per unit-hour)</caption>
              <thead>
                <tr>
                  <th scope="col">Class</th>
                  <th scope="col">Providers</th>
                  <th scope="col">Free</th>
                  <th scope="col">Lowest</th>
                  <th scope="col">Median</th>
                  <th scope="col">Highest</th>
                </tr>
              </thead>
              <tbody>
                {snap.market.map((c) => (
                  <tr key={c.resourceClass} data-testid="ask-row">
                    <th scope="row">{c.resourceClass}</th>
                    <td>{c.providers}</td>
                    <td>
                      {c.freeUnits} {c.unit}
                    </td>
                    <td>{c.min}</td>
                    <td>{c.median}</td>
                    <td>{c.max}</td>
                  </tr>
                ))}
              </tbody>
            </table>
          </div>
          <h3>Price over time</h3>
          <PricePlot history={snap.history} />
        </>
      )}
      <h3>Explain a spec</h3>
      {api.identity ? (
        <form onSubmit={explain}>
          <label for="explain-spec">Job spec (JSON or YAML)</label>
          <textarea id="explain-spec" rows={8} value={spec} onInput={(e) => setSpec(e.currentTarget.value)} spellcheck={false} />
          <button type="submit">Explain</button>
        </form>
      ) : (
        <p>Sign in (Key page) to ask the coordinator why a spec would or would not match.</p>
      )}
      {error && (
        <p role="alert" class="error">
          {error}
        </p>
      )}
      {result && (
        <div aria-live="polite" data-testid="explain-result">
          <p>
            <strong>{result.matchable ? 'Matches now' : 'Would not match now'}</strong>: {result.candidates} candidate providers of {result.providers.online}{' '}
            online; lowest ask {result.lowestAsk ?? '—'}, your max {result.maxPerHour ?? '—'}.
          </p>
          {result.reasons.length > 0 && (
            <ul>
              {result.reasons.map((r) => (
                <li key={r}>{r}</li>
              ))}
            </ul>
          )}
        </div>
      )}
    </section>
  );
}
