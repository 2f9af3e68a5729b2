/**
 * Container runtime: a task is an OCI image run through the Docker Engine API (dockerode), with the same
 * limits as the sandbox where the engine can express them:
 *
 *   /inputs read-only, /outputs and /checkpoints writable (bind mounts), a cluster member's delivered rounds
 *   read-only at /checkpoints/exchange/in; nothing else of the host;
 *   memory (cgroup limit, swap off) · processes (PidsLimit) · CPU quota (NanoCpus) · one file's size
 *   (ulimit fsize, like prlimit --fsize) and /outputs + /checkpoints together (the disk watcher of disk-usage.ts);
 *   network `none` unless `network: true`; then the agent's own bridge network (DEFAULT_EGRESS_NETWORK, never the
 *   engine's default bridge) behind the egress filter of container-egress.ts: public addresses only, the host, private,
 *   shared, link-local (cloud metadata) and reserved ranges unreachable as from the sandbox, and the run refused
 *   when the filter cannot be put in place; a task without network that exposes ports joins an `internal` network
 *   (no route out, and the same filter keeps it off the host) and the agent reaches it at its container address;
 *   not privileged, every capability dropped, no-new-privileges, read-only root filesystem with a tmpfs /tmp,
 *   an init process (signals, zombies), and a non-root user (65534 when the agent is root, else the agent's own
 *   uid, so that the bind mounts stay writable);
 *   GPUs requested by UUID (DeviceRequests, driver `nvidia`), CUDA_VISIBLE_DEVICES / NVIDIA_VISIBLE_DEVICES the
 *   same UUIDs; a CPU task gets NVIDIA_VISIBLE_DEVICES=void, so that an image declaring `all` (CUDA images do)
 *   gets no GPU from the NVIDIA runtime.
 *
 * The time limit and an abort stop the container (SIGTERM, SIGKILL after the grace period); stdout and stderr
 * are attached before it starts and demultiplexed to onOutput; the exit code is the container's. A container
 * killed by the kernel's OOM killer ends with `limit: 'memory'`. The image is pulled when missing.
 * The image's own PATH, LANG and entrypoint stand; `command` replaces its CMD.
 *
 * buildContainerCreateRequest (pure, unit-tested) is the whole request; the engine is reached only through the
 * small DockerClient interface, which dockerode satisfies, so the flow is tested against a fake engine too.
 */
import { randomBytes } from 'node:crypto';
import { stat } from 'node:fs/promises';
import { StringDecoder } from 'node:string_decoder';
import { GridworkError } from '@gridwork/protocol';
import { type EgressFilter, IptablesEgressFilter } from './container-egress.ts';
import { diskUsage, DISK_POLL_MS } from './disk-usage.ts';
import { dockerEndpoint } from './docker-endpoint.ts';

export { dockerEndpoint };
import {
  buildTaskEnv,
  endedTask,
  type ExposedPort,
  gpuVisibilityEnv,
  healthProbe,
  listeningIn,
  type RunLimit,
  type RunningTask,
  type RunRequest,
  type RunResult,
  type Runtime,
  runToExit,
  validateRunRequest,
} from './runtime.ts';
import { giveToTask, makeReadable, SANDBOX_TASK_ID } from './sandbox-runtime.ts';
import { DEFAULT_KILL_GRACE_MS } from './spawn-group.ts';

/** The parts of the Engine API's POST /containers/create body this runtime sets. */
export interface ContainerCreateRequest {
  name: string;
  Image: string;
  Cmd: string[];
  Env: string[];
  User: string;
  Labels: Record<string, string>;
  Tty: false;
  OpenStdin: false;
  AttachStdin: false;
  AttachStdout: true;
  AttachStderr: true;
  NetworkDisabled: boolean;
  ExposedPorts: Record<string, Record<string, never>>;
  StopSignal: 'SIGTERM';
  StopTimeout: number;
  HostConfig: {
    Binds: string[];
    Memory: number;
    MemorySwap: number;
    NanoCpus: number;
    PidsLimit: number;
    NetworkMode: string;
    PortBindings: Record<string, { HostIp: string; HostPort: string }[]>;
    Privileged: false;
    CapDrop: ['ALL'];
    SecurityOpt: string[];
    ReadonlyRootfs: true;
    Tmpfs: Record<string, string>;
    Ulimits: { Name: string; Soft: number; Hard: number }[];
    DeviceRequests: { Driver: string; DeviceIDs: string[]; Capabilities: string[][] }[];
    Init: true;
    IpcMode: 'private';
    AutoRemove: false;
  };
}

/** What this runtime reads of GET /containers/{id}/json. */
export interface ContainerInspect {
  State?: { OOMKilled?: boolean; ExitCode?: number; Pid?: number };
  NetworkSettings?: {
    Ports?: Record<string, { HostIp?: string; HostPort?: string }[] | null> | null;
    Networks?: Record<string, { IPAddress?: string }>;
  };
}

/** The container calls this runtime makes (dockerode's Container). */
export interface DockerContainer {
  id: string;
  attach(opts: { stream: true; stdout: true; stderr: true }): Promise<NodeJS.ReadableStream>;
  start(): Promise<unknown>;
  wait(): Promise<{ StatusCode: number }>;
  inspect(): Promise<ContainerInspect>;
  stop(opts: { t: number }): Promise<unknown>;
  remove(opts: { force: boolean; v: boolean }): Promise<unknown>;
}

/** What this runtime reads of GET /networks/{id}. */
export interface NetworkInspect {
  Id?: string;
  Driver?: string;
  Internal?: boolean;
  EnableIPv6?: boolean;
  Options?: Record<string, string> | null;
}

/** The parts of the Engine API's POST /networks/create body this runtime sets. */
export interface NetworkCreateRequest {
  Name: string;
  CheckDuplicate: true;
  Internal: boolean;
  Driver: 'bridge';
  EnableIPv6: false;
  Options: Record<string, string>;
  Labels: Record<string, string>;
}

/** The engine calls this runtime makes (dockerode's Docker). */
export interface DockerClient {
  ping(): Promise<unknown>;
  getImage(name: string): { inspect(): Promise<unknown> };
  pull(image: string): Promise<NodeJS.ReadableStream>;
  getNetwork(name: string): { inspect(): Promise<NetworkInspect> };
  createNetwork(opts: NetworkCreateRequest): Promise<unknown>;
  createContainer(body: ContainerCreateRequest): Promise<DockerContainer>;
}

export const CONTAINER_LABEL = 'io.gridwork.task';

/** The network of containers that expose ports without network access (created on first use). */
export const DEFAULT_INTERNAL_NETWORK = 'gridwork-internal';

/** The network of containers with network access, behind the egress filter (created on first use). */
export const DEFAULT_EGRESS_NETWORK = 'gridwork-egress';

/** The engine's option that names a bridge network's interface; without it the interface is `br-` + 12 of the id. */
const BRIDGE_NAME_OPTION = 'com.docker.network.bridge.name';

/** The engine refuses memory limits below 6 MiB. */
const MIN_CONTAINER_MEMORY_BYTES = 6 * 1024 * 1024;

export interface ContainerRuntimeOptions {
  /** The engine. @default dockerode's default client (DOCKER_HOST, else /var/run/docker.sock), loaded on first use */
  docker?: DockerClient;
  /** Whether the agent is root, so that tasks run as uid 65534 (see the header). @default process.getuid() === 0 */
  dropRoot?: boolean;
  /** @default DEFAULT_MAX_PROCESSES of the sandbox (1024) */
  maxProcesses?: number;
  /** @default 2000 */
  killGraceMs?: number;
  /** @default DISK_POLL_MS */
  limitPollMs?: number;
  /** @default DEFAULT_INTERNAL_NETWORK */
  internalNetwork?: string;
  /** @default DEFAULT_EGRESS_NETWORK */
  egressNetwork?: string;
  /** What keeps task bridges off the host and the private ranges. @default an IptablesEgressFilter */
  egressFilter?: EgressFilter;
}

export interface ContainerPlan {
  /** Container name (unique per task). */
  name: string;
  /** `uid:gid` the task runs as. */
  user: string;
  maxProcesses: number;
  killGraceMs: number;
  internalNetwork: string;
  egressNetwork: string;
}

/** How the container is networked (see the header): `none`, or the name of the network it joins. */
export function containerNetworkMode(req: Pick<RunRequest, 'network' | 'ports'>, networks: Pick<ContainerPlan, 'internalNetwork' | 'egressNetwork'>): string {
  if (req.network) return networks.egressNetwork;
  return (req.ports?.length ?? 0) > 0 ? networks.internalNetwork : 'none';
}

/** The host interface of a bridge network. */
export function bridgeInterfaceOf(network: NetworkInspect): string | undefined {
  return network.Options?.[BRIDGE_NAME_OPTION] ?? (network.Id ? `br-${network.Id.slice(0, 12)}` : undefined);
}

/** The create-container request for one task (POST /containers/create). Pure. */
export function buildContainerCreateRequest(req: RunRequest, plan: ContainerPlan): ContainerCreateRequest {
  if (!req.image) throw new GridworkError('INVALID_SPEC', 'runtime.image: required by the container runtime');
  // Always explicit here: an image may declare NVIDIA_VISIBLE_DEVICES=all, which the NVIDIA runtime would honour.
  const env = { ...buildTaskEnv(req, { inputs: '/inputs', outputs: '/outputs', checkpoints: '/checkpoints' }), ...gpuVisibilityEnv(req.gpus ?? []) };
  // The image's PATH and LANG stand unless the spec sets them (a CUDA or conda image has its own PATH).
  for (const name of ['PATH', 'LANG']) if (!Object.hasOwn(req.env, name)) delete env[name];
  const memory = Math.max(Math.floor(req.memoryBytes), MIN_CONTAINER_MEMORY_BYTES);
  const fsize = Math.floor(req.diskBytes);
  const ports = req.ports ?? [];
  const mode = containerNetworkMode(req, plan);
  const gpus = req.gpus ?? [];
  return {
    name: plan.name,
    Image: req.image,
    Cmd: [...req.command],
    Env: Object.entries(env).map(([k, v]) => `${k}=${v}`),
    User: plan.user,
    Labels: { [CONTAINER_LABEL]: plan.name },
    Tty: false,
    OpenStdin: false,
    AttachStdin: false,
    AttachStdout: true,
    AttachStderr: true,
    NetworkDisabled: mode === 'none',
    ExposedPorts: Object.fromEntries(ports.map((p) => [`${p}/tcp`, {}])),
    StopSignal: 'SIGTERM',
    StopTimeout: Math.max(1, Math.ceil(plan.killGraceMs / 1000)),
    HostConfig: {
      Binds: [
        `${req.inputsDir}:/inputs:ro`,
        `${req.outputsDir}:/outputs:rw`,
        `${req.checkpointsDir}:/checkpoints:rw`,
        ...(req.exchangeInDir ? [`${req.exchangeInDir}:/checkpoints/exchange/in:ro`] : []),
      ],
      Memory: memory,
      // Equal to Memory: no swap on top.
      MemorySwap: memory,
      NanoCpus: Math.max(1, Math.round(req.cpu * 1e9)),
      PidsLimit: plan.maxProcesses,
      NetworkMode: mode,
      // Published on the host's loopback only, on a port the engine picks (read back from inspect).
      PortBindings: req.network ? Object.fromEntries(ports.map((p) => [`${p}/tcp`, [{ HostIp: '127.0.0.1', HostPort: '' }]])) : {},
      Privileged: false,
      CapDrop: ['ALL'],
      SecurityOpt: ['no-new-privileges'],
      ReadonlyRootfs: true,
      Tmpfs: { '/tmp': `rw,nosuid,nodev,size=${memory}` },
      Ulimits: [{ Name: 'fsize', Soft: fsize, Hard: fsize }],
      DeviceRequests: gpus.length > 0 ? [{ Driver: 'nvidia', DeviceIDs: gpus.map((g) => g.uuid), Capabilities: [['gpu']] }] : [],
      Init: true,
      IpcMode: 'private',
      AutoRemove: false,
    },
  };
}

/**
 * Where the agent reaches each exposed port of a started container: the host port the engine published on
 * 127.0.0.1 (a task with network), or the container's address on the internal network. Throws when the engine
 * reports none.
 */
export function exposedPortsOf(inspect: ContainerInspect, ports: readonly number[], mode: string, published: boolean): ExposedPort[] {
  return ports.map((task) => {
    if (published) {
      const binding = inspect.NetworkSettings?.Ports?.[`${task}/tcp`]?.find((b) => b.HostPort);
      const host = Number(binding?.HostPort);
      if (!Number.isInteger(host) || host <= 0) throw new GridworkError('SANDBOX_UNAVAILABLE', `the engine published no host port for container port ${task}`);
      return { task, host, address: binding?.HostIp && binding.HostIp !== '0.0.0.0' ? binding.HostIp : '127.0.0.1' };
    }
    const address = inspect.NetworkSettings?.Networks?.[mode]?.IPAddress;
    if (!address) throw new GridworkError('SANDBOX_UNAVAILABLE', `the container has no address on network ${mode}`);
    return { task, host: task, address };
  });
}

/**
 * Splits the engine's multiplexed attach stream (non-TTY): frames of an 8-byte header (stream 1 = stdout,
 * 2 = stderr, then a big-endian uint32 length) and the payload. Chunks may split frames anywhere; UTF-8
 * characters split across frames are kept whole (one decoder per stream).
 */
export class StreamDemuxer {
  private pending: Buffer = Buffer.alloc(0);
  private readonly decoders = { stdout: new StringDecoder('utf8'), stderr: new StringDecoder('utf8') };
  constructor(private readonly onOutput: (stream: 'stdout' | 'stderr', data: string) => void) {}

  push(chunk: Buffer): void {
    this.pending = this.pending.length === 0 ? chunk : Buffer.concat([this.pending, chunk]);
    while (this.pending.length >= 8) {
      const size = this.pending.readUInt32BE(4);
      if (this.pending.length < 8 + size) break;
      const type = this.pending[0];
      const payload = this.pending.subarray(8, 8 + size);
      this.pending = this.pending.subarray(8 + size);
      // 0 (stdin) never comes back; anything unknown is shown as stderr rather than lost.
      const stream = type === 1 ? 'stdout' : 'stderr';
      const text = this.decoders[stream].write(payload);
      if (text) this.onOutput(stream, text);
    }
  }

  end(): void {
    for (const stream of ['stdout', 'stderr'] as const) {
      const rest = this.decoders[stream].end();
      if (rest) this.onOutput(stream, rest);
    }
  }
}

/** Reads a pull's progress stream to its end; an `error` in it is the pull's failure. */
export async function consumePull(stream: NodeJS.ReadableStream): Promise<void> {
  let text = '';
  for await (const chunk of stream as AsyncIterable<Buffer | string>) {
    text += typeof chunk === 'string' ? chunk : chunk.toString('utf8');
    const lines = text.split('\n');
    text = lines.pop() ?? '';
    for (const line of lines) checkPullLine(line);
  }
  checkPullLine(text);
}

function checkPullLine(line: string): void {
  if (line.trim() === '') return;
  let event: { error?: unknown; errorDetail?: { message?: unknown } };
  try {
    event = JSON.parse(line) as typeof event;
  } catch {
    return;
  }
  if (event.error !== undefined) throw new Error(String(event.errorDetail?.message ?? event.error));
}

const statusOf = (err: unknown): number | undefined => (err as { statusCode?: number } | null)?.statusCode;

/** The default engine client (dockerode), imported only when a container runtime is used. */
export async function defaultDockerClient(): Promise<DockerClient> {
  const { default: Docker } = await import('dockerode');
  return new Docker() as DockerClient;
}

/** Where dockerode's default client would connect, or undefined when nothing is there to try. */

/**
 * Whether a Docker engine answers here: false without loading dockerode when there is neither DOCKER_HOST nor
 * a socket; else a ping within timeoutMs.
 */
export async function dockerAnswers(timeoutMs = 3000): Promise<boolean> {
  if (dockerEndpoint() === undefined) return false;
  try {
    const docker = await defaultDockerClient();
    let timer: NodeJS.Timeout | undefined;
    const timeout = new Promise<never>((_, reject) => {
      timer = setTimeout(() => reject(new Error('timeout')), timeoutMs);
    });
    await Promise.race([docker.ping(), timeout]).finally(() => clearTimeout(timer));
    return true;
  } catch {
    return false;
  }
}

export class ContainerRuntime implements Runtime {
  readonly kind = 'container' as const;
  private dockerPromise: Promise<DockerClient> | undefined;
  private readonly dropRoot: boolean;
  private readonly maxProcesses: number;
  private readonly killGraceMs: number;
  private readonly limitPollMs: number;
  private readonly internalNetwork: string;
  private readonly egressNetwork: string;
  private readonly egress: EgressFilter;

  constructor(opts: ContainerRuntimeOptions = {}) {
    if (opts.docker) this.dockerPromise = Promise.resolve(opts.docker);
    this.dropRoot = opts.dropRoot ?? process.getuid?.() === 0;
    this.maxProcesses = opts.maxProcesses ?? 1024;
    this.killGraceMs = opts.killGraceMs ?? DEFAULT_KILL_GRACE_MS;
    this.limitPollMs = opts.limitPollMs ?? DISK_POLL_MS;
    this.internalNetwork = opts.internalNetwork ?? DEFAULT_INTERNAL_NETWORK;
    this.egressNetwork = opts.egressNetwork ?? DEFAULT_EGRESS_NETWORK;
    if (this.egressNetwork === this.internalNetwork || ['none', 'bridge', 'host'].includes(this.egressNetwork)) {
      throw new GridworkError('INVALID_SPEC', `container runtime: egressNetwork must be a network of its own, not ${this.egressNetwork}`);
    }
    this.egress = opts.egressFilter ?? new IptablesEgressFilter();
  }

  private docker(): Promise<DockerClient> {
    this.dockerPromise ??= defaultDockerClient();
    return this.dockerPromise;
  }

  async check(): Promise<void> {
    try {
      await (await this.docker()).ping();
    } catch (err) {
      throw new GridworkError(
        'SANDBOX_UNAVAILABLE',
        `container runtime: no Docker engine answers (${dockerEndpoint() ?? 'no DOCKER_HOST and no /var/run/docker.sock'}): ${(err as Error).message}`,
        {
          cause: err,
        },
      );
    }
  }

  run(req: RunRequest): Promise<RunResult> {
    return runToExit(this, req);
  }

  /** Pulls the image unless the engine has it. */
  private async ensureImage(docker: DockerClient, image: string): Promise<void> {
    try {
      await docker.getImage(image).inspect();
      return;
    } catch (err) {
      if (statusOf(err) !== 404) throw err;
    }
    await consumePull(await docker.pull(image));
  }

  /**
   * The host interface of a task network, created on first use (a concurrent creation by another agent is fine).
   * Looked up for every task: a network removed and made again has another interface.
   */
  private async networkBridge(docker: DockerClient, name: string, internal: boolean): Promise<string> {
    const inspect = () => docker.getNetwork(name).inspect();
    let network: NetworkInspect;
    try {
      network = await inspect();
    } catch (err) {
      if (statusOf(err) !== 404) throw err;
      await docker
        .createNetwork({
          Name: name,
          CheckDuplicate: true,
          Internal: internal,
          Driver: 'bridge',
          EnableIPv6: false,
          // Tasks on one network do not talk to each other (the filter rejects private addresses too).
          Options: { 'com.docker.network.bridge.enable_icc': 'false' },
          Labels: { [CONTAINER_LABEL]: internal ? 'internal-network' : 'egress-network' },
        })
        .catch((e: unknown) => {
          if (statusOf(e) !== 409) throw e;
        });
      network = await inspect();
    }
    const bridge = bridgeInterfaceOf(network);
    // Anything else would escape the filter, which knows bridges only.
    if (network.Driver !== 'bridge' || Boolean(network.Internal) !== internal || network.EnableIPv6 || bridge === undefined) {
      throw new GridworkError(
        'SANDBOX_UNAVAILABLE',
        `container runtime: network ${name} exists but is not an ${internal ? 'internal' : 'external'} IPv4 bridge network (driver ${network.Driver}, internal ${network.Internal}, IPv6 ${network.EnableIPv6}); remove it or name another network`,
      );
    }
    return bridge;
  }

  async start(req: RunRequest): Promise<RunningTask> {
    validateRunRequest(req);
    if (!req.image) throw new GridworkError('INVALID_SPEC', 'runtime.image: required by the container runtime');
    for (const dir of [req.inputsDir, req.outputsDir, req.checkpointsDir, ...(req.exchangeInDir ? [req.exchangeInDir] : [])]) {
      if (!(await stat(dir).catch(() => undefined))?.isDirectory()) throw new GridworkError('INTERNAL', `not a directory: ${dir}`);
    }
    if (req.signal?.aborted) return endedTask({ exitCode: null, signal: null, timedOut: false, aborted: true, durationMs: 0 });
    const docker = await this.docker();
    const engineError = (what: string, err: unknown) =>
      new GridworkError('SANDBOX_UNAVAILABLE', `container runtime: ${what}: ${(err as Error).message}`, { cause: err });

    try {
      await this.ensureImage(docker, req.image);
    } catch (err) {
      throw engineError(`cannot get image ${req.image}`, err);
    }
    const mode = containerNetworkMode(req, { internalNetwork: this.internalNetwork, egressNetwork: this.egressNetwork });
    if (mode !== 'none') {
      let bridge: string;
      try {
        bridge = await this.networkBridge(docker, mode, mode === this.internalNetwork);
      } catch (err) {
        throw err instanceof GridworkError ? err : engineError(`cannot get or create network ${mode}`, err);
      }
      // Before the container exists: its first packet already meets the filter, or it does not run.
      await this.egress.ensure(bridge);
    }

    let user = `${process.getuid?.() ?? SANDBOX_TASK_ID}:${process.getgid?.() ?? SANDBOX_TASK_ID}`;
    if (this.dropRoot) {
      user = `${SANDBOX_TASK_ID}:${SANDBOX_TASK_ID}`;
      await makeReadable(req.inputsDir);
      if (req.exchangeInDir) await makeReadable(req.exchangeInDir);
      await giveToTask(req.outputsDir, SANDBOX_TASK_ID);
      await giveToTask(req.checkpointsDir, SANDBOX_TASK_ID);
    }
    const body = buildContainerCreateRequest(req, {
      name: `gridwork-${randomBytes(8).toString('hex')}`,
      user,
      maxProcesses: this.maxProcesses,
      killGraceMs: this.killGraceMs,
      internalNetwork: this.internalNetwork,
      egressNetwork: this.egressNetwork,
    });

    let container: DockerContainer;
    try {
      container = await docker.createContainer(body);
    } catch (err) {
      throw engineError('cannot create the container', err);
    }
    const remove = () => container.remove({ force: true, v: true }).then(noop, noop);
    const started = performance.now();
    let output: NodeJS.ReadableStream;
    try {
      // Attached before it starts: nothing the task prints is missed.
      output = await container.attach({ stream: true, stdout: true, stderr: true });
      await container.start();
    } catch (err) {
      await remove();
      throw engineError('cannot start the container', err);
    }
    const demux = new StreamDemuxer(req.onOutput);
    const outputEnded = new Promise<void>((resolve) => {
      output.on('data', (chunk: Buffer) => demux.push(chunk));
      output.on('end', resolve);
      output.on('close', resolve);
      output.on('error', () => resolve());
    });

    let cause: 'timeout' | 'abort' | 'disk' | undefined;
    let ended = false;
    const stopFor = (why: NonNullable<typeof cause>) => {
      if (ended || cause !== undefined) return;
      cause = why;
      // The engine sends StopSignal, then SIGKILL after StopTimeout.
      void container.stop({ t: body.StopTimeout }).catch(noop);
    };
    const onAbort = () => stopFor('abort');
    req.signal?.addEventListener('abort', onAbort, { once: true });
    const timer = setTimeout(() => stopFor('timeout'), Math.min(req.timeoutMs, 2 ** 31 - 1));
    // What the task wrote, and the exchange rounds delivered to it (its members' doing: they count too).
    const counted = [req.outputsDir, req.checkpointsDir, ...(req.exchangeInDir ? [req.exchangeInDir] : [])];
    let pollTimer: NodeJS.Timeout | undefined;
    const poll = async () => {
      if (ended) return;
      if ((await diskUsage(counted, req.diskBytes)) > req.diskBytes) stopFor('disk');
      else if (!ended) pollTimer = setTimeout(() => void poll(), this.limitPollMs);
    };
    pollTimer = setTimeout(() => void poll(), this.limitPollMs);

    let ports: ExposedPort[] = [];
    const done = (async (): Promise<RunResult> => {
      try {
        const { StatusCode } = await container.wait();
        ended = true;
        const info = await container.inspect().catch((): ContainerInspect => ({}));
        // The rest of the output, for a bounded time (a stream the engine never closes must not hold the lease).
        await Promise.race([outputEnded, new Promise((r) => setTimeout(r, this.killGraceMs))]);
        demux.end();
        if (cause === undefined && (await diskUsage(counted, req.diskBytes)) > req.diskBytes) cause = 'disk';
        const limit: RunLimit | undefined = cause === 'disk' ? 'disk' : info.State?.OOMKilled ? 'memory' : undefined;
        return {
          exitCode: StatusCode,
          signal: null,
          timedOut: cause === 'timeout',
          aborted: cause === 'abort',
          durationMs: Math.round(performance.now() - started),
          ...(limit ? { limit } : {}),
        };
      } catch (err) {
        throw engineError('lost the container', err);
      } finally {
        ended = true;
        clearTimeout(timer);
        clearTimeout(pollTimer);
        req.signal?.removeEventListener('abort', onAbort);
        await remove();
      }
    })();
    done.catch(noop);

    let listening: (() => Promise<boolean>) | undefined;
    if (req.ports?.length) {
      try {
        const info = await container.inspect();
        ports = exposedPortsOf(info, req.ports, mode, req.network);
        // docker-proxy accepts before the task listens: look at the container's own sockets where this host
        // can see them (the engine is local), else fall back to connecting.
        const pid = info.State?.Pid ?? 0;
        const taskPorts = req.ports;
        if (pid > 0 && (await stat(`/proc/${pid}/net/tcp`).catch(() => undefined))) listening = () => listeningIn(pid, taskPorts);
      } catch (err) {
        stopFor('abort');
        await done.catch(noop);
        throw err instanceof GridworkError ? err : engineError('cannot read the container', err);
      }
    }
    return { ports, health: healthProbe(ports, req.healthCheck, () => ended, listening), stop: () => stopFor('abort'), wait: () => done };
  }
}

const noop = () => {};

export function createContainerRuntime(opts: ContainerRuntimeOptions = {}): ContainerRuntime {
  return new ContainerRuntime(opts);
}
