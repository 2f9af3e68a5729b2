import { stat } from 'node:fs/promises';
import { GridworkError } from '@gridwork/protocol';
import { buildTaskEnv, validateRunRequest, type RunRequest, type RunResult, type Runtime } from './runtime.ts';
import { runProcessGroup } from './spawn-group.ts';

/**
 * Development runtime: the task runs directly on the host, as the agent's user, with the real directory
 * paths in GRIDWORK_*. It gives the same env contract, time limit and abort as the sandbox, but no
 * isolation at all (network, files, memory, processes, CPU and disk are unrestricted: memoryBytes, cpu and
 * diskBytes are accepted and ignored; RunResult.limit is never set).
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
    async run(req: RunRequest): Promise<RunResult> {
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
      const [file, ...args] = req.command;
      return runProcessGroup({
        // spawn resolves a bare name through env.PATH, i.e. the task's PATH, not the agent's.
        file: file ?? '',
        args,
        cwd: req.bundleDir,
        env: buildTaskEnv(req, { inputs: req.inputsDir, outputs: req.outputsDir, checkpoints: req.checkpointsDir }),
        timeoutMs: req.timeoutMs,
        ...(req.signal ? { signal: req.signal } : {}),
        ...(opts.killGraceMs === undefined ? {} : { killGraceMs: opts.killGraceMs }),
        onOutput: req.onOutput,
      });
    },
  };
}
