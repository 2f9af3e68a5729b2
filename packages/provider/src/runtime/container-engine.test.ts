/**
 * The container runtime against a real Docker engine, with an image built here (node and its libraries, FROM
 * scratch: no registry is reachable). .ci/run starts a private engine and exports DOCKER_HOST; on CI these tests
 * fail rather than skip when no engine answers, elsewhere they say why they were skipped.
 *
 * Issue 14's attack replayed through the real ContainerRuntime: a job with `network: true` tries
 *   the host's loopback, and the host through the engine's default bridge gateway and its own bridge gateway;
 *   private addresses of the host (on a veth interface the test makes: this kernel has no dummy interfaces);
 *   a private address and the cloud metadata address 169.254.169.254 beyond the host (in a network namespace the
 *   test makes, behind a veth pair, with routes the test adds);
 * and every one fails, while each listener answers the host itself (so the listeners are there) and the same job
 * run with a filter that does nothing (what the runtime did before) reaches them all (so the test would catch the
 * hole coming back). A public address, routed for the test's duration into the same namespace, is reached through
 * the filter: public destinations keep their route. No packet leaves this machine: every address tried is on
 * loopback, on the engine's bridges or on interfaces the test made.
 * Also: a job without network has no route at all, and a job that exposes a port without network is reached by
 * the agent but reaches nothing of the host (before, it reached the host through its network's gateway).
 * Everything the test makes (containers, networks, namespace, interfaces, routes, iptables jumps) is removed in
 * after().
 */
import assert from 'node:assert/strict';
import { type ChildProcessByStdio, spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import type { Readable } from 'node:stream';
import { after, before, describe, test } from 'node:test';
import { buildNodeTestImage, dockerEngineUnavailable, engineRequest } from '@gridwork/testkit/docker-engine';
import { EGRESS_FORWARD_CHAIN, EGRESS_INPUT_CHAIN, egressJumps, runCommand } from './container-egress.ts';
import { ContainerRuntime } from './container-runtime.ts';
import type { RunningTask, RunRequest, RunResult } from './runtime.ts';

const MiB = 1024 ** 2;
/** Just past 100.64.0.0/10 (shared address space, blocked): an ordinary public address, routed here into the test's namespace. */
const PUBLIC_ADDRESS = '100.128.0.1';
const METADATA_ADDRESS = '169.254.169.254';

async function whyNot(): Promise<string | undefined> {
  const engine = await dockerEngineUnavailable();
  if (engine) return engine;
  if (process.getuid?.() !== 0) return 'the network tests make interfaces, namespaces and routes, and the filter needs iptables: they run as root';
  for (const tool of ['ip', 'iptables', 'iptables-restore']) {
    if ((await runCommand(tool, ['--version'])).code === 127) return `${tool} is not installed`;
  }
  return undefined;
}

const unavailable = await whyNot();
if (unavailable && process.env.CI === 'true') {
  test('a Docker engine answers for the container runtime tests (CI must run them)', () => assert.fail(unavailable));
} else if (unavailable) {
  console.log(`container runtime: real-engine tests skipped: ${unavailable}`);
}

/** Runs a command; throws with its stderr when it fails. */
async function must(file: string, ...args: string[]): Promise<string> {
  const r = await runCommand(file, args);
  if (r.code !== 0) throw new Error(`${file} ${args.join(' ')} exited with ${r.code}: ${r.stderr.trim()}`);
  return r.stdout;
}

/** The connection attempts a job makes: each target connects (and reads what the listener says) or fails with a code. */
const ATTACK = `
const net = require('node:net');
const attempt = (t) => new Promise((resolve) => {
  const s = net.connect({ host: t.host, port: t.port });
  let said = '';
  s.setTimeout(t.timeoutMs ?? 15000, () => { s.destroy(); resolve('timeout'); });
  s.on('data', (d) => { said += d; });
  s.on('end', () => resolve('connected ' + said.trim()));
  s.on('error', (e) => resolve('error ' + e.code));
});
const attack = (targets) => Promise.all(targets.map(attempt)).then((r) => JSON.stringify(Object.fromEntries(targets.map((t, i) => [t.label, r[i]]))));
`;
/** Attacks process.env.TARGETS and prints the results as one JSON line. */
const ATTACK_FROM_ENV = `${ATTACK}attack(JSON.parse(process.env.TARGETS)).then((line) => console.log('RESULTS ' + line));`;
/** Listens on 8080; the first connection sends the targets (one JSON line) and gets the results back; then exits. */
const ATTACK_ON_REQUEST = `${ATTACK}
const server = net.createServer((c) => {
  let got = '';
  c.on('data', (d) => {
    got += d;
    if (!got.includes('\\n')) return;
    attack(JSON.parse(got)).then((line) => { c.end(line + '\\n'); server.close(); });
  });
});
server.listen(8080, '0.0.0.0');
`;

interface Target {
  label: string;
  host: string;
  port: number;
  /** How long the job waits for an answer. @default 15 s */
  timeoutMs?: number;
}

type Results = Record<string, string>;

describe('container runtime against a real Docker engine', { skip: unavailable ?? false, timeout: 300_000 }, () => {
  const suffix = randomBytes(3).toString('hex');
  const token = `gridwork-test-${suffix}`;
  const names = {
    egress: `gwtest-egress-${suffix}`,
    internal: `gwtest-internal-${suffix}`,
    open: `gwtest-open-${suffix}`,
    openInternal: `gwtest-open-internal-${suffix}`,
  };
  const netns = `gwt-${suffix}`;
  const veth = { host: `gwt${suffix}h`, ns: `gwt${suffix}n` };
  /** Undo steps, run in reverse in after(). */
  const undo: (() => Promise<unknown>)[] = [];
  const servers: net.Server[] = [];
  let image = '';
  let root = '';
  let n = 0;
  let filtered: ContainerRuntime;
  let unfiltered: ContainerRuntime;
  let nsListener: ChildProcessByStdio<null, Readable, Readable> | undefined;
  const addr = { veth: '', beyond: '', hostPrivate: '', dockerGateway: '', egressGateway: '', egressBridge: '' };
  let targets: Target[] = [];

  /** A listener of the test: says the token and where it listens, then closes. */
  async function listen(host: string): Promise<number> {
    const server = net.createServer((s) => s.end(`${token} ${host}\n`));
    servers.push(server);
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen(0, host, resolve);
    });
    return (server.address() as net.AddressInfo).port;
  }

  /** Connects from the host and returns what the listener said. */
  function fromHost(t: Target): Promise<string> {
    return new Promise((resolve, reject) => {
      const s = net.connect({ host: t.host, port: t.port });
      let said = '';
      s.setTimeout(15_000, () => s.destroy(new Error(`${t.label}: no answer from ${t.host}:${t.port}`)));
      s.on('data', (d) => {
        said += d;
      });
      s.on('end', () => resolve(said.trim()));
      s.on('error', reject);
    });
  }

  /** An address of `candidates` that this host has no route for but the default one. */
  async function unrouted(candidates: () => string): Promise<string> {
    for (let i = 0; i < 20; i++) {
      const a = candidates();
      const routes = (await must('ip', '-4', 'route', 'show', 'match', a)).split('\n').filter((l) => l.trim() !== '' && !l.startsWith('default'));
      if (routes.length === 0) return a;
    }
    throw new Error('no free address found for the test network');
  }

  async function gatewayOf(network: string): Promise<{ gateway: string; bridge: string }> {
    const inspect = JSON.parse((await engineRequest('GET', `/networks/${network}`)).text) as {
      Id: string;
      IPAM?: { Config?: { Gateway?: string }[] };
      Options?: Record<string, string>;
    };
    const gateway = inspect.IPAM?.Config?.[0]?.Gateway ?? '';
    return { gateway, bridge: inspect.Options?.['com.docker.network.bridge.name'] ?? `br-${inspect.Id.slice(0, 12)}` };
  }

  async function dirs(): Promise<Pick<RunRequest, 'bundleDir' | 'inputsDir' | 'outputsDir' | 'checkpointsDir'>> {
    const d = path.join(root, `t${++n}`);
    const out = { bundleDir: `${d}/b`, inputsDir: `${d}/i`, outputsDir: `${d}/o`, checkpointsDir: `${d}/c` };
    for (const p of Object.values(out)) await mkdir(p, { recursive: true });
    return out;
  }

  async function job(
    runtime: ContainerRuntime,
    command: string[],
    extra: Partial<RunRequest> = {},
  ): Promise<{ result: RunResult; stdout: string; stderr: string }> {
    const out = { stdout: '', stderr: '' };
    const result = await runtime.run({
      ...(await dirs()),
      command,
      env: {},
      network: false,
      timeoutMs: 120_000,
      memoryBytes: 512 * MiB,
      cpu: 1,
      diskBytes: 64 * MiB,
      image,
      onOutput: (s, d) => (out[s] += d),
      ...extra,
    });
    return { result, ...out };
  }

  async function attack(runtime: ContainerRuntime, network: boolean): Promise<Results> {
    const run = await job(runtime, ['node', '-e', ATTACK_FROM_ENV], { network, env: { TARGETS: JSON.stringify(targets) } });
    assert.equal(run.result.exitCode, 0, run.stdout + run.stderr);
    const line = /^RESULTS (.*)$/m.exec(run.stdout)?.[1];
    assert.ok(line, run.stdout + run.stderr);
    return JSON.parse(line) as Results;
  }

  before(async () => {
    root = await mkdtemp(path.join(os.tmpdir(), 'gw-engine-'));
    undo.push(() => rm(root, { recursive: true, force: true }));
    image = await buildNodeTestImage();
    filtered = new ContainerRuntime({ egressNetwork: names.egress, internalNetwork: names.internal });
    // What the runtime did before the filter: a bridge of its own, nothing in the way.
    unfiltered = new ContainerRuntime({ egressNetwork: names.open, internalNetwork: names.openInternal, egressFilter: { ensure: async () => {} } });
    for (const network of Object.values(names)) {
      undo.push(async () => {
        // Containers a failed test left behind first (the runtime removes its own when their run ends).
        const filters = encodeURIComponent(JSON.stringify({ network: [network] }));
        const left = JSON.parse((await engineRequest('GET', `/containers/json?all=1&filters=${filters}`)).text) as { Id: string }[];
        for (const c of left) await engineRequest('DELETE', `/containers/${c.Id}?force=1&v=1`);
        await engineRequest('DELETE', `/networks/${network}`);
      });
    }

    // Beyond the host: a namespace behind a veth pair, holding a private address, the metadata address and a public one.
    const a = Math.floor(Math.random() * 50) + 200;
    const subnet = await unrouted(() => `10.${a}.${Math.floor(Math.random() * 256)}.2`);
    addr.beyond = subnet;
    addr.veth = subnet.replace(/\.2$/, '.1');
    await must('ip', 'netns', 'add', netns);
    undo.push(() => runCommand('ip', ['netns', 'del', netns]));
    await must('ip', 'link', 'add', veth.host, 'type', 'veth', 'peer', 'name', veth.ns);
    undo.push(() => runCommand('ip', ['link', 'del', veth.host]));
    await must('ip', 'link', 'set', veth.ns, 'netns', netns);
    await must('ip', 'addr', 'add', `${addr.veth}/30`, 'dev', veth.host);
    await must('ip', 'link', 'set', veth.host, 'up');
    const inNs = (...args: string[]) => must('ip', '-n', netns, ...args);
    await inNs('link', 'set', 'lo', 'up');
    await inNs('addr', 'add', `${addr.beyond}/30`, 'dev', veth.ns);
    await inNs('link', 'set', veth.ns, 'up');
    for (const a of [METADATA_ADDRESS, PUBLIC_ADDRESS]) {
      await inNs('addr', 'add', `${a}/32`, 'dev', 'lo');
      await must('ip', 'route', 'add', `${a}/32`, 'via', addr.beyond);
      undo.push(() => runCommand('ip', ['route', 'del', `${a}/32`, 'via', addr.beyond]));
    }
    await inNs('route', 'add', 'default', 'via', addr.veth);
    // Its listener: a child in the namespace; it prints its port when it listens.
    const listener = spawn(
      'ip',
      [
        'netns',
        'exec',
        netns,
        process.execPath,
        '-e',
        `require('node:net').createServer((s) => s.end('${token} ' + s.localAddress + '\\n')).listen(0, '0.0.0.0', function () { console.log(this.address().port); });`,
      ],
      { stdio: ['ignore', 'pipe', 'pipe'] },
    );
    nsListener = listener;
    undo.push(async () => {
      if (listener.exitCode === null && listener.signalCode === null) {
        const gone = new Promise((resolve) => listener.once('close', resolve));
        listener.kill('SIGTERM');
        await gone;
      }
    });
    const nsPort = await new Promise<number>((resolve, reject) => {
      listener.stdout.setEncoding('utf8').once('data', (d: string) => resolve(Number(d.trim())));
      listener.once('close', (code) => reject(new Error(`the namespace's listener exited with ${code}`)));
    });

    // Private addresses of the host itself: its end of the veth pair, and one more on it from another private range.
    addr.hostPrivate = await unrouted(() => `192.168.${Math.floor(Math.random() * 256)}.${Math.floor(Math.random() * 253) + 1}`);
    await must('ip', 'addr', 'add', `${addr.hostPrivate}/32`, 'dev', veth.host);

    // The runtime makes its egress network with the first job that asks for network.
    const first = await job(filtered, ['node', '-e', '0'], { network: true });
    assert.equal(first.result.exitCode, 0, first.stderr);
    ({ gateway: addr.egressGateway, bridge: addr.egressBridge } = await gatewayOf(names.egress));
    addr.dockerGateway = (await gatewayOf('bridge')).gateway;

    targets = [
      { label: 'host loopback', host: '127.0.0.1', port: await listen('127.0.0.1') },
      { label: 'host via its own bridge gateway', host: addr.egressGateway, port: await listen(addr.egressGateway) },
      { label: 'host private address', host: addr.hostPrivate, port: await listen(addr.hostPrivate) },
      { label: 'host address on the link beyond it', host: addr.veth, port: await listen(addr.veth) },
      { label: 'private address beyond the host', host: addr.beyond, port: nsPort },
      { label: 'metadata address', host: METADATA_ADDRESS, port: nsPort },
      { label: 'public address', host: PUBLIC_ADDRESS, port: nsPort },
    ];
    if (addr.dockerGateway)
      targets.splice(1, 0, { label: "host via the engine's default bridge gateway", host: addr.dockerGateway, port: await listen(addr.dockerGateway) });
  });

  after(async () => {
    for (const server of servers) server.close();
    // The jumps of the test's bridges; the chains too when no other bridge uses them.
    for (const network of [names.egress, names.internal]) {
      const { bridge } = await gatewayOf(network).catch(() => ({ bridge: '' }));
      if (!bridge) continue;
      for (const jump of egressJumps(bridge)) while ((await runCommand('iptables', ['-w', '-D', jump.chain, ...jump.rule.split(' ')])).code === 0);
    }
    const listing = (await runCommand('iptables', ['-w', '-S'])).stdout;
    if (!/-j GRIDWORK-EGRESS(-IN)?$/m.test(listing)) {
      for (const chain of [EGRESS_FORWARD_CHAIN, EGRESS_INPUT_CHAIN]) {
        await runCommand('iptables', ['-w', '-F', chain]);
        await runCommand('iptables', ['-w', '-X', chain]);
      }
    }
    for (const step of undo.reverse()) await step().catch(() => {});
    nsListener?.stdout.destroy();
    nsListener?.stderr.destroy();
  });

  test('a job reads its inputs read-only, writes its outputs, and without network has loopback only and no route', async () => {
    const d = await dirs();
    await writeFile(`${d.inputsDir}/in.txt`, 'input\n');
    const script = `
      const fs = require('node:fs');
      fs.writeFileSync('/outputs/copy.txt', fs.readFileSync('/inputs/in.txt'));
      try { fs.writeFileSync('/inputs/x', 'x'); console.log('inputs writable'); } catch (e) { console.log('inputs ' + e.code); }
      console.log('interfaces ' + fs.readdirSync('/sys/class/net').sort().join(','));
      console.log('routes ' + (fs.readFileSync('/proc/net/route', 'utf8').trim().split('\\n').length - 1));`;
    const out = { stdout: '', stderr: '' };
    const result = await filtered.run({
      ...d,
      command: ['node', '-e', script],
      env: {},
      network: false,
      timeoutMs: 120_000,
      memoryBytes: 512 * MiB,
      cpu: 1,
      diskBytes: 64 * MiB,
      image,
      onOutput: (s, x) => (out[s] += x),
    });
    assert.equal(result.exitCode, 0, out.stdout + out.stderr);
    assert.match(out.stdout, /^inputs (EROFS|EACCES)$/m);
    assert.match(out.stdout, /^interfaces lo$/m);
    assert.match(out.stdout, /^routes 0$/m);
    assert.equal(await readFile(`${d.outputsDir}/copy.txt`, 'utf8'), 'input\n');
  });

  test('the listeners are there: the host reaches each of them, and a job on a bridge without the filter (the runtime before) reaches all but its own loopback', async () => {
    for (const t of targets) assert.match(await fromHost(t), new RegExp(`^${token} `), t.label);
    const results = await attack(unfiltered, true);
    for (const t of targets) {
      if (t.label === 'host loopback') assert.equal(results[t.label], 'error ECONNREFUSED', "the container's own loopback");
      else assert.match(results[t.label] ?? '', new RegExp(`^connected ${token} `), `${t.label}: ${JSON.stringify(results)}`);
    }
  });

  test('a job with network: true reaches none of the host, the private ranges or the metadata address; a public address is reached', async () => {
    const results = await attack(filtered, true);
    for (const t of targets) {
      const got = results[t.label];
      if (t.label === 'public address') assert.equal(got, `connected ${token} ${PUBLIC_ADDRESS}`, JSON.stringify(results));
      else if (t.label === 'host loopback') assert.equal(got, 'error ECONNREFUSED', "the container's own loopback: nothing listens there");
      // The filter's answer (as the sandbox's unreachable routes), at once: not a timeout.
      else assert.equal(got, 'error ENETUNREACH', `${t.label} (${t.host}): ${JSON.stringify(results)}`);
    }
  });

  test('inside a job with network: true: a default route through its own bridge, no IPv6, and the filter first in INPUT and DOCKER-USER', async () => {
    const script = `
      const fs = require('node:fs');
      console.log('interfaces ' + fs.readdirSync('/sys/class/net').sort().join(','));
      for (const line of fs.readFileSync('/proc/net/route', 'utf8').trim().split('\\n').slice(1)) {
        const [iface, dest, gw] = line.trim().split(/\\s+/);
        const ip = (hex) => Buffer.from(hex, 'hex').reverse().join('.');
        console.log('route ' + iface + ' ' + ip(dest) + ' via ' + ip(gw));
      }
      console.log('ipv6 addresses ' + fs.readFileSync('/proc/net/if_inet6', 'utf8').trim().split('\\n').filter(Boolean).length);`;
    const run = await job(filtered, ['node', '-e', script], { network: true });
    assert.equal(run.result.exitCode, 0, run.stderr);
    assert.match(run.stdout, /^interfaces eth0,lo$/m);
    assert.match(run.stdout, new RegExp(`^route eth0 0\\.0\\.0\\.0 via ${addr.egressGateway.replaceAll('.', '\\.')}$`, 'm'));
    assert.match(run.stdout, /^ipv6 addresses 0$/m);
    const listing = await must('iptables', '-w', '-S');
    for (const jump of egressJumps(addr.egressBridge)) {
      const first = listing.split('\n').find((l) => l.startsWith(`-A ${jump.chain} `));
      assert.equal(first, `-A ${jump.chain} ${jump.rule}`);
    }
    assert.match(listing, /^-A GRIDWORK-EGRESS -d 169\.254\.0\.0\/16 -j REJECT --reject-with icmp-net-unreachable$/m);
    assert.match(listing, /^-A GRIDWORK-EGRESS-IN -j REJECT --reject-with icmp-net-unreachable$/m);
  });

  test('a job without network reaches nothing at all: no route', async () => {
    const results = await attack(filtered, false);
    for (const t of targets)
      assert.equal(results[t.label], t.label === 'host loopback' ? 'error ECONNREFUSED' : 'error ENETUNREACH', `${t.label}: ${JSON.stringify(results)}`);
  });

  /**
   * A service without network on `internalNetwork`: once the agent sees it listen, the test opens a listener on that
   * network's gateway and sends the targets over the task's port; the task answers with its attempts and exits.
   */
  async function serviceAttack(runtime: ContainerRuntime, internalNetwork: string, only?: readonly string[]): Promise<{ results: Results; tried: Target[] }> {
    const out = { stdout: '', stderr: '' };
    const task: RunningTask = await runtime.start({
      ...(await dirs()),
      command: ['node', '-e', ATTACK_ON_REQUEST],
      env: {},
      network: false,
      ports: [8080],
      timeoutMs: 120_000,
      memoryBytes: 512 * MiB,
      cpu: 1,
      diskBytes: 64 * MiB,
      image,
      onOutput: (s, d) => (out[s] += d),
    });
    const ended = task.wait();
    let answered: { results: Results; tried: Target[] };
    try {
      answered = await talkTo(task, ended, out, internalNetwork, only);
    } catch (err) {
      // The container is removed once its run ends.
      task.stop('the test failed');
      await ended.catch(() => {});
      throw err;
    }
    const result = await ended;
    assert.equal(result.exitCode, 0, out.stdout + out.stderr);
    return answered;
  }

  async function talkTo(
    task: RunningTask,
    ended: Promise<RunResult>,
    out: { stdout: string; stderr: string },
    internalNetwork: string,
    only: readonly string[] | undefined,
  ): Promise<{ results: Results; tried: Target[] }> {
    // Listening, as the agent sees it (the container's own sockets); the task ending first fails the test.
    let health = await task.health();
    while (health !== 'healthy') {
      const done = await Promise.race([ended.then(() => true), new Promise<false>((r) => setTimeout(() => r(false), 50))]);
      assert.equal(done, false, `the task ended before it listened: ${out.stdout}${out.stderr}`);
      health = await task.health();
    }
    const { gateway } = await gatewayOf(internalNetwork);
    const own: Target = { label: 'host via its own bridge gateway', host: gateway, port: await listen(gateway) };
    assert.match(await fromHost(own), new RegExp(`^${token} `));
    // The engine drops what an internal network sends beyond the host, silently: a short wait says enough there.
    const tried = [own, ...targets.filter((t) => t.label !== own.label).map((t) => (t.label === 'public address' ? { ...t, timeoutMs: 2000 } : t))].filter(
      (t) => only === undefined || only.includes(t.label),
    );
    const port = task.ports[0];
    assert.ok(port);
    const answer = await new Promise<string>((resolve, reject) => {
      const s = net.connect({ host: port.address, port: port.host });
      let said = '';
      s.on('data', (d) => {
        said += d;
      });
      s.on('end', () => resolve(said.trim()));
      s.on('error', reject);
      // Not end(): the task answers on this connection, after its attempts.
      s.write(`${JSON.stringify(tried)}\n`);
    });
    return { results: JSON.parse(answer) as Results, tried };
  }

  test('a job exposing a port without network: the agent reaches its port; the task reaches neither the host through its gateway nor anything else', async () => {
    const { results, tried } = await serviceAttack(filtered, names.internal);
    for (const t of tried) {
      const got = results[t.label];
      if (t.label === 'public address') assert.match(got ?? '', /^(timeout|error )/, JSON.stringify(results));
      else assert.equal(got, t.label === 'host loopback' ? 'error ECONNREFUSED' : 'error ENETUNREACH', `${t.label}: ${JSON.stringify(results)}`);
    }
    // Before the filter, such a task reached the host: the engine routes internal networks to their gateway.
    const before = await serviceAttack(unfiltered, names.openInternal, ['host via its own bridge gateway', 'host private address']);
    assert.match(before.results['host via its own bridge gateway'] ?? '', new RegExp(`^connected ${token} `), JSON.stringify(before.results));
    assert.match(before.results['host private address'] ?? '', new RegExp(`^connected ${token} `), JSON.stringify(before.results));
  });
});
