/**
 * Places queued tasks on providers through the market. One pass runs at a time; wake-ups during
 * a pass coalesce into one more pass. A pass places in units of work of CHUNK tasks: each
 * placement is a lifecycle `place` command (capacity taken in the database, lease, escrow,
 * assignment in the provider's outbox), so a crash never leaves a task half-placed or money
 * half-moved, and a failed pass is retried shortly (nothing stays stranded in the queue).
 *
 * Fair share across requesters: candidates are ranked within each account (oldest first) and
 * the accounts interleave by (leases they hold now + rank), so a small job queued behind a large
 * one starts within a pass or two instead of after the large one drains; within that order a
 * higher max price goes first.
 *
 * Only the leader schedules (leader/leadership.ts): on any other replica a pass does nothing. A
 * pass runs under the leader's fencing epoch, so a placement of a term that has ended is refused
 * by the database (leader/fence.ts) instead of racing the new leader's.
 */
import type { Logger } from 'pino';
import { sql } from 'kysely';
import type { JobSpec } from '@gridwork/protocol';
import type { Lifecycle, PlaceResult } from '../lifecycle/lifecycle.ts';
import { limitMsOf } from '../core/time-limit.ts';
import type { Units, UnitOfWork } from '../core/unit-of-work.ts';
import type { Auctions } from '../market/auctions.ts';
import { type Market, orderOf } from '../market/market.ts';
import type { Db } from '../store/database.ts';
import { isRetryable } from '../store/transact.ts';
import { asLeader, Deposed } from '../leader/fence.ts';

export interface SchedulerDeps {
  db: Db;
  units: Units;
  lifecycle: Lifecycle;
  log: Logger;
  market: Market;
  auctions: Auctions;
  /** The leader's current term; null while this replica does not lead (it then places nothing). Absent: always schedules, unfenced (a scheduler on its own, in tests). */
  epoch?: () => bigint | null;
}

export interface SchedulerOptions {
  /** Most tasks considered per pass. @default 500 */
  batchSize?: number;
}

interface Candidate {
  id: string;
  job_id: string;
  job_state: string;
  spec: JobSpec;
  max_per_hour: bigint;
  queued_at: Date;
  exclude_providers: string[];
  only_provider: string | null;
  /** Providers that lost this task before: a retry goes elsewhere when it can. */
  failed_on: string[];
}

/** Placements per unit of work: small enough that a pass never holds many locks for long. */
const CHUNK = 50;
/** A pass that failed (e.g. a deadlock that outlived its retries), or that found a job busy, runs again after this. */
const RETRY_MS = 250;
/** PostgreSQL's lock_not_available: a NOWAIT lock another transaction holds. */
const LOCK_NOT_AVAILABLE = '55P03';

export class Scheduler {
  private loop: Promise<void> | undefined;
  private again = false;
  private closed = false;
  private started = 0;
  private finished = 0;
  private waiters: { pass: number; resolve: () => void }[] = [];
  private retry: NodeJS.Timeout | undefined;
  private readonly batchSize: number;

  constructor(
    private readonly deps: SchedulerDeps,
    options: SchedulerOptions = {},
  ) {
    this.batchSize = options.batchSize ?? 500;
  }

  /**
   * Asks for a pass; resolves when a pass that started after this call has finished (not when
   * the scheduler next goes idle: under steady load a submitter must not wait behind every
   * other submitter's passes).
   */
  kick(): Promise<void> {
    if (this.closed) return Promise.resolve();
    const done = new Promise<void>((resolve) => this.waiters.push({ pass: this.started + 1, resolve }));
    this.again = true;
    this.loop ??= this.run();
    return done;
  }

  private async run(): Promise<void> {
    try {
      while (this.again && !this.closed) {
        this.again = false;
        this.started++;
        const epoch = this.deps.epoch ? this.deps.epoch() : undefined;
        const placed = await (epoch === null ? Promise.resolve(0) : epoch === undefined ? this.pass() : asLeader(epoch, () => this.pass())).catch((err) => {
          if (err instanceof Deposed) {
            this.deps.log.warn({ err }, 'scheduler pass refused: this replica no longer leads');
            return 0;
          }
          this.deps.log.error({ err }, 'scheduler pass failed; retrying');
          clearTimeout(this.retry);
          this.retry = setTimeout(() => void this.kick(), RETRY_MS);
          this.retry.unref();
          return 0;
        });
        this.finished++;
        this.waiters = this.waiters.filter((w) => {
          if (w.pass > this.finished) return true;
          w.resolve();
          return false;
        });
        if (placed >= this.batchSize) this.again = true;
      }
    } finally {
      this.loop = undefined;
      if (this.closed) for (const w of this.waiters.splice(0)) w.resolve();
    }
  }

  async close(): Promise<void> {
    this.closed = true;
    clearTimeout(this.retry);
    await this.loop;
    for (const w of this.waiters.splice(0)) w.resolve();
  }

  /** Queued tasks in fair-share order. */
  private async candidates(): Promise<Candidate[]> {
    const rows = await sql<Candidate & { max_per_hour: bigint | string }>`
      with ranked as (
        select t.id, t.idx, t.job_id, t.queued_at, j.owner, j.state as job_state, j.spec, j.max_per_hour, j.exclude_providers, j.only_provider,
               row_number() over (partition by j.owner order by t.queued_at, t.idx) as rank
        from tasks t join jobs j on j.id = t.job_id
        where t.state = 'queued'
      ), held as (
        -- Only the owners with queued work: an empty queue (most passes on an idle network)
        -- costs no scan of every active lease. (Not read from ranked: a second reference would
        -- make PostgreSQL store every queued row, specs included.)
        select j.owner, count(*) as n
        from leases l join jobs j on j.id = l.job_id
        where l.state in ('offered', 'starting', 'running')
          and j.owner in (select qj.owner from tasks qt join jobs qj on qj.id = qt.job_id where qt.state = 'queued')
        group by j.owner
      )
      select r.id, r.job_id, r.job_state, r.spec, r.max_per_hour, r.queued_at, r.exclude_providers, r.only_provider,
             (select coalesce(array_agg(distinct l.provider_id), '{}') from leases l where l.task_id = r.id and l.state = 'lost') as failed_on
      from ranked r left join held h on h.owner = r.owner
      where r.rank <= ${this.batchSize}
      order by coalesce(h.n, 0) + r.rank, r.max_per_hour desc, r.queued_at, r.idx
      limit ${this.batchSize}`.execute(this.deps.db);
    return rows.rows.map((r) => ({ ...r, max_per_hour: BigInt(r.max_per_hour), queued_at: new Date(r.queued_at) }));
  }

  private async pass(): Promise<number> {
    // A full network places nothing: skip reading the queue (on the embedded store, a pass per
    // ended lease over a long queue kept the one connection busy for everyone else).
    if (!this.deps.market.book.hasFreeCapacity()) {
      await this.markWaiting();
      return 0;
    }
    const queued = await this.candidates();
    const stale = new Set<string>();
    const waiting = new Set<string>();
    const busy = new Set<string>();
    let placed = 0;
    for (let i = 0; i < queued.length && !this.closed; i += CHUNK) {
      placed += await this.placeChunk(queued.slice(i, i + CHUNK), stale, waiting, busy);
    }
    if (busy.size > 0 && !this.closed) {
      clearTimeout(this.retry);
      this.retry = setTimeout(() => void this.kick(), RETRY_MS);
      this.retry.unref();
    }
    // The index believed these providers had room the database had not: reload them from it.
    if (stale.size > 0) await this.deps.market.resync(stale);
    if (placed > 0) this.deps.log.debug({ placed }, 'tasks placed');
    return placed;
  }

  /** New jobs that nothing can take now say so (pending → matching), without reading the queue. */
  private async markWaiting(): Promise<void> {
    const pending = await this.deps.db.selectFrom('jobs').select('id').where('state', '=', 'pending').limit(this.batchSize).execute();
    if (pending.length === 0) return;
    await this.deps.units.run(async (uow) => {
      for (const j of pending) await this.deps.lifecycle.awaitMatch(uow, j.id);
    });
  }

  /** One unit of work: places what it can of `chunk`. */
  private placeChunk(chunk: readonly Candidate[], stale: Set<string>, waiting: Set<string>, busy: Set<string>): Promise<number> {
    const { market, lifecycle } = this.deps;
    return this.deps.units.run(async (uow) => {
      // Capacity is reserved in the matching index as tasks are placed; if this attempt does
      // not commit, those reservations are undone before any retry.
      const reserved: string[] = [];
      try {
        let count = 0;
        const gangs = new Set<string>();
        for (const t of chunk) {
          if (t.spec.kind === 'cluster') {
            // All members of a cluster at once, or none: the first queued member places its whole gang.
            if (gangs.has(t.job_id)) continue;
            gangs.add(t.job_id);
            count += await this.placeGang(uow, t, reserved, stale, waiting);
            continue;
          }
          const order = orderOf(t.spec, t.max_per_hour, { exclude: t.exclude_providers, provider: t.only_provider });
          const windowMs = t.spec.price?.auctionWindowMs ?? 0;
          const orderId = `${t.id}@${t.queued_at.getTime()}`;
          let bids: ReadonlyMap<string, bigint> | undefined;
          if (windowMs > 0) {
            const auction = this.deps.auctions.state(orderId, order, windowMs);
            if (auction.open) continue;
            bids = auction.bids;
          }
          // A task retried after a provider lost it waits for another provider while one is connected;
          // only on a network of nothing but those providers does it go back to one of them.
          const avoid = t.failed_on.length > 0 && !t.only_provider && market.hasConnectedBesides([...(order.excludeProviders ?? []), ...t.failed_on]);
          const match = market.match(avoid ? { ...order, excludeProviders: [...(order.excludeProviders ?? []), ...t.failed_on] } : order, bids);
          if (windowMs > 0 && match) this.deps.auctions.finish(orderId);
          if (!match) {
            if (t.job_state === 'pending' && !waiting.has(t.job_id)) {
              waiting.add(t.job_id);
              await lifecycle.awaitMatch(uow, t.job_id);
            }
            continue;
          }
          // Each placement behind a savepoint: one that fails (bad data from a provider, a broken
          // row) is undone alone — its writes and its events — and skipped, instead of failing every
          // placement of the pass again and again.
          let result: PlaceResult;
          try {
            result = await uow.savepoint(async () => {
              // Once this unit holds provider rows (earlier placements), the job's row is taken
              // without waiting: a provider's report that holds the job and waits for one of those
              // rows would deadlock with it (broken only after deadlock_timeout, 1 s, both stalled).
              // A busy job's task is placed by the next pass.
              if (reserved.length > 0) await sql`select id from jobs where id = ${t.job_id} for no key update nowait`.execute(uow.trx);
              return lifecycle.place(uow, { taskId: t.id, jobId: t.job_id, providerId: match.providerId, pricePerHour: match.pricePerHour, gpus: match.gpus });
            });
          } catch (err) {
            if ((err as { code?: unknown }).code === LOCK_NOT_AVAILABLE) {
              busy.add(t.id);
              continue;
            }
            if (isRetryable(err)) throw err; // a deadlock aborts the whole transaction: retry it all
            this.deps.log.error({ err, taskId: t.id, providerId: match.providerId }, 'placement failed; task skipped this pass');
            stale.add(match.providerId);
            continue;
          }
          if (result.status === 'capacity-taken') stale.add(match.providerId);
          if (result.status !== 'placed') continue;
          market.book.reserve(result.leaseId, match.providerId, t.spec.resources, match.gpus, Date.now() + limitMsOf(t.spec));
          reserved.push(result.leaseId);
          count++;
        }
        return count;
      } catch (err) {
        for (const id of reserved) market.book.release(id);
        throw err;
      }
    });
  }

  /**
   * Gang scheduling: places every member of a cluster job in one savepoint, or none of them (the
   * matching index's reservations undone too). Members wait until all of them are queued (a
   * restarting cluster's members are all requeued together by the lifecycle).
   */
  private async placeGang(uow: UnitOfWork, first: Candidate, reserved: string[], stale: Set<string>, waiting: Set<string>): Promise<number> {
    const { market, lifecycle } = this.deps;
    const members = await uow.trx.selectFrom('tasks').select(['id', 'state']).where('job_id', '=', first.job_id).orderBy('idx').execute();
    if (members.some((m) => m.state !== 'queued')) return 0;
    const order = orderOf(first.spec, first.max_per_hour);
    const mine: string[] = [];
    try {
      // One savepoint for the gang: a member that does not fit undoes every member's placement and events.
      await uow.savepoint(async () => {
        for (const m of members) {
          const match = market.match(order);
          const result: PlaceResult = match
            ? await lifecycle.place(uow, { taskId: m.id, jobId: first.job_id, providerId: match.providerId, pricePerHour: match.pricePerHour, gpus: match.gpus })
            : { status: 'gone' };
          if (result.status !== 'placed' || !match) {
            if (result.status === 'capacity-taken' && match) stale.add(match.providerId);
            throw new GangIncomplete();
          }
          market.book.reserve(result.leaseId, match.providerId, first.spec.resources, match.gpus, Date.now() + limitMsOf(first.spec));
          mine.push(result.leaseId);
        }
      });
      reserved.push(...mine);
      return mine.length;
    } catch (err) {
      for (const id of mine) market.book.release(id);
      if (isRetryable(err)) throw err;
      if (!(err instanceof GangIncomplete)) this.deps.log.error({ err, jobId: first.job_id }, 'gang placement failed; cluster skipped this pass');
      else if (first.job_state === 'pending' && !waiting.has(first.job_id)) {
        waiting.add(first.job_id);
        await lifecycle.awaitMatch(uow, first.job_id);
      }
      return 0;
    }
  }
}

/** Not every member of a cluster could be placed now. */
class GangIncomplete extends Error {}
