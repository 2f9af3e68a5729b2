import { lstat, readlink, realpath, stat, chmod, lchown, readdir } from 'node:fs/promises';
import path from 'node:path';
import type { Readable } from 'node:stream';
import { GridworkError } from '@gridwork/protocol';
import { buildTaskEnv, validateRunRequest, type RunRequest, type RunResult, type Runtime } from './runtime.ts';
import { runProcessGroup } from './spawn-group.ts';

/**
 * Sandbox runtime: every task runs under bubblewrap with a read-only view of /usr, a handful of files
 * from /etc, its own /tmp, and exactly four task directories:
 *
 *   /work         the bundle, read-only, working directory
 *   /inputs       read-only
 *   /outputs      writable
 *   /checkpoints  writable
 *
 * Nothing else of the host is visible: not /root, not /home, not the agent's data directory (which holds
 * its private key), not other tasks' directories. All namespaces are unshared; the network namespace is
 * shared only when the request allows network.
 *
 * When the agent runs as root, bwrap's --uid would only rename root inside a user namespace (a task could
 * still read root-only files through any bind); so the real uid is dropped first with
 * `setpriv --reuid=65534 --regid=65534 --clear-groups`. Consequences for the caller:
 *   - every ancestor of the four directories must be traversable by uid 65534 (o+x; listing is not
 *     needed), otherwise run() refuses with SANDBOX_UNAVAILABLE: keep task directories under a directory
 *     with mode 0711 or 0755, and the agent's key in a file of mode 0600;
 *   - run() makes bundle and inputs world-readable and chowns outputs and checkpoints to 65534.
 *
 * Memory: `prlimit --as` caps the address space of bwrap and everything in it. Node/V8 reserves a lot
 * of virtual memory up front; measured on Node 20.20 x64 (this machine): `node -e 1` needs about
 * 712 MiB, a script touching a 64 MiB buffer about 800 MiB, each worker thread about 700 MiB more
 * (one worker needed ~1.4 GiB). Limits below MIN_SANDBOX_MEMORY_BYTES (1 GiB) are raised to it so a
 * plain Node task can always start. /tmp and /dev/shm are tmpfs (RAM, not counted by RLIMIT_AS) and
 * are each capped at the same byte count.
 *
 * Stopping: the outer bwrap is the leader of our process group; bwrap --new-session puts the task in a
 * second session inside the sandbox, whose id we learn from --info-fd. SIGTERM goes to that inner session
 * so a task can checkpoint; SIGKILL goes to both after the grace period. When the outer bwrap dies,
 * --die-with-parent kills the sandbox's init and with it the whole pid namespace.
 */

export const SANDBOX_INSTALL_HINT = 'install bubblewrap (apt-get install -y bubblewrap) or use --runtime process';

/** Floor for the address-space limit: below ~712 MiB Node cannot start at all (see the header comment). */
export const MIN_SANDBOX_MEMORY_BYTES = 1024 ** 3;

/** The unprivileged uid/gid tasks run as when the agent is root ("nobody" on Debian). */
export const SANDBOX_TASK_ID = 65534;

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
}

interface SandboxDirs {
  bundle: string;
  inputs: string;
  outputs: string;
  checkpoints: string;
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
function dropPrefix(setprivPath: string, dropRoot: boolean): string[] {
  if (!dropRoot) return [];
  const id = String(SANDBOX_TASK_ID);
  return [setprivPath, `--reuid=${id}`, `--regid=${id}`, '--clear-groups', '--nnp', '--'];
}

/** The full argv (launcher first) for one task; exported for inspection and tests. */
export async function buildSandboxArgv(
  req: RunRequest,
  dirs: SandboxDirs,
  opts: { bwrapPath: string; setprivPath: string; prlimitPath: string; etcPaths: readonly string[]; dropRoot: boolean },
): Promise<string[]> {
  const memory = Math.max(Math.floor(req.memoryBytes), MIN_SANDBOX_MEMORY_BYTES);
  const env = buildTaskEnv(req, { inputs: '/inputs', outputs: '/outputs', checkpoints: '/checkpoints' });
  const argv = [
    ...dropPrefix(opts.setprivPath, opts.dropRoot),
    opts.prlimitPath,
    `--as=${memory}`,
    '--',
    opts.bwrapPath,
    '--unshare-all',
    ...(req.network ? ['--share-net'] : []),
    '--die-with-parent',
    '--new-session',
    ...(await baseLayout(opts.etcPaths, memory)),
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

/** Whether uid/gid 65534 (no supplementary groups) may traverse every ancestor of dir. */
async function assertTraversable(dir: string): Promise<void> {
  for (let p = path.dirname(dir); ; p = path.dirname(p)) {
    const st = await stat(p);
    const mode = st.mode;
    const ok = (st.uid === SANDBOX_TASK_ID ? mode & 0o100 : st.gid === SANDBOX_TASK_ID ? mode & 0o010 : mode & 0o001) !== 0;
    if (!ok) {
      throw new GridworkError(
        'SANDBOX_UNAVAILABLE',
        `sandbox: ${p} (mode ${(mode & 0o7777).toString(8)}) is not traversable by uid ${SANDBOX_TASK_ID}, so bwrap ` +
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
    if (entry.isDirectory()) await walk(p, fn);
    else if (entry.isFile() && (await lstat(p)).nlink === 1) await fn(p, false);
  }
}

/** Read access for "other" on a read-only tree (dirs r-x, files r--, executables keep x). */
async function makeReadable(dir: string): Promise<void> {
  await walk(dir, async (p, isDir) => {
    const mode = (await lstat(p)).mode & 0o7777;
    const want = isDir ? mode | 0o555 : mode & 0o111 ? mode | 0o555 : mode | 0o444;
    if (want !== mode) await chmod(p, want);
  });
}

/** Hands a writable tree to the task's uid (lchown: symlinks themselves, never their targets). */
async function giveToTask(dir: string): Promise<void> {
  await walk(dir, async (p, isDir) => {
    await lchown(p, SANDBOX_TASK_ID, SANDBOX_TASK_ID);
    if (isDir) {
      const mode = (await lstat(p)).mode & 0o7777;
      if ((mode & 0o700) !== 0o700) await chmod(p, mode | 0o700);
    }
  });
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

  constructor(opts: SandboxRuntimeOptions = {}) {
    this.bwrapPath = opts.bwrapPath ?? 'bwrap';
    this.setprivPath = opts.setprivPath ?? 'setpriv';
    this.prlimitPath = opts.prlimitPath ?? 'prlimit';
    this.etcPaths = opts.etcPaths ?? DEFAULT_ETC_PATHS;
    this.protectedPaths = (opts.protectedPaths ?? []).map((p) => path.resolve(p));
    this.killGraceMs = opts.killGraceMs;
    this.dropRoot = opts.dropRoot ?? process.getuid?.() === 0;
  }

  /** Starts `/bin/true` in a minimal sandbox through the same launcher chain a task uses. */
  async check(): Promise<void> {
    const argv = [
      ...dropPrefix(this.setprivPath, this.dropRoot),
      this.prlimitPath,
      `--as=${MIN_SANDBOX_MEMORY_BYTES}`,
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
  }

  async run(req: RunRequest): Promise<RunResult> {
    validateRunRequest(req);
    const dirs: SandboxDirs = {
      bundle: await resolveDir('bundleDir', req.bundleDir),
      inputs: await resolveDir('inputsDir', req.inputsDir),
      outputs: await resolveDir('outputsDir', req.outputsDir),
      checkpoints: await resolveDir('checkpointsDir', req.checkpointsDir),
    };
    for (const dir of Object.values(dirs)) {
      for (const hidden of this.protectedPaths) {
        const real = await realpath(hidden).catch(() => hidden);
        if (isWithin(real, dir)) {
          throw new GridworkError('INTERNAL', `refusing to expose ${dir} to a task: it contains the protected path ${hidden}`);
        }
      }
    }
    if (this.dropRoot) {
      for (const dir of Object.values(dirs)) await assertTraversable(dir);
      await makeReadable(dirs.bundle);
      await makeReadable(dirs.inputs);
      await giveToTask(dirs.outputs);
      await giveToTask(dirs.checkpoints);
    }

    const argv = await buildSandboxArgv(req, dirs, {
      bwrapPath: this.bwrapPath,
      setprivPath: this.setprivPath,
      prlimitPath: this.prlimitPath,
      etcPaths: this.etcPaths,
      dropRoot: this.dropRoot,
    });

    // bwrap writes {"child-pid": N, ...} to --info-fd once the sandbox exists; N leads the inner session.
    let innerSession: number | undefined;
    const readInfo = (stream: Readable) => {
      let text = '';
      stream.setEncoding('utf8');
      stream.on('data', (chunk: string) => {
        text += chunk;
        const m = /"child-pid"\s*:\s*(\d+)/.exec(text);
        if (m?.[1]) innerSession = Number(m[1]);
      });
      stream.on('error', () => {});
    };

    return runProcessGroup({
      file: argv[0] ?? this.prlimitPath,
      args: argv.slice(1),
      cwd: '/',
      env: LAUNCHER_ENV,
      timeoutMs: req.timeoutMs,
      ...(req.signal ? { signal: req.signal } : {}),
      ...(this.killGraceMs === undefined ? {} : { killGraceMs: this.killGraceMs }),
      onOutput: req.onOutput,
      onFd3: readInfo,
      termGroups: () => (innerSession === undefined ? [] : [innerSession]),
    });
  }
}

export function createSandboxRuntime(opts: SandboxRuntimeOptions = {}): SandboxRuntime {
  return new SandboxRuntime(opts);
}
