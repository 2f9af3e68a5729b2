/**
 * Per-task progress while waiting for a job, on stderr. On a TTY, a block of lines redrawn in
 * place; otherwise one line per change (logs and CI stay readable). While tasks wait for
 * capacity, the reasons the coordinator gives (the job's `explain`) are shown and kept up to date.
 */
import type { JobView, TaskView } from '@gridwork/protocol';
import { color, formatDuration, isTty } from './output.ts';

const stateColor: Record<string, (s: string) => string> = {
  succeeded: color.green,
  failed: color.red,
  cancelled: color.yellow,
  running: color.cyan,
  assigned: color.blue,
  queued: color.dim,
};

function taskLine(t: TaskView): string {
  const paint = stateColor[t.state] ?? ((s: string) => s);
  const where = t.providerName ? `on ${t.providerName}` : '';
  const extra = t.state === 'succeeded' || t.state === 'failed' ? formatDuration(t.durationMs) : t.attempts > 0 ? `retry ${t.attempts}` : '';
  return `  task ${String(t.index).padStart(3)}  ${paint(t.state.padEnd(9))}  ${where.padEnd(22)} ${extra}`;
}

/** Why tasks are waiting, when the job says so. */
export function waitingReasons(job: JobView): string[] {
  if (!job.explain || job.explain.matchable) return [];
  if (!job.tasks.some((t) => t.state === 'queued')) return [];
  return job.explain.reasons;
}

export class Progress {
  private drawn = 0;
  private readonly last = new Map<number, string>();
  private lastReasons = '';
  private lastState = '';

  update(job: JobView): void {
    const reasons = waitingReasons(job);
    if (isTty) {
      const done = job.tasks.filter((t) => t.state === 'succeeded').length;
      const lines = [`${color.bold(job.name)} ${job.id}  ${job.state}  ${done}/${job.tasks.length} tasks done`];
      if (reasons.length > 0) lines.push(color.yellow('  waiting for capacity:'), ...reasons.map((r) => color.yellow(`    - ${r}`)));
      lines.push(...job.tasks.slice(0, 40).map(taskLine));
      if (job.tasks.length > 40) lines.push(color.dim(`  … ${job.tasks.length - 40} more`));
      this.redraw(lines);
      return;
    }
    if (job.state !== this.lastState) {
      this.lastState = job.state;
      process.stderr.write(`job ${job.id}: ${job.state}\n`);
    }
    const reasonKey = reasons.join('\n');
    if (reasonKey !== this.lastReasons) {
      this.lastReasons = reasonKey;
      if (reasons.length > 0) process.stderr.write(`waiting for capacity:\n${reasons.map((r) => `  - ${r}\n`).join('')}`);
    }
    for (const t of job.tasks) {
      const key = `${t.state}:${t.providerName ?? ''}:${t.attempts}`;
      if (this.last.get(t.index) === key) continue;
      this.last.set(t.index, key);
      process.stderr.write(
        `task ${t.index}: ${t.state}${t.providerName ? ` on ${t.providerName}` : ''}${t.state === 'queued' && t.attempts > 0 ? ` (retry ${t.attempts})` : ''}\n`,
      );
    }
  }

  /** A line about the connection (lost, restored), kept below the progress block. */
  note(line: string): void {
    if (isTty && this.drawn > 0) {
      process.stderr.write(`\x1b[${this.drawn}A\x1b[J`);
      this.drawn = 0;
    }
    process.stderr.write(`${line}\n`);
  }

  private redraw(lines: string[]): void {
    if (this.drawn > 0) process.stderr.write(`\x1b[${this.drawn}A\x1b[J`);
    process.stderr.write(lines.map((l) => `\x1b[2K${l}\n`).join(''));
    this.drawn = lines.length;
  }
}
