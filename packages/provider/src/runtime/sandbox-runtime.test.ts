import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { chmod, mkdir, mkdtemp, readFile, readdir, rm, stat, writeFile } from 'node:fs/promises';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { GridworkError } from '@gridwork/protocol';
import type { RunRequest } from './runtime.ts';
import { FALLBACK_NICE, FALLBACK_UID_BASE, MIN_SANDBOX_MEMORY_BYTES, SANDBOX_INSTALL_HINT, SANDBOX_TASK_ID, createSandboxRuntime } from './sandbox-runtime.ts';
import { detectCgroups } from './task-cgroup.ts';

// These tests run real bubblewrap (apt-get install -y bubblewrap). When the agent is root the tasks run
// as uid 65534, so the test root is made traversable (0711) like the agent's task directory must be.

const isRoot = process.getuid?.() === 0;
const GiB = 1024 ** 3;
const runtime = createSandboxRuntime({ killGraceMs: 300 });

let root = '';
let counter = 0;

before(async () => {
  root = await mkdtemp(path.join(os.tmpdir(), 'gw-sbx-'));
  await chmod(root, 0o711);
});
after(async () => {
  await rm(root, { recursive: true, force: true });
});

interface Task {
  dir: string;
  bundle: string;
  inputs: string;
  outputs: string;
  checkpoints: string;
}

async function makeTask(bundleFiles: Record<string, string> = {}, inputFiles: Record<string, string> = {}): Promise<Task> {
  const dir = path.join(root, `task-${++counter}`);
  const t = { dir, bundle: `${dir}/bundle`, inputs: `${dir}/inputs`, outputs: `${dir}/outputs`, checkpoints: `${dir}/checkpoints` };
  for (const d of [t.bundle, t.inputs, t.outputs, t.checkpoints]) await mkdir(d, { recursive: true });
  await chmod(dir, 0o711);
  for (const [name, text] of Object.entries(bundleFiles)) await writeFile(path.join(t.bundle, name), text);
  for (const [name, text] of Object.entries(inputFiles)) await writeFile(path.join(t.inputs, name), text);
  return t;
}

function request(t: Task, command: string[], extra: Partial<RunRequest> = {}) {
  const out = { stdout: '', stderr: '' };
  const req: RunRequest = {
    bundleDir: t.bundle,
    inputsDir: t.inputs,
    outputsDir: t.outputs,
    checkpointsDir: t.checkpoints,
    command,
    env: {},
    network: false,
    timeoutMs: 30_000,
    memoryBytes: 2 * GiB,
    cpu: 1,
    diskBytes: 10 * 1024 ** 3,
    onOutput: (stream, data) => {
      out[stream] += data;
    },
    ...extra,
  };
  return { req, out };
}

/** Host processes (not zombies) whose command line contains marker. */
async function processesWith(marker: string): Promise<number[]> {
  const found: number[] = [];
  for (const entry of await readdir('/proc')) {
    if (!/^\d+$/.test(entry)) continue;
    const cmdline = await readFile(`/proc/${entry}/cmdline`, 'latin1').catch(() => '');
    if (cmdline.split('\0').includes(marker)) found.push(Number(entry));
  }
  return found;
}

/** A process's group directory for a controller, from /proc/<pid>/cgroup (v1 "n:cpu,…:/path", v2 "0::/path"). */
async function cgroupDir(pid: number, controller: 'cpu' | 'memory'): Promise<{ version: 1 | 2; dir: string } | undefined> {
  const lines = (await readFile(`/proc/${pid}/cgroup`, 'utf8')).trim().split('\n');
  const mounts = (await readFile('/proc/self/mounts', 'utf8')).split('\n').map((l) => l.split(' '));
  const v1 = lines.map((l) => l.split(':')).find((f) => f[1]?.split(',').includes(controller));
  if (v1?.[2] !== undefined) {
    const mount = mounts.find((f) => f[2] === 'cgroup' && f[3]?.split(',').includes(controller));
    if (mount?.[1]) return { version: 1, dir: path.join(mount[1], v1[2]) };
  }
  const v2 = lines.find((l) => l.startsWith('0::'));
  const mount2 = mounts.find((f) => f[2] === 'cgroup2');
  if (v2 && mount2?.[1]) return { version: 2, dir: path.join(mount2[1], v2.slice(3)) };
  return undefined;
}

/**
 * Whether root can make memory groups on this host: a writable v1 memory hierarchy, or a v2 one with the memory
 * controller. Decided apart from the code under test, so that a runtime which finds no memory cgroup where there
 * is one fails the tests instead of skipping them.
 */
async function memoryControllerHere(): Promise<boolean> {
  if (!isRoot) return false;
  const mounts = (await readFile('/proc/self/mounts', 'utf8')).split('\n').map((l) => l.split(' '));
  const writable = (f: string[]) => f[3]?.split(',').includes('rw') === true;
  if (mounts.some((f) => f[2] === 'cgroup' && writable(f) && f[3]?.split(',').includes('memory'))) return true;
  const v2 = mounts.find((f) => f[2] === 'cgroup2' && writable(f));
  if (!v2?.[1]) return false;
  return (await readFile(path.join(v2[1], 'cgroup.controllers'), 'utf8').catch(() => '')).split(/\s+/).includes('memory');
}

describe('sandbox runtime', () => {
  test('check() starts a trivial sandbox', async () => {
    await runtime.check();
  });

  test('check() without bwrap fails with SANDBOX_UNAVAILABLE and the install hint', async () => {
    const broken = createSandboxRuntime({ bwrapPath: '/nonexistent/bwrap' });
    await assert.rejects(broken.check(), (err: unknown) => {
      assert.ok(err instanceof GridworkError);
      assert.equal(err.code, 'SANDBOX_UNAVAILABLE');
      assert.ok(err.message.includes(SANDBOX_INSTALL_HINT), err.message);
      return true;
    });
  });

  test('a node task reads /inputs, writes /outputs and /checkpoints, output is captured, env is minimal', async () => {
    const t = await makeTask(
      {
        'main.js': `
          const fs = require('node:fs');
          const text = fs.readFileSync(process.env.GRIDWORK_INPUTS + '/in.txt', 'utf8');
          fs.writeFileSync(process.env.GRIDWORK_OUTPUTS + '/out.txt', text.toUpperCase());
          fs.writeFileSync('/checkpoints/step-1', 'ckpt');
          fs.writeFileSync('/tmp/scratch', 'tmp is writable');
          console.log(JSON.stringify({ cwd: process.cwd(), uid: process.getuid(), env: process.env }));
          console.error('to stderr ✓');
        `,
      },
      { 'in.txt': 'hello sandbox' },
    );
    process.env.GW_AGENT_SECRET = 'must-not-leak';
    const { req, out } = request(t, ['node', 'main.js'], { env: { MY_VAR: 'x y', LANG: 'en_US.UTF-8' } });
    const result = await runtime.run(req);
    delete process.env.GW_AGENT_SECRET;

    assert.equal(out.stderr, 'to stderr ✓\n');
    assert.deepEqual({ ...result, durationMs: 0 }, { exitCode: 0, signal: null, timedOut: false, aborted: false, durationMs: 0 });
    assert.equal(await readFile(path.join(t.outputs, 'out.txt'), 'utf8'), 'HELLO SANDBOX');
    assert.equal(await readFile(path.join(t.checkpoints, 'step-1'), 'utf8'), 'ckpt');
    const seen = JSON.parse(out.stdout) as { cwd: string; uid: number; env: Record<string, string> };
    assert.equal(seen.cwd, '/work');
    if (isRoot) assert.equal(seen.uid, SANDBOX_TASK_ID);
    assert.deepEqual(seen.env, {
      PATH: '/usr/local/bin:/usr/bin:/bin',
      HOME: '/tmp',
      LANG: 'en_US.UTF-8',
      MY_VAR: 'x y',
      GRIDWORK_INPUTS: '/inputs',
      GRIDWORK_OUTPUTS: '/outputs',
      GRIDWORK_CHECKPOINTS: '/checkpoints',
      PWD: '/work', // set by bwrap --chdir
    });
    if (isRoot) assert.equal((await stat(path.join(t.outputs, 'out.txt'))).uid, SANDBOX_TASK_ID);
  });

  test('a root-only checkpoint left by the agent is handed to the task', { skip: !isRoot && 'agent is not root' }, async () => {
    const t = await makeTask();
    await writeFile(path.join(t.checkpoints, 'old'), 'resume-from-here', { mode: 0o600 });
    const { req, out } = request(t, ['sh', '-c', 'cat /checkpoints/old && echo more >> /checkpoints/old']);
    const result = await runtime.run(req);
    assert.equal(result.exitCode, 0, out.stderr);
    assert.equal(out.stdout, 'resume-from-here');
  });

  test('the host stays invisible and read-only', async () => {
    const t = await makeTask(
      {
        'probe.js': `
          const fs = require('node:fs');
          const tryIt = (fn) => { try { fn(); return 'ok'; } catch (e) { return e.code; } };
          console.log(JSON.stringify({
            writeInputs: tryIt(() => fs.writeFileSync('/inputs/new.txt', 'x')),
            changeInput: tryIt(() => fs.appendFileSync('/inputs/in.txt', 'x')),
            writeBundle: tryIt(() => fs.writeFileSync('/work/new.txt', 'x')),
            writeUsr: tryIt(() => fs.writeFileSync('/usr/new.txt', 'x')),
            shadow: tryIt(() => fs.readFileSync('/etc/shadow')),
            root: tryIt(() => fs.readdirSync('/root')),
            home: tryIt(() => fs.readdirSync('/home')),
            testRoot: tryIt(() => fs.readdirSync(process.env.HOST_TEST_ROOT)),
            hostBundle: tryIt(() => fs.statSync(process.env.HOST_BUNDLE)),
            passwd: tryIt(() => fs.readFileSync('/etc/passwd')),
            etc: fs.readdirSync('/etc').sort(),
            // mount point → options, to see the read-only binds whatever the file permissions say
            mounts: Object.fromEntries(fs.readFileSync('/proc/self/mountinfo', 'utf8').trim().split('\\n')
              .map((l) => l.split(' ')).map((f) => [f[4], f[5].split(',')])),
          }));
        `,
      },
      { 'in.txt': 'data' },
    );
    const { req, out } = request(t, ['node', 'probe.js'], { env: { HOST_TEST_ROOT: root, HOST_BUNDLE: t.bundle } });
    const result = await runtime.run(req);
    assert.equal(result.exitCode, 0, out.stderr);
    const r = JSON.parse(out.stdout) as Record<string, unknown>;
    // Read-only mounts give EROFS; as uid 65534 the permission check (root-owned files) answers EACCES first.
    const denied = ['EROFS', 'EACCES'];
    for (const key of ['writeInputs', 'changeInput', 'writeBundle', 'writeUsr']) assert.ok(denied.includes(r[key] as string), `${key}: ${r[key]}`);
    assert.notEqual(r.shadow, 'ok');
    assert.notEqual(r.root, 'ok');
    assert.notEqual(r.home, 'ok');
    assert.equal(r.testRoot, 'ENOENT');
    assert.equal(r.hostBundle, 'ENOENT');
    assert.equal(r.passwd, 'ok');
    const mounts = r.mounts as Record<string, string[]>;
    for (const mountPoint of ['/work', '/inputs', '/usr']) assert.ok(mounts[mountPoint]?.includes('ro'), `${mountPoint}: ${mounts[mountPoint]}`);
    for (const mountPoint of ['/outputs', '/checkpoints', '/tmp']) assert.ok(mounts[mountPoint]?.includes('rw'), `${mountPoint}: ${mounts[mountPoint]}`);
    assert.ok(!(r.etc as string[]).includes('shadow'), String(r.etc));
    assert.equal(await readFile(path.join(t.inputs, 'in.txt'), 'utf8'), 'data');
  });

  test('a cluster member reads its delivered rounds at $GRIDWORK_EXCHANGE/in and cannot change or move them', async () => {
    const t = await makeTask({
      'member.js': `
        const fs = require('node:fs');
        const ex = process.env.GRIDWORK_EXCHANGE;
        const tryIt = (fn) => { try { fn(); return 'ok'; } catch (e) { return e.code; } };
        console.log(JSON.stringify({
          ex,
          read: fs.readFileSync(ex + '/in/round-1/rank-0.json', 'utf8'),
          publish: tryIt(() => fs.writeFileSync(ex + '/out/round-1.json', 'mine')),
          plant: tryIt(() => fs.symlinkSync('/etc', ex + '/in/round-2')),
          overwrite: tryIt(() => fs.writeFileSync(ex + '/in/round-1/rank-0.json', 'forged')),
          moveAway: tryIt(() => fs.renameSync(ex + '/in', ex + '/elsewhere')),
          remove: tryIt(() => fs.rmSync(ex + '/in', { recursive: true })),
        }));
      `,
    });
    // What the lease runner makes: the mount point among the task's checkpoints, the rounds in a directory of the agent's.
    const exchangeIn = path.join(t.dir, 'exchange-in');
    for (const d of ['exchange/in', 'exchange/out']) await mkdir(path.join(t.checkpoints, d), { recursive: true });
    await mkdir(path.join(exchangeIn, 'round-1'), { recursive: true });
    await writeFile(path.join(exchangeIn, 'round-1', 'rank-0.json'), 'theirs');
    const { req, out } = request(t, ['node', 'member.js'], { env: { WORLD_SIZE: '2' }, exchangeInDir: exchangeIn });
    const result = await runtime.run(req);
    assert.equal(result.exitCode, 0, out.stderr);
    const r = JSON.parse(out.stdout) as Record<string, string>;
    assert.equal(r.ex, '/checkpoints/exchange');
    assert.equal(r.read, 'theirs');
    assert.equal(r.publish, 'ok');
    for (const key of ['plant', 'overwrite', 'moveAway', 'remove'])
      assert.ok(['EROFS', 'EACCES', 'EBUSY', 'EPERM'].includes(r[key] as string), `${key}: ${r[key]}`);
    assert.deepEqual(await readdir(exchangeIn), ['round-1']);
    assert.equal(await readFile(path.join(exchangeIn, 'round-1', 'rank-0.json'), 'utf8'), 'theirs');
    assert.equal(await readFile(path.join(t.checkpoints, 'exchange', 'out', 'round-1.json'), 'utf8'), 'mine');
  });

  test('/etc/shadow stays unreadable even with /etc bound whole (uid really dropped)', { skip: !isRoot && 'agent is not root' }, async () => {
    const wholeEtc = createSandboxRuntime({ etcPaths: ['/etc/'] });
    const t = await makeTask();
    const { req, out } = request(t, ['sh', '-c', 'id -u; cat /etc/shadow']);
    const result = await wholeEtc.run(req);
    assert.notEqual(result.exitCode, 0);
    assert.equal(out.stdout, `${SANDBOX_TASK_ID}\n`);
    assert.match(out.stderr, /Permission denied/);
  });

  test('directories containing a protected path are refused', async () => {
    const t = await makeTask();
    const secret = path.join(t.dir, 'agent-key.pem');
    await writeFile(secret, 'PRIVATE', { mode: 0o600 });
    const guarded = createSandboxRuntime({ protectedPaths: [secret] });
    const { req } = request(t, ['true'], { bundleDir: t.dir });
    await assert.rejects(guarded.run(req), { name: 'GridworkError', code: 'INTERNAL' });
  });

  test('task directories under a directory uid 65534 cannot traverse are refused', { skip: !isRoot && 'agent is not root' }, async () => {
    const t = await makeTask();
    await chmod(t.dir, 0o700);
    const { req } = request(t, ['true']);
    await assert.rejects(runtime.run(req), (err: unknown) => {
      assert.ok(err instanceof GridworkError && err.code === 'SANDBOX_UNAVAILABLE');
      assert.match(err.message, /not traversable/);
      return true;
    });
  });

  describe('network', () => {
    let server: net.Server;
    let port = 0;
    let connections = 0;
    before(async () => {
      server = net.createServer((socket) => {
        connections++;
        socket.end('hello\n');
      });
      await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
      port = (server.address() as net.AddressInfo).port;
    });
    after(async () => {
      await new Promise<void>((resolve) => server.close(() => resolve()));
    });

    const client = `
      const socket = require('node:net').connect(Number(process.env.PORT), '127.0.0.1');
      socket.on('data', (d) => { process.stdout.write(d); socket.destroy(); });
      socket.on('error', (e) => { console.log(e.code); process.exit(3); });
    `;

    test('is off by default: loopback of the host is unreachable', async () => {
      const t = await makeTask({ 'client.js': client });
      const before = connections;
      const { req, out } = request(t, ['node', 'client.js'], { env: { PORT: String(port) } });
      const result = await runtime.run(req);
      assert.equal(result.exitCode, 3, out.stdout + out.stderr);
      assert.match(out.stdout, /^(ECONNREFUSED|ENETUNREACH|EADDRNOTAVAIL)\n$/);
      assert.equal(connections, before);
    });

    // Only loopback services of this machine are contacted (directly, or through slirp's alias 10.0.2.2 of
    // the host's loopback); nothing here sends traffic anywhere else.
    const probe = `
      const net = require('node:net');
      const fs = require('node:fs');
      const tryConnect = (host, port) => new Promise((resolve) => {
        const s = net.connect({ host, port: Number(port), timeout: 5000 });
        s.on('connect', () => { s.destroy(); resolve('connected'); });
        s.on('timeout', () => { s.destroy(); resolve('ETIMEDOUT'); });
        s.on('error', (e) => resolve(e.code));
      });
      (async () => {
        console.log(JSON.stringify({
          hostLoopback: await tryConnect('127.0.0.1', process.env.PORT),
          hostLoopbackViaGateway: await tryConnect('10.0.2.2', process.env.PORT),
          postgres: await tryConnect('127.0.0.1', 5432),
          postgresViaGateway: await tryConnect('10.0.2.2', 5432),
          interfaces: require('node:os').networkInterfaces(),
          routes: fs.readFileSync('/proc/net/route', 'utf8'),
          resolv: fs.readFileSync('/etc/resolv.conf', 'utf8'),
        }));
      })();
    `;

    /** Whether the host itself reaches 127.0.0.1:port (so a refusal inside the sandbox means something). */
    const hostReaches = (p: number) =>
      new Promise<boolean>((resolve) => {
        const s = net.connect({ host: '127.0.0.1', port: p });
        s.on('connect', () => {
          s.destroy();
          resolve(true);
        });
        s.on('error', () => resolve(false));
      });

    test('network: true gives the task its own namespace: no host loopback, no PostgreSQL, private ranges unreachable', async (ctx) => {
      const t = await makeTask({ 'probe.js': probe });
      const before = connections;
      const postgresUp = await hostReaches(5432);
      const { req, out } = request(t, ['node', 'probe.js'], { env: { PORT: String(port) }, network: true });
      const result = await runtime.run(req);
      assert.equal(result.exitCode, 0, out.stdout + out.stderr);
      const r = JSON.parse(out.stdout) as Record<string, unknown>;
      for (const key of ['hostLoopback', 'hostLoopbackViaGateway', 'postgres', 'postgresViaGateway']) {
        assert.notEqual(r[key], 'connected', `${key}: ${r[key]}`);
      }
      assert.equal(connections, before, 'the test server on the host loopback saw no connection');
      if (!postgresUp) ctx.diagnostic('PostgreSQL is not listening on the host here; its refusal proves less');
      // A non-loopback interface configured by slirp4netns.
      const interfaces = r.interfaces as Record<string, { address: string; family: string }[]>;
      assert.ok(
        interfaces.tap0?.some((a) => a.family === 'IPv4' && a.address === '10.0.2.100'),
        JSON.stringify(interfaces),
      );
      // unreachable (RTF_REJECT 0x0200) routes for private and link-local ranges; /proc/net/route prints
      // destinations as little-endian hex.
      const rejected = new Set(
        (r.routes as string)
          .trim()
          .split('\n')
          .slice(1)
          .map((l) => l.trim().split(/\s+/))
          .filter((f) => (Number.parseInt(f[3] ?? '0', 16) & 0x0200) !== 0)
          .map((f) => `${f[1]}/${f[7]}`),
      );
      for (const [range, hex] of [
        ['10.0.0.0/8', '0000000A/000000FF'],
        ['172.16.0.0/12', '000010AC/0000F0FF'],
        ['192.168.0.0/16', '0000A8C0/0000FFFF'],
        ['169.254.0.0/16', '0000FEA9/0000FFFF'],
      ] as const) {
        assert.ok(rejected.has(hex), `${range} is not rejected: ${r.routes}`);
      }
      assert.equal(r.resolv, 'nameserver 10.0.2.3\n');
    });

    test('the task cannot change its routes back', async () => {
      const t = await makeTask();
      const { req, out } = request(t, ['sh', '-c', '/usr/sbin/ip route del unreachable 10.0.0.0/8 && echo removed'], { network: true });
      const result = await runtime.run(req);
      assert.notEqual(result.exitCode, 0);
      assert.equal(out.stdout, '');
      assert.match(out.stderr, /Operation not permitted/);
    });

    test('without slirp4netns network is refused, never shared with the host', async () => {
      const noSlirp = createSandboxRuntime({ slirp4netnsPath: '/nonexistent/slirp4netns' });
      const t = await makeTask();
      const { req } = request(t, ['sh', '-c', 'echo started > /outputs/x'], { network: true });
      await assert.rejects(noSlirp.run(req), (err: unknown) => {
        assert.ok(err instanceof GridworkError);
        assert.equal(err.code, 'SANDBOX_UNAVAILABLE');
        assert.match(err.message, /slirp4netns/);
        return true;
      });
      assert.deepEqual(await readdir(t.outputs), []);
      // The same runtime still runs tasks without network.
      const plain = request(t, ['true']);
      assert.equal((await noSlirp.run(plain.req)).exitCode, 0);
    });
  });

  describe('stopping', () => {
    test('the time limit kills the task and a grandchild that ignores SIGTERM', async () => {
      const marker = `86400.${randomBytes(4).readUInt32BE()}`;
      const t = await makeTask();
      let grandchildSeen: Promise<number[]> | undefined;
      // "ready" is printed only once the background sleep has exec'd (its /proc cmdline names the marker): a
      // forked shell that has not exec'd yet would not be found by the scan below.
      const script = `trap '' TERM; sleep ${marker} & until grep -qa ${marker} /proc/$!/cmdline; do :; done; echo ready; wait`;
      const { req, out } = request(t, ['sh', '-c', script], {
        timeoutMs: 3000,
        onOutput: (stream, data) => {
          out[stream] += data;
          if (out.stdout.includes('ready')) grandchildSeen ??= processesWith(marker);
        },
      });
      const result = await runtime.run(req);
      assert.equal(result.timedOut, true);
      assert.equal(result.aborted, false);
      assert.notEqual(result.exitCode, 0);
      assert.ok(result.durationMs >= 3000 && result.durationMs < 15_000, String(result.durationMs));
      assert.equal((await grandchildSeen)?.length, 1, 'the grandchild ran');
      assert.deepEqual(await processesWith(marker), [], 'the grandchild is gone');
    });

    test('SIGTERM reaches the task first so it can save a checkpoint', async () => {
      const t = await makeTask();
      // Stopped once the trap is installed (not by a short time limit that could fire before sh even starts).
      const controller = new AbortController();
      const script = `trap 'echo saved > /checkpoints/on-term; exit 0' TERM; sleep 86400 & echo ready; wait`;
      const { req, out } = request(t, ['sh', '-c', script], {
        signal: controller.signal,
        onOutput: (stream, data) => {
          out[stream] += data;
          if (out.stdout.includes('ready')) controller.abort();
        },
      });
      const result = await runtime.run(req);
      assert.equal(result.aborted, true);
      assert.equal(out.stdout, 'ready\n');
      assert.equal(await readFile(path.join(t.checkpoints, 'on-term'), 'utf8'), 'saved\n');
      assert.equal(result.exitCode, 0);
    });

    test('an AbortSignal stops the task', async () => {
      const marker = `86400.${randomBytes(4).readUInt32BE()}`;
      const t = await makeTask();
      const controller = new AbortController();
      const { req, out } = request(t, ['sh', '-c', `sleep ${marker} & echo ready; wait`], {
        signal: controller.signal,
        onOutput: (stream, data) => {
          out[stream] += data;
          if (out.stdout.includes('ready')) controller.abort();
        },
      });
      const result = await runtime.run(req);
      assert.equal(result.aborted, true);
      assert.equal(result.timedOut, false);
      assert.ok(result.durationMs < 10_000);
      assert.deepEqual(await processesWith(marker), []);
    });

    test('an already aborted signal does not start the task', async () => {
      const t = await makeTask();
      const { req } = request(t, ['sh', '-c', 'echo started > /outputs/x'], { signal: AbortSignal.abort() });
      const result = await runtime.run(req);
      assert.equal(result.aborted, true);
      assert.deepEqual(await readdir(t.outputs), []);
    });
  });

  describe('memory limit', () => {
    const alloc = (mib: number) => `
      try { const b = Buffer.allocUnsafe(${mib} * 2 ** 20); b.fill(1, 0, 2 ** 20); console.log('allocated'); }
      catch (e) { console.log('alloc failed: ' + e.message); process.exit(2); }
    `;

    test('a large allocation, used, fails under the limit', async () => {
      // With a memory cgroup the task is stopped when it uses more than its memory (its address space may be
      // larger: V8 reserves far more than it uses); without one, the address-space limit refuses the allocation.
      const t = await makeTask({
        'big.js': `
          try { const b = Buffer.allocUnsafe(1536 * 2 ** 20); b.fill(1); console.log('allocated'); }
          catch (e) { console.log('alloc failed: ' + e.message); process.exit(2); }
        `,
      });
      const { req, out } = request(t, ['node', 'big.js'], { memoryBytes: 1 * GiB });
      const result = await runtime.run(req);
      if (await runtime.taskMemoryBounded()) assert.equal(result.limit, 'memory', JSON.stringify(result) + out.stdout + out.stderr);
      else {
        assert.equal(result.exitCode, 2, out.stdout + out.stderr);
        assert.match(out.stdout, /alloc failed/);
      }
      assert.doesNotMatch(out.stdout, /allocated/);
    });

    test('a normal task passes under the same limit', async () => {
      const t = await makeTask({ 'small.js': alloc(64) });
      const { req, out } = request(t, ['node', 'small.js'], { memoryBytes: 1 * GiB });
      const result = await runtime.run(req);
      assert.equal(result.exitCode, 0, out.stdout + out.stderr);
      assert.equal(out.stdout, 'allocated\n');
    });

    test('the same large allocation passes with a higher limit', async () => {
      const t = await makeTask({ 'big.js': alloc(1536) });
      const { req, out } = request(t, ['node', 'big.js'], { memoryBytes: 8 * GiB });
      const result = await runtime.run(req);
      assert.equal(result.exitCode, 0, out.stdout + out.stderr);
    });

    test(`address-space limits below ${MIN_SANDBOX_MEMORY_BYTES} bytes are raised so node still starts`, async () => {
      const t = await makeTask();
      const { req, out } = request(t, ['node', '-e', 'console.log(1)'], { memoryBytes: 64 * 2 ** 20 });
      const result = await runtime.run(req);
      assert.equal(result.exitCode, 0, out.stderr);
    });

    test('a node task of 1 GiB held by its memory cgroup may start a worker thread (V8 reserves more address space than that; it aborted under a 1 GiB limit)', async () => {
      const t = await makeTask({
        'worker.js': `
          const { Worker } = require('node:worker_threads');
          new Worker('require("node:worker_threads").parentPort.postMessage(42)', { eval: true }).on('message', (m) => console.log('worker answered ' + m));
        `,
      });
      const { req, out } = request(t, ['node', 'worker.js'], { memoryBytes: 1 * GiB });
      const result = await runtime.run(req);
      if (await runtime.taskMemoryBounded()) {
        assert.equal(result.exitCode, 0, `${JSON.stringify(result)} ${out.stderr.slice(0, 500)}`);
        assert.equal(out.stdout, 'worker answered 42\n');
      } else {
        // No memory cgroup: the address space is all that bounds the task, and 1 GiB of it does not hold a worker.
        console.log('# no memory cgroup here: the per-process address-space limit stays at the task memory');
        assert.notEqual(result.exitCode, 0);
      }
    });

    test('/tmp cannot grow past the memory limit', async () => {
      const t = await makeTask();
      const { req, out } = request(t, ['sh', '-c', 'head -c 1100000000 /dev/zero > /tmp/fill'], { memoryBytes: 1 * GiB });
      const result = await runtime.run(req);
      assert.notEqual(result.exitCode, 0);
      // The tmpfs is full, or (with a memory cgroup, where /tmp counts with everything else) the limit was reached first.
      assert.ok(result.limit === 'memory' || /No space left on device/.test(out.stderr), JSON.stringify(result) + out.stderr);
    });
  });

  describe('memory cgroup', () => {
    // All of a task's processes and its /tmp share one limit; a runtime that polls often, so that the tests do not
    // wait for the default interval.
    const MiB = 2 ** 20;
    const LIMIT = 256 * MiB;
    const limited = createSandboxRuntime({ killGraceMs: 300, limitPollMs: 100 });

    /** Waits (on the task's output) until `text` appears on stdout; rejects if the run ends first. */
    function outputOf(req: RunRequest, out: { stdout: string; stderr: string }) {
      const waiters: { text: string; resolve: () => void }[] = [];
      req.onOutput = (stream, data) => {
        out[stream] += data;
        for (const w of waiters.splice(0)) {
          if (out.stdout.includes(w.text)) w.resolve();
          else waiters.push(w);
        }
      };
      return (text: string, run: Promise<unknown>) =>
        new Promise<void>((resolve, reject) => {
          if (out.stdout.includes(text)) return resolve();
          waiters.push({ text, resolve });
          run.then(() => reject(new Error(`the run ended before "${text}": ${out.stdout} ${out.stderr}`)), reject);
        });
    }

    /** The memory group of the task process started with `marker` in its argv: its limit and current use. */
    async function memoryGroupOf(marker: string): Promise<{ limit: number; usage: number }> {
      const [pid] = await processesWith(marker);
      assert.ok(pid, 'the task runs on the host');
      const group = await cgroupDir(pid, 'memory');
      assert.ok(group, 'the task is in a memory cgroup');
      const read = async (f: string) => (await readFile(path.join(group.dir, f), 'utf8')).trim();
      return group.version === 1
        ? { limit: Number(await read('memory.limit_in_bytes')), usage: Number(await read('memory.usage_in_bytes')) }
        : { limit: Number(await read('memory.max')), usage: Number(await read('memory.current')) };
    }

    test('six children each under the per-process limit but together over the task limit: MEMORY_LIMIT', async (ctx) => {
      if (!(await memoryControllerHere())) return ctx.skip('no memory controller root can write here');
      const marker = `gw-mem-${randomBytes(4).toString('hex')}`;
      // Each child holds 64 MiB (well within its 1 GiB address space); six of them plus six Node runtimes need
      // about 600 MiB. The parent waits for /outputs/go so the test can look at the group before anything is allocated.
      const parent = `
        const { spawn } = require('node:child_process');
        const fs = require('node:fs');
        const child = "const b = Buffer.alloc(64 * 2 ** 20, 1); process.stdout.write('held\\\\n'); setInterval(() => {}, 2 ** 30);";
        console.log('started');
        const go = setInterval(() => {
          if (!fs.existsSync('/outputs/go')) return;
          clearInterval(go);
          const children = [];
          let held = 0;
          for (let i = 0; i < 6; i++) {
            const c = spawn(process.execPath, ['-e', child], { stdio: ['ignore', 'pipe', 'inherit'] });
            children.push(c);
            c.stdout.on('data', (d) => {
              for (const line of String(d).split('\\n')) if (line === 'held') console.log('held ' + ++held);
              if (held === 6) { console.log('all held'); for (const k of children) k.kill(); process.exit(0); }
            });
            c.on('exit', () => { if (held < 6) { console.log('a child died'); for (const k of children) k.kill(); process.exit(1); } });
          }
        }, 20);
      `;
      const t = await makeTask({ 'parent.js': parent });
      const { req, out } = request(t, ['node', 'parent.js', marker], { memoryBytes: LIMIT, timeoutMs: 120_000 });
      const seen = outputOf(req, out);
      const run = limited.run(req);
      await seen('started', run);
      const before = await memoryGroupOf(marker);
      assert.equal(before.limit, LIMIT, 'the task has a memory group of its own with its limit');
      await writeFile(path.join(t.outputs, 'go'), '');
      const result = await run;

      assert.equal(result.limit, 'memory', JSON.stringify(result) + out.stdout + out.stderr.slice(0, 500));
      assert.equal(result.timedOut, false);
      assert.ok(!out.stdout.includes('all held'), out.stdout);
      // What the task held at once stayed within the limit (each held line is 64 MiB alive at the same time).
      const held = Math.max(0, ...[...out.stdout.matchAll(/^held (\d+)$/gm)].map((m) => Number(m[1])));
      assert.ok(held * 64 * MiB < LIMIT, `${held} × 64 MiB held at once`);
      assert.deepEqual(await processesWith(marker), []);
    });

    test('/tmp is charged to the task: writing past the limit there ends the run with MEMORY_LIMIT', async (ctx) => {
      if (!(await memoryControllerHere())) return ctx.skip('no memory controller root can write here');
      const marker = `gw-tmp-${randomBytes(4).toString('hex')}`;
      const script =
        'head -c 67108864 /dev/zero > /tmp/a && echo wrote && until [ -e /outputs/go ]; do sleep 0.05; done; head -c 536870912 /dev/zero > /tmp/b && echo survived';
      const t = await makeTask();
      const { req, out } = request(t, ['sh', '-c', script, marker], { memoryBytes: LIMIT, timeoutMs: 120_000 });
      const seen = outputOf(req, out);
      const run = limited.run(req);
      await seen('wrote', run);
      const group = await memoryGroupOf(marker);
      assert.equal(group.limit, LIMIT);
      // The 64 MiB in /tmp are counted in the task's own group, not the agent's or the host's.
      assert.ok(group.usage >= 64 * MiB && group.usage <= LIMIT, `usage ${group.usage}`);
      await writeFile(path.join(t.outputs, 'go'), '');
      const result = await run;
      assert.equal(result.limit, 'memory', JSON.stringify(result) + out.stderr.slice(0, 500));
      assert.ok(!out.stdout.includes('survived'), out.stdout);
      assert.deepEqual(await processesWith(marker), []);
    });

    test('a task well within its memory (processes and /tmp together) succeeds', async () => {
      const t = await makeTask({
        'main.js': `
          require('node:fs').writeFileSync('/tmp/scratch', Buffer.alloc(32 * 2 ** 20, 1));
          const b = Buffer.alloc(64 * 2 ** 20, 1);
          console.log('ok ' + b[b.length - 1]);
        `,
      });
      const { req, out } = request(t, ['node', 'main.js'], { memoryBytes: LIMIT });
      const result = await limited.run(req);
      assert.equal(result.exitCode, 0, out.stderr);
      assert.equal(result.limit, undefined);
      assert.equal(out.stdout, 'ok 1\n');
    });

    test('where memory cgroups can be made, tasks are bounded as a whole; without, a warning says so', async (ctx) => {
      if (!(await memoryControllerHere())) return ctx.skip('no memory controller root can write here');
      assert.equal(await limited.taskMemoryBounded(), true);
      const warnings: string[] = [];
      const fallback = createSandboxRuntime({ cgroups: 'off', warn: (m) => warnings.push(m) });
      await fallback.check();
      assert.equal(await fallback.taskMemoryBounded(), false);
      assert.ok(
        warnings.some((w) => w.includes('no memory cgroup') && w.includes('one task at a time')),
        warnings.join('\n'),
      );
    });
  });

  describe('process limit', () => {
    // A fork bomb: every f starts two more in the background; bash retries a refused fork, so the bomb stays at
    // the limit instead of dying out, and the main shell then waits far longer than the test: only the limit
    // can end the run.
    const bomb = (marker: string) => ['bash', '-c', 'f() { f | f & }; f; sleep 600', marker];

    test('a fork bomb stops at pids.max of its cgroup and the run reports the process limit', async (ctx) => {
      if (!(await detectCgroups())) return ctx.skip('no pids cgroup can be created here');
      const limited = createSandboxRuntime({ killGraceMs: 300, maxProcesses: 64, limitPollMs: 100 });
      const marker = `gw-bomb-${randomBytes(4).toString('hex')}`;
      const t = await makeTask();
      const { req, out } = request(t, bomb(marker), { timeoutMs: 60_000 });
      const result = await limited.run(req);
      assert.equal(result.limit, 'processes', JSON.stringify(result) + out.stderr.slice(0, 500));
      assert.equal(result.timedOut, false);
      assert.deepEqual(await processesWith(marker), [], 'nothing of the bomb is left on the host');
    });

    test('without cgroups each running task gets its own uid with prlimit --nproc, and a fork bomb is still stopped', async () => {
      if (!isRoot) return;
      const warnings: string[] = [];
      const fallback = createSandboxRuntime({ killGraceMs: 300, maxProcesses: 64, limitPollMs: 100, cgroups: 'off', warn: (m) => warnings.push(m) });

      // Two tasks at once: the first waits (for a file the test creates) until the second has reported its uid.
      const a = await makeTask();
      const b = await makeTask();
      const first = request(a, ['sh', '-c', 'id -u; until [ -e /outputs/go ]; do sleep 0.05; done']);
      let firstUid!: (uid: string) => void;
      const firstStarted = new Promise<string>((resolve) => {
        firstUid = resolve;
      });
      first.req.onOutput = (stream, data) => {
        first.out[stream] += data;
        if (first.out.stdout.endsWith('\n')) firstUid(first.out.stdout.trim());
      };
      const firstRun = fallback.run(first.req);
      const uidA = await firstStarted;
      const second = request(b, ['id', '-u']);
      assert.equal((await fallback.run(second.req)).exitCode, 0, second.out.stderr);
      await writeFile(path.join(a.outputs, 'go'), '');
      assert.equal((await firstRun).exitCode, 0, first.out.stderr);
      const uidB = second.out.stdout.trim();
      assert.ok(Number(uidA) >= FALLBACK_UID_BASE && Number(uidB) >= FALLBACK_UID_BASE, `${uidA} ${uidB}`);
      assert.notEqual(uidA, uidB, 'concurrent tasks must not share a uid (RLIMIT_NPROC is per uid)');
      assert.ok(
        warnings.some((w) => w.includes('prlimit --nproc')),
        warnings.join('\n'),
      );

      const marker = `gw-bomb-${randomBytes(4).toString('hex')}`;
      const t = await makeTask();
      const { req, out } = request(t, bomb(marker), { timeoutMs: 60_000 });
      const result = await fallback.run(req);
      assert.equal(result.limit, 'processes', JSON.stringify(result) + out.stderr.slice(0, 500));
      assert.equal(result.timedOut, false);
      assert.deepEqual(await processesWith(marker), []);
    });
  });

  describe('cpu limit', () => {
    test('a task spinning on every core is held to its cpu quota (cgroup files, throttling)', async (ctx) => {
      const host = await detectCgroups();
      if (!host?.bases.cpu) return ctx.skip('no cpu cgroup can be created here');
      const marker = `gw-spin-${randomBytes(4).toString('hex')}`;
      const t = await makeTask();
      const controller = new AbortController();
      const spinners = Math.max(2, os.availableParallelism());
      const script = `i=0; while [ $i -lt ${spinners} ]; do (while :; do :; done) & i=$((i + 1)); done; echo spinning; wait`;
      let seen: (() => void) | undefined;
      const spinning = new Promise<void>((resolve) => {
        seen = resolve;
      });
      const { req, out } = request(t, ['sh', '-c', script, marker], {
        cpu: 0.5,
        signal: controller.signal,
        onOutput: (stream, data) => {
          out[stream] += data;
          if (out.stdout.includes('spinning')) seen?.();
        },
      });
      const running = runtime.run(req);
      let dir = '';
      try {
        await spinning;
        const [pid] = await processesWith(marker);
        assert.ok(pid, 'the spinners run on the host');
        const group = await cgroupDir(pid, 'cpu');
        assert.ok(group && group.version === host.version, JSON.stringify(group));
        dir = group.dir;
        if (group.version === 1) {
          assert.equal((await readFile(path.join(dir, 'cpu.cfs_quota_us'), 'utf8')).trim(), '50000');
          assert.equal((await readFile(path.join(dir, 'cpu.cfs_period_us'), 'utf8')).trim(), '100000');
        } else {
          assert.equal((await readFile(path.join(dir, 'cpu.max'), 'utf8')).trim(), '50000 100000');
        }
        // The kernel enforces it: wait (no fixed sleep) until it has throttled the group.
        const deadline = Date.now() + 20_000;
        let cpuStat = '';
        while (Date.now() < deadline) {
          cpuStat = await readFile(path.join(dir, 'cpu.stat'), 'utf8');
          if (Number(/^nr_throttled (\d+)$/m.exec(cpuStat)?.[1] ?? 0) > 0) break;
          await new Promise((r) => setTimeout(r, 50));
        }
        assert.ok(Number(/^nr_throttled (\d+)$/m.exec(cpuStat)?.[1] ?? 0) > 0, cpuStat);
      } finally {
        controller.abort();
        await running;
      }
      assert.equal(await stat(dir).catch(() => undefined), undefined, 'the task cgroup is removed after the run');
    });

    test('without cgroups the task runs under nice, with a warning', async () => {
      const warnings: string[] = [];
      const fallback = createSandboxRuntime({ cgroups: 'off', warn: (m) => warnings.push(m) });
      const t = await makeTask();
      const { req, out } = request(t, ['nice'], { cpu: 0.5 });
      const result = await fallback.run(req);
      assert.equal(result.exitCode, 0, out.stderr);
      assert.equal(out.stdout, `${FALLBACK_NICE}\n`);
      assert.ok(
        warnings.some((w) => w.includes('nice')),
        warnings.join('\n'),
      );
    });
  });

  describe('disk limit', () => {
    const MiB = 2 ** 20;
    const fill = (dir: string, files: number) => `i=0; while [ $i -lt ${files} ]; do head -c 65536 /dev/zero > ${dir}/f$i; i=$((i + 1)); done`;

    test('outputs and checkpoints together past diskBytes: the task is stopped with the disk limit', async () => {
      const limited = createSandboxRuntime({ killGraceMs: 300, limitPollMs: 100 });
      const t = await makeTask();
      // 640 KiB in each directory: neither alone exceeds 1 MiB, both together do.
      const { req, out } = request(t, ['sh', '-c', `${fill('/outputs', 10)}; ${fill('/checkpoints', 10)}; echo written; sleep 600`], {
        diskBytes: MiB,
        timeoutMs: 60_000,
      });
      const result = await limited.run(req);
      assert.equal(result.limit, 'disk', JSON.stringify(result) + out.stderr);
      assert.equal(result.timedOut, false);
    });

    test('a task that exceeds the limit and exits before the next check still reports it', async () => {
      const limited = createSandboxRuntime({ limitPollMs: 60_000 });
      const t = await makeTask();
      const { req, out } = request(t, ['sh', '-c', fill('/outputs', 20)], { diskBytes: MiB });
      const result = await limited.run(req);
      assert.equal(result.exitCode, 0, out.stderr);
      assert.equal(result.limit, 'disk');
    });

    test('one file can never grow past the limit (prlimit --fsize)', async () => {
      const t = await makeTask();
      const { req } = request(t, ['sh', '-c', 'head -c 8388608 /dev/zero > /outputs/big'], { diskBytes: MiB });
      const result = await runtime.run(req);
      assert.equal(result.limit, 'disk', JSON.stringify(result));
      assert.ok((await stat(path.join(t.outputs, 'big'))).size <= MiB);
    });

    test('a flood of empty files counts against the limit too (each costs at least a block)', async () => {
      const t = await makeTask();
      const script = 'i=0; while [ $i -lt 300 ]; do : > /outputs/e$i; i=$((i + 1)); done';
      const { req, out } = request(t, ['sh', '-c', script], { diskBytes: MiB });
      const result = await runtime.run(req);
      assert.equal(result.exitCode, 0, out.stderr);
      assert.equal(result.limit, 'disk');
    });

    test('a task within its disk limit is not flagged', async () => {
      const t = await makeTask();
      const { req, out } = request(t, ['sh', '-c', fill('/outputs', 8)], { diskBytes: MiB });
      const result = await runtime.run(req);
      assert.equal(result.exitCode, 0, out.stderr);
      assert.equal(result.limit, undefined);
    });
  });

  describe('results', () => {
    test('nonzero exit codes are reported', async () => {
      const t = await makeTask();
      const { req } = request(t, ['sh', '-c', 'exit 3']);
      assert.equal((await runtime.run(req)).exitCode, 3);
    });

    test('a task killed by a signal exits with 128 + signal (bwrap reports it that way)', async () => {
      const t = await makeTask();
      const { req } = request(t, ['sh', '-c', 'kill -KILL $$']);
      const result = await runtime.run(req);
      assert.equal(result.exitCode, 137);
      assert.equal(result.signal, null);
    });

    test('a missing command is a task failure, not an exception', async () => {
      const t = await makeTask();
      const { req, out } = request(t, ['no-such-command-xyz']);
      const result = await runtime.run(req);
      assert.notEqual(result.exitCode, 0);
      assert.match(out.stderr, /no-such-command-xyz/);
    });

    test('large output arrives complete', async () => {
      const t = await makeTask();
      const { req, out } = request(t, ['node', '-e', "process.stdout.write('é'.repeat(500000))"]);
      const result = await runtime.run(req);
      assert.equal(result.exitCode, 0);
      assert.equal(out.stdout, 'é'.repeat(500000));
    });

    test('invalid requests are rejected before anything runs', async () => {
      const t = await makeTask();
      await assert.rejects(runtime.run(request(t, []).req), { code: 'INVALID_SPEC' });
      await assert.rejects(runtime.run(request(t, ['true'], { env: { 'A=B': 'x' } }).req), { code: 'INVALID_SPEC' });
      await assert.rejects(runtime.run(request(t, ['true'], { timeoutMs: 0 }).req), { code: 'INVALID_SPEC' });
      await assert.rejects(runtime.run(request(t, ['true'], { cpu: 0 }).req), { code: 'INVALID_SPEC' });
      await assert.rejects(runtime.run(request(t, ['true'], { diskBytes: Number.NaN }).req), { code: 'INVALID_SPEC' });
    });
  });

  test('no task cgroup of this process is left behind', async (ctx) => {
    const host = await detectCgroups();
    if (!host) return ctx.skip('no cgroup can be created here');
    for (const base of new Set(Object.values(host.bases))) {
      const left = (await readdir(base)).filter((name) => name.startsWith(`task-${process.pid}-`));
      assert.deepEqual(left, [], base);
    }
  });
});
