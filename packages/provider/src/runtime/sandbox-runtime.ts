import { lstat, readlink, realpath, stat, chmod, lchown, readdir, mkdtemp, writeFile, rm, readFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import type { Readable } from 'node:stream';
import { GridworkError } from '@gridwork/protocol';
import { diskUsage, DISK_POLL_MS } from './disk-usage.ts';
import { detectGpuHost, type GpuHost, gpuBwrapArgs } from './gpu-passthrough.ts';
import {
  buildTaskEnv,
  endedTask,
  type ExposedPort,
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
import { type GroupControl, runProcessGroup } from './spawn-group.ts';
import { type CgroupHost, detectCgroups, TaskCgroup } from './task-cgroup.ts';
import { assertNetworkTools, networkNamespacePrefix, startTaskNetwork, TASK_RESOLV_CONF, type TaskNetwork, type TaskNetworkTools } from './task-network.ts';

/**
 * Sandbox runtime: every task runs under bubblewrap with a read-only view of /usr, a handful of files
 * from /etc, its own /tmp, and exactly four task directories:
 *
 *   /work         the bundle, read-only, working directory
 *   /inputs       read-only
 *   /outputs      writable
 *   /checkpoints  writable
 *   /checkpoints/exchange/in  read-only (a cluster member's delivered rounds, RunRequest.exchangeInDir)
 *
 * Nothing else of the host is visible: not /root, not /home, not the agent's data directory (which holds
 * its private key), not other tasks' directories. All namespaces are unshared, the network namespace too:
 * a task with `network: true` gets a namespace of its own with outbound access through slirp4netns, never
 * the host's loopback nor private/link-local ranges (task-network.ts); without slirp4netns it is refused.
 *
 * When the agent runs as root, bwrap's --uid would only rename root inside a user namespace (a task could
 * still read root-only files through any bind); so the real uid is dropped first with
 * `setpriv --reuid=65534 --regid=65534 --clear-groups`. Consequences for the caller:
 *   - every ancestor of the four directories must be traversable by uid 65534 (o+x; listing is not
 *     needed), otherwise run() refuses with SANDBOX_UNAVAILABLE: keep task directories under a directory
 *     with mode 0711 or 0755, and the agent's key in a file of mode 0600;
 *   - run() makes bundle and inputs world-readable and chowns outputs and checkpoints to the task's uid
 *     (65534, or a uid of its own from FALLBACK_UID_BASE up where no pids cgroup can be made, see below).
 *
 * Memory (task-cgroup.ts): the task's memory cgroup holds all its processes together, and its /tmp and /dev/shm
 * (tmpfs, i.e. RAM) with them, to exactly req.memoryBytes; when the kernel OOM-kills inside the group the task is
 * stopped and the run ends with `limit: 'memory'`. `prlimit --as` additionally caps the address space of each
 * process, which alone bounds nothing: a task forks as many processes as it may, each with the whole allowance.
 * Node/V8 reserves a lot of virtual memory up front; measured on Node 20.20 x64 (this machine): `node -e 1` needs
 * about 712 MiB, a script touching a 64 MiB buffer about 800 MiB, each worker thread about 700 MiB more (one worker
 * needed ~1.4 GiB). So where the task's memory cgroup bounds its real use, address-space limits below
 * MIN_ADDRESS_SPACE_BYTES (4 GiB) are raised to it (the cgroup is not raised); where there is no memory cgroup the
 * address space is all that bounds a process, and its floor stays MIN_SANDBOX_MEMORY_BYTES (1 GiB, enough for a plain
 * Node task to start). (The floor was 1 GiB everywhere, which let a plain Node task start but not finish: the
 * demo's 12,000-step training reaches a VmPeak of 1,065 MiB with 72 MiB resident, and aborted with SIGABRT (exit
 * 134) now and then near its end, when V8 could not reserve address space; a worker thread under 1 GiB always
 * does: "Fatal process OOM in Failed to reserve virtual memory for CodeRange".) Each tmpfs is capped at
 * max(req.memoryBytes, MIN_SANDBOX_MEMORY_BYTES).
 * Where no memory cgroup can be made (a warning says so), taskMemoryBounded() is false and the agent runs one
 * task at a time (task-slots.ts): the per-process limits are all there is.
 *
 * Processes and CPU (task-cgroup.ts): each task runs in a cgroup of its own with pids.max = maxProcesses
 * (a fork bomb stops there and the run ends with `limit: 'processes'`) and a CPU quota of `cpu` cores; the
 * launcher joins the group before anything of the task runs, and the group is removed after. Where no cgroup
 * can be made (a warning says so): each concurrently running task gets a uid of its own (from
 * FALLBACK_UID_BASE up; `prlimit --nproc` counts all processes of a real uid system-wide, so a shared uid
 * would share one limit) with `prlimit --nproc`, and runs under `nice` instead of a CPU quota.
 *
 * Disk (disk-usage.ts): /outputs and /checkpoints together may hold req.diskBytes; `prlimit --fsize` stops any
 * single file at that size and a watcher measuring the directories stops the task when their total exceeds
 * it: `limit: 'disk'`.
 *
 * GPUs (gpu-passthrough.ts): a task with reserved GPUs gets exactly their device nodes, the NVIDIA control nodes and
 * any driver library outside /usr bound into its /dev and filesystem, and CUDA_VISIBLE_DEVICES /
 * NVIDIA_VISIBLE_DEVICES set to their UUIDs; a CPU task gets no NVIDIA device at all.
 *
 * Exposed ports (task-network.ts): a task with `ports` gets a network namespace of its own even without
 * `network` (then with no route out), and slirp4netns forwards a free port on the host's 127.0.0.1 to each task
 * port; health() looks at the namespace's own listening sockets, since slirp4netns accepts connections first.
 *
 * Stopping: the outer bwrap is the leader of our process group; bwrap --new-session puts the task in a
 * second session inside the sandbox, whose id we learn from --info-fd. SIGTERM goes to that inner session
 * so a task can checkpoint; SIGKILL goes to both after the grace period. When the outer bwrap dies,
 * --die-with-parent kills the sandbox's init and with it the whole pid namespace.
 */

export const SANDBOX_INSTALL_HINT = 'install bubblewrap (apt-get install -y bubblewrap) or use --runtime process';

/** Floor for each tmpfs's size (/tmp, /dev/shm). */
export const MIN_SANDBOX_MEMORY_BYTES = 1024 ** 3;

/** Floor for the address-space limit: V8 reserves far more than it uses (see the header comment). */
export const MIN_ADDRESS_SPACE_BYTES = 4 * 1024 ** 3;

/** The unprivileged uid/gid tasks run as when the agent is root ("nobody" on Debian). */
export const SANDBOX_TASK_ID = 65534;

/**
 * Without a pids cgroup, a running task gets the lowest free uid/gid from FALLBACK_UID_BASE up, so that
 * RLIMIT_NPROC is per task. The uids in use are shared by every runtime of this process (an agent process with
 * several runtimes, or tests); two agent processes on one host need different bases (fallbackUidBase).
 */
export const FALLBACK_UID_BASE = 100_000;

/** Fallback uids of tasks running now, process-wide. */
const fallbackUidsInUse = new Set<number>();

/**
 * Processes + threads one task may have at once (Node alone runs ~11 threads).
 * @default 1024
 */
export const DEFAULT_MAX_PROCESSES = 1024;

/** Niceness of tasks where no CPU cgroup can be made. */
export const FALLBACK_NICE = 10;

/** Exit status bwrap reports for a task killed by SIGXFSZ (RLIMIT_FSIZE, i.e. our disk limit): 128 + 25. */
const SIGXFSZ_EXIT = 128 + 25;

/** Files and directories of /etc a task may need (TLS roots, name resolution, users, time zone, libc). */
export const DEFAULT_ETC_PATHS: readonly string[] = [
  '/etc/ssl',
  '/etc/ca-certificates',
  '/etc/ca-certificates.conf',
  '/etc/resolv.conf',
  '/etc/hosts',
  '/etc/host.conf',
  '/etc/gai.conf',
  '/etc/nsswitch.conf',
  '/etc/passwd',
  '/etc/group',
  '/etc/localtime',
  '/etc/timezone',
  '/etc/alternatives',
  '/etc/ld.so.cache',
  '/etc/ld.so.conf',
  '/etc/ld.so.conf.d',
];

/** Top-level directories that merged-/usr systems make symlinks into /usr. */
const USR_LINKS = ['bin', 'sbin', 'lib', 'lib32', 'lib64', 'libx32'];

/** What baseLayout makes visible of the host's system files: GPU driver libraries there need no bind of their own. */
const BOUND_SYSTEM_PATHS: readonly string[] = ['/usr', ...USR_LINKS.map((n) => `/${n}`)];

const noop = () => {};

/** Environment of setpriv/prlimit/bwrap themselves: nothing of the agent's environment (tokens) leaks. */
const LAUNCHER_ENV = { PATH: '/usr/sbin:/usr/bin:/sbin:/bin', LANG: 'C.UTF-8' };

export interface SandboxRuntimeOptions {
  /** @default 'bwrap' */
  bwrapPath?: string;
  /** @default 'setpriv' */
  setprivPath?: string;
  /** @default 'prlimit' */
  prlimitPath?: string;
  /** Paths from /etc bound read-only when they exist. @default DEFAULT_ETC_PATHS */
  etcPaths?: readonly string[];
  /**
   * Paths that must never become visible to a task (the agent's data directory, its key). run() refuses a
   * request whose directories equal or contain one of them. Nothing outside the four task directories is
   * bound anyway; this guards against a caller passing the wrong directory.
   */
  protectedPaths?: readonly string[];
  /** @default 2000 */
  killGraceMs?: number;
  /** Overrides the root detection (tests, or an agent that manages uids itself). @default process.getuid() === 0 */
  dropRoot?: boolean;
  /** Processes + threads per task (pids.max, or prlimit --nproc in the fallback). @default DEFAULT_MAX_PROCESSES */
  maxProcesses?: number;
  /** First uid of the no-cgroup fallback (see FALLBACK_UID_BASE). @default FALLBACK_UID_BASE */
  fallbackUidBase?: number;
  /** 'off' skips cgroups and uses the fallbacks (per-slot uid + prlimit --nproc, nice). @default 'auto' */
  cgroups?: 'auto' | 'off';
  /** How often the disk and process limits are checked while a task runs. @default DISK_POLL_MS */
  limitPollMs?: number;
  /** @default 'slirp4netns' */
  slirp4netnsPath?: string;
  /** @default 'unshare' */
  unsharePath?: string;
  /** @default 'nsenter' */
  nsenterPath?: string;
  /** @default 'ip' */
  ipPath?: string;
  /** @default 'nice' */
  nicePath?: string;
  /** Degraded isolation (no cgroups) is reported here, once per runtime. @default process.emitWarning */
  warn?: (message: string) => void;
  /** How the host's GPU devices and driver libraries are found (gpu-passthrough.ts). @default detectGpuHost */
  detectGpus?: () => Promise<GpuHost>;
}

interface SandboxDirs {
  bundle: string;
  inputs: string;
  outputs: string;
  checkpoints: string;
  /** RunRequest.exchangeInDir: read-only at /checkpoints/exchange/in. */
  exchangeIn?: string;
}

/** Read-only base filesystem: /usr, the merged-/usr links, selected /etc paths, fresh /dev, /proc, /tmp. */
async function baseLayout(etcPaths: readonly string[], scratchBytes: number | undefined): Promise<string[]> {
  const args = ['--ro-bind', '/usr', '/usr'];
  for (const name of USR_LINKS) {
    const host = `/${name}`;
    const st = await lstat(host).catch(() => undefined);
    if (!st) continue;
    // Mirror the host: a symlink stays a symlink (usr/bin), a real directory (non-merged /usr) is bound.
    if (st.isSymbolicLink()) args.push('--symlink', await readlink(host), host);
    else if (st.isDirectory()) args.push('--ro-bind', host, host);
  }
  for (const p of etcPaths) {
    if (!path.isAbsolute(p) || !p.startsWith('/etc/')) throw new GridworkError('INTERNAL', `etc path must be under /etc: ${p}`);
    if (await stat(p).catch(() => undefined)) args.push('--ro-bind', p, p);
  }
  const size = scratchBytes === undefined ? [] : ['--size', String(scratchBytes)];
  args.push('--dev', '/dev', ...size, '--tmpfs', '/dev/shm', '--proc', '/proc', ...size, '--tmpfs', '/tmp');
  return args;
}

/** setpriv prefix when the agent is root (see the header comment), else nothing. */
function dropPrefix(setprivPath: string, dropRoot: boolean, uid = SANDBOX_TASK_ID): string[] {
  if (!dropRoot) return [];
  const id = String(uid);
  return [setprivPath, `--reuid=${id}`, `--regid=${id}`, '--clear-groups', '--nnp', '--'];
}

/** Writes the launcher's pid into each cgroup.procs file, then execs the rest: nothing runs outside the group. */
const JOIN_SCRIPT = 'n=$1; shift; while [ "$n" -gt 0 ]; do echo $$ > "$1" || exit 125; shift; n=$((n - 1)); done; exec "$@"';

/** How one run is launched (decided by SandboxRuntime.run from what the host allows). */
export interface LaunchPlan {
  /** Real uid/gid of the task (when the agent is root). */
  uid: number;
  /** cgroup.procs files to join before anything else. */
  cgroupProcs: readonly string[];
  /** The task's memory cgroup holds it to memoryBytes: the address-space limit can be generous (MIN_ADDRESS_SPACE_BYTES). */
  memoryBounded?: boolean;
  /** prlimit --nproc (the no-cgroup fallback). */
  nproc?: number;
  /** nice -n (the no-cgroup fallback for CPU). */
  nice?: number;
  /** Own network namespace via slirp4netns; bwrap waits on --block-fd 4 until it is configured. */
  network?: { tools: TaskNetworkTools; resolvConf: string };
  /** The GPU device and library binds (gpuBwrapArgs), placed after the fresh /dev. */
  gpuArgs?: readonly string[];
  nicePath: string;
}

/** The full argv (launcher first) for one task; exported for inspection and tests. */
export async function buildSandboxArgv(
  req: RunRequest,
  dirs: SandboxDirs,
  opts: { bwrapPath: string; setprivPath: string; prlimitPath: string; etcPaths: readonly string[]; dropRoot: boolean },
  plan: LaunchPlan = { uid: SANDBOX_TASK_ID, cgroupProcs: [], nicePath: 'nice' },
): Promise<string[]> {
  const memory = Math.max(Math.floor(req.memoryBytes), MIN_SANDBOX_MEMORY_BYTES);
  const env = buildTaskEnv(req, { inputs: '/inputs', outputs: '/outputs', checkpoints: '/checkpoints' });
  const join = plan.cgroupProcs.length > 0 ? ['/bin/sh', '-c', JOIN_SCRIPT, 'gridwork-cgroup-join', String(plan.cgroupProcs.length), ...plan.cgroupProcs] : [];
  const ids = opts.dropRoot ? { uid: plan.uid, gid: plan.uid } : { uid: process.getuid?.() ?? 0, gid: process.getgid?.() ?? 0 };
  const argv = [
    ...join,
    ...(plan.nice === undefined ? [] : [plan.nicePath, '-n', String(plan.nice)]),
    ...dropPrefix(opts.setprivPath, opts.dropRoot, plan.uid),
    opts.prlimitPath,
    `--as=${plan.memoryBounded ? Math.max(memory, MIN_ADDRESS_SPACE_BYTES) : memory}`,
    `--fsize=${Math.floor(req.diskBytes)}`,
    ...(plan.nproc === undefined ? [] : [`--nproc=${plan.nproc}`]),
    '--',
    ...(plan.network ? networkNamespacePrefix(plan.network.tools, ids.uid, ids.gid) : []),
    opts.bwrapPath,
    '--unshare-all',
    // With network the namespace made by unshare above is kept (and configured by slirp4netns); without, bwrap
    // makes an empty one.
    ...(plan.network ? ['--share-net'] : []),
    '--die-with-parent',
    '--new-session',
    ...(await baseLayout(opts.etcPaths, memory)),
    ...(plan.gpuArgs ?? []),
    ...(plan.network ? ['--ro-bind', plan.network.resolvConf, '/etc/resolv.conf', '--block-fd', '4'] : []),
    '--ro-bind',
    dirs.bundle,
    '/work',
    '--ro-bind',
    dirs.inputs,
    '/inputs',
    '--bind',
    dirs.outputs,
    '/outputs',
    '--bind',
    dirs.checkpoints,
    '/checkpoints',
    ...(dirs.exchangeIn ? ['--ro-bind', dirs.exchangeIn, '/checkpoints/exchange/in'] : []),
    '--chdir',
    '/work',
    '--info-fd',
    '3',
    '--clearenv',
  ];
  for (const [name, value] of Object.entries(env)) argv.push('--setenv', name, value);
  argv.push('--', ...req.command);
  return argv;
}

function isWithin(child: string, parent: string): boolean {
  const rel = path.relative(parent, child);
  return rel === '' || (!rel.startsWith('..') && !path.isAbsolute(rel));
}

/** Resolves symlinks (bwrap follows them too) and checks the directory exists. */
async function resolveDir(label: string, dir: string): Promise<string> {
  if (!path.isAbsolute(dir)) throw new GridworkError('INTERNAL', `${label} must be an absolute path: ${dir}`);
  const real = await realpath(dir).catch((err: NodeJS.ErrnoException) => {
    throw new GridworkError('INTERNAL', `${label} ${dir}: ${err.code ?? err.message}`);
  });
  if (!(await stat(real)).isDirectory()) throw new GridworkError('INTERNAL', `${label} is not a directory: ${dir}`);
  return real;
}

/** Whether the task's uid/gid (no supplementary groups) may traverse every ancestor of dir. */
async function assertTraversable(dir: string, uid: number): Promise<void> {
  for (let p = path.dirname(dir); ; p = path.dirname(p)) {
    const st = await stat(p);
    const mode = st.mode;
    const ok = (st.uid === uid ? mode & 0o100 : st.gid === uid ? mode & 0o010 : mode & 0o001) !== 0;
    if (!ok) {
      throw new GridworkError(
        'SANDBOX_UNAVAILABLE',
        `sandbox: ${p} (mode ${(mode & 0o7777).toString(8)}) is not traversable by uid ${uid}, so bwrap ` +
          `cannot bind ${dir}; keep task directories under directories with mode 0711 or 0755`,
      );
    }
    if (p === '/') return;
  }
}

/**
 * Applies fn to dir and everything below it, never following symlinks. Regular files with more than one
 * hard link are skipped: one could be a link to a host file (/etc/shadow on the same filesystem), and
 * chmod/chown on it would hand that file to the task.
 */
async function walk(dir: string, fn: (p: string, isDir: boolean) => Promise<void>): Promise<void> {
  await fn(dir, true);
  for (const entry of await readdir(dir, { withFileTypes: true })) {
    const p = path.join(dir, entry.name);
    if (entry.isSymbolicLink()) continue;
    try {
      if (entry.isDirectory()) await walk(p, fn);
      else if (entry.isFile() && (await lstat(p)).nlink === 1) await fn(p, false);
    } catch (err) {
      // Gone meanwhile (a round the agent delivers while the task starts: a temporary name renamed): nothing to do.
      if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err;
    }
  }
}

/** Read access for "other" on a read-only tree (dirs r-x, files r--, executables keep x). */
export async function makeReadable(dir: string): Promise<void> {
  await walk(dir, async (p, isDir) => {
    const mode = (await lstat(p)).mode & 0o7777;
    const want = isDir ? mode | 0o555 : mode & 0o111 ? mode | 0o555 : mode | 0o444;
    if (want !== mode) await chmod(p, want);
  });
}

/** Hands a writable tree to the task's uid (lchown: symlinks themselves, never their targets). */
export async function giveToTask(dir: string, uid: number): Promise<void> {
  await walk(dir, async (p, isDir) => {
    await lchown(p, uid, uid);
    if (isDir) {
      const mode = (await lstat(p)).mode & 0o7777;
      if ((mode & 0o700) !== 0o700) await chmod(p, mode | 0o700);
    }
  });
}

/** Sum of the threads of all processes whose real uid is uid (what RLIMIT_NPROC counts). */
async function threadsOfUid(uid: number): Promise<number> {
  let total = 0;
  for (const entry of await readdir('/proc').catch(() => [] as string[])) {
    if (!/^\d+$/.test(entry)) continue;
    const status = await readFile(`/proc/${entry}/status`, 'utf8').catch(() => '');
    const real = /^Uid:\s+(\d+)/m.exec(status)?.[1];
    if (real === undefined || Number(real) !== uid) continue;
    total += Number(/^Threads:\s+(\d+)/m.exec(status)?.[1] ?? 1);
  }
  return total;
}

export class SandboxRuntime implements Runtime {
  readonly kind = 'sandbox' as const;
  private readonly bwrapPath: string;
  private readonly setprivPath: string;
  private readonly prlimitPath: string;
  private readonly etcPaths: readonly string[];
  private readonly protectedPaths: readonly string[];
  private readonly killGraceMs: number | undefined;
  private readonly dropRoot: boolean;
  private readonly maxProcesses: number;
  private readonly cgroupMode: 'auto' | 'off';
  private readonly limitPollMs: number;
  private readonly nicePath: string;
  private readonly networkTools: TaskNetworkTools;
  private readonly warn: (message: string) => void;
  private cgroupHost: Promise<CgroupHost | undefined> | undefined;
  private readonly warned = new Set<string>();
  private readonly fallbackUidBase: number;
  private readonly detectGpus: () => Promise<GpuHost>;
  private gpuHostPromise: Promise<GpuHost> | undefined;

  constructor(opts: SandboxRuntimeOptions = {}) {
    this.bwrapPath = opts.bwrapPath ?? 'bwrap';
    this.setprivPath = opts.setprivPath ?? 'setpriv';
    this.prlimitPath = opts.prlimitPath ?? 'prlimit';
    this.etcPaths = opts.etcPaths ?? DEFAULT_ETC_PATHS;
    this.protectedPaths = (opts.protectedPaths ?? []).map((p) => path.resolve(p));
    this.killGraceMs = opts.killGraceMs;
    this.dropRoot = opts.dropRoot ?? process.getuid?.() === 0;
    this.maxProcesses = opts.maxProcesses ?? DEFAULT_MAX_PROCESSES;
    this.fallbackUidBase = opts.fallbackUidBase ?? FALLBACK_UID_BASE;
    this.cgroupMode = opts.cgroups ?? 'auto';
    this.limitPollMs = opts.limitPollMs ?? DISK_POLL_MS;
    this.nicePath = opts.nicePath ?? 'nice';
    this.networkTools = {
      slirp4netnsPath: opts.slirp4netnsPath ?? 'slirp4netns',
      unsharePath: opts.unsharePath ?? 'unshare',
      nsenterPath: opts.nsenterPath ?? 'nsenter',
      ipPath: opts.ipPath ?? 'ip',
      setprivPath: this.setprivPath,
    };
    this.warn = opts.warn ?? ((message) => process.emitWarning(message));
    this.detectGpus = opts.detectGpus ?? (() => detectGpuHost());
  }

  private warnOnce(message: string): void {
    if (this.warned.has(message)) return;
    this.warned.add(message);
    this.warn(message);
  }

  /** Where task cgroups can be made; detected once. */
  private cgroups(): Promise<CgroupHost | undefined> {
    this.cgroupHost ??= this.cgroupMode === 'off' ? Promise.resolve(undefined) : detectCgroups();
    return this.cgroupHost;
  }

  /** Starts `/bin/true` in a minimal sandbox through the same launcher chain a task uses. */
  async check(): Promise<void> {
    const argv = [
      ...dropPrefix(this.setprivPath, this.dropRoot),
      this.prlimitPath,
      `--as=${MIN_ADDRESS_SPACE_BYTES}`,
      '--',
      this.bwrapPath,
      '--unshare-all',
      '--die-with-parent',
      '--new-session',
      ...(await baseLayout(this.etcPaths, 1024 * 1024)),
      '--chdir',
      '/',
      '--',
      '/bin/true',
    ];
    let stderr = '';
    const result = await runProcessGroup({
      file: argv[0] ?? this.bwrapPath,
      args: argv.slice(1),
      cwd: '/',
      env: LAUNCHER_ENV,
      timeoutMs: 15_000,
      onOutput: (stream, data) => {
        if (stream === 'stderr' && stderr.length < 4000) stderr += data;
      },
    });
    if (result.exitCode !== 0) {
      const why = result.timedOut ? 'timed out' : stderr.trim() || `exit code ${result.exitCode ?? result.signal}`;
      throw new GridworkError('SANDBOX_UNAVAILABLE', `sandbox check failed (${why}); ${SANDBOX_INSTALL_HINT}`, {
        details: { exitCode: result.exitCode, signal: result.signal, stderr: stderr.trim() },
      });
    }
    // Report degraded isolation at start-up rather than at the first task.
    await this.cgroupFor({ cpu: 1, memoryBytes: MIN_SANDBOX_MEMORY_BYTES }).then((g) => g?.remove());
  }

  /**
   * Whether every task is held to its memoryBytes as a whole (a memory cgroup can be made here). A task whose
   * group cannot be made after all is refused rather than run with less (cgroupFor).
   */
  async taskMemoryBounded(): Promise<boolean> {
    return (await this.cgroups())?.bases.memory !== undefined;
  }

  /** The task's cgroup, or undefined (with a warning) where none can be made. */
  private async cgroupFor(req: Pick<RunRequest, 'cpu' | 'memoryBytes'>): Promise<TaskCgroup | undefined> {
    const host = await this.cgroups();
    let group: TaskCgroup | undefined;
    if (host) {
      try {
        group = await TaskCgroup.create(host, { maxProcesses: this.maxProcesses, cpu: req.cpu, memoryBytes: req.memoryBytes });
      } catch (err) {
        // The agent counted its slots on memory cgroups (taskMemoryBounded): no task runs without one.
        if (host.bases.memory) {
          throw new GridworkError('SANDBOX_UNAVAILABLE', `sandbox: cannot create the task's memory cgroup: ${(err as Error).message}`, { cause: err });
        }
        this.warnOnce(`sandbox: cannot create a task cgroup (${(err as Error).message}); using the fallback limits`);
      }
    }
    if (!group?.dirs.pids) {
      this.warnOnce(
        this.dropRoot
          ? 'sandbox: no pids cgroup can be created here; tasks get per-slot uids with prlimit --nproc instead'
          : 'sandbox: no pids cgroup can be created here and the agent is not root; tasks have no process limit',
      );
    }
    if (!group?.dirs.cpu) this.warnOnce(`sandbox: no cpu cgroup can be created here; tasks run under nice -n ${FALLBACK_NICE} instead of a CPU quota`);
    if (!group?.dirs.memory) {
      this.warnOnce(
        'sandbox: no memory cgroup can be created here; a task is held only to prlimit --as per process and to the size of ' +
          'each tmpfs, not to its memory as a whole, so the agent runs one task at a time',
      );
    }
    return group;
  }

  run(req: RunRequest): Promise<RunResult> {
    return runToExit(this, req);
  }

  /** What the host offers for GPU passthrough; detected at the first GPU task. */
  private gpus(): Promise<GpuHost> {
    this.gpuHostPromise ??= this.detectGpus();
    return this.gpuHostPromise;
  }

  async start(req: RunRequest): Promise<RunningTask> {
    validateRunRequest(req);
    const dirs: SandboxDirs = {
      bundle: await resolveDir('bundleDir', req.bundleDir),
      inputs: await resolveDir('inputsDir', req.inputsDir),
      outputs: await resolveDir('outputsDir', req.outputsDir),
      checkpoints: await resolveDir('checkpointsDir', req.checkpointsDir),
      ...(req.exchangeInDir ? { exchangeIn: await resolveDir('exchangeInDir', req.exchangeInDir) } : {}),
    };
    for (const dir of Object.values(dirs)) {
      for (const hidden of this.protectedPaths) {
        const real = await realpath(hidden).catch(() => hidden);
        if (isWithin(real, dir)) {
          throw new GridworkError('INTERNAL', `refusing to expose ${dir} to a task: it contains the protected path ${hidden}`);
        }
      }
    }
    const ports = req.ports ?? [];
    // Refuse network before anything is changed on disk: it never falls back to the host's namespace. Exposed
    // ports need the task's own namespace too (task-network.ts).
    const ownNetwork = req.network || ports.length > 0;
    if (ownNetwork) await assertNetworkTools(this.networkTools, LAUNCHER_ENV.PATH);
    // A GPU task whose devices are missing is refused before anything runs.
    const gpus = req.gpus ?? [];
    const gpuArgs = gpus.length > 0 ? gpuBwrapArgs(gpus, await this.gpus(), BOUND_SYSTEM_PATHS) : [];
    if (req.signal?.aborted) return endedTask({ exitCode: null, signal: null, timedOut: false, aborted: true, durationMs: 0 });

    const cleanups: (() => Promise<void>)[] = [];
    const cleanup = async () => {
      for (const c of cleanups.splice(0).reverse()) await c().catch(() => {});
    };
    try {
      const group = await this.cgroupFor(req);
      if (group) cleanups.push(() => group.remove());

      // Without a pids cgroup the process limit is RLIMIT_NPROC, which is per real uid: one uid per running task.
      let uid = SANDBOX_TASK_ID;
      let nproc: number | undefined;
      if (!group?.dirs.pids && this.dropRoot) {
        uid = this.fallbackUidBase;
        while (fallbackUidsInUse.has(uid)) uid++;
        fallbackUidsInUse.add(uid);
        const taken = uid;
        cleanups.push(async () => {
          fallbackUidsInUse.delete(taken);
        });
        nproc = this.maxProcesses;
      }

      if (this.dropRoot) {
        for (const dir of Object.values(dirs)) await assertTraversable(dir, uid);
        await makeReadable(dirs.bundle);
        await makeReadable(dirs.inputs);
        if (dirs.exchangeIn) await makeReadable(dirs.exchangeIn);
        await giveToTask(dirs.outputs, uid);
        await giveToTask(dirs.checkpoints, uid);
      }

      let network: LaunchPlan['network'];
      if (ownNetwork) {
        // A world-readable resolv.conf for the task (bwrap binds it as the task's uid).
        const etcDir = await mkdtemp(path.join(os.tmpdir(), 'gw-net-'));
        cleanups.push(() => rm(etcDir, { recursive: true, force: true }));
        await chmod(etcDir, 0o755);
        const resolvConf = path.join(etcDir, 'resolv.conf');
        await writeFile(resolvConf, TASK_RESOLV_CONF, { mode: 0o644 });
        network = { tools: this.networkTools, resolvConf };
      }

      const plan: LaunchPlan = {
        uid,
        cgroupProcs: group?.procsFiles() ?? [],
        memoryBounded: group?.dirs.memory !== undefined,
        ...(nproc === undefined ? {} : { nproc }),
        ...(group?.dirs.cpu ? {} : { nice: FALLBACK_NICE }),
        ...(network ? { network } : {}),
        ...(gpuArgs.length > 0 ? { gpuArgs } : {}),
        nicePath: this.nicePath,
      };
      const argv = await buildSandboxArgv(
        req,
        dirs,
        { bwrapPath: this.bwrapPath, setprivPath: this.setprivPath, prlimitPath: this.prlimitPath, etcPaths: this.etcPaths, dropRoot: this.dropRoot },
        plan,
      );
      const launched = this.launch(req, argv, { dirs, group, uid, nproc, network: network !== undefined });
      let ended = false;
      const done = launched.done.finally(async () => {
        ended = true;
        await cleanup();
      });
      // Observed through wait() (or right here, for a setup that failed); never unhandled.
      done.catch(() => {});
      await Promise.race([launched.ready, done.then(noop, noop)]);
      if (ended) await done; // ended before it ran: a setup error is thrown here, as run() always did
      const exposed = launched.ports();
      return {
        ports: exposed,
        // The task's namespace is that of the outer bwrap (the launcher execs into it behind unshare).
        health: healthProbe(exposed, req.healthCheck, () => ended, ports.length > 0 ? () => listeningIn(launched.pid(), ports) : undefined),
        stop: (reason) => launched.stop(reason),
        wait: () => done,
      };
    } catch (err) {
      await cleanup();
      throw err;
    }
  }

  /**
   * Launches the sandbox. `ready` resolves once the task runs (the sandbox exists and, with a network, the
   * namespace is configured and the ports are forwarded); `done` once it has ended (a failed network setup
   * rejects it with SANDBOX_UNAVAILABLE).
   */
  private launch(
    req: RunRequest,
    argv: string[],
    ctx: { dirs: SandboxDirs; group: TaskCgroup | undefined; uid: number; nproc: number | undefined; network: boolean },
  ): { ready: Promise<void>; done: Promise<RunResult>; ports: () => ExposedPort[]; pid: () => number; stop: (reason: string) => void } {
    // bwrap writes {"child-pid": N, ...} to --info-fd once the sandbox exists; N leads the inner session.
    let innerSession: number | undefined;
    let onSandbox: (() => void) | undefined;
    let markReady: () => void = noop;
    const ready = new Promise<void>((resolve) => {
      markReady = resolve;
    });
    let taskNetwork: TaskNetwork | undefined;
    const readInfo = (stream: Readable) => {
      let text = '';
      stream.setEncoding('utf8');
      stream.on('data', (chunk: string) => {
        text += chunk;
        const m = /"child-pid"\s*:\s*(\d+)/.exec(text);
        if (m?.[1] && innerSession === undefined) {
          innerSession = Number(m[1]);
          onSandbox?.();
          if (!ctx.network) markReady();
        }
      });
    };

    // stop() and req.signal end the run the same way (an abort).
    const abort = new AbortController();
    const onCallerAbort = () => abort.abort(req.signal?.reason);
    req.signal?.addEventListener('abort', onCallerAbort, { once: true });

    // What the task wrote, and the exchange rounds delivered to it (its members' doing: they count too).
    const counted = [ctx.dirs.outputs, ctx.dirs.checkpoints, ...(ctx.dirs.exchangeIn ? [ctx.dirs.exchangeIn] : [])];
    let watchTimer: NodeJS.Timeout | undefined;
    let watching = true;
    let networkSetup: Promise<TaskNetwork | undefined> | undefined;
    let setupError: unknown;

    /** Polls the memory, process and disk limits; stops the task at the first one exceeded. */
    const watch = (control: GroupControl) => {
      const tick = async () => {
        if (!watching) return;
        let hit: RunLimit | undefined;
        if (await ctx.group?.memoryLimitHit()) hit = 'memory';
        else if (ctx.group?.dirs.pids) {
          if (await ctx.group.processLimitHit()) hit = 'processes';
        } else if (ctx.nproc !== undefined && (await threadsOfUid(ctx.uid)) >= ctx.nproc) {
          // The kernel keeps no count of refused forks per uid: only a task that stays at its limit is seen here
          // (a bomb whose shells die on a refused fork collapses by itself).
          hit = 'processes';
        }
        if (!hit && (await diskUsage(counted, req.diskBytes)) > req.diskBytes) hit = 'disk';
        if (!watching) return;
        if (hit) control.stop(hit);
        else watchTimer = setTimeout(() => void tick(), this.limitPollMs);
      };
      watchTimer = setTimeout(() => void tick(), this.limitPollMs);
    };

    let leader = 0;
    const onStart = (control: GroupControl) => {
      leader = control.pid;
      const [info, block] = control.pipes;
      if (info) readInfo(info);
      watch(control);
      if (!ctx.network) return;
      // bwrap blocks on fd 4 until the namespace is configured; nothing of the task runs before that.
      onSandbox = () => {
        networkSetup = startTaskNetwork(control.pid, this.networkTools, {
          env: LAUNCHER_ENV,
          ...(this.dropRoot ? { dropTo: { uid: ctx.uid, gid: ctx.uid } } : {}),
          ports: req.ports ?? [],
          isolated: !req.network,
        }).then(
          (net) => {
            taskNetwork = net;
            block?.write('1');
            markReady();
            return net;
          },
          (err: unknown) => {
            // Kill before the block pipe closes: EOF on --block-fd would let bwrap start the task.
            control.kill();
            setupError = err;
            return undefined;
          },
        );
      };
    };

    const done = (async (): Promise<RunResult> => {
      let result: RunResult;
      try {
        result = await runProcessGroup({
          file: argv[0] ?? this.prlimitPath,
          args: argv.slice(1),
          cwd: '/',
          env: LAUNCHER_ENV,
          timeoutMs: req.timeoutMs,
          signal: abort.signal,
          ...(this.killGraceMs === undefined ? {} : { killGraceMs: this.killGraceMs }),
          onOutput: req.onOutput,
          extraPipes: ctx.network ? 2 : 1,
          onStart,
          termGroups: () => (innerSession === undefined ? [] : [innerSession]),
        });
      } finally {
        watching = false;
        clearTimeout(watchTimer);
        req.signal?.removeEventListener('abort', onCallerAbort);
      }
      // The setup may still be under way if the run ended early (aborted during setup): wait, then stop slirp4netns.
      await (await networkSetup)?.close();
      // A setup that failed because the run was already being stopped is not the task's error.
      if (setupError && !result.aborted && !result.timedOut) throw setupError;

      // Limits hit between the last poll and the end of the run.
      if (!result.limit && !result.timedOut && !result.aborted) {
        const usage = await diskUsage(counted, req.diskBytes);
        // Any OOM kill counts, even of a child the task outlived: the kernel took a process of the task away.
        if (await ctx.group?.memoryLimitHit()) result = { ...result, limit: 'memory' };
        else if (usage > req.diskBytes || (result.exitCode === SIGXFSZ_EXIT && usage >= req.diskBytes)) result = { ...result, limit: 'disk' };
        else if (result.exitCode !== 0 && (await ctx.group?.processLimitHit())) result = { ...result, limit: 'processes' };
      }
      return result;
    })();
    return { ready, done, ports: () => taskNetwork?.ports ?? [], pid: () => leader, stop: (reason) => abort.abort(reason) };
  }
}

export function createSandboxRuntime(opts: SandboxRuntimeOptions = {}): SandboxRuntime {
  return new SandboxRuntime(opts);
}
