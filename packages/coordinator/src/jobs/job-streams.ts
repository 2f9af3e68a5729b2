/**
 * Live views of a job for its owner, fed by the bus: snapshots whenever one of the job's events
 * commits, and its log lines as they are stored. Each open stream is a short-lived bus
 * subscriber that only wakes its reader; the reader re-reads committed state.
 */
import { randomUUID } from 'node:crypto';
import { type JobView, type LogEntry, TERMINAL_JOB_STATES } from '@gridwork/protocol';
import type { Bus, LocalProgress } from '../bus/bus.ts';
import type { DomainEventType } from '../core/events.ts';
import type { JobService } from './job-service.ts';

const JOB_EVENTS: DomainEventType[] = [
  'job.progressed',
  'job.ended',
  'job.funding',
  'job.topped-up',
  'task.requeued',
  'task.ended',
  'lease.placed',
  'lease.started',
  'lease.ended',
];

export class JobStreams {
  constructor(private readonly deps: { jobs: JobService; bus: Bus & LocalProgress }) {}

  /** Wakes `onEvent` for each committed event of `jobId` of these types; returns the unsubscribe. */
  private watch(jobId: string, types: DomainEventType[], onEvent: (position: bigint) => void): Promise<() => void> {
    return this.deps.bus.subscribe({
      name: `stream:${jobId}:${randomUUID()}`,
      types,
      handle(events) {
        for (const e of events) if ('jobId' in e && e.jobId === jobId) onEvent(e.position);
      },
    });
  }

  /** The job now, then after every change, until it ends. `position`: the last event the snapshot reflects. */
  async *snapshots(owner: string, jobId: string, signal: AbortSignal): AsyncGenerator<{ type: 'job'; job: JobView; position: string }> {
    const w = waiter(signal);
    const off = await this.watch(jobId, JOB_EVENTS, () => w.wake());
    try {
      while (!signal.aborted) {
        // Read before the snapshot: the newest event this process knows committed, which the snapshot reflects.
        const seen = this.deps.bus.head();
        const job = await this.deps.jobs.get(owner, jobId);
        yield { type: 'job', job, position: seen.toString() };
        if (TERMINAL_JOB_STATES.includes(job.state)) return;
        await w.wait();
      }
    } finally {
      off();
    }
  }

  /** Log entries after `after`; with `follow`, waits for more until the job's tasks are all done (it ends or verifies). */
  async *logs(jobId: string, after: bigint, options: { follow: boolean; limit: number }, signal: AbortSignal): AsyncGenerator<LogEntry> {
    const w = waiter(signal);
    const off = await this.watch(jobId, ['task.logged', 'job.progressed', 'job.ended'], () => w.wake());
    let cursor = after;
    let sent = 0;
    try {
      while (!signal.aborted && sent < options.limit) {
        const terminal = await this.deps.jobs.logsComplete(jobId);
        const page = await this.deps.jobs.logsAfter(jobId, cursor, Math.min(1000, options.limit - sent));
        for (const e of page.entries) yield e;
        sent += page.entries.length;
        cursor = page.last;
        if (page.entries.length > 0) continue;
        if (!options.follow || terminal) return;
        await w.wait();
      }
    } finally {
      off();
    }
  }
}

/** Waits until `wake` is called or the signal aborts. */
function waiter(signal: AbortSignal): { wait: () => Promise<void>; wake: () => void } {
  let resolve: (() => void) | undefined;
  let pending = false;
  const wake = () => {
    pending = true;
    resolve?.();
  };
  signal.addEventListener('abort', wake, { once: true });
  return {
    wake,
    wait: () =>
      pending
        ? Promise.resolve().then(() => {
            pending = false;
          })
        : new Promise<void>((r) => {
            resolve = () => {
              pending = false;
              resolve = undefined;
              r();
            };
          }),
  };
}
