/**
 * Per-task progress while waiting for a job. On a TTY, a block of lines redrawn in place;
 * otherwise one line per task state change (logs and CI stay readable).
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

export class Progress {
  private drawn = 0;
  private readonly last = new Map<number, string>();

  update(job: JobView): void {
    if (isTty) {
      const done = job.tasks.filter((t) => t.state === 'succeeded').length;
      const lines = [`${color.bold(job.name)} ${job.id}  ${job.state}  ${done}/${job.tasks.length} tasks done`, ...job.tasks.slice(0, 40).map(taskLine)];
      if (job.tasks.length > 40) lines.push(color.dim(`  … ${job.tasks.length - 40} more`));
      if (this.drawn > 0) process.stderr.write(`\x1b[${this.drawn}A`);
      process.stderr.write(lines.map((l) => `\x1b[2K${l}\n`).join(''));
      this.drawn = lines.length;
      return;
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
}
