/**
 * The link against a stand-in coordinator whose limit is lower than the protocol's (an older
 * coordinator, a proxy): a report it refuses as too large, by closing the socket (1009) or by a
 * PAYLOAD_TOO_LARGE error, is replaced by a marker under the same seq instead of being resent after
 * every reconnect; a report over MAX_MESSAGE_BYTES is never sent and takes no seq.
 *
 * Given several URLs (replicas), the link moves to the next one when its replica dies or refuses
 * it, resumes there (lastApplied, unacked reports), and backs off once per round of URLs.
 */
import assert from 'node:assert/strict';
import { EventEmitter, once } from 'node:events';
import { createServer as createHttpServer } from 'node:http';
import { type AddressInfo, createServer as createNetServer } from 'node:net';
import { after, describe, test } from 'node:test';
import { MAX_MESSAGE_BYTES } from '@gridwork/protocol';
import { generateIdentity } from '@gridwork/protocol/node';
import pino from 'pino';
import { WebSocketServer } from 'ws';
import { CoordinatorLink, coordinatorUrlList, type Report } from './coordinator-link.ts';

type Msg = Record<string, unknown> & { type: string; seq?: number };

/**
 * A coordinator that applies sequenced reports in order and acks them. Over `maxPayload` its socket
 * closes (1009); over `refuseOver` it answers PAYLOAD_TOO_LARGE and applies nothing.
 */
async function standIn(options: { maxPayload: number; refuseOver?: number }) {
  const wss = new WebSocketServer({ host: '127.0.0.1', port: 0, maxPayload: options.maxPayload });
  await once(wss, 'listening');
  const applied: Msg[] = [];
  let connections = 0;
  const waiters = new Set<() => void>();
  wss.on('connection', (ws) => {
    connections++;
    ws.on('error', () => {});
    ws.on('message', (data: Buffer) => {
      const m = JSON.parse(data.toString()) as Msg;
      if (m.type === 'hello') {
        ws.send(JSON.stringify({ type: 'welcome', providerId: 'p', lastApplied: applied.length, heartbeatIntervalMs: 60_000, meteringIntervalMs: 60_000 }));
      } else if (typeof m.seq === 'number' && m.type !== 'ack') {
        if (options.refuseOver !== undefined && data.length > options.refuseOver) {
          ws.send(JSON.stringify({ type: 'error', code: 'PAYLOAD_TOO_LARGE', message: 'too large' }));
          return;
        }
        if (m.seq === applied.length + 1) applied.push(m);
        ws.send(JSON.stringify({ type: 'ack', seq: m.seq }));
      }
      for (const w of [...waiters]) w();
    });
  });
  const address = wss.address() as { port: number };
  return {
    url: `http://127.0.0.1:${address.port}`,
    applied,
    connections: () => connections,
    /** Resolves once `n` reports have been applied. */
    appliedCount: (n: number) =>
      new Promise<void>((resolve) => {
        const check = () => {
          if (applied.length < n) return;
          waiters.delete(check);
          resolve();
        };
        waiters.add(check);
        check();
      }),
    close: () => new Promise<void>((resolve) => wss.close(() => resolve())),
  };
}

async function connectedLink(url: string): Promise<CoordinatorLink> {
  let connected: () => void = () => {};
  const ready = new Promise<void>((resolve) => {
    connected = resolve;
  });
  const link = new CoordinatorLink({
    urls: [url],
    identity: generateIdentity(),
    log: pino({ level: 'silent' }),
    hello: () => ({
      name: 'p',
      agentVersion: 'test',
      runtime: 'process',
      slots: 1,
      hardware: { cpu: { model: 'x', cores: 1 }, memoryGiB: 1, diskGiB: 1, gpus: [] },
      attributes: {},
      asks: { cpuCoreHour: '1', memoryGiBHour: '1', gpuHour: {} },
      asksSignature: '',
      benchmarks: { cpuMopsPerCore: 1, gpu: {} },
      bids: false,
      instance: 'instance-1',
      running: [],
    }),
    apply: async () => {},
    onConnected: () => connected(),
  });
  link.start();
  await ready;
  return link;
}

const log = (bytes: number): Report => ({ type: 'lease.log', leaseId: 'lease-1', chunks: [{ stream: 'stdout', data: 'z'.repeat(bytes), ts: 1 }] });

describe('coordinator link: reports too large for the coordinator', { timeout: 60_000 }, () => {
  const cleanup: (() => unknown)[] = [];
  after(async () => {
    for (const c of cleanup.reverse()) await c();
  });

  test('a report the socket was closed for (1009) is replaced by a marker under its seq, not resent forever', async () => {
    const server = await standIn({ maxPayload: 64 * 1024 });
    cleanup.push(server.close);
    const link = await connectedLink(server.url);
    cleanup.push(() => link.close());
    assert.equal(link.send({ type: 'lease.started', leaseId: 'lease-1' }), true);
    assert.equal(link.send(log(200 * 1024)), true);
    assert.equal(link.send({ type: 'lease.started', leaseId: 'lease-2' }), true);
    await server.appliedCount(3);
    assert.equal(await link.flushed(10_000), true);
    assert.equal(server.connections(), 2, 'one reconnect, after which the marker went through');
    const marker = server.applied[1] as Msg & { chunks: { data: string }[] };
    assert.equal(marker.seq, 2);
    assert.equal(marker.type, 'lease.log');
    assert.match(marker.chunks[0]?.data ?? '', /^\[gridwork: a lease\.log report of \d+ bytes was dropped/);
    assert.deepEqual(server.applied[2], { type: 'lease.started', leaseId: 'lease-2', seq: 3 });
  });

  test('a report answered PAYLOAD_TOO_LARGE is replaced at once, on the same connection', async () => {
    const server = await standIn({ maxPayload: 8 * 1024 * 1024, refuseOver: 64 * 1024 });
    cleanup.push(server.close);
    const link = await connectedLink(server.url);
    cleanup.push(() => link.close());
    assert.equal(link.send(log(200 * 1024)), true);
    await server.appliedCount(1);
    assert.equal(await link.flushed(10_000), true);
    assert.equal(server.connections(), 1);
    assert.equal(server.applied[0]?.seq, 1);
    assert.equal(server.applied[0]?.type, 'lease.log');
  });

  test('a report over MAX_MESSAGE_BYTES is not sent and takes no seq', async () => {
    const server = await standIn({ maxPayload: 8 * 1024 * 1024 });
    cleanup.push(server.close);
    const link = await connectedLink(server.url);
    cleanup.push(() => link.close());
    assert.equal(link.send(log(MAX_MESSAGE_BYTES)), false);
    assert.equal(link.send({ type: 'lease.started', leaseId: 'lease-1' }), true);
    await server.appliedCount(1);
    assert.deepEqual(server.applied, [{ type: 'lease.started', leaseId: 'lease-1', seq: 1 }]);
  });
});

/**
 * Replicas of one coordinator, as stand-ins sharing one "database" (what the provider's reports
 * applied, and the sequenced messages for it): a hello is welcomed with the applied count, and
 * the outbox after the hello's lastApplied is sent again, as the real coordinator does.
 */
interface Shared {
  applied: Msg[];
  outbox: Msg[];
  hellos: { replica: string; lastApplied: number }[];
  changed: EventEmitter;
}

function sharedState(): Shared {
  return { applied: [], outbox: [], hellos: [], changed: new EventEmitter() };
}

/** Resolves once `predicate` holds, checked after every message a replica handles. */
function when(shared: Shared, predicate: () => boolean): Promise<void> {
  return new Promise((resolve) => {
    const check = () => {
      if (!predicate()) return;
      shared.changed.off('change', check);
      resolve();
    };
    shared.changed.on('change', check);
    check();
  });
}

async function replica(name: string, shared: Shared, options: { ackReports?: boolean } = {}) {
  const wss = new WebSocketServer({ host: '127.0.0.1', port: 0 });
  await once(wss, 'listening');
  let connections = 0;
  wss.on('connection', (ws) => {
    connections++;
    ws.on('error', () => {});
    ws.on('message', (data: Buffer) => {
      const m = JSON.parse(data.toString()) as Msg & { lastApplied?: number };
      if (m.type === 'hello') {
        const lastApplied = m.lastApplied ?? 0;
        shared.hellos.push({ replica: name, lastApplied });
        ws.send(JSON.stringify({ type: 'welcome', providerId: 'p', lastApplied: shared.applied.length, heartbeatIntervalMs: 60_000, meteringIntervalMs: 60_000 }));
        for (const o of shared.outbox) if ((o.seq ?? 0) > lastApplied) ws.send(JSON.stringify(o));
      } else if (typeof m.seq === 'number' && m.type !== 'ack' && options.ackReports !== false) {
        if (m.seq === shared.applied.length + 1) shared.applied.push(m);
        ws.send(JSON.stringify({ type: 'ack', seq: m.seq }));
      }
      shared.changed.emit('change');
    });
  });
  const { port } = wss.address() as { port: number };
  return {
    url: `http://127.0.0.1:${port}`,
    connections: () => connections,
    /** Sends a sequenced message to every connected agent (and keeps it in the shared outbox). */
    push(msg: Msg) {
      shared.outbox.push(msg);
      for (const c of wss.clients) c.send(JSON.stringify(msg));
    },
    /** The replica dies: its sockets drop without a close frame, and nothing listens there any more. */
    kill: () =>
      new Promise<void>((resolve) => {
        for (const c of wss.clients) c.terminate();
        wss.close(() => resolve());
      }),
  };
}

/** A URL where nothing listens (connection refused). */
async function deadUrl(): Promise<string> {
  const server = createNetServer();
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  const { port } = server.address() as AddressInfo;
  await new Promise<void>((resolve) => server.close(() => resolve()));
  return `http://127.0.0.1:${port}`;
}

/** A replica that refuses every connection (HTTP 503 to the upgrade, as a closing one does), noting when each came. */
async function refusing(name: string, attempts: { who: string; at: number }[], changed: EventEmitter) {
  const server = createHttpServer();
  server.on('upgrade', (_req, socket) => {
    attempts.push({ who: name, at: performance.now() });
    changed.emit('change');
    socket.on('error', () => {}); // the agent drops it at once
    socket.end('HTTP/1.1 503 Service Unavailable\r\nconnection: close\r\ncontent-length: 0\r\n\r\n');
  });
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  const { port } = server.address() as AddressInfo;
  return { url: `http://127.0.0.1:${port}`, close: () => new Promise<void>((resolve) => server.close(() => resolve())) };
}

/** A link whose applied messages and connections are noted (and announced on `changed`, for `when`). */
function replicaLink(urls: string[], applied: Msg[], connectedTo: string[], changed?: EventEmitter, maxBackoffMs?: number): CoordinatorLink {
  const link: CoordinatorLink = new CoordinatorLink({
    urls,
    identity: generateIdentity(),
    log: pino({ level: 'silent' }),
    hello: () => ({
      name: 'p',
      agentVersion: 'test',
      runtime: 'process',
      slots: 1,
      hardware: { cpu: { model: 'x', cores: 1 }, memoryGiB: 1, diskGiB: 1, gpus: [] },
      attributes: {},
      asks: { cpuCoreHour: '1', memoryGiBHour: '1', gpuHour: {} },
      asksSignature: '',
      benchmarks: { cpuMopsPerCore: 1, gpu: {} },
      bids: false,
      instance: 'instance-1',
      running: [],
    }),
    apply: async (msg) => {
      applied.push(msg as unknown as Msg);
      changed?.emit('change');
    },
    onConnected: () => {
      connectedTo.push(link.url);
      changed?.emit('change');
    },
    ...(maxBackoffMs ? { maxBackoffMs } : {}),
  });
  return link;
}

describe('coordinator link: several coordinator URLs (replicas)', { timeout: 60_000 }, () => {
  const cleanup: (() => unknown)[] = [];
  after(async () => {
    for (const c of cleanup.reverse()) await c();
  });

  test('a list with nothing usable in it is refused up front', () => {
    assert.deepEqual(coordinatorUrlList('http://a:1, http://b:2/,http://a:1'), ['http://a:1', 'http://b:2']);
    assert.deepEqual(coordinatorUrlList(['http://a:1', 'http://b:2,http://c:3']), ['http://a:1', 'http://b:2', 'http://c:3']);
    assert.throws(() => coordinatorUrlList(' , '), /no coordinator URL given/);
    assert.throws(() => coordinatorUrlList('http://a:1,not a url'), /invalid coordinator URL "not"/);
  });

  test('a dead first URL costs one failover: the link connects to the live one', async () => {
    const shared = sharedState();
    const live = await replica('live', shared);
    cleanup.push(live.kill);
    const connectedTo: string[] = [];
    const link = replicaLink([await deadUrl(), live.url], [], connectedTo, shared.changed);
    cleanup.push(() => link.close());
    link.start();
    await when(shared, () => connectedTo.length === 1);
    assert.deepEqual(connectedTo, [live.url]);
    assert.equal(link.url, live.url);
  });

  test('when its replica dies, the link moves to the next one and resumes: lastApplied in the hello, unacked reports resent', async () => {
    const shared = sharedState();
    // The first replica takes reports without acking them (it dies before it applies them).
    const first = await replica('first', shared, { ackReports: false });
    const second = await replica('second', shared);
    cleanup.push(first.kill, second.kill);
    const applied: Msg[] = [];
    const connectedTo: string[] = [];
    const link = replicaLink([first.url, second.url], applied, connectedTo, shared.changed);
    cleanup.push(() => link.close());
    link.start();
    await when(shared, () => connectedTo.length === 1);
    first.push({ type: 'lease.cancel', seq: 1, leaseId: 'lease-1', reason: 'x' });
    assert.equal(link.send({ type: 'lease.started', leaseId: 'lease-9' }), true);
    // The agent applied seq 1 and acked it: the hello to the next replica says so.
    await when(shared, () => applied.length === 1);
    shared.outbox.push({ type: 'lease.cancel', seq: 2, leaseId: 'lease-2', reason: 'sent while the agent was away' });
    await first.kill();
    await when(shared, () => connectedTo.length === 2 && shared.applied.length === 1);
    assert.deepEqual(shared.hellos, [
      { replica: 'first', lastApplied: 0 },
      { replica: 'second', lastApplied: 1 },
    ]);
    assert.deepEqual(connectedTo, [first.url, second.url]);
    assert.equal(link.url, second.url);
    assert.deepEqual(shared.applied, [{ type: 'lease.started', leaseId: 'lease-9', seq: 1 }], 'the unacked report was resent to the second replica');
    await when(shared, () => applied.length === 2);
    assert.deepEqual(
      applied.map((m) => m.seq),
      [1, 2],
      'each coordinator message applied once, in order',
    );
    assert.equal(await link.flushed(10_000), true);
  });

  test('the backoff is waited once per round of all URLs, not per URL', async () => {
    const attempts: { who: string; at: number }[] = [];
    const shared = sharedState();
    const a = await refusing('a', attempts, shared.changed);
    const b = await refusing('b', attempts, shared.changed);
    cleanup.push(a.close, b.close);
    const link = replicaLink([a.url, b.url], [], [], undefined, 5000);
    cleanup.push(() => link.close());
    link.start();
    await when(shared, () => attempts.length >= 12);
    link.close();
    const round = attempts.slice(0, 12);
    assert.deepEqual(
      round.map((x) => x.who),
      ['a', 'b', 'a', 'b', 'a', 'b', 'a', 'b', 'a', 'b', 'a', 'b'],
      'each URL once per round, in order',
    );
    const within: number[] = [];
    const between: number[] = [];
    for (let i = 1; i < round.length; i++) ((i % 2 === 1 ? within : between) as number[]).push((round[i] as { at: number }).at - (round[i - 1] as { at: number }).at);
    within.sort((x, y) => x - y);
    // Between rounds: 100, 200, 400, 800, 1600 ms (±25 %); within a round: under 200 ms of jitter.
    assert.ok((between.at(-1) as number) >= 1100, `the backoff grew between rounds: ${between.map(Math.round).join(', ')} ms`);
    assert.ok((within[Math.floor(within.length / 2)] as number) < 400, `no backoff within a round: ${within.map(Math.round).join(', ')} ms`);
  });
});
