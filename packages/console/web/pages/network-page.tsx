/** Network: providers online / busy / offline, GPUs by model, regions and reputation, live from /v1/network/events. */
import type { LiveState } from '../lib/live.ts';
import { ago, short } from '../lib/format.ts';
import type { NetworkSnapshot, ProviderRow } from '../lib/types.ts';

export function stateOf(p: ProviderRow): 'online' | 'busy' | 'draining' | 'offline' {
  if (p.state === 'offline') return 'offline';
  if (p.state === 'draining') return 'draining';
  return p.activeLeases > 0 ? 'busy' : 'online';
}

function tally<T>(items: T[], key: (t: T) => string[]): [string, number][] {
  const m = new Map<string, number>();
  for (const it of items) for (const k of key(it)) m.set(k, (m.get(k) ?? 0) + 1);
  return [...m].sort((a, b) => b[1] - a[1] || a[0].localeCompare(b[0]));
}

export function NetworkPage({ live }: { live: LiveState<NetworkSnapshot> }) {
  const snap = live.value;
  if (!snap) return <p aria-live="polite">{live.error ? `Cannot reach the coordinator: ${live.error}` : 'Connecting to the network…'}</p>;
  const states = tally(snap.providers, (p) => [stateOf(p)]);
  const count = (s: string) => states.find(([k]) => k === s)?.[1] ?? 0;
  const up = snap.providers.filter((p) => p.state !== 'offline');
  const gpus = tally(up, (p) => (p.hardware?.gpus ?? []).map((g) => g.model));
  const regions = tally(up, (p) => [p.attributes.region ?? 'unspecified']);
  return (
    <section aria-labelledby="network-title">
      <h2 id="network-title">Network</h2>
      <ul class="cards" aria-label="Providers by state">
        <li class="card">
          <span class="big" data-testid="count-online">
            {count('online')}
          </span>{' '}
          online
        </li>
        <li class="card">
          <span class="big" data-testid="count-busy">
            {count('busy')}
          </span>{' '}
          busy
        </li>
        <li class="card">
          <span class="big">{count('draining')}</span> draining
        </li>
        <li class="card">
          <span class="big" data-testid="count-offline">
            {count('offline')}
          </span>{' '}
          offline
        </li>
        <li class="card">
          <span class="big">{snap.leases.placed}</span> leases placed
        </li>
      </ul>
      <div class="columns">
        <div>
          <h3>GPUs by model</h3>
          {gpus.length === 0 ? (
            <p>No GPUs online (CPU-only providers).</p>
          ) : (
            <ul>
              {gpus.map(([m, n]) => (
                <li key={m}>
                  {m}: {n}
                </li>
              ))}
            </ul>
          )}
        </div>
        <div>
          <h3>Regions</h3>
          <ul>
            {regions.map(([r, n]) => (
              <li key={r}>
                {r}: {n}
              </li>
            ))}
          </ul>
        </div>
      </div>
      <h3>Providers</h3>
      <div class="scroll">
        <table>
          <caption class="sr-only">Providers on the network</caption>
          <thead>
            <tr>
              <th scope="col">Name</th>
              <th scope="col">State</th>
              <th scope="col">Leases</th>
              <th scope="col">Hardware</th>
              <th scope="col">Region</th>
              <th scope="col">Reputation</th>
              <th scope="col">Stake</th>
              <th scope="col">Last seen</th>
            </tr>
          </thead>
          <tbody>
            {snap.providers.map((p) => (
              <tr key={p.id} data-testid="provider-row">
                <th scope="row" title={p.id}>
                  {p.name} <small>{short(p.id, 6)}</small>
                </th>
                <td>
                  <span class={`badge ${stateOf(p)}`}>{stateOf(p)}</span>
                </td>
                <td>
                  {p.activeLeases} / {p.slots}
                </td>
                <td>
                  {p.hardware?.cpu?.cores ?? '?'} cores, {p.hardware?.memoryGiB ?? '?'} GiB
                  {(p.hardware?.gpus ?? []).map((g) => `, ${g.model} ${g.vramGiB} GiB`).join('')}
                </td>
                <td>{p.attributes.region ?? '—'}</td>
                <td>
                  {(p.reputation * 100).toFixed(0)}%{' '}
                  <small>
                    ({p.leasesCompleted} done, {p.leasesFaulted} lost)
                  </small>
                </td>
                <td>{p.stake}</td>
                <td>{ago(p.lastSeenAt)}</td>
              </tr>
            ))}
          </tbody>
        </table>
      </div>
    </section>
  );
}
