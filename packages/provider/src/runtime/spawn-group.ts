import { spawn } from 'node:child_process';
import type { Duplex } from 'node:stream';
import type { RunLimit, RunResult } from './runtime.ts';

/** Time between SIGTERM and SIGKILL when a task is stopped. */
export const DEFAULT_KILL_GRACE_MS = 2000;

/** setTimeout fires at once for delays above 2^31-1 ms; longer limits are capped (~24.8 days). */
const MAX_TIMER_MS = 2 ** 31 - 1;

export interface SpawnGroupOptions {
  file: string;
  args: readonly string[];
  cwd: string;
  /** The complete environment of the child (nothing is inherited from the agent). */
  env: Record<string, string>;
  timeoutMs: number;
  signal?: AbortSignal;
  killGraceMs?: number;
  onOutput: (stream: 'stdout' | 'stderr', data: string) => void;
  /** Extra pipes the child gets as fd 3, 4, … (bwrap --info-fd 3, --block-fd 4); handed to onStart. */
  extraPipes?: number;
  /** Called once the child exists (not for a failed spawn): its pid, the extra pipes, and ways to stop it. */
  onStart?: (control: GroupControl) => void;
  /**
   * Process groups that get the polite SIGTERM instead of the leader's own group. The sandbox returns
   * bwrap's inner session here: SIGTERM to the outer bwrap kills it at once, and --die-with-parent then
   * SIGKILLs the task without a chance to write a checkpoint. SIGKILL always goes to the leader's group too.
   */
  termGroups?: () => readonly number[];
}

/** What onStart receives. */
export interface GroupControl {
  pid: number;
  /** The child's fd 3, 4, … in order (see extraPipes). */
  pipes: Duplex[];
  /** Ends the run because a limit was hit: SIGTERM, SIGKILL after the grace period; the result carries the limit. */
  stop: (limit: RunLimit) => void;
  /** SIGKILLs the whole group at once (a failed setup: nothing of the task may run). */
  kill: () => void;
}

/**
 * Runs a command as the leader of a new process group (detached → setsid) and waits for it.
 * A timeout or an abort sends SIGTERM to the group and SIGKILL after the grace period. When the leader
 * exits, whatever is left in its group is killed too, so background children never outlive the task.
 * A command that cannot be started (ENOENT, EACCES) is reported like a shell does: a message on the
 * stderr callback and exit code 127.
 */
export function runProcessGroup(opts: SpawnGroupOptions): Promise<RunResult> {
  const started = performance.now();
  const graceMs = opts.killGraceMs ?? DEFAULT_KILL_GRACE_MS;
  const elapsed = () => Math.round(performance.now() - started);

  return new Promise<RunResult>((resolve) => {
    if (opts.signal?.aborted) {
      resolve({ exitCode: null, signal: null, timedOut: false, aborted: true, durationMs: 0 });
      return;
    }

    const stdio: ('ignore' | 'pipe')[] = ['ignore', 'pipe', 'pipe'];
    for (let i = 0; i < (opts.extraPipes ?? 0); i++) stdio.push('pipe');
    const child = spawn(opts.file, opts.args, { cwd: opts.cwd, env: opts.env, detached: true, stdio });
    const pgid = child.pid;

    let timedOut = false;
    let aborted = false;
    let limit: RunLimit | undefined;
    let exited = false;
    let finished = false;
    let exitCode: number | null = null;
    let exitSignal: string | null = null;
    let killTimer: NodeJS.Timeout | undefined;
    let closeTimer: NodeJS.Timeout | undefined;

    const signalGroups = (groups: readonly number[], sig: NodeJS.Signals) => {
      for (const g of groups) {
        try {
          process.kill(-g, sig);
        } catch {
          // ESRCH: the group is already gone, which is what we want.
        }
      }
    };

    const terminate = (cause: 'timeout' | 'abort' | RunLimit) => {
      if (exited || finished || killTimer !== undefined || pgid === undefined) return;
      if (cause === 'timeout') timedOut = true;
      else if (cause === 'abort') aborted = true;
      else limit = cause;
      const polite = opts.termGroups?.() ?? [];
      signalGroups(polite.length > 0 ? polite : [pgid], 'SIGTERM');
      killTimer = setTimeout(() => signalGroups([pgid, ...polite], 'SIGKILL'), graceMs);
    };

    const onAbort = () => terminate('abort');
    const timer = setTimeout(() => terminate('timeout'), Math.min(opts.timeoutMs, MAX_TIMER_MS));
    opts.signal?.addEventListener('abort', onAbort, { once: true });

    const finish = (result: Omit<RunResult, 'durationMs' | 'timedOut' | 'aborted'>) => {
      if (finished) return;
      finished = true;
      clearTimeout(timer);
      clearTimeout(killTimer);
      clearTimeout(closeTimer);
      opts.signal?.removeEventListener('abort', onAbort);
      resolve({ ...result, timedOut, aborted, durationMs: elapsed(), ...(limit ? { limit } : {}) });
    };

    for (const name of ['stdout', 'stderr'] as const) {
      const stream = child[name];
      // setEncoding keeps multi-byte UTF-8 characters split across chunks intact.
      stream?.setEncoding('utf8');
      stream?.on('data', (data: string) => opts.onOutput(name, data));
    }
    if (pgid !== undefined && opts.onStart) {
      const pipes = child.stdio.slice(3).filter((s): s is NonNullable<typeof s> => s !== null && s !== undefined) as Duplex[];
      for (const pipe of pipes) pipe.on('error', () => {});
      opts.onStart({
        pid: pgid,
        pipes,
        stop: (cause) => terminate(cause),
        kill: () => {
          if (!exited) signalGroups([pgid, ...(opts.termGroups?.() ?? [])], 'SIGKILL');
        },
      });
    }

    child.on('error', (err) => {
      // Only a failed spawn has no pid; later errors (a failed kill) are not fatal to the run.
      if (pgid !== undefined) return;
      opts.onOutput('stderr', `cannot start ${opts.file}: ${err.message}\n`);
      finish({ exitCode: 127, signal: null });
    });

    child.on('exit', (code, sig) => {
      exited = true;
      exitCode = code;
      exitSignal = sig;
      // Leftovers of the group (a backgrounded child) die with the task. They also hold our pipes open;
      // a process that escaped the group with setsid could hold them forever, so 'close' is awaited
      // only for the grace period.
      // The pending SIGKILL is no longer needed (the sandbox's inner session dies with the outer bwrap),
      // and signalling groups that have ended risks hitting a reused id.
      if (pgid !== undefined) signalGroups([pgid], 'SIGKILL');
      clearTimeout(killTimer);
      closeTimer = setTimeout(() => {
        child.stdout?.destroy();
        child.stderr?.destroy();
        finish({ exitCode, signal: exitSignal });
      }, graceMs);
    });

    child.on('close', (code, sig) => {
      if (pgid === undefined) return; // handled by 'error'
      finish({ exitCode: exited ? exitCode : code, signal: exited ? exitSignal : sig });
    });
  });
}
