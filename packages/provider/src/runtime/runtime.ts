/**
 * The contract every runtime implements: start a task (RunRequest) and get a RunningTask that reports
 * health, exposes ports, can be stopped, and ends with a RunResult; `run` is start + wait for tasks that
 * run to exit. Also the task environment every runtime gives (buildTaskEnv) and request checks.
 */
import { readFile } from 'node:fs/promises';
import { connect } from 'node:net';
import { GridworkError, type RuntimeKind } from '@gridwork/protocol';

/** What a runtime needs to run one task. All paths are absolute host paths. */
export interface RunRequest {
  /** Task's files; working directory of the command; read-only in the sandbox. */
  bundleDir: string;
  /** Read-only. */
  inputsDir: string;
  /** Writable. */
  outputsDir: string;
  /** Writable. */
  checkpointsDir: string;
  /**
   * A cluster member's complete exchange rounds, written by the agent only: the task sees this directory
   * read-only as `$GRIDWORK_EXCHANGE/in` (the mount point `<checkpointsDir>/exchange/in` exists). It lies
   * outside the task's directories, so that no symlink of the task's can redirect the agent's writes.
   */
  exchangeInDir?: string;
  /** argv; command[0] is resolved via TASK_PATH. */
  command: string[];
  /**
   * Added to a minimal env (PATH, HOME=/tmp, LANG=C.UTF-8) plus GRIDWORK_INPUTS, GRIDWORK_OUTPUTS,
   * GRIDWORK_CHECKPOINTS pointing where the task sees those dirs.
   */
  env: Record<string, string>;
  /**
   * Allow outbound network. The sandbox gives such a task a network namespace of its own (slirp4netns), never
   * the host's: the host's loopback services and private/link-local ranges stay unreachable, and without
   * slirp4netns the run is refused. Without it the sandbox has no network at all. The process runtime ignores it.
   */
  network: boolean;
  /** Wall-time limit; on expiry the whole process group is killed (SIGTERM, then SIGKILL after a grace period). */
  timeoutMs: number;
  /**
   * Memory of the whole task, all its processes and its /tmp together (the sandbox's memory cgroup, the container's
   * limit); exceeding it ends the run with `limit: 'memory'`. Ignored by the process runtime.
   */
  memoryBytes: number;
  /**
   * CPU cores the task may use (may be fractional, e.g. 0.5): a cgroup CPU quota in the sandbox runtime where
   * the agent may create cgroups, otherwise only a lower priority (nice). Ignored by the process runtime.
   */
  cpu: number;
  /**
   * Bytes the task may keep in /outputs and /checkpoints together (see disk-usage.ts); exceeding it ends the
   * run with `limit: 'disk'`. Callers without a figure from the spec use DEFAULT_TASK_DISK_BYTES. Ignored by
   * the process runtime.
   */
  diskBytes: number;
  /** Abort kills the process group the same way as a timeout. */
  signal?: AbortSignal;
  onOutput: (stream: 'stdout' | 'stderr', data: string) => void;
  /**
   * GPUs reserved for this task: the lease's indices with the agent's UUIDs (gpu-passthrough.ts). The task
   * sees only these devices and gets CUDA_VISIBLE_DEVICES / NVIDIA_VISIBLE_DEVICES set to their UUIDs.
   * @default [] (CPU only: no GPU device is visible and both variables are empty)
   */
  gpus?: readonly TaskGpu[];
  /** OCI image reference: required by the container runtime, ignored by the others. */
  image?: string;
  /**
   * TCP ports the task listens on that the agent must reach (a service). Each is exposed on a host port
   * (RunningTask.ports) even when the task has no network (`network: false`: the port is the only way in);
   * the first one is also the task's PORT variable. @default [] (nothing exposed)
   */
  ports?: readonly number[];
  /** How RunningTask.health() probes the task. @default a TCP connect to every exposed port */
  healthCheck?: HealthCheck;
}

/** One GPU as a task gets it: the driver's index on this host and its UUID. */
export interface TaskGpu {
  index: number;
  uuid: string;
}

/** An HTTP GET of `path` on the exposed `port` (a task port), healthy on a 2xx answer. */
export interface HealthCheck {
  port: number;
  path: string;
  /** @default 2000 */
  timeoutMs?: number;
}

export type TaskHealth = 'starting' | 'healthy' | 'unhealthy';

/** A task port and where the agent reaches it. */
export interface ExposedPort {
  task: number;
  /** Port on `address` that reaches the task's port. */
  host: number;
  /** @default '127.0.0.1' in every runtime but the container one (which may give a container address). */
  address: string;
}

/** A started task. */
export interface RunningTask {
  /**
   * 'starting' until the first successful probe (healthCheck, else every exposed port accepts a connection,
   * else at once), then 'healthy' while probes pass; 'unhealthy' when a later probe fails or the task has ended.
   */
  health(): Promise<TaskHealth>;
  /** The task's exposed ports (RunRequest.ports), in the order requested. */
  readonly ports: readonly ExposedPort[];
  /** Ends the task like an abort (SIGTERM, SIGKILL after the grace period); wait() then reports aborted. */
  stop(reason: string): void;
  /** Resolves once the task has ended and everything of it is cleaned up. */
  wait(): Promise<RunResult>;
}

/** A resource limit that ended a run. */
export type RunLimit = 'processes' | 'disk' | 'memory';

export interface RunResult {
  exitCode: number | null;
  signal: string | null;
  timedOut: boolean;
  aborted: boolean;
  durationMs: number;
  /**
   * Set when the run ended because the task hit a limit: 'processes' (its process/thread limit), 'disk' (its
   * diskBytes), 'memory' (the kernel OOM-killed a process of the task at its memoryBytes). Absent otherwise.
   */
  limit?: RunLimit;
}

/**
 * Disk a task gets when its spec sets no resources.diskGiB.
 * @default 10 GiB
 */
export const DEFAULT_TASK_DISK_BYTES = 10 * 1024 ** 3;

export interface Runtime {
  /** Its entry in the protocol's runtime registry (which workload kind it runs). */
  readonly kind: RuntimeKind;
  /** Throws GridworkError SANDBOX_UNAVAILABLE with a helpful message if it cannot run here. */
  check(): Promise<void>;
  /**
   * Whether every task is held to its memoryBytes as a whole. False where only weaker, per-process limits exist:
   * the agent then runs one task at a time (task-slots.ts). Absent: the runtime promises no memory limit to
   * begin with (the process runtime, development only) or enforces it by other means (the container engine).
   */
  taskMemoryBounded?(): Promise<boolean>;
  /**
   * Starts a task. Resolves once it runs (the sandbox and its network exist, the container started); throws
   * for a request it cannot run (INVALID_SPEC, SANDBOX_UNAVAILABLE). A task aborted before it started
   * resolves to a RunningTask whose wait() reports aborted.
   */
  start(req: RunRequest): Promise<RunningTask>;
  /** start + wait: for tasks that run to exit. */
  run(req: RunRequest): Promise<RunResult>;
}

/** PATH every task gets unless its env overrides it. */
export const TASK_PATH = '/usr/local/bin:/usr/bin:/bin';

/** Where the task sees its directories. */
export interface TaskDirs {
  inputs: string;
  outputs: string;
  checkpoints: string;
}

const ENV_NAME = /^[A-Za-z_][A-Za-z0-9_]*$/;

/**
 * The environment a task starts with. The task's own variables may override PATH/HOME/LANG
 * (a task may bring its own toolchain), but never the GRIDWORK_* directory variables: those are the
 * contract with the agent.
 */
export function buildTaskEnv(req: Pick<RunRequest, 'env' | 'gpus' | 'ports'>, dirs: TaskDirs, port?: number): Record<string, string> {
  for (const [name, value] of Object.entries(req.env)) {
    // bwrap --setenv and execve cannot carry these; reject instead of passing something mangled.
    if (!ENV_NAME.test(name)) throw new GridworkError('INVALID_SPEC', `invalid environment variable name: ${JSON.stringify(name)}`);
    if (value.includes('\0')) throw new GridworkError('INVALID_SPEC', `environment variable ${name} contains a NUL byte`);
  }
  return {
    PATH: TASK_PATH,
    HOME: '/tmp',
    LANG: 'C.UTF-8',
    ...req.env,
    GRIDWORK_INPUTS: dirs.inputs,
    GRIDWORK_OUTPUTS: dirs.outputs,
    GRIDWORK_CHECKPOINTS: dirs.checkpoints,
    // A cluster member exchanges files with the others through a directory inside its checkpoints one.
    ...(Object.hasOwn(req.env, 'WORLD_SIZE') ? { GRIDWORK_EXCHANGE: `${dirs.checkpoints}/exchange` } : {}),
    // Which GPUs the task may use is the agent's decision, never the spec's: a CPU task has the variables
    // unset, or emptied where the spec set them.
    ...(req.gpus?.length || GPU_ENV.some((name) => Object.hasOwn(req.env, name)) ? gpuVisibilityEnv(req.gpus ?? []) : {}),
    ...(port !== undefined || req.ports?.[0] !== undefined ? { PORT: String(port ?? req.ports?.[0]) } : {}),
  };
}

const GPU_ENV = ['CUDA_VISIBLE_DEVICES', 'NVIDIA_VISIBLE_DEVICES'];

/**
 * CUDA_VISIBLE_DEVICES and NVIDIA_VISIBLE_DEVICES naming the task's GPUs by UUID (stable, unlike indices,
 * which CUDA renumbers inside the task); both empty for a CPU task, so that a CUDA library there sees no
 * device even if one were reachable ("void" is what the NVIDIA container toolkit reads as "none").
 */
export function gpuVisibilityEnv(gpus: readonly TaskGpu[]): Record<string, string> {
  const uuids = gpus.map((g) => g.uuid).join(',');
  return { CUDA_VISIBLE_DEVICES: uuids, NVIDIA_VISIBLE_DEVICES: uuids === '' ? 'void' : uuids };
}

/** Checks the parts of a request both runtimes rely on. */
export function validateRunRequest(req: RunRequest): void {
  if (req.command.length === 0 || req.command[0] === '') throw new GridworkError('INVALID_SPEC', 'command must not be empty');
  if (req.command.some((a) => a.includes('\0'))) throw new GridworkError('INVALID_SPEC', 'command arguments must not contain NUL bytes');
  if (!Number.isFinite(req.timeoutMs) || req.timeoutMs <= 0) {
    throw new GridworkError('INVALID_SPEC', `timeoutMs must be a positive number, got ${req.timeoutMs}`);
  }
  if (!Number.isFinite(req.memoryBytes) || req.memoryBytes <= 0) {
    throw new GridworkError('INVALID_SPEC', `memoryBytes must be a positive number, got ${req.memoryBytes}`);
  }
  if (!Number.isFinite(req.cpu) || req.cpu <= 0) throw new GridworkError('INVALID_SPEC', `cpu must be a positive number, got ${req.cpu}`);
  if (!Number.isFinite(req.diskBytes) || req.diskBytes < 0) {
    throw new GridworkError('INVALID_SPEC', `diskBytes must be a non-negative number, got ${req.diskBytes}`);
  }
  const ports = req.ports ?? [];
  for (const p of ports) {
    if (!Number.isInteger(p) || p < 1 || p > 65535) throw new GridworkError('INVALID_SPEC', `ports: ${p} is not a TCP port (1-65535)`);
  }
  if (new Set(ports).size !== ports.length) throw new GridworkError('INVALID_SPEC', 'ports: each port once');
  if (req.healthCheck && !ports.includes(req.healthCheck.port)) {
    throw new GridworkError('INVALID_SPEC', `healthCheck.port ${req.healthCheck.port} is not one of the exposed ports`);
  }
  const seen = new Set<number>();
  for (const g of req.gpus ?? []) {
    if (!Number.isInteger(g.index) || g.index < 0 || seen.has(g.index)) throw new GridworkError('INTERNAL', `gpus: bad or repeated index ${g.index}`);
    // A UUID ends up in an environment variable and a device request: nothing but its own characters.
    if (!/^(GPU|MIG)-[A-Za-z0-9-]{1,120}$/.test(g.uuid)) throw new GridworkError('INTERNAL', `gpus: malformed UUID for GPU ${g.index}`);
    seen.add(g.index);
  }
}

/** A task that ended before it started (an abort that came first). */
export function endedTask(result: RunResult): RunningTask {
  return { health: async () => 'unhealthy', ports: [], stop: () => {}, wait: async () => result };
}

/** Whether a TCP connection to address:port is accepted within timeoutMs. */
export function tcpAccepts(address: string, port: number, timeoutMs = 1000): Promise<boolean> {
  return new Promise((resolve) => {
    const socket = connect({ host: address, port });
    const done = (ok: boolean) => {
      clearTimeout(timer);
      socket.destroy();
      resolve(ok);
    };
    const timer = setTimeout(() => done(false), timeoutMs);
    socket.once('connect', () => done(true));
    socket.once('error', () => done(false));
  });
}

/** Whether GET http://address:port/path answers 2xx within timeoutMs. */
export async function httpHealthy(address: string, port: number, path: string, timeoutMs = 2000): Promise<boolean> {
  try {
    const res = await fetch(`http://${address}:${port}${path.startsWith('/') ? path : `/${path}`}`, {
      signal: AbortSignal.timeout(timeoutMs),
      redirect: 'manual',
    });
    await res.body?.cancel();
    return res.status >= 200 && res.status < 300;
  } catch {
    return false;
  }
}

/**
 * Listening TCP ports in `/proc/<pid>/net/tcp` or `tcp6` text (state 0A), i.e. of the network namespace of
 * that process.
 */
export function parseListeningPorts(text: string): number[] {
  const ports: number[] = [];
  for (const line of text.split('\n').slice(1)) {
    const f = line.trim().split(/\s+/);
    const local = f[1]?.split(':')[1];
    if (f[3] === '0A' && local && /^[0-9A-Fa-f]{4}$/.test(local)) ports.push(Number.parseInt(local, 16));
  }
  return ports;
}

/**
 * Whether every port has a listening socket in the network namespace of `pid`. A forwarder in front of the
 * task (slirp4netns, docker-proxy) accepts connections before the task listens, so connecting from outside
 * proves nothing; the namespace's own socket table does.
 */
export async function listeningIn(pid: number, ports: readonly number[]): Promise<boolean> {
  const tables = await Promise.all(['tcp', 'tcp6'].map((t) => readFile(`/proc/${pid}/net/${t}`, 'utf8').catch(() => '')));
  const listening = new Set(tables.flatMap(parseListeningPorts));
  return ports.every((p) => listening.has(p));
}

/**
 * The health() of a RunningTask (see its doc): while the task runs, `listening` (when the runtime can see the
 * task's sockets; else a TCP connect to each exposed port) and then the HTTP health check if any. Remembers
 * whether a probe ever passed, which turns a failing probe from 'starting' into 'unhealthy'.
 */
export function healthProbe(
  ports: readonly ExposedPort[],
  check: HealthCheck | undefined,
  ended: () => boolean,
  listening?: () => Promise<boolean>,
): () => Promise<TaskHealth> {
  let wasHealthy = false;
  return async () => {
    if (ended()) return 'unhealthy';
    let ok = listening ? await listening() : check ? true : (await Promise.all(ports.map((p) => tcpAccepts(p.address, p.host)))).every(Boolean);
    if (ok && check) {
      const port = ports.find((p) => p.task === check.port);
      ok = port !== undefined && (await httpHealthy(port.address, port.host, check.path, check.timeoutMs));
    }
    if (ended()) return 'unhealthy';
    if (ok) wasHealthy = true;
    return ok ? 'healthy' : wasHealthy ? 'unhealthy' : 'starting';
  };
}

/** Runs a task to exit through start (what every runtime's run() is). */
export async function runToExit(runtime: Pick<Runtime, 'start'>, req: RunRequest): Promise<RunResult> {
  return (await runtime.start(req)).wait();
}
