/**
 * Log entries → whole lines. The coordinator stores output as the chunks the provider sent;
 * people and programs want lines. A partial line is held per (task, lease, stream) until its
 * newline arrives, so lines of stdout and stderr, or of two tasks, never mix.
 */
import type { LogEntry } from '@gridwork/protocol';

export interface LogLine {
  taskIndex: number;
  leaseId: string;
  stream: LogEntry['stream'];
  /** The line, without its newline. */
  line: string;
  /** Sequence number of the entry that completed the line (resume with `after: seq`). */
  seq: number;
  ts: string;
}

export class LogLineSplitter {
  private readonly partial = new Map<string, { text: string; entry: LogEntry }>();

  *push(e: LogEntry): Generator<LogLine> {
    const key = `${e.taskIndex}\0${e.leaseId}\0${e.stream}`;
    const held = this.partial.get(key);
    const text = (held?.text ?? '') + e.data;
    const parts = text.split('\n');
    const rest = parts.pop() as string;
    for (const p of parts) yield { taskIndex: e.taskIndex, leaseId: e.leaseId, stream: e.stream, line: p.replace(/\r$/, ''), seq: e.seq, ts: e.ts };
    if (rest === '') this.partial.delete(key);
    else this.partial.set(key, { text: rest, entry: e });
  }

  /** Lines still missing their newline, at the end of a log. */
  *flush(): Generator<LogLine> {
    for (const { text, entry: e } of this.partial.values()) {
      yield { taskIndex: e.taskIndex, leaseId: e.leaseId, stream: e.stream, line: text, seq: e.seq, ts: e.ts };
    }
    this.partial.clear();
  }
}
