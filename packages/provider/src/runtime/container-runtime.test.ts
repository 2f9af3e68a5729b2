/**
 * The container runtime: its create-container request (pure), the attach-stream demultiplexer, the published
 * ports, the pull's error reporting, and the start → logs → wait → remove flow, the task networks and the refusal
 * when the egress filter cannot be put in place, against a fake engine. Real containers on a real engine:
 * container-engine.test.ts.
 */
import assert from 'node:assert/strict';
import { chmod, mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { PassThrough } from 'node:stream';
import { after, before, describe, test } from 'node:test';
import { GridworkError } from '@gridwork/protocol';
import {
  buildContainerCreateRequest,
  type ContainerInspect,
  type ContainerPlan,
  ContainerRuntime,
  bridgeInterfaceOf,
  consumePull,
  type DockerClient,
  type DockerContainer,
  dockerEndpoint,
  exposedPortsOf,
  type NetworkCreateRequest,
  type NetworkInspect,
  StreamDemuxer,
} from './container-runtime.ts';
import type { RunRequest } from './runtime.ts';

const GiB = 1024 ** 3;
const PLAN: ContainerPlan = {
  name: 'gridwork-abc',
  user: '65534:65534',
  maxProcesses: 512,
  killGraceMs: 2500,
  internalNetwork: 'gridwork-internal',
  egressNetwork: 'gridwork-egress',
};

function request(extra: Partial<RunRequest> = {}): RunRequest {
  return {
    bundleDir: '/w/l1/bundle',
    inputsDir: '/w/l1/inputs',
    outputsDir: '/w/l1/outputs',
    checkpointsDir: '/w/l1/checkpoints',
    command: ['python3', '-m', 'serve', '--flag'],
    env: { MODEL: 'tiny' },
    network: false,
    timeoutMs: 60_000,
    memoryBytes: 3 * GiB,
    cpu: 1.5,
    diskBytes: 5 * GiB,
    image: 'ghcr.io/acme/infer:1.2',
    onOutput: () => {},
    ...extra,
  };
}

/** One frame of the engine's multiplexed stream. */
function frame(stream: 1 | 2, data: Buffer | string): Buffer {
  const payload = typeof data === 'string' ? Buffer.from(data) : data;
  const header = Buffer.alloc(8);
  header[0] = stream;
  header.writeUInt32BE(payload.length, 4);
  return Buffer.concat([header, payload]);
}

describe('container create request', () => {
  test("a cluster member's delivered rounds are mounted read-only inside its checkpoints", () => {
    const body = buildContainerCreateRequest(request({ exchangeInDir: '/w/l1/exchange-in', env: { WORLD_SIZE: '2' } }), PLAN);
    assert.deepEqual(body.HostConfig.Binds, [
      '/w/l1/inputs:/inputs:ro',
      '/w/l1/outputs:/outputs:rw',
      '/w/l1/checkpoints:/checkpoints:rw',
      '/w/l1/exchange-in:/checkpoints/exchange/in:ro',
    ]);
    assert.ok(body.Env.includes('GRIDWORK_EXCHANGE=/checkpoints/exchange'), String(body.Env));
  });

  test('a CPU task: limits, mounts, no network, locked down, no GPU', () => {
    const body = buildContainerCreateRequest(request(), PLAN);
    assert.equal(body.name, 'gridwork-abc');
    assert.equal(body.Image, 'ghcr.io/acme/infer:1.2');
    assert.deepEqual(body.Cmd, ['python3', '-m', 'serve', '--flag']);
    assert.equal(body.User, '65534:65534');
    assert.deepEqual(body.Labels, { 'io.gridwork.task': 'gridwork-abc' });
    assert.equal(body.NetworkDisabled, true);
    assert.deepEqual(body.ExposedPorts, {});
    assert.equal(body.StopTimeout, 3, 'grace period rounded up to seconds');
    const h = body.HostConfig;
    assert.deepEqual(h.Binds, ['/w/l1/inputs:/inputs:ro', '/w/l1/outputs:/outputs:rw', '/w/l1/checkpoints:/checkpoints:rw']);
    assert.ok(!h.Binds.some((b) => b.startsWith('/w/l1/bundle')), 'a container job has no bundle to mount');
    assert.equal(h.Memory, 3 * GiB);
    assert.equal(h.MemorySwap, 3 * GiB, 'no swap on top of the memory limit');
    assert.equal(h.NanoCpus, 1_500_000_000);
    assert.equal(h.PidsLimit, 512);
    assert.equal(h.NetworkMode, 'none');
    assert.deepEqual(h.PortBindings, {});
    assert.equal(h.Privileged, false);
    assert.deepEqual(h.CapDrop, ['ALL']);
    assert.deepEqual(h.SecurityOpt, ['no-new-privileges']);
    assert.equal(h.ReadonlyRootfs, true);
    assert.deepEqual(h.Tmpfs, { '/tmp': `rw,nosuid,nodev,size=${3 * GiB}` });
    assert.deepEqual(h.Ulimits, [{ Name: 'fsize', Soft: 5 * GiB, Hard: 5 * GiB }]);
    assert.deepEqual(h.DeviceRequests, []);
    assert.equal(h.Init, true);
    assert.equal(h.AutoRemove, false, 'removed by the runtime after its exit code is read');
    const env = new Map(body.Env.map((e) => [e.slice(0, e.indexOf('=')), e.slice(e.indexOf('=') + 1)]));
    assert.equal(env.get('MODEL'), 'tiny');
    assert.equal(env.get('GRIDWORK_INPUTS'), '/inputs');
    assert.equal(env.get('GRIDWORK_OUTPUTS'), '/outputs');
    assert.equal(env.get('GRIDWORK_CHECKPOINTS'), '/checkpoints');
    assert.equal(env.get('HOME'), '/tmp', 'a writable home on a read-only root');
    assert.equal(env.has('PATH'), false, "the image's PATH stands");
    assert.equal(env.has('LANG'), false);
    // Explicit even for a CPU task: CUDA images declare NVIDIA_VISIBLE_DEVICES=all.
    assert.equal(env.get('NVIDIA_VISIBLE_DEVICES'), 'void');
    assert.equal(env.get('CUDA_VISIBLE_DEVICES'), '');
    assert.equal(env.has('PORT'), false);
  });

  test('GPUs are requested by UUID and named in both variables; the spec cannot widen them', () => {
    const gpus = [
      { index: 2, uuid: 'GPU-2f6c8b41-7e9a-4d03-9c5b-8a1e3f7d2b64' },
      { index: 3, uuid: 'GPU-c71d5e92-4a3b-48f0-a6e2-0d9b7c1f5a83' },
    ];
    const body = buildContainerCreateRequest(request({ gpus, env: { NVIDIA_VISIBLE_DEVICES: 'all', CUDA_VISIBLE_DEVICES: '0,1,2,3' } }), PLAN);
    assert.deepEqual(body.HostConfig.DeviceRequests, [{ Driver: 'nvidia', DeviceIDs: gpus.map((g) => g.uuid), Capabilities: [['gpu']] }]);
    const uuids = gpus.map((g) => g.uuid).join(',');
    assert.ok(body.Env.includes(`NVIDIA_VISIBLE_DEVICES=${uuids}`));
    assert.ok(body.Env.includes(`CUDA_VISIBLE_DEVICES=${uuids}`));
    assert.equal(body.Env.filter((e) => e.startsWith('NVIDIA_VISIBLE_DEVICES=')).length, 1);
  });

  test("network: true joins the agent's egress network (never the engine's default bridge) and publishes ports on the host loopback only", () => {
    const body = buildContainerCreateRequest(request({ network: true, ports: [8080, 9090] }), PLAN);
    assert.equal(body.NetworkDisabled, false);
    assert.equal(body.HostConfig.NetworkMode, 'gridwork-egress');
    assert.equal(buildContainerCreateRequest(request({ network: true }), PLAN).HostConfig.NetworkMode, 'gridwork-egress');
    assert.deepEqual(body.ExposedPorts, { '8080/tcp': {}, '9090/tcp': {} });
    assert.deepEqual(body.HostConfig.PortBindings, {
      '8080/tcp': [{ HostIp: '127.0.0.1', HostPort: '' }],
      '9090/tcp': [{ HostIp: '127.0.0.1', HostPort: '' }],
    });
    assert.ok(body.Env.includes('PORT=8080'));
  });

  test('ports without network: the internal network, nothing published', () => {
    const body = buildContainerCreateRequest(request({ ports: [8080] }), PLAN);
    assert.equal(body.HostConfig.NetworkMode, 'gridwork-internal');
    assert.equal(body.NetworkDisabled, false);
    assert.deepEqual(body.HostConfig.PortBindings, {});
    assert.deepEqual(body.ExposedPorts, { '8080/tcp': {} });
  });

  test('the spec may set PATH and LANG; tiny memory is raised to what the engine accepts; no image is refused', () => {
    const body = buildContainerCreateRequest(request({ env: { PATH: '/opt/bin:/usr/bin', LANG: 'C' }, memoryBytes: 1024 }), PLAN);
    assert.ok(body.Env.includes('PATH=/opt/bin:/usr/bin'));
    assert.ok(body.Env.includes('LANG=C'));
    assert.equal(body.HostConfig.Memory, 6 * 1024 * 1024);
    const { image: _, ...noImage } = request();
    assert.throws(
      () => buildContainerCreateRequest(noImage, PLAN),
      (err: unknown) => err instanceof GridworkError && err.code === 'INVALID_SPEC',
    );
    assert.throws(() => buildContainerCreateRequest(request({ env: { 'BAD-NAME': 'x' } }), PLAN), /invalid environment variable name/);
  });
});

describe('container plumbing', () => {
  test('the demultiplexer splits stdout and stderr across arbitrary chunk boundaries and keeps UTF-8 whole', () => {
    const got: [string, string][] = [];
    const demux = new StreamDemuxer((stream, data) => got.push([stream, data]));
    const euro = Buffer.from('€'); // 3 bytes, split across two frames below
    const all = Buffer.concat([
      frame(1, 'hello '),
      frame(2, 'oops\n'),
      frame(1, euro.subarray(0, 1)),
      frame(1, Buffer.concat([euro.subarray(1), Buffer.from('\n')])),
    ]);
    for (let i = 0; i < all.length; i += 3) demux.push(all.subarray(i, i + 3));
    demux.end();
    const text = (s: string) =>
      got
        .filter(([k]) => k === s)
        .map(([, d]) => d)
        .join('');
    assert.equal(text('stdout'), 'hello €\n');
    assert.equal(text('stderr'), 'oops\n');
  });

  test('published ports are read from inspect; internal ones are the container address', () => {
    const inspect: ContainerInspect = {
      NetworkSettings: {
        Ports: { '8080/tcp': [{ HostIp: '127.0.0.1', HostPort: '49153' }], '9090/tcp': null },
        Networks: { 'gridwork-internal': { IPAddress: '172.20.0.5' } },
      },
    };
    assert.deepEqual(exposedPortsOf(inspect, [8080], 'gridwork-egress', true), [{ task: 8080, host: 49153, address: '127.0.0.1' }]);
    assert.throws(() => exposedPortsOf(inspect, [9090], 'gridwork-egress', true), /no host port/);
    assert.deepEqual(exposedPortsOf(inspect, [8080], 'gridwork-internal', false), [{ task: 8080, host: 8080, address: '172.20.0.5' }]);
    assert.throws(() => exposedPortsOf({}, [8080], 'gridwork-internal', false), /no address/);
    assert.deepEqual(exposedPortsOf({}, [], 'none', false), []);
  });

  test("a network's host interface: the name the engine was given, else br- and 12 characters of its id", () => {
    assert.equal(bridgeInterfaceOf({ Id: 'abc', Options: { 'com.docker.network.bridge.name': 'docker0' } }), 'docker0');
    assert.equal(bridgeInterfaceOf({ Id: '25d7406eef8c0590b208a5c8', Options: {} }), 'br-25d7406eef8c');
    assert.equal(bridgeInterfaceOf({ Options: null }), undefined);
  });

  test('a pull that reports an error fails with its message; progress alone succeeds', async () => {
    const stream = (lines: string[]) => {
      const s = new PassThrough();
      s.end(lines.join('\n'));
      return s;
    };
    await consumePull(stream(['{"status":"Pulling from acme/infer"}', '{"status":"Download complete"}']));
    await assert.rejects(
      consumePull(stream(['{"status":"Pulling"}', '{"errorDetail":{"message":"manifest unknown"},"error":"manifest unknown"}'])),
      /manifest unknown/,
    );
  });

  test('the engine is looked for at DOCKER_HOST, else the default socket', () => {
    assert.equal(
      dockerEndpoint({ DOCKER_HOST: 'tcp://127.0.0.1:2375' }, () => false),
      'tcp://127.0.0.1:2375',
    );
    assert.equal(
      dockerEndpoint({}, () => true),
      'unix:///var/run/docker.sock',
    );
    assert.equal(
      dockerEndpoint({}, () => false),
      undefined,
    );
  });
});

/** An engine in memory: records calls; each container prints its frames and exits with `exitCode` after `runMs`. */
class FakeEngine implements DockerClient {
  readonly calls: string[] = [];
  created: Parameters<DockerClient['createContainer']>[0] | undefined;
  haveImage = false;
  removed = 0;
  constructor(private readonly behaviour: { frames: Buffer[]; exitCode: number; runMs: number; oom?: boolean; exitOnStop?: number }) {}
  async ping() {
    return 'OK';
  }
  getImage(name: string) {
    return {
      inspect: async () => {
        this.calls.push(`inspect-image ${name}`);
        if (!this.haveImage) throw Object.assign(new Error('no such image'), { statusCode: 404 });
        return {};
      },
    };
  }
  async pull(image: string) {
    this.calls.push(`pull ${image}`);
    const s = new PassThrough();
    s.end('{"status":"Downloaded newer image"}\n');
    return s;
  }
  /** The engine's networks by name. */
  readonly networks = new Map<string, NetworkInspect>();
  getNetwork(name: string) {
    return {
      inspect: async (): Promise<NetworkInspect> => {
        this.calls.push(`inspect-network ${name}`);
        const network = this.networks.get(name);
        if (!network) throw Object.assign(new Error('no such network'), { statusCode: 404 });
        return network;
      },
    };
  }
  async createNetwork(opts: NetworkCreateRequest) {
    this.calls.push(`create-network ${opts.Name} internal=${opts.Internal} icc=${opts.Options['com.docker.network.bridge.enable_icc']}`);
    this.networks.set(opts.Name, {
      Id: `${opts.Internal ? 'a1' : 'e9'}0123456789abcdef`,
      Driver: opts.Driver,
      Internal: opts.Internal,
      EnableIPv6: false,
      Options: opts.Options,
    });
    return {};
  }
  async createContainer(body: Parameters<DockerClient['createContainer']>[0]): Promise<DockerContainer> {
    this.calls.push(`create ${body.name}`);
    this.created = body;
    const out = new PassThrough();
    let exit: (code: number) => void = () => {};
    const exited = new Promise<number>((resolve) => {
      exit = resolve;
    });
    let exitTimer: NodeJS.Timeout | undefined;
    return {
      id: 'c1',
      attach: async () => out,
      start: async () => {
        this.calls.push('start');
        for (const f of this.behaviour.frames) out.write(f);
        exitTimer = setTimeout(() => {
          out.end();
          exit(this.behaviour.exitCode);
        }, this.behaviour.runMs);
      },
      wait: async () => ({ StatusCode: await exited }),
      inspect: async () => ({
        State: { OOMKilled: this.behaviour.oom ?? false },
        NetworkSettings: { Networks: { [body.HostConfig.NetworkMode]: { IPAddress: '172.20.0.5' } } },
      }),
      stop: async (opts: { t: number }) => {
        this.calls.push(`stop t=${opts.t}`);
        clearTimeout(exitTimer);
        out.end();
        exit(this.behaviour.exitOnStop ?? 143);
      },
      remove: async () => {
        this.calls.push('remove');
        this.removed++;
      },
    };
  }
}

describe('container runtime against a fake engine', () => {
  let root = '';
  let n = 0;
  before(async () => {
    root = await mkdtemp(path.join(os.tmpdir(), 'gw-ctr-'));
    await chmod(root, 0o711);
  });
  after(() => rm(root, { recursive: true, force: true }));

  async function dirs(): Promise<Pick<RunRequest, 'bundleDir' | 'inputsDir' | 'outputsDir' | 'checkpointsDir'>> {
    const d = path.join(root, `t${++n}`);
    const out = { bundleDir: `${d}/b`, inputsDir: `${d}/i`, outputsDir: `${d}/o`, checkpointsDir: `${d}/c` };
    for (const p of Object.values(out)) await mkdir(p, { recursive: true });
    return out;
  }

  test('pulls a missing image, streams both outputs, reports the exit code, removes the container', async () => {
    const engine = new FakeEngine({ frames: [frame(1, 'result 42\n'), frame(2, 'warning\n')], exitCode: 3, runMs: 50 });
    const runtime = new ContainerRuntime({ docker: engine, dropRoot: false });
    await runtime.check();
    const out = { stdout: '', stderr: '' };
    const result = await runtime.run({ ...request({ onOutput: (s, d) => (out[s] += d) }), ...(await dirs()) });
    assert.equal(result.exitCode, 3);
    assert.equal(result.timedOut, false);
    assert.equal(result.aborted, false);
    assert.equal(result.limit, undefined);
    assert.deepEqual(out, { stdout: 'result 42\n', stderr: 'warning\n' });
    assert.deepEqual(engine.calls, [
      'inspect-image ghcr.io/acme/infer:1.2',
      'pull ghcr.io/acme/infer:1.2',
      `create ${engine.created?.name}`,
      'start',
      'remove',
    ]);
    assert.match(engine.created?.User ?? '', /^\d+:\d+$/);
  });

  test('the time limit stops the container with the grace period; an abort does too', async () => {
    const engine = new FakeEngine({ frames: [], exitCode: 0, runMs: 60_000 });
    const runtime = new ContainerRuntime({ docker: engine, dropRoot: false, killGraceMs: 1000 });
    const timedOut = await runtime.run({ ...request({ timeoutMs: 100 }), ...(await dirs()) });
    assert.equal(timedOut.timedOut, true);
    assert.equal(timedOut.exitCode, 143);
    assert.ok(engine.calls.includes('stop t=1'));

    const ac = new AbortController();
    const task = await runtime.start({ ...request({ signal: ac.signal }), ...(await dirs()) });
    assert.equal(await task.health(), 'healthy', 'no ports: running is healthy');
    ac.abort('cancelled');
    const aborted = await task.wait();
    assert.equal(aborted.aborted, true);
    assert.equal(await task.health(), 'unhealthy');
    assert.equal(engine.removed, 2);
  });

  test('an OOM kill is the memory limit; an already aborted request creates nothing', async () => {
    const engine = new FakeEngine({ frames: [], exitCode: 137, runMs: 10, oom: true });
    const runtime = new ContainerRuntime({ docker: engine, dropRoot: false });
    const result = await runtime.run({ ...request(), ...(await dirs()) });
    assert.equal(result.limit, 'memory');
    const calls = engine.calls.length;
    const ac = new AbortController();
    ac.abort();
    assert.equal((await runtime.run({ ...request({ signal: ac.signal }), ...(await dirs()) })).aborted, true);
    assert.equal(engine.calls.length, calls);
  });

  test('writing past diskBytes stops the container with the disk limit', async () => {
    const engine = new FakeEngine({ frames: [], exitCode: 0, runMs: 5_000 });
    const runtime = new ContainerRuntime({ docker: engine, dropRoot: false, limitPollMs: 50 });
    const d = await dirs();
    await writeFile(path.join(d.outputsDir, 'big'), Buffer.alloc(64 * 1024));
    const result = await runtime.run({ ...request({ diskBytes: 16 * 1024 }), ...d });
    assert.equal(result.limit, 'disk');
  });

  test('an engine that is not there: check() says so', async () => {
    const gone = new FakeEngine({ frames: [], exitCode: 0, runMs: 0 });
    gone.ping = () => Promise.reject(new Error('connect ENOENT /var/run/docker.sock'));
    await assert.rejects(new ContainerRuntime({ docker: gone }).check(), (err: unknown) => err instanceof GridworkError && err.code === 'SANDBOX_UNAVAILABLE');
  });

  /** An egress filter that records the bridges it was asked for, or refuses them all. */
  const recordingFilter = (refuse?: string) => {
    const bridges: string[] = [];
    return {
      bridges,
      ensure: async (bridge: string) => {
        bridges.push(bridge);
        if (refuse) throw new GridworkError('SANDBOX_UNAVAILABLE', refuse);
      },
    };
  };

  test('network: true creates the egress network once, filters its bridge before every container, and joins it', async () => {
    const engine = new FakeEngine({ frames: [], exitCode: 0, runMs: 10 });
    engine.haveImage = true;
    const filter = recordingFilter();
    const runtime = new ContainerRuntime({ docker: engine, dropRoot: false, egressFilter: filter });
    for (let i = 0; i < 2; i++) assert.equal((await runtime.run({ ...request({ network: true }), ...(await dirs()) })).exitCode, 0);
    assert.equal(engine.calls.filter((c) => c.startsWith('create-network')).length, 1);
    assert.ok(engine.calls.includes('create-network gridwork-egress internal=false icc=false'));
    assert.deepEqual(filter.bridges, ['br-e90123456789', 'br-e90123456789']);
    assert.equal(engine.created?.HostConfig.NetworkMode, 'gridwork-egress');
    // The filter was in place before the container existed.
    assert.ok(engine.calls.indexOf('inspect-network gridwork-egress') < engine.calls.findIndex((c) => c.startsWith('create gridwork-')));

    // Ports without network: the internal network, behind the same filter (it keeps the task off the host).
    await runtime.run({ ...request({ ports: [8080] }), ...(await dirs()) });
    assert.ok(engine.calls.includes('create-network gridwork-internal internal=true icc=false'));
    assert.equal(filter.bridges.at(-1), 'br-a10123456789');
    // No network at all: nothing to filter.
    const asked = filter.bridges.length;
    await runtime.run({ ...request(), ...(await dirs()) });
    assert.equal(filter.bridges.length, asked);
    assert.equal(engine.created?.HostConfig.NetworkMode, 'none');
  });

  test('when the filter cannot be put in place the run is refused and no container is created', async () => {
    const engine = new FakeEngine({ frames: [], exitCode: 0, runMs: 10 });
    engine.haveImage = true;
    const runtime = new ContainerRuntime({ docker: engine, dropRoot: false, egressFilter: recordingFilter('iptables: Permission denied') });
    await assert.rejects(
      runtime.run({ ...request({ network: true }), ...(await dirs()) }),
      (err: unknown) => err instanceof GridworkError && err.code === 'SANDBOX_UNAVAILABLE' && /Permission denied/.test(err.message),
    );
    assert.equal(engine.created, undefined);
    // A task without network does not need the filter and still runs.
    assert.equal((await runtime.run({ ...request(), ...(await dirs()) })).exitCode, 0);
  });

  test('a network of that name that is not an IPv4 bridge of the right kind is refused, never used unfiltered', async () => {
    const engine = new FakeEngine({ frames: [], exitCode: 0, runMs: 10 });
    engine.haveImage = true;
    const filter = recordingFilter();
    const runtime = new ContainerRuntime({ docker: engine, dropRoot: false, egressFilter: filter });
    for (const wrong of [
      { Id: 'f00f00f00f00f00', Driver: 'macvlan', Internal: false },
      { Id: 'f00f00f00f00f00', Driver: 'bridge', Internal: true },
      { Id: 'f00f00f00f00f00', Driver: 'bridge', Internal: false, EnableIPv6: true },
    ]) {
      engine.networks.set('gridwork-egress', wrong);
      await assert.rejects(runtime.run({ ...request({ network: true }), ...(await dirs()) }), /is not an external IPv4 bridge network/);
    }
    assert.equal(engine.created, undefined);
    assert.deepEqual(filter.bridges, []);
    assert.throws(() => new ContainerRuntime({ docker: engine, egressNetwork: 'bridge' }), /a network of its own/);
    assert.throws(() => new ContainerRuntime({ docker: engine, egressNetwork: 'gridwork-internal' }), /a network of its own/);
  });
});
