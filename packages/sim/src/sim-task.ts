/**
 * What a simulated task is: a command naming its job and its amount of work, whose one correct
 * output (`result.txt`) any provider can compute from the assignment alone — the same
 * command, task index and inputs give the same bytes, as an exact-mode audit expects. The
 * amount of work is what the provider bills (`durationMs`); nothing runs for that long.
 */
import { canonicalJson, type LeaseAssignment } from '@gridwork/protocol';
import { sha256Hex } from '@gridwork/protocol/node';

/** The command's first word: only simulated providers know how to "run" it. */
export const SIM_COMMAND = 'gridwork-sim-task';
export const OUTPUT_PATH = 'result.txt';

export interface SimTask {
  /** What makes this task this task: the same key on every provider that runs it (a check replays it). */
  key: string;
  /** Run time the work takes on the hardware a provider claims, ms. */
  workMs: number;
  /** Lines of output a faithful run writes (a larger task writes more). */
  lines: number;
}

export function taskCommand(seed: string, job: number, workMs: number): string[] {
  return [SIM_COMMAND, '--seed', seed, '--job', String(job), '--work-ms', String(workMs)];
}

/** Reads a task from its assignment; null when it is not a simulated task. */
export function taskOf(lease: LeaseAssignment): SimTask | null {
  const cmd = lease.runtime.command;
  if (cmd[0] !== SIM_COMMAND) return null;
  const i = cmd.indexOf('--work-ms');
  const workMs = Number(cmd[i + 1]);
  if (i < 0 || !Number.isInteger(workMs) || workMs <= 0) return null;
  const key = sha256Hex(canonicalJson({ command: cmd, taskIndex: lease.taskIndex, inputs: lease.inputs }));
  return { key, workMs, lines: Math.max(4, Math.round(workMs / 5000)) };
}

/** The faithful output. */
export function correctOutput(task: SimTask): Buffer {
  return linesOf(task.lines, (i) => sha256Hex(`${task.key}:${i}`));
}

/** An output nobody computed, different for every `who`. */
export function madeUpOutput(task: SimTask, who: string): Buffer {
  return linesOf(task.lines, (i) => sha256Hex(`made up by ${who}:${task.key}:${i}`));
}

/** The first half of the faithful output: the work stopped halfway. */
export function truncatedOutput(task: SimTask): Buffer {
  const full = correctOutput(task);
  return full.subarray(0, Math.floor(task.lines / 2) * 65);
}

function linesOf(n: number, line: (i: number) => string): Buffer {
  const out: string[] = [];
  for (let i = 0; i < n; i++) out.push(`${line(i)}\n`);
  return Buffer.from(out.join(''));
}
