/**
 * Retention of the event log and of task logs (DESIGN "Storage and scale"): rows of `events` and
 * `task_logs` are deleted once nothing can need them, so neither table grows for ever. Owns
 * `retention_marks` (how far through ended jobs each table's sweep has come).
 *
 * The rule. An event is deleted when all of these hold:
 * - every subscriber has passed it: it is at or below the stored position of every durable
 *   subscriber this process registered (one with no stored position resumes from 0, so it keeps
 *   everything), and every subscriber attached in memory has handled it;
 * - it is not the newest event (the log is never left empty: a bus starts from its newest position);
 * - its retention window has closed: it belongs to no job and was written more than `eventsMs`
 *   ago, or its job ended (succeeded, failed, cancelled: final states) more than `eventsMs` ago.
 * A job's log lines are deleted once the job ended more than `taskLogsMs` ago (nothing replays
 * them but the job's log stream). So a live job — `verifying` included — keeps every event and
 * every line. Its streams do not need the events (`/v1/jobs/:id/events` and `/logs` are read from
 * committed state and `task_logs`; events only wake them), but its history stays whole until it ends.
 *
 * Cost. Every delete removes at most `batchRows` rows, found through an index, and the sweep
 * yields between statements. Jobs are visited once, in the order they ended (index `jobs_ended`),
 * from a persisted mark, not rescanned on every sweep; events without a job are found by time
 * (index `events_jobless_at`).
 */
import { type Expression, sql } from 'kysely';
import type { Logger } from 'pino';
import type { SubscriberRoster } from '../bus/subscriber-roster.ts';
import type { Db } from '../store/database.ts';
import { lastPosition } from '../core/event-log.ts';

export interface RetentionOptions {
  /**
   * How long events are kept: events of no job after they were written, a job's events after the
   * job ended. `Infinity` keeps them for ever. @default 7 days
   */
  eventsMs?: number;
  /** How long a job's log lines are kept after the job ended. `Infinity` keeps them for ever. @default 7 days */
  taskLogsMs?: number;
  /** How often the sweep runs. @default 10 minutes */
  intervalMs?: number;
  /** The most rows one delete statement removes. @default 10000 */
  batchRows?: number;
}

export type RetentionConfig = Required<RetentionOptions>;

export function resolveRetentionOptions(o: RetentionOptions = {}): RetentionConfig {
  const week = 7 * 24 * 3600_000;
  const config: RetentionConfig = {
    eventsMs: o.eventsMs ?? week,
    taskLogsMs: o.taskLogsMs ?? week,
    intervalMs: o.intervalMs ?? 10 * 60_000,
    batchRows: o.batchRows ?? 10_000,
  };
  for (const key of ['eventsMs', 'taskLogsMs'] as const) {
    if (Number.isNaN(config[key]) || config[key] < 0) throw new RangeError(`retention.${key} must be 0 or more (Infinity keeps everything), got ${config[key]}`);
  }
  if (!Number.isFinite(config.intervalMs) || config.intervalMs <= 0) throw new RangeError(`retention.intervalMs must be a positive number, got ${config.intervalMs}`);
  if (!Number.isInteger(config.batchRows) || config.batchRows < 1) throw new RangeError(`retention.batchRows must be a positive integer, got ${config.batchRows}`);
  return config;
}

export interface SweepResult {
  /** Events deleted. */
  events: number;
  /** Log lines deleted. */
  taskLogs: number;
  /** Every subscriber had passed this position (events above it were kept); null when events were not swept. */
  passed: bigint | null;
}

/** Jobs handled per step of the walk through ended jobs. */
const JOBS_PER_STEP = 500;
/**
 * A job's end time is taken when its transaction starts writing, and commits a moment later; a
 * replica's clock may also be a little off. The persisted mark stays this far behind the cutoff,
 * so a job that ended "before" the mark but committed after it is still visited next time.
 */
const REVISIT_MS = 10 * 60_000;
/** How long a sweep waits for in-memory subscribers to pass the events it would delete; it tries again next time. */
const SUBSCRIBERS_WAIT_MS = 5000;

export interface RetentionDeps {
  db: Db;
  bus: SubscriberRoster;
  log: Logger;
}

export class Retention {
  private stopped = false;
  private inFlight: Promise<SweepResult> | undefined;

  constructor(
    private readonly deps: RetentionDeps,
    private readonly config: RetentionConfig,
  ) {}

  /**
   * Deletes what the rule allows, in bounded batches. One sweep at a time: a call while one runs
   * gets that one's result. `now` moves the clock for tests.
   */
  sweep(now: Date = new Date()): Promise<SweepResult> {
    this.inFlight ??= this.run(now).finally(() => {
      this.inFlight = undefined;
    });
    return this.inFlight;
  }

  /** A sweep in progress stops after its current statement; later sweeps do nothing (until `resume`). */
  stop(): void {
    this.stopped = true;
  }

  /** Sweeps run again (this replica became the leader again). */
  resume(): void {
    this.stopped = false;
  }

  private async run(now: Date): Promise<SweepResult> {
    const result: SweepResult = { events: 0, taskLogs: 0, passed: null };
    if (this.stopped) return result;
    const { taskLogsMs, eventsMs } = this.config;
    if (Number.isFinite(taskLogsMs)) {
      result.taskLogs = await this.throughEndedJobs('task_logs', cutoff(now, taskLogsMs), (jobs) => this.deleteLogsOf(jobs));
    }
    if (Number.isFinite(eventsMs)) {
      const passed = await this.passedByAll();
      result.passed = passed;
      if (passed > 0n) {
        const before = cutoff(now, eventsMs);
        result.events = (await this.deleteJoblessEvents(before, passed)) + (await this.throughEndedJobs('events', before, (jobs) => this.deleteEventsOf(jobs, passed)));
      }
    }
    if (result.events > 0 || result.taskLogs > 0) this.deps.log.info({ events: result.events, taskLogs: result.taskLogs, passed: result.passed?.toString() }, 'retention: old events and logs deleted');
    return result;
  }

  /** The highest position every subscriber has passed, below the newest event; 0 when none. */
  private async passedByAll(): Promise<bigint> {
    const { db, bus } = this.deps;
    let passed = (await lastPosition(db)) - 1n;
    const durable = bus.durable();
    const rows = durable.length > 0 ? await db.selectFrom('bus_positions').select(['subscriber', 'position']).where('subscriber', 'in', durable).execute() : [];
    const stored = new Map(rows.map((r) => [r.subscriber, BigInt(r.position)]));
    for (const name of durable) {
      const at = stored.get(name) ?? 0n;
      if (at < passed) passed = at;
    }
    if (passed <= 0n) return 0n;
    // Subscribers that are not durable keep their position in memory, and may still read old
    // events from the table: wait until each has passed this point (at once for the usual case).
    let timer: NodeJS.Timeout | undefined;
    const timedOut = new Promise<false>((resolve) => {
      timer = setTimeout(() => resolve(false), SUBSCRIBERS_WAIT_MS);
      timer.unref();
    });
    const reached = Promise.all(bus.attached().map((name) => bus.reached(name, passed))).then(() => true as const);
    const ok = await Promise.race([reached, timedOut]);
    clearTimeout(timer);
    if (!ok) {
      this.deps.log.warn({ position: passed.toString() }, 'retention: a bus subscriber has not passed the events to delete; trying again next sweep');
      return 0n;
    }
    return passed;
  }

  /** Events of no job written before `before`, at or below `passed`. */
  private async deleteJoblessEvents(before: Date, passed: bigint): Promise<number> {
    const { db } = this.deps;
    return this.inBatches(async (limit) => {
      const batch = db.selectFrom('events').select('position').where('job_id', 'is', null).where('at', '<', before).where('position', '<=', passed).orderBy('at').limit(limit);
      const r = await db.deleteFrom('events').where(byKeys('position', batch)).executeTakeFirst();
      return Number(r.numDeletedRows);
    });
  }

  /** The events of these (ended) jobs at or below `passed`; done when none of theirs is left. */
  private async deleteEventsOf(jobs: readonly string[], passed: bigint): Promise<{ deleted: number; done: boolean }> {
    const { db } = this.deps;
    const deleted = await this.inBatches(async (limit) => {
      const batch = db.selectFrom('events').select('position').where('job_id', 'in', jobs).where('position', '<=', passed).limit(limit);
      const r = await db.deleteFrom('events').where(byKeys('position', batch)).executeTakeFirst();
      return Number(r.numDeletedRows);
    });
    // Some not passed yet (a subscriber lags, or one is the newest event): these jobs come again next sweep.
    const left = await db.selectFrom('events').select('position').where('job_id', 'in', jobs).limit(1).executeTakeFirst();
    return { deleted, done: !left && !this.stopped };
  }

  /** The log lines of these (ended) jobs. */
  private async deleteLogsOf(jobs: readonly string[]): Promise<{ deleted: number; done: boolean }> {
    const { db } = this.deps;
    const deleted = await this.inBatches(async (limit) => {
      const batch = db.selectFrom('task_logs').select('id').where('job_id', 'in', jobs).limit(limit);
      const r = await db.deleteFrom('task_logs').where(byKeys('id', batch)).executeTakeFirst();
      return Number(r.numDeletedRows);
    });
    return { deleted, done: !this.stopped };
  }

  /**
   * Walks the jobs that ended before `before`, oldest end first, from where the last walk of
   * `table` got to; `step` deletes their rows. The walk stops at the first step that is not done,
   * and the mark only moves past jobs whose rows are all gone.
   */
  private async throughEndedJobs(
    table: 'events' | 'task_logs',
    before: Date,
    step: (jobs: readonly string[]) => Promise<{ deleted: number; done: boolean }>,
  ): Promise<number> {
    const { db } = this.deps;
    const mark = await db.selectFrom('retention_marks').select(['ended_at', 'job_id']).where('name', '=', table).executeTakeFirst();
    let from = { endedAt: mark?.ended_at ?? new Date(0), jobId: mark?.job_id ?? '' };
    const revisitFrom = new Date(before.getTime() - REVISIT_MS);
    let deleted = 0;
    while (!this.stopped) {
      const jobs = await db
        .selectFrom('jobs')
        .select(['id', 'updated_at'])
        // Literal states (no parameters): the planner matches them to the partial index jobs_ended.
        .where(sql<boolean>`state in ('succeeded', 'failed', 'cancelled')`)
        .where('updated_at', '<', before)
        .where(sql<boolean>`(updated_at, id) > (${from.endedAt}, ${from.jobId})`)
        .orderBy('updated_at')
        .orderBy('id')
        .limit(JOBS_PER_STEP)
        .execute();
      if (jobs.length === 0) break;
      const done = await step(jobs.map((j) => j.id));
      deleted += done.deleted;
      if (!done.done) break;
      const last = jobs[jobs.length - 1] as (typeof jobs)[number];
      from = { endedAt: last.updated_at, jobId: last.id };
      const keep = last.updated_at < revisitFrom ? from : { endedAt: revisitFrom, jobId: '' };
      // Only ever forward, even if two sweeps (two replicas) race.
      await db
        .insertInto('retention_marks')
        .values({ name: table, ended_at: keep.endedAt, job_id: keep.jobId })
        .onConflict((oc) =>
          oc
            .column('name')
            .doUpdateSet({ ended_at: keep.endedAt, job_id: keep.jobId })
            .where(sql<boolean>`(retention_marks.ended_at, retention_marks.job_id) < (${keep.endedAt}, ${keep.jobId})`),
        )
        .execute();
      if (jobs.length < JOBS_PER_STEP) break;
      await yieldTurn();
    }
    return deleted;
  }

  /** Runs `statement` (which deletes at most `limit` rows and says how many it did) until a batch comes back short. */
  private async inBatches(statement: (limit: number) => Promise<number>): Promise<number> {
    const limit = this.config.batchRows;
    let total = 0;
    while (!this.stopped) {
      const n = await statement(limit);
      total += n;
      if (n < limit) break;
      // Let the work queued behind this batch (PGlite has one connection) run before the next.
      await yieldTurn();
    }
    return total;
  }
}

/**
 * `key = any(array(batch))`: the rows of one batch, each found through the primary key. (With
 * `key in (batch)` PostgreSQL may hash-join a 10,000-row batch against a scan of the whole table.)
 */
function byKeys(key: 'position' | 'id', batch: Expression<unknown>) {
  return sql<boolean>`${sql.ref(key)} = any(array(${batch}))`;
}

function cutoff(now: Date, windowMs: number): Date {
  return new Date(now.getTime() - windowMs);
}

function yieldTurn(): Promise<void> {
  return new Promise((resolve) => setImmediate(resolve));
}

const registry = new WeakMap<object, Retention>();

/** Ties a coordinator's retention to its handle, so tests can sweep now (`retentionOf`). */
export function registerRetention(handle: object, retention: Retention): void {
  registry.set(handle, retention);
}

/** The retention of a coordinator started in this process. */
export function retentionOf(handle: object): Retention {
  const found = registry.get(handle);
  if (!found) throw new Error('not a coordinator started in this process');
  return found;
}
