/**
 * Long-lived tasks (services): start → health → exposed port → stop, in the sandbox (real bubblewrap and
 * slirp4netns) and the process runtime. A sandboxed task without network is reachable on its forwarded port
 * and reaches nothing itself. Only addresses of this machine are contacted.
 */
import assert from 'node:assert/strict';
import { chmod, mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { GridworkError } from '@gridwork/protocol';
import { createProcessRuntime } from './process-runtime.ts';
import { routeBatch } from './task-network.ts';
import { parseListeningPorts, type RunningTask, type RunRequest, type Runtime, type TaskHealth } from './runtime.ts';
import { createSandboxRuntime } from './sandbox-runtime.ts';

const sandbox = createSandboxRuntime({ killGraceMs: 300 });
const processRuntime = createProcessRuntime({ warn: () => {}, killGraceMs: 300 });

let root = '';
let counter = 0;
/** A service of the host on its loopback, and one on every address (its non-loopback address is probed). */
let loopbackServer: net.Server;
let anyServer: net.Server;
let connections = 0;

const listen = (server: net.Server, host: string) =>
  new Promise<number>((resolve) => server.listen(0, host, () => resolve((server.address() as net.AddressInfo).port)));
let loopbackPort = 0;
let anyPort = 0;
const hostAddress =
  Object.values(os.networkInterfaces())
    .flat()
    .find((a) => a?.family === 'IPv4' && !a.internal)?.address ?? '';

before(async () => {
  root = await mkdtemp(path.join(os.tmpdir(), 'gw-ports-'));
  await chmod(root, 0o711);
  loopbackServer = net.createServer((s) => {
    connections++;
    s.end('host loopback\n');
  });
  anyServer = net.createServer((s) => {
    connections++;
    s.end('host address\n');
  });
  loopbackPort = await listen(loopbackServer, '127.0.0.1');
  anyPort = await listen(anyServer, '0.0.0.0');
});
after(async () => {
  await rm(root, { recursive: true, force: true });
  await new Promise((r) => loopbackServer.close(r));
  await new Promise((r) => anyServer.close(r));
});

/**
 * An HTTP service on $PORT (all addresses): `/` greets, `/health` answers 200 after the first second (so a
 * health check sees 'starting' first), `/probe?targets=host:port,…` tries TCP connections from inside and
 * answers what happened to each, `/routes` the task's routing table.
 */
const SERVICE = `
const http = require('node:http');
const net = require('node:net');
const fs = require('node:fs');
const started = Date.now();
const tryConnect = (target) => new Promise((resolve) => {
  const [host, port] = target.split(':');
  const s = net.connect({ host, port: Number(port), timeout: 3000 });
  s.on('connect', () => { s.destroy(); resolve('connected'); });
  s.on('timeout', () => { s.destroy(); resolve('ETIMEDOUT'); });
  s.on('error', (e) => resolve(e.code));
});
http.createServer(async (req, res) => {
  const url = new URL(req.url, 'http://x');
  if (url.pathname === '/health') { res.statusCode = Date.now() - started > 1000 ? 200 : 503; return res.end(); }
  if (url.pathname === '/probe') {
    const out = {};
    for (const t of (url.searchParams.get('targets') || '').split(',').filter(Boolean)) out[t] = await tryConnect(t);
    return res.end(JSON.stringify(out));
  }
  if (url.pathname === '/routes') return res.end(fs.readFileSync('/proc/net/route', 'utf8'));
  res.end('hello from the task on port ' + process.env.PORT);
}).listen(Number(process.env.PORT), () => console.log('listening on ' + process.env.PORT));
process.on('SIGTERM', () => { console.log('stopping'); process.exit(0); });
`;

async function makeTask(): Promise<RunRequest & { out: { stdout: string; stderr: string } }> {
  const dir = path.join(root, `task-${++counter}`);
  const d = { bundle: `${dir}/bundle`, inputs: `${dir}/inputs`, outputs: `${dir}/outputs`, checkpoints: `${dir}/checkpoints` };
  for (const p of Object.values(d)) await mkdir(p, { recursive: true });
  await chmod(dir, 0o711);
  await writeFile(path.join(d.bundle, 'service.js'), SERVICE);
  const out = { stdout: '', stderr: '' };
  return {
    out,
    bundleDir: d.bundle,
    inputsDir: d.inputs,
    outputsDir: d.outputs,
    checkpointsDir: d.checkpoints,
    command: ['node', 'service.js'],
    env: {},
    network: false,
    timeoutMs: 60_000,
    memoryBytes: 2 * 1024 ** 3,
    cpu: 1,
    diskBytes: 1024 ** 3,
    ports: [8080],
    onOutput: (stream, data) => {
      out[stream] += data;
    },
  };
}

async function healthy(task: RunningTask, timeoutMs = 20_000): Promise<TaskHealth[]> {
  const seen: TaskHealth[] = [];
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const h = await task.health();
    if (seen.at(-1) !== h) seen.push(h);
    if (h === 'healthy') return seen;
    assert.notEqual(h, 'unhealthy', `health went unhealthy: ${seen.join(' → ')}`);
    assert.ok(Date.now() < deadline, `not healthy after ${timeoutMs} ms: ${seen.join(' → ')}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

async function get(port: number, p = '/'): Promise<{ status: number; body: string }> {
  const res = await fetch(`http://127.0.0.1:${port}${p}`, { signal: AbortSignal.timeout(15_000) });
  return { status: res.status, body: await res.text() };
}

describe('exposed ports', () => {
  test('routeBatch: an isolated namespace keeps only the on-link gateway; a networked one rejects private ranges and the host', () => {
    assert.equal(routeBatch(true), 'route del default\nroute del 10.0.2.0/24 dev tap0\nroute add 10.0.2.2/32 dev tap0\n');
    const open = routeBatch(false, ['192.0.2.7']);
    assert.match(open, /^route add unreachable 10\.0\.0\.0\/8$/m);
    assert.match(open, /^route add unreachable 192\.0\.2\.7\/32$/m);
    assert.doesNotMatch(open, /route del/);
  });

  test("listening sockets are read from the namespace's own table (a forwarder in front accepts before the task listens)", () => {
    const table = [
      '  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode',
      '   0: 00000000:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000 65534        0 123 1 0 100 0 0 10 0',
      '   1: 6402000A:1F90 0202000A:9C40 01 00000000:00000000 00:00000000 00000000 65534        0 124 1 0 20 4 30 10 -1',
      '   2: 0100007F:0016 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 125 1 0 100 0 0 10 0',
    ].join('\n');
    assert.deepEqual(parseListeningPorts(table), [8080, 22]);
    assert.deepEqual(parseListeningPorts(''), []);
  });

  test('sandbox without network: the service answers on its forwarded host port, and reaches nothing itself', async () => {
    const req = await makeTask();
    const task = await sandbox.start(req);
    try {
      assert.equal(task.ports.length, 1);
      const [port] = task.ports;
      assert.equal(port?.task, 8080);
      assert.equal(port?.address, '127.0.0.1');
      assert.ok(port && port.host > 0 && port.host !== 8080);
      await healthy(task);
      const hello = await get(port.host);
      assert.equal(hello.status, 200);
      assert.equal(hello.body, 'hello from the task on port 8080');

      const before = connections;
      const targets = [`10.0.2.2:${loopbackPort}`, '10.0.2.3:53', `127.0.0.1:${loopbackPort}`, ...(hostAddress ? [`${hostAddress}:${anyPort}`] : [])];
      const probe = JSON.parse((await get(port.host, `/probe?targets=${targets.join(',')}`)).body) as Record<string, string>;
      for (const t of targets) assert.notEqual(probe[t], 'connected', `${t}: ${JSON.stringify(probe)}`);
      assert.equal(connections, before, 'no service of the host saw a connection');
      // No default route and nothing on-link but the gateway the forwarded connections come from.
      const routes = (await get(port.host, '/routes')).body.trim().split('\n').slice(1);
      assert.equal(routes.length, 1, routes.join('\n'));
      assert.match(routes[0] ?? '', /^tap0\s+0202000A\s+00000000\s+\S+(\s+\S+){3}\s+FFFFFFFF/);
    } finally {
      task.stop('test over');
    }
    const result = await task.wait();
    assert.equal(result.aborted, true);
    assert.equal(await task.health(), 'unhealthy');
    assert.match(req.out.stdout, /listening on 8080/);
    assert.match(req.out.stdout, /stopping/, 'SIGTERM reached the task');
  });

  test('sandbox with network: the port is forwarded the same way; an HTTP health check goes starting → healthy', async () => {
    const req = await makeTask();
    const task = await sandbox.start({ ...req, network: true, healthCheck: { port: 8080, path: '/health' } });
    try {
      const port = task.ports[0];
      assert.ok(port);
      const seen = await healthy(task);
      assert.deepEqual(seen, ['starting', 'healthy']);
      assert.equal((await get(port.host)).status, 200);
    } finally {
      task.stop('test over');
    }
    assert.equal((await task.wait()).aborted, true);
  });

  test('a service that dies turns unhealthy, and its result is the exit code', async () => {
    const req = await makeTask();
    const task = await sandbox.start({ ...req, command: ['sh', '-c', 'node service.js & sleep 1.5; exit 7'] });
    await healthy(task);
    const result = await task.wait();
    assert.equal(result.exitCode, 7);
    assert.equal(await task.health(), 'unhealthy');
  });

  test('ports are refused without slirp4netns, before anything runs', async () => {
    const noSlirp = createSandboxRuntime({ slirp4netnsPath: '/nonexistent/slirp4netns' });
    const req = await makeTask();
    await assert.rejects(noSlirp.start(req), (err: unknown) => err instanceof GridworkError && err.code === 'SANDBOX_UNAVAILABLE');
  });

  test('bad port requests are refused', async () => {
    const req = await makeTask();
    for (const bad of [{ ports: [0] }, { ports: [70000] }, { ports: [80, 80] }, { healthCheck: { port: 9, path: '/' } }] as Partial<RunRequest>[]) {
      await assert.rejects(sandbox.start({ ...req, ...bad }), (err: unknown) => err instanceof GridworkError && err.code === 'INVALID_SPEC');
    }
  });

  test('process runtime: PORT is a free host port, reachable directly', async () => {
    const req = await makeTask();
    const runtime: Runtime = processRuntime;
    const task = await runtime.start(req);
    try {
      const port = task.ports[0];
      assert.ok(port);
      await healthy(task);
      assert.equal((await get(port.host)).body, `hello from the task on port ${port.host}`);
    } finally {
      task.stop('test over');
    }
    assert.equal((await task.wait()).aborted, true);
  });

  test('run() is start + wait for a run-to-exit task in both runtimes', async () => {
    for (const runtime of [sandbox, processRuntime] as Runtime[]) {
      const req = await makeTask();
      const result = await runtime.run({ ...req, ports: [], command: ['sh', '-c', 'echo done; exit 3'] });
      assert.equal(result.exitCode, 3);
      assert.equal(req.out.stdout, 'done\n');
    }
  });
});
