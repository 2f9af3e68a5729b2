/**
 * The console's shell: hash routes (#/network, #/market, #/jobs, #/jobs/:id, #/money,
 * #/operator, #/key), the identity held in this browser, and the one public network stream
 * that the network, market and money pages share.
 */
import { render } from 'preact';
import { useEffect, useMemo, useRef, useState } from 'preact/hooks';
import { Api } from './lib/api.ts';
import { type Identity, loadIdentity, saveIdentity } from './lib/identity.ts';
import { useLive } from './lib/live.ts';
import { applyNetworkFrame } from './lib/network.ts';
import type { NetworkFrame, NetworkSnapshot } from './lib/types.ts';
import { JobPage } from './pages/job-page.tsx';
import { JobsPage } from './pages/jobs-page.tsx';
import { KeyPage } from './pages/key-page.tsx';
import { MarketPage } from './pages/market-page.tsx';
import { MoneyPage } from './pages/money-page.tsx';
import { NetworkPage } from './pages/network-page.tsx';
import { OperatorPage } from './pages/operator-page.tsx';
import './styles.css';

const PAGES = [
  ['network', 'Network'],
  ['market', 'Market'],
  ['jobs', 'Jobs'],
  ['money', 'Money'],
  ['operator', 'Operator'],
  ['key', 'Key'],
] as const;

function useHash(): [string, (h: string) => void] {
  const [hash, setHash] = useState(location.hash || '#/network');
  useEffect(() => {
    const on = () => setHash(location.hash || '#/network');
    addEventListener('hashchange', on);
    return () => removeEventListener('hashchange', on);
  }, []);
  return [hash, (h: string) => (location.hash = h)];
}

function App() {
  const [identity, setIdentityState] = useState<Identity | undefined>(loadIdentity);
  const [hash, go] = useHash();
  const api = useMemo(() => new Api(identity), [identity]);
  const publicApi = useMemo(() => new Api(undefined), []);
  const network = useLive<NetworkSnapshot, NetworkFrame>(publicApi, '/v1/network/events', { reconnectOnEnd: true, reduce: applyNetworkFrame });
  const setIdentity = (id: Identity | undefined) => {
    saveIdentity(id);
    setIdentityState(id);
  };
  const [, page = 'network', arg] = hash.split('/');
  const firstRender = useRef(true);
  useEffect(() => {
    document.title = `Gridwork — ${PAGES.find(([p]) => p === page)?.[1] ?? 'console'}`;
    // After navigation, keyboard and screen-reader users land on the new page, not the menu;
    // on first load focus stays at the top so Tab reaches the skip link first.
    if (!firstRender.current) document.getElementById('main')?.focus({ preventScroll: true });
    firstRender.current = false;
  }, [page, arg]);
  // Job lists, money and operator totals change when leases are placed or end: re-read them then, not on a timer.
  const moneyVersion = `${network.value?.leases.placed}:${JSON.stringify(network.value?.leases.ended)}`;
  const needsKey = ['jobs', 'money', 'operator'].includes(page) && !identity;

  return (
    <>
      <button type="button" class="skip" onClick={() => document.getElementById('main')?.focus()}>
        Skip to content
      </button>
      <header>
        <h1>Gridwork</h1>
        <nav aria-label="Console pages">
          <ul>
            {PAGES.map(([p, label]) => (
              <li key={p}>
                <a href={`#/${p}`} aria-current={page === p ? 'page' : undefined}>
                  {label}
                </a>
              </li>
            ))}
          </ul>
        </nav>
        <p class="who">
          <span class={`dot ${network.connected ? 'on' : 'off'}`} aria-hidden="true" />
          <span class="sr-only">{network.connected ? 'Live' : 'Reconnecting'}</span>
          {identity ? <a href="#/key">key {identity.publicKey.slice(0, 8)}…</a> : <a href="#/key">Sign in with a key</a>}
        </p>
      </header>
      <main id="main" tabIndex={-1}>
        {needsKey ? (
          <section>
            <h2>Sign in first</h2>
            <p>
              This page shows your own account. <a href="#/key">Create or import a key</a> — the network and market are public.
            </p>
          </section>
        ) : page === 'market' ? (
          <MarketPage live={network} api={api} />
        ) : page === 'jobs' && arg ? (
          <JobPage api={api} jobId={arg} />
        ) : page === 'jobs' ? (
          <JobsPage api={api} go={go} version={moneyVersion} />
        ) : page === 'money' ? (
          <MoneyPage api={api} version={moneyVersion} />
        ) : page === 'operator' ? (
          <OperatorPage api={api} version={moneyVersion} />
        ) : page === 'key' ? (
          <KeyPage identity={identity} setIdentity={setIdentity} />
        ) : (
          <NetworkPage live={network} />
        )}
      </main>
    </>
  );
}

render(<App />, document.getElementById('app')!);
