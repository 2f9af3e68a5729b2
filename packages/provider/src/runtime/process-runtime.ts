import { mkdir, rm, stat, symlink } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { GridworkError } from '@gridwork/protocol';
import {
  buildTaskEnv,
  endedTask,
  type ExposedPort,
  healthProbe,
  type RunningTask,
  type RunRequest,
  type RunResult,
  type Runtime,
  runToExit,
  validateRunRequest,
} from './runtime.ts';
import { runProcessGroup } from './spawn-group.ts';
import { freeLoopbackPort } from './task-network.ts';

/**
 * Development runtime: the task runs directly on the host, as the agent's user, with the real directory
 * paths in GRIDWORK_*. It gives the same env contract, time limit and abort as the sandbox, but no
 * isolation at all (network, files, memory, processes, CPU and disk are unrestricted: memoryBytes, cpu and
 * diskBytes are accepted and ignored; RunResult.limit is never set). GPUs: only CUDA_VISIBLE_DEVICES /
 * NVIDIA_VISIBLE_DEVICES are set, every device of the host stays visible. Ports: there is no namespace to forward
 * into, so each exposed port gets a free host port and the task's PORT is that host port (a task listening on a
 * fixed port of its own is not remapped).
 */

export const PROCESS_RUNTIME_WARNING = "process runtime: tasks run UNSANDBOXED with the agent's privileges — development only";

export interface ProcessRuntimeOptions {
  /** Receives PROCESS_RUNTIME_WARNING once, when the runtime is created. */
  warn: (message: string) => void;
  /** @default 2000 */
  killGraceMs?: number;
}

export function createProcessRuntime(opts: ProcessRuntimeOptions): Runtime {
  opts.warn(PROCESS_RUNTIME_WARNING);
  return {
    kind: 'process',
    async check(): Promise<void> {
      // Nothing to install; running unsandboxed always works.
    },
    run(req: RunRequest): Promise<RunResult> {
      return runToExit(this, req);
    },
    async start(req: RunRequest): Promise<RunningTask> {
      validateRunRequest(req);
      for (const [label, dir] of Object.entries({
        bundleDir: req.bundleDir,
        inputsDir: req.inputsDir,
        outputsDir: req.outputsDir,
        checkpointsDir: req.checkpointsDir,
      })) {
        const st = await stat(dir).catch(() => undefined);
        if (!st?.isDirectory()) throw new GridworkError('INTERNAL', `${label} is not a directory: ${dir}`);
      }
      if (req.signal?.aborted) return endedTask({ exitCode: null, signal: null, timedOut: false, aborted: true, durationMs: 0 });
      // No mounts here: the task finds its delivered rounds through a link (it runs as the agent's user anyway).
      if (req.exchangeInDir) {
        const mountPoint = join(req.checkpointsDir, 'exchange', 'in');
        await rm(mountPoint, { recursive: true, force: true });
        await mkdir(dirname(mountPoint), { recursive: true });
        await symlink(req.exchangeInDir, mountPoint);
      }
      const ports: ExposedPort[] = [];
      for (const task of req.ports ?? []) ports.push({ task, host: await freeLoopbackPort(), address: '127.0.0.1' });
      const abort = new AbortController();
      const onCallerAbort = () => abort.abort(req.signal?.reason);
      req.signal?.addEventListener('abort', onCallerAbort, { once: true });
      const [file, ...args] = req.command;
      let ended = false;
      const done = runProcessGroup({
        // spawn resolves a bare name through env.PATH, i.e. the task's PATH, not the agent's.
        file: file ?? '',
        args,
        cwd: req.bundleDir,
        env: buildTaskEnv(req, { inputs: req.inputsDir, outputs: req.outputsDir, checkpoints: req.checkpointsDir }, ports[0]?.host),
        timeoutMs: req.timeoutMs,
        signal: abort.signal,
        ...(opts.killGraceMs === undefined ? {} : { killGraceMs: opts.killGraceMs }),
        onOutput: req.onOutput,
      }).finally(() => {
        ended = true;
        req.signal?.removeEventListener('abort', onCallerAbort);
      });
      return { ports, health: healthProbe(ports, req.healthCheck, () => ended), stop: (reason) => abort.abort(reason), wait: () => done };
    },
  };
}
