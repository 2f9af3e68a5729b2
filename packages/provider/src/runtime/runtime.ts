import { GridworkError } from '@gridwork/protocol';

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
  /** Address-space limit (prlimit --as) in the sandbox runtime; ignored by the process runtime. */
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
   * diskBytes), 'memory' (only where it can be detected reliably). Absent otherwise.
   */
  limit?: RunLimit;
}

/**
 * Disk a task gets when its spec sets no resources.diskGiB.
 * @default 10 GiB
 */
export const DEFAULT_TASK_DISK_BYTES = 10 * 1024 ** 3;

export interface Runtime {
  readonly kind: 'sandbox' | 'process';
  /** Throws GridworkError SANDBOX_UNAVAILABLE with a helpful message if it cannot run here. */
  check(): Promise<void>;
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
export function buildTaskEnv(req: Pick<RunRequest, 'env'>, dirs: TaskDirs): Record<string, string> {
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
  };
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
}
