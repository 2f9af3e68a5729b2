/**
 * Heartbeats live in memory (providers/liveness.ts): the replica holding a provider's socket
 * judges it by what it heard, and writes `last_seen_at` for all its providers at once, twice per
 * timeout; a provider held by nobody is judged by that column. Two real replicas on one
 * PostgreSQL schema, raw providers on the wire (heartbeat every 500 ms, 3 misses: 1.5 s).
 */
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import { type Coordinator, startCoordinator } from '@gridwork/coordinator';
import { internalsOf } from '@gridwork/coordinator/internal';
import { dropSchema, postgresUrl, silentLogger, tempDir, uniqueSchema, until } from '@gridwork/testkit';
import { RawProvider } from '@gridwork/testkit/raw-provider';

const HEARTBEAT_MS = 500;
const TIMEOUT_MS = HEARTBEAT_MS * 3;

function replica(dataDir: string, schema: string): Promise<Coordinator> {
  return startCoordinator({
    dataDir,
    port: 0,
    logger: silentLogger(),
    dev: true,
    heartbeatIntervalMs: HEARTBEAT_MS,
    heartbeatMisses: 3,
    databaseUrl: postgresUrl(),
    databaseSchema: schema,
    natsUrl: '',
    replicaPollMs: 200,
    challenges: { meanIntervalMs: 365 * 24 * 3600_000 },
    verification: { genesisFees: '0' },
  });
}

describe('provider liveness in memory, across two replicas (PostgreSQL)', { timeout: 120_000 }, () => {
  const schema = uniqueSchema('gw_liveness');
  let dir: { path: string; remove: () => Promise<void> };
  let a: Coordinator;
  let b: Coordinator;
  let aClosed = false;
  const raws: RawProvider[] = [];

  before(async () => {
    dir = await tempDir('gridwork-liveness-');
    a = await replica(`${dir.path}/coordinator`, schema);
    b = await replica(`${dir.path}/coordinator`, schema);
  });

  after(async () => {
    for (const r of raws) r.close();
    if (!aClosed) await a?.close();
    await b?.close();
    await dropSchema(schema);
    await dir?.remove();
  });

  const stateOf = async (id: string) =>
    (await internalsOf(b).db.selectFrom('providers').select(['state', 'last_seen_at']).where('id', '=', id).executeTakeFirstOrThrow());

  test('heartbeats cost no write each; the holder flushes them, so the other replica never judges a live provider', async () => {
    const raw = await RawProvider.connect(a.url);
    raws.push(raw);
    assert.equal((await raw.hello()).type, 'welcome');
    const { providers } = internalsOf(a);
    const helloSeen = (await stateOf(raw.id)).last_seen_at.getTime();
    // Heartbeats arrive (every ~170 ms) and are remembered, not written: the column moves only with a flush.
    const heard = await until(
      async () => providers.liveness.lastHeard(raw.id) ?? 0,
      (t) => t > helloSeen,
      { what: 'a heartbeat heard in memory' },
    );
    // Three orphan timeouts (2 × 1.5 s each) pass: replica B judges providers nobody holds by the
    // column, which A keeps fresh; the provider stays online.
    const flushed = await until(() => stateOf(raw.id), (s) => s.last_seen_at.getTime() >= heard, { what: 'a flush of what A heard' });
    assert.equal(flushed.state, 'online');
    const start = Date.now();
    await until(
      async () => ({ elapsed: Date.now() - start, ...(await stateOf(raw.id)) }),
      (s) => s.state !== 'online' || s.elapsed > 6 * TIMEOUT_MS,
      { what: 'six timeouts with the provider heartbeating' },
    );
    assert.equal((await stateOf(raw.id)).state, 'online', 'a heartbeating provider was declared offline');
  });

  test('a provider that goes silent with its socket open is declared offline by the replica holding it', async () => {
    const raw = await RawProvider.connect(a.url);
    raws.push(raw);
    assert.equal((await raw.hello()).type, 'welcome');
    raw.silence();
    await until(() => stateOf(raw.id), (s) => s.state === 'offline', { what: 'the silent provider offline' });
    await until(async () => raw.closed, (c) => c, { what: 'the silent provider disconnected' });
  });

  test('a provider that moved to the other replica is not judged by the one it left', async () => {
    const raw = await RawProvider.connect(a.url);
    raws.push(raw);
    assert.equal((await raw.hello()).type, 'welcome');
    raw.close();
    const moved = await RawProvider.connect(b.url, raw.identity);
    raws.push(moved);
    assert.equal((await moved.hello()).type, 'welcome');
    // A still remembers it (last heard before the move) and judges it after 1.5 s: B's hello is later, so A lets it go.
    const start = Date.now();
    await until(
      async () => ({ elapsed: Date.now() - start, ...(await stateOf(raw.id)) }),
      (s) => s.state !== 'online' || s.elapsed > 4 * TIMEOUT_MS,
      { what: 'four timeouts after the move' },
    );
    assert.equal((await stateOf(raw.id)).state, 'online', 'the replica it left declared it offline');
  });

  test('when the replica holding a provider dies, the other declares it offline by its last_seen_at', async () => {
    const raw = await RawProvider.connect(a.url);
    raws.push(raw);
    assert.equal((await raw.hello()).type, 'welcome');
    // A goes away; the provider (a raw one: it does not reconnect) is held by nobody.
    await a.close();
    aClosed = true;
    await until(() => stateOf(raw.id), (s) => s.state === 'offline', { what: 'the orphaned provider offline on B' });
  });
});
