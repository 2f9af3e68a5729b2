/**
 * One chatty task must not wedge its provider (issue 14): a real coordinator and a real agent
 * (process runtime) run a bundle that prints 24 MiB and exits 0. The job succeeds, its stored log
 * stops at the agent's cap with one marker line, the agent's connection never drops for it, and
 * an unrelated job runs on the same provider afterwards. A raw provider socket shows the
 * coordinator's side: a message over the protocol's limit gets a typed error and the socket
 * stays open; a provider that keeps sending them is taken out of matching.
 */
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { once } from 'node:events';
import { mkdir, readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { canonicalJson, DEFAULT_LEASE_LOG_BYTES, type JobSpec, type LogEntry, MAX_MESSAGE_BYTES, TERMINAL_JOB_STATES } from '@gridwork/protocol';
import { generateIdentity, type Identity, signBytes, signRequest } from '@gridwork/protocol/node';
import { startTestNetwork, type TestNetwork, until } from '@gridwork/testkit';
import pino from 'pino';
import WebSocket from 'ws';

const benchmarks = { cpuMopsPerCore: 1000, gpu: {} };

/** A logger that keeps every line, to count connects and disconnects. */
function recordingLogger(): { logger: pino.Logger; lines: Record<string, unknown>[] } {
  const lines: Record<string, unknown>[] = [];
  const logger = pino({ level: 'info' }, { write: (s: string) => void lines.push(JSON.parse(s)) });
  return { logger, lines };
}

const FLOOD = `import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
const mib = \`\${'x'.repeat(1023)}\\n\`.repeat(1024);
for (let i = 0; i < 24; i++) process.stdout.write(mib);
writeFileSync(join(process.env.GRIDWORK_OUTPUTS, 'result.txt'), 'flooded\\n');
`;
const QUIET = `import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
console.log('quiet task');
writeFileSync(join(process.env.GRIDWORK_OUTPUTS, 'result.txt'), 'quiet\\n');
`;

function spec(name: string, script: string, region: string): JobSpec {
  return {
    version: 1,
    name,
    kind: 'batch',
    runtime: { kind: 'bundle', path: `./${name}`, command: ['node', script] },
    resources: { cpu: 1, memoryGiB: 1 },
    price: { maxPerHour: '10', budget: '5' },
    placement: { regions: [region] },
    maxRetries: 0,
  };
}

const ASKS = { cpuCoreHour: '0.01', memoryGiBHour: '0.001', gpuHour: {} };

type Msg = Record<string, unknown> & { type: string };

/** A provider speaking the wire protocol by hand; `next` waits for a message (from index `from` on). */
async function rawProvider(url: string, region: string) {
  const identity: Identity = generateIdentity();
  const path = '/v1/providers/connect';
  const ws = new WebSocket(`${url.replace(/^http/, 'ws')}${path}`, { headers: signRequest(identity, 'GET', path) });
  const received: Msg[] = [];
  const waiters = new Set<() => void>();
  ws.on('message', (d) => {
    received.push(JSON.parse(d.toString()) as Msg);
    for (const w of [...waiters]) w();
  });
  ws.on('close', () => {
    for (const w of [...waiters]) w();
  });
  await once(ws, 'open');
  const next = (match: (m: Msg) => boolean, from = 0) =>
    new Promise<Msg>((resolve, reject) => {
      const check = () => {
        const m = received.slice(from).find(match);
        if (m || ws.readyState !== WebSocket.OPEN) waiters.delete(check);
        if (m) resolve(m);
        else if (ws.readyState !== WebSocket.OPEN) reject(new Error(`socket closed; got ${JSON.stringify(received).slice(0, 500)}`));
      };
      waiters.add(check);
      check();
    });
  const instance = randomBytes(12).toString('base64url');
  ws.send(
    JSON.stringify({
      type: 'hello',
      protocol: 1,
      instance,
      name: `raw-${region}`,
      agentVersion: 'test',
      runtime: 'process',
      slots: 1,
      hardware: { cpu: { model: 'x', cores: 4 }, memoryGiB: 8, diskGiB: 100, gpus: [] },
      attributes: { region },
      asks: ASKS,
      asksSignature: signBytes(identity, canonicalJson({ asks: ASKS, instance })),
      benchmarks: { cpuMopsPerCore: 100, gpu: {} },
      bids: false,
      lastApplied: 0,
      running: [],
    }),
  );
  const welcome = await next((m) => m.type === 'welcome' || m.type === 'error');
  assert.equal(welcome.type, 'welcome', JSON.stringify(welcome));
  const heartbeat = setInterval(() => ws.send(JSON.stringify({ type: 'heartbeat', running: [] })), Number(welcome.heartbeatIntervalMs) / 2);
  ws.on('close', () => clearInterval(heartbeat));
  return {
    ws,
    received,
    next,
    /** A lease.log of about `bytes` bytes (over the limit: refused before it is read). */
    sendLog(seq: number, bytes: number) {
      const chunk = { stream: 'stdout', data: 'y'.repeat(60_000), ts: Date.now() };
      ws.send(JSON.stringify({ type: 'lease.log', seq, leaseId: 'no-such-lease', chunks: Array.from({ length: Math.ceil(bytes / 60_000) }, () => chunk) }));
    },
    close() {
      clearInterval(heartbeat);
      ws.close();
    },
  };
}

describe('a task that floods its log', { timeout: 240_000 }, () => {
  let net: TestNetwork;
  const coordinatorLog = recordingLogger();
  const agentLog = recordingLogger();
  const raws: { close(): void }[] = [];

  before(async () => {
    net = await startTestNetwork({ provider: { runtime: 'process', containers: 'off', benchmarks }, coordinator: { logger: coordinatorLog.logger } });
  });
  after(async () => {
    for (const r of raws) r.close();
    await net?.close();
  });

  test('24 MiB on stdout: the job succeeds, the log is capped with a marker, the channel never drops, and the next job runs there', async () => {
    const agent = await net.addProvider({ name: 'chatty-host', attributes: { region: 'agent' }, logger: agentLog.logger });
    const base = join(net.dir, 'bundles');
    await mkdir(join(base, 'flood'), { recursive: true });
    await mkdir(join(base, 'quiet'), { recursive: true });
    await writeFile(join(base, 'flood', 'flood.mjs'), FLOOD);
    await writeFile(join(base, 'quiet', 'quiet.mjs'), QUIET);
    const client = await net.fundedClient('50');

    const flood = await client.submit(spec('flood', 'flood.mjs', 'agent'), { baseDir: base });
    const done = await until(
      () => client.get(flood.id),
      (j) => TERMINAL_JOB_STATES.includes(j.state),
      { timeoutMs: 150_000, what: 'the flooding job' },
    );
    assert.equal(done.state, 'succeeded', done.error ?? '');

    const entries: LogEntry[] = [];
    for await (const e of client.logs(flood.id)) entries.push(e);
    const stdout = entries.filter((e) => e.stream === 'stdout').reduce((n, e) => n + Buffer.byteLength(e.data), 0);
    assert.equal(stdout, DEFAULT_LEASE_LOG_BYTES, 'the task output is kept up to the cap, and no further');
    const system = entries.filter((e) => e.stream === 'system').map((e) => e.data);
    assert.deepEqual(
      system.filter((d) => d.startsWith('[gridwork: log truncated')),
      [`[gridwork: log truncated after ${DEFAULT_LEASE_LOG_BYTES} bytes]\n`],
    );
    assert.ok(
      system.some((d) => d.startsWith('exit code 0; 1 output file(s)')),
      'the agent saw the task end',
    );
    const results = join(net.dir, 'flood-results');
    await client.results(flood.id, results);
    assert.equal(await readFile(join(results, 'task-0', 'result.txt'), 'utf8'), 'flooded\n', 'outputs are not affected by the log cap');

    const quiet = await client.submit(spec('quiet', 'quiet.mjs', 'agent'), { baseDir: base });
    const second = await until(
      () => client.get(quiet.id),
      (j) => TERMINAL_JOB_STATES.includes(j.state),
      { timeoutMs: 60_000, what: 'the next job' },
    );
    assert.equal(second.state, 'succeeded', second.error ?? '');
    assert.equal(second.tasks[0]?.providerName, 'chatty-host');

    const ofAgent = (msg: string) => coordinatorLog.lines.filter((l) => l.msg === msg && l.providerId === agent.id).length;
    assert.equal(ofAgent('provider connected'), 1, 'the agent connected once and never again');
    assert.equal(ofAgent('provider disconnected'), 0);
    assert.equal(agentLog.lines.filter((l) => l.msg === 'connected to coordinator').length, 1);
    assert.deepEqual(
      agentLog.lines.filter((l) => l.level === 50 || typeof l.code === 'string').map((l) => l.msg),
      [],
      'no report was refused, by either side',
    );
  });

  test('a raw message over the limit gets PAYLOAD_TOO_LARGE, the socket stays open, and its seq is still free', async () => {
    const raw = await rawProvider(net.coordinator.url, 'raw-one');
    raws.push(raw);
    const from = raw.received.length;
    raw.sendLog(1, 2 * 1024 * 1024);
    const refused = await raw.next((m) => m.type === 'error', from);
    assert.equal(refused.code, 'PAYLOAD_TOO_LARGE');
    assert.match(String(refused.message), new RegExp(`at most ${MAX_MESSAGE_BYTES}`));
    assert.equal(raw.ws.readyState, WebSocket.OPEN);
    // The refused message was not applied: seq 1 is taken by the next (small) report.
    const acked = raw.received.length;
    raw.sendLog(1, 1);
    assert.deepEqual(await raw.next((m) => m.type === 'ack', acked), { type: 'ack', seq: 1 });
    assert.equal(raw.ws.readyState, WebSocket.OPEN);
  });

  test('a provider that keeps sending oversized messages is taken out of matching, its socket kept', async () => {
    const client = net.client();
    const probe = spec('probe', 'probe.mjs', 'raw-flaky');
    const raw = await rawProvider(net.coordinator.url, 'raw-flaky');
    raws.push(raw);
    await until(
      () => client.explain(probe),
      (e) => e.matchable,
      { what: 'the raw provider in the market' },
    );
    for (let i = 0; i < 5; i++) {
      const from = raw.received.length;
      raw.sendLog(1, 1.5 * 1024 * 1024);
      assert.equal((await raw.next((m) => m.type === 'error', from)).code, 'PAYLOAD_TOO_LARGE');
    }
    const out = await until(
      () => client.explain(probe),
      (e) => !e.matchable,
      { what: 'the raw provider out of the market' },
    );
    assert.equal(out.excluded.offline, 1);
    assert.equal(raw.ws.readyState, WebSocket.OPEN);
  });
});
