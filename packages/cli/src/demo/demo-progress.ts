/**
 * What the full demo shows while it runs, on stderr. On a terminal: step headings and notes,
 * with live progress bars (one per job in flight) redrawn in place below them. Elsewhere (a
 * pipe, CI, --json): the same headings and notes as plain lines, and one line whenever a job's
 * progress changes state — never a redraw.
 */
import { color, isTty } from '../output.ts';

interface Bar {
  label: string;
  done: number;
  total: number;
  status: string;
}

const WIDTH = 24;

export class DemoProgress {
  private readonly bars = new Map<string, Bar>();
  private drawn = 0;
  private readonly plainSeen = new Map<string, string>();

  constructor(private readonly live: boolean = isTty) {}

  /** A step's heading: "[2/5] Batch inference". */
  heading(n: number, of: number, title: string): void {
    this.print(`${color.bold(color.cyan(`[${n}/${of}]`))} ${color.bold(title)}`);
  }

  /** A line under the current step. */
  note(line: string): void {
    this.print(`  ${line}`);
  }

  ok(line: string): void {
    this.print(`  ${color.green('✓')} ${line}`);
  }

  fail(line: string): void {
    this.print(`  ${color.red('✗')} ${line}`);
  }

  warn(line: string): void {
    this.print(`  ${color.yellow('!')} ${line}`);
  }

  /**
   * Sets a progress bar (created on first use). Off a terminal, prints its status as a line
   * whenever `plainKey` (default: the status itself) changes.
   */
  bar(key: string, label: string, done: number, total: number, status: string, plainKey: string = status): void {
    const bar = { label, done: Math.max(0, Math.min(done, total)), total: Math.max(total, 1), status };
    this.bars.set(key, bar);
    if (this.live) {
      this.redraw();
      return;
    }
    if (this.plainSeen.get(key) === plainKey) return;
    this.plainSeen.set(key, plainKey);
    process.stderr.write(`  ${label}: ${status}\n`);
  }

  /** Removes a bar; its last state stays on screen as a plain line when `keep` is given. */
  done(key: string, keep?: string): void {
    this.bars.delete(key);
    this.plainSeen.delete(key);
    if (this.live) {
      this.clear();
      if (keep) process.stderr.write(`  ${keep}\n`);
      this.redraw();
    } else if (keep) process.stderr.write(`  ${keep}\n`);
  }

  private print(line: string): void {
    this.clear();
    process.stderr.write(`${line}\n`);
    this.redraw();
  }

  private clear(): void {
    if (!this.live || this.drawn === 0) return;
    process.stderr.write(`\x1b[${this.drawn}A\x1b[J`);
    this.drawn = 0;
  }

  private redraw(): void {
    if (!this.live) return;
    this.clear();
    const lines = [...this.bars.values()].map((b) => {
      const filled = Math.round((WIDTH * b.done) / b.total);
      const bar = color.green('█'.repeat(filled)) + color.dim('░'.repeat(WIDTH - filled));
      return `    ${b.label.padEnd(26)} ${bar} ${b.status}`;
    });
    if (lines.length > 0) process.stderr.write(lines.map((l) => `\x1b[2K${l}\n`).join(''));
    this.drawn = lines.length;
  }
}
