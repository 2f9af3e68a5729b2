/**
 * The Sybil registration attack of issue 14, replayed through the real interfaces of a real
 * coordinator: 200 fresh keys say signed hellos over the provider WebSocket, claiming the largest
 * machines the wire allows, while anonymous clients follow GET /v1/network/events.
 *
 * - hardware beyond the shared bounds (protocol HARDWARE_LIMITS) is refused, naming the field;
 * - a reconnect storm costs each network stream a few small deltas, not the whole network again;
 * - one stream more than the cap is refused with 503 UNAVAILABLE;
 * - once offline past the expiry window, registrations that never proved anything are gone from
 *   the network view, the provider list and the market; a staked one stays; a new hello revives.
 *
 * Conditions are awaited (stream frames, socket messages, database rows), never slept on.
 */
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { after, before, describe, test } from 'node:test';
import { internalsOf } from '@gridwork/coordinator/internal';
import { canonicalJson, HARDWARE_LIMITS, type JobSpec } from '@gridwork/protocol';
import { generateIdentity, type Identity, signBytes, signRequest } from '@gridwork/protocol/node';
import { GridworkClient } from '@gridwork/sdk';
import { silentLogger, startTestNetwork, type TestNetwork, until } from '@gridwork/testkit';
import WebSocket from 'ws';
import { type NetworkDelta, NetworkFeed, type NetworkProvider, type NetworkSnapshot } from '../src/observe/network-feed.ts';
import { PriceHistory } from '../src/observe/price-history.ts';
import { ProviderService } from '../src/providers/provider-service.ts';

const SYBILS = 200;
const STREAMS = 5;
const RECONNECTS = 10;
const FRAME_INTERVAL_MS = 1000;
const WAIT_MS = 60_000;

const ASKS = { cpuCoreHour: '0.01', memoryGiBHour: '0.001', gpuHour: { 'h100-80gb': '1' } };

/** The biggest machine the wire allows: what a Sybil claims now that fantasy hardware is refused. */
function biggest(): Record<string, unknown> {
  return {
    cpu: { model: 'sybil-cpu', cores: HARDWARE_LIMITS.cores },
    memoryGiB: HARDWARE_LIMITS.memoryGiB,
    diskGiB: HARDWARE_LIMITS.diskGiB,
    gpus: Array.from({ length: 8 }, (_, index) => ({ index, uuid: `GPU-${index}`, model: 'h100-80gb', name: 'H100', vramGiB: HARDWARE_LIMITS.vramGiB })),
  };
}

function hello(identity: Identity, name: string, extra: Record<string, unknown> = {}) {
  const instance = randomBytes(12).toString('base64url');
  const asks = (extra.asks as typeof ASKS | undefined) ?? ASKS;
  return {
    type: 'hello',
    protocol: 1,
    instance,
    name,
    agentVersion: '0.1.0',
    runtime: 'process',
    slots: 8,
    hardware: biggest(),
    attributes: { region: 'sybil' },
    asks,
    asksSignature: signBytes(identity, canonicalJson({ asks, instance })),
    benchmarks: { cpuMopsPerCore: 100, gpu: { 'h100-80gb': 1 } },
    bids: false,
    lastApplied: 0,
    running: [],
    ...extra,
  };
}

type Msg = Record<string, unknown> & { type: string };

/** A provider key speaking the wire protocol by hand over a real WebSocket. */
class RawProvider {
  private ws!: WebSocket;
  private heartbeat: NodeJS.Timeout | undefined;
  closed!: Promise<number>;

  constructor(
    readonly url: string,
    readonly identity: Identity,
    readonly greeting: Record<string, unknown>,
  ) {}

  /** Connects and says hello; resolves with the first answer (welcome or error). */
  async connect(): Promise<Msg> {
    const headers = signRequest(this.identity, 'GET', '/v1/providers/connect');
    const ws = new WebSocket(`${this.url.replace(/^http/, 'ws')}/v1/providers/connect`, { headers });
    this.ws = ws;
    this.closed = new Promise((resolve) => ws.once('close', (code) => resolve(code)));
    this.closed.then(() => clearInterval(this.heartbeat));
    await new Promise((resolve, reject) => {
      ws.once('open', resolve);
      ws.once('error', reject);
    });
    const answer = new Promise<Msg>((resolve) => ws.once('message', (data) => resolve(JSON.parse(data.toString()) as Msg)));
    ws.send(JSON.stringify(this.greeting));
    const m = await answer;
    if (m.type === 'welcome') {
      // Alive in the coordinator's eyes until closed (the failure detector would otherwise step in).
      this.heartbeat = setInterval(() => ws.send(JSON.stringify({ type: 'heartbeat', running: [] })), Number(m.heartbeatIntervalMs));
    }
    return m;
  }

  async close(): Promise<void> {
    clearInterval(this.heartbeat);
    if (this.ws.readyState !== WebSocket.CLOSED) {
      this.ws.close();
      await this.closed;
    }
  }
}

/** Applies a frame of /v1/network/events the way the console does. */
function fold(state: NetworkSnapshot | undefined, frame: NetworkSnapshot | NetworkDelta): NetworkSnapshot {
  if (frame.type === 'network') return frame;
  assert.ok(state, 'a delta came before any snapshot');
  const removed = new Set(frame.removed ?? []);
  const byId = new Map(state.providers.filter((p) => !removed.has(p.id)).map((p) => [p.id, p]));
  for (const p of frame.providers ?? []) byId.set(p.id, { ...byId.get(p.id), ...p } as NetworkProvider);
  return { ...state, providers: [...byId.values()], market: frame.market ?? state.market, leases: frame.leases ?? state.leases };
}

/** An anonymous follower of /v1/network/events that counts every byte it receives. */
class NetworkStream {
  readonly frames: { frame: NetworkSnapshot | NetworkDelta; bytes: number; at: number }[] = [];
  state: NetworkSnapshot | undefined;
  bytes = 0;
  private readonly ac = new AbortController();
  private waiters: (() => void)[] = [];
  private ended = false;

  private constructor(readonly res: Response) {}

  static async follow(url: string): Promise<NetworkStream> {
    const ac = new AbortController();
    const res = await fetch(`${url}/v1/network/events`, { signal: ac.signal });
    const s = new NetworkStream(res);
    s.ac.signal.addEventListener('abort', () => ac.abort());
    if (res.ok) void s.pump();
    return s;
  }

  private async pump(): Promise<void> {
    const reader = (this.res.body as ReadableStream<Uint8Array>).getReader();
    const decoder = new TextDecoder();
    let buffer = '';
    try {
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        this.bytes += value.byteLength;
        buffer += decoder.decode(value, { stream: true });
        for (let nl = buffer.indexOf('\n'); nl >= 0; nl = buffer.indexOf('\n')) {
          const line = buffer.slice(0, nl);
          buffer = buffer.slice(nl + 1);
          if (!line.trim()) continue;
          const frame = JSON.parse(line) as NetworkSnapshot | NetworkDelta;
          this.frames.push({ frame, bytes: Buffer.byteLength(line) + 1, at: Date.now() });
          this.state = fold(this.state, frame);
        }
        this.notify();
      }
    } catch {
      // aborted by close()
    } finally {
      this.ended = true;
      this.notify();
    }
  }

  private notify(): void {
    const ws = this.waiters;
    this.waiters = [];
    for (const w of ws) w();
  }

  /** Resolves once `predicate` holds after some frame (checked at once, then on each arrival). */
  async until(predicate: (s: NetworkStream) => boolean, what: string): Promise<void> {
    const deadline = Date.now() + WAIT_MS;
    while (!predicate(this)) {
      if (this.ended) throw new Error(`stream ended while waiting for ${what}`);
      const left = deadline - Date.now();
      if (left <= 0) throw new Error(`timed out waiting for ${what}; frames: ${this.frames.length}`);
      await new Promise<void>((resolve) => {
        const t = setTimeout(resolve, left);
        this.waiters.push(() => {
          clearTimeout(t);
          resolve();
        });
      });
    }
  }

  close(): void {
    this.ac.abort();
  }
}

describe('Sybil registrations (issue 14)', () => {
  let net: TestNetwork;
  let url: string;
  const sybils: RawProvider[] = [];
  const streams: NetworkStream[] = [];
  /** Every key that registered (the sybils and the one at the bounds). */
  const registered: string[] = [];

  before(async () => {
    net = await startTestNetwork({
      coordinator: {
        // Tiny, so that the sweep the test triggers expires whoever is offline; the coordinator's
        // own sweep runs once a minute.
        providerExpiryMs: 1,
        networkFeed: { maxStreams: STREAMS, frameIntervalMs: FRAME_INTERVAL_MS, maxBytesPerSecond: 1 << 20 },
      },
    });
    url = net.coordinator.url;
  });

  after(async () => {
    for (const s of streams) s.close();
    await Promise.all(sybils.map((p) => p.close()));
    await net?.close();
  });

  const rowOf = (id: string) => internalsOf(net.coordinator).db.selectFrom('providers').selectAll().where('id', '=', id).executeTakeFirst();
  const snapshot = async () => (await (await fetch(`${url}/v1/network`)).json()) as NetworkSnapshot;

  test('hardware beyond the shared bounds is refused with PROTOCOL_ERROR naming the field, and registers nothing', async () => {
    const gpu = { index: 0, uuid: 'GPU-0', model: 'h100-80gb', name: 'H100', vramGiB: 80 };
    const hw = biggest();
    const cases: [string, RegExp, Record<string, unknown>][] = [
      ['4,096 cores', /\/hardware\/cpu\/cores/, { hardware: { ...hw, cpu: { model: 'x', cores: 4096 } } }],
      ['1 PiB of memory', /\/hardware\/memoryGiB/, { hardware: { ...hw, memoryGiB: 1_048_576 } }],
      ['2 PiB of disk', /\/hardware\/diskGiB/, { hardware: { ...hw, diskGiB: 2 * 1_048_576 } }],
      ['65 GPUs', /\/hardware\/gpus/, { hardware: { ...hw, gpus: Array.from({ length: 65 }, (_, index) => ({ ...gpu, index })) } }],
      ['2 TiB of VRAM on one GPU', /\/hardware\/gpus\/0\/vramGiB/, { hardware: { ...hw, gpus: [{ ...gpu, vramGiB: 2048 }] } }],
      ['a 300-character CPU model', /\/hardware\/cpu\/model/, { hardware: { ...hw, cpu: { model: 'x'.repeat(300), cores: 4 } } }],
      ['33 attributes', /\/attributes/, { attributes: Object.fromEntries(Array.from({ length: 33 }, (_, i) => [`k${i}`, 'v'])) }],
      [
        'asks for 65 GPU models',
        /\/asks\/gpuHour/,
        { asks: { ...ASKS, gpuHour: Object.fromEntries(Array.from({ length: 65 }, (_, i) => [`model-${i}`, '1'])) } },
      ],
    ];
    for (const [what, field, extra] of cases) {
      const id = generateIdentity();
      const p = new RawProvider(url, id, hello(id, 'absurd', extra));
      const answer = await p.connect();
      assert.equal(answer.type, 'error', `${what}: was welcomed`);
      assert.equal(answer.code, 'PROTOCOL_ERROR', what);
      assert.match(String(answer.message), field, what);
      assert.equal(await p.closed, 4002, what);
      assert.equal(await rowOf(id.publicKey), undefined, `${what}: no provider was registered`);
    }
    // The bounds themselves are allowed.
    const id = generateIdentity();
    const atBounds = new RawProvider(url, id, hello(id, 'at-bounds'));
    assert.equal((await atBounds.connect()).type, 'welcome');
    registered.push(id.publicKey);
    await atBounds.close();
  });

  test(`${SYBILS} keys register; a reconnect storm sends ${STREAMS} anonymous streams small deltas at a bounded rate`, async () => {
    for (let i = 0; i < SYBILS; i += 10) {
      const batch = Array.from({ length: 10 }, (_, j) => {
        const id = generateIdentity();
        return new RawProvider(url, id, hello(id, `sybil-${i + j}`));
      });
      const answers = await Promise.all(batch.map((p) => p.connect()));
      for (const a of answers) assert.equal(a.type, 'welcome', JSON.stringify(a));
      sybils.push(...batch);
      registered.push(...batch.map((p) => p.identity.publicKey));
    }
    const ids = new Set(sybils.map((p) => p.identity.publicKey));
    // The feed has read them all: what follows on the streams is the storm's doing.
    await until(snapshot, (s) => s.providers.filter((p) => ids.has(p.id)).length === SYBILS, { what: 'every sybil in GET /v1/network', timeoutMs: WAIT_MS });

    const openedAt = Date.now();
    for (let i = 0; i < STREAMS; i++) streams.push(await NetworkStream.follow(url));
    for (const s of streams) assert.equal(s.res.status, 200);
    await Promise.all(streams.map((s) => s.until((x) => x.frames.length >= 1, 'the first snapshot')));
    const first = streams.map((s) => s.frames[0]!);
    for (const f of first) {
      assert.equal(f.frame.type, 'network');
      assert.ok((f.frame as NetworkSnapshot).providers.filter((p) => ids.has(p.id)).length === SYBILS);
    }
    const snapshotBytes = Math.min(...first.map((f) => f.bytes));
    const bytesBefore = streams.map((s) => s.bytes);

    // The storm: providers drop and come back (same agent instance: a resume), one after another.
    const stormed = sybils.slice(0, RECONNECTS).map((p) => p.identity.publicKey);
    const seenAt = (s: NetworkSnapshot, id: string) => Date.parse(s.providers.find((p) => p.id === id)?.lastSeenAt ?? '');
    const before = first.map((f) => new Map(stormed.map((id) => [id, seenAt(f.frame as NetworkSnapshot, id)])));
    for (const p of sybils.slice(0, RECONNECTS)) {
      await p.close();
      assert.equal((await p.connect()).type, 'welcome');
    }
    // Every stream ends up seeing every reconnect (a newer lastSeenAt), whatever it skipped meanwhile.
    await Promise.all(
      streams.map((s, i) =>
        s.until((x) => stormed.every((id) => seenAt(x.state as NetworkSnapshot, id) > (before[i]!.get(id) as number)), 'every reconnect on the stream'),
      ),
    );
    const following = Date.now() - openedAt;

    for (const [i, s] of streams.entries()) {
      const deltas = s.frames.slice(1);
      const sent = s.bytes - bytesBefore[i]!;
      // Deltas only: never the network again, never a record's unchanged fields.
      for (const { frame } of deltas) {
        assert.equal(frame.type, 'network.delta', 'a frame after the first is a delta');
        for (const p of (frame as NetworkDelta).providers ?? []) {
          for (const k of ['hardware', 'attributes', 'asks', 'benchmarks', 'name']) assert.ok(!(k in p), `a delta repeats ${k} of ${p.id}`);
        }
      }
      // At most one frame per interval, the snapshot included (the server paces what it sends;
      // arrival times here may bunch, so count from before the stream was opened).
      assert.ok(deltas.length + 1 <= Math.floor(following / FRAME_INTERVAL_MS) + 1, `${deltas.length} deltas in ${following} ms`);
      // A delta names a provider in at most ~200 bytes (id, lastSeenAt, state); plus market and history.
      const bound = deltas.length * (SYBILS * 200 + 4096);
      assert.ok(sent <= bound, `stream ${i} got ${sent} bytes in ${deltas.length} deltas (bound ${bound})`);
      assert.ok(sent < snapshotBytes / 4, `stream ${i} got ${sent} bytes for ${RECONNECTS} reconnects; the whole network is ${snapshotBytes}`);
    }
  });

  test(`stream ${STREAMS + 1} is refused with 503 UNAVAILABLE; a place frees when a stream closes`, async () => {
    const refused = await fetch(`${url}/v1/network/events`);
    assert.equal(refused.status, 503);
    const body = (await refused.json()) as { error: { code: string; message: string } };
    assert.equal(body.error.code, 'UNAVAILABLE');
    assert.match(body.error.message, /too many open network streams/);
    // The one-shot snapshot stays available.
    assert.equal((await fetch(`${url}/v1/network`)).status, 200);

    streams.pop()?.close();
    const again = await until(
      () => NetworkStream.follow(url),
      (s) => {
        if (s.res.status !== 200) void s.res.body?.cancel();
        return s.res.status === 200;
      },
      { what: 'a place for a new stream', timeoutMs: WAIT_MS },
    );
    streams.push(again);
    await again.until((x) => x.frames.length >= 1, 'the snapshot of the new stream');
  });

  test('a client that does not take its frames is disconnected, not buffered for', { timeout: 30_000 }, async () => {
    const { db, market } = internalsOf(net.coordinator);
    const feed = new NetworkFeed({ db, market, history: new PriceHistory() }, { slowConsumerMs: 50 });
    const ac = new AbortController();
    const dropped = new Promise<void>((resolve) => {
      const frames = feed.stream(ac.signal, resolve);
      // Takes the snapshot, then never asks for more.
      void frames.next();
    });
    await dropped;
    ac.abort();
    feed.close();
  });

  test('offline past the window, unproven registrations are gone from /v1/network, /v1/providers and the market; a staked one stays; a hello revives', async () => {
    const staked = sybils[SYBILS - 1]!;
    const stakedClient = new GridworkClient({ url, identity: staked.identity });
    await stakedClient.deposit('5');
    await stakedClient.stake('1');

    for (const s of streams) s.close();
    await Promise.all(sybils.map((p) => p.close()));
    const ids = registered;
    const { db, units, lifecycle } = internalsOf(net.coordinator);
    // The failure detector declares them offline after their missed heartbeats.
    await until(
      () => db.selectFrom('providers').select('id').where('id', 'in', ids).where('state', '=', 'offline').execute(),
      (rows) => rows.length === ids.length,
      { what: 'every registered key offline', timeoutMs: WAIT_MS },
    );
    // Offline, they are still listed: the attack's premise.
    await until(snapshot, (s) => s.providers.filter((p) => ids.includes(p.id) && p.state === 'offline').length === ids.length, {
      what: 'every registered key listed offline',
    });

    const providers = new ProviderService({ db, units, lifecycle, log: silentLogger() } as ConstructorParameters<typeof ProviderService>[0]);
    await providers.expireUnproven(net.coordinator.config.providerExpiryMs);
    const expired = await db.selectFrom('providers').select('id').where('id', 'in', ids).where('expired_at', 'is not', null).execute();
    assert.equal(expired.length, ids.length - 1, 'all but the staked one expired');

    const network = await until(snapshot, (s) => s.providers.filter((p) => ids.includes(p.id)).length === 1, { what: 'the expired to leave /v1/network' });
    assert.equal(network.providers.find((p) => ids.includes(p.id))?.id, staked.identity.publicKey);
    const client = new GridworkClient({ url, identity: generateIdentity() });
    const listed = await client.providers({ all: true });
    assert.deepEqual(
      listed.filter((p) => ids.includes(p.id)).map((p) => p.id),
      [staked.identity.publicKey],
    );
    const spec: JobSpec = {
      version: 1,
      name: 'probe',
      kind: 'batch',
      runtime: { kind: 'bundle', path: '.', command: ['true'] },
      resources: { cpu: 1, memoryGiB: 1 },
      price: { maxPerHour: '1', budget: '1' },
    };
    // The staked one is all the market still knows (offline, so it matches nothing either).
    await until(
      () => client.explain(spec),
      (e) => e.providers.total === 1 && e.excluded.offline === 1,
      { what: 'the expired to leave the market' },
    );

    // The same key says hello again: listed again.
    const back = sybils[0]!;
    assert.equal((await back.connect()).type, 'welcome');
    assert.equal((await rowOf(back.identity.publicKey))?.expired_at, null);
    await until(snapshot, (s) => s.providers.some((p) => p.id === back.identity.publicKey), { what: 'the revived provider in /v1/network' });
    await back.close();
  });
});
