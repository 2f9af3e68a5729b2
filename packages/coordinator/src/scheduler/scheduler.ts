/**
 * Places queued tasks on providers through the market. One pass runs at a time; kicks during a
 * pass coalesce into one more pass. A placement (lease row at the matched price, escrow drawn
 * from the job's hold, task update, outbox message) commits in one transaction before anything
 * is sent, so a crash never leaves a task half-placed or money half-moved.
 */
import { type LeaseAssignment, newId } from '@gridwork/protocol';
import type { Logger } from 'pino';
import { type Changes, enqueueForProvider, newChanges, refreshJob } from '../jobs/lease-lifecycle.ts';
import { assertTransition } from '../jobs/state-machine.ts';
import { balanceOf, holdOf } from '../ledger/ledger.ts';
import { costOf, type EconomicsConfig, fundLease } from '../ledger/lease-economics.ts';
import type { Auctions } from '../market/auctions.ts';
import { type Market, orderOf } from '../market/market.ts';
import type { Db } from '../store/database.ts';
import { transact } from '../store/transact.ts';

export interface SchedulerDeps {
  db: Db;
  log: Logger;
  market: Market;
  economics: EconomicsConfig;
  publish: (changes: Changes) => void;
  auctions: Auctions;
}

export interface SchedulerOptions {
  /** Most tasks considered per pass. @default 500 */
  batchSize?: number;
}

export class Scheduler {
  private running: Promise<void> | undefined;
  private again = false;
  private closed = false;
  private readonly batchSize: number;

  constructor(
    private readonly deps: SchedulerDeps,
    options: SchedulerOptions = {},
  ) {
    this.batchSize = options.batchSize ?? 500;
  }

  /** Asks for a pass soon; resolves when a pass that started after this call has finished. */
  kick(): Promise<void> {
    if (this.closed) return Promise.resolve();
    if (this.running) {
      this.again = true;
      return this.running;
    }
    this.running = (async () => {
      try {
        do {
          this.again = false;
          const placed = await this.pass().catch((err) => {
            this.deps.log.error({ err }, 'scheduler pass failed');
            return 0;
          });
          if (placed >= this.batchSize) this.again = true;
        } while (this.again && !this.closed);
      } finally {
        this.running = undefined;
      }
    })();
    return this.running;
  }

  async close(): Promise<void> {
    this.closed = true;
    await this.running;
  }

  private async pass(): Promise<number> {
    const { market, economics } = this.deps;
    const changes = newChanges(economics);
    const period = BigInt(economics.meteringIntervalMs);
    const placed = await transact(this.deps.db, async (trx) => {
      // Capacity is reserved in the matching index as tasks are placed; if this attempt does
      // not commit, those reservations are undone before any retry.
      const reserved: string[] = [];
      try {
        const queued = await trx
          .selectFrom('tasks')
          .innerJoin('jobs', 'jobs.id', 'tasks.job_id')
          .select([
            'tasks.id',
            'tasks.idx',
            'tasks.state',
            'tasks.inputs',
            'tasks.job_id',
            'jobs.spec',
            'jobs.bundle_manifest',
            'jobs.state as job_state',
            'jobs.max_per_hour',
            'jobs.low_balance_since',
            'tasks.queued_at',
          ])
          .where('tasks.state', '=', 'queued')
          .orderBy('tasks.queued_at')
          .orderBy('tasks.idx')
          .limit(this.batchSize)
          .forNoKeyUpdate()
          .execute();
        const taskCounts = new Map<string, number>();
        let count = 0;
        for (const t of queued) {
          const order = orderOf(t.spec, t.max_per_hour);
          const windowMs = t.spec.price?.auctionWindowMs ?? 0;
          const orderId = `${t.id}@${t.queued_at.getTime()}`;
          let bids: ReadonlyMap<string, bigint> | undefined;
          if (windowMs > 0) {
            const auction = this.deps.auctions.state(orderId, order, windowMs);
            if (auction.open) continue;
            bids = auction.bids;
          }
          const match = market.match(order, bids);
          if (windowMs > 0 && match) this.deps.auctions.finish(orderId);
          if (!match) {
            if (t.job_state === 'pending') await refreshJob(trx, t.job_id, changes, 'matching');
            continue;
          }
          // The job's remaining budget must fund at least one metering period at this price.
          if ((await balanceOf(trx, holdOf(t.job_id))) < costOf(match.pricePerHour, period)) {
            if (!t.low_balance_since) {
              await trx.updateTable('jobs').set({ low_balance_since: new Date() }).where('id', '=', t.job_id).execute();
              changes.jobs.add(t.job_id);
            }
            continue;
          }
          if (t.low_balance_since) {
            await trx.updateTable('jobs').set({ low_balance_since: null }).where('id', '=', t.job_id).execute();
            changes.jobs.add(t.job_id);
          }
          let taskCount = taskCounts.get(t.job_id);
          if (taskCount === undefined) {
            const row = await trx.selectFrom('tasks').select(trx.fn.countAll<string>().as('n')).where('job_id', '=', t.job_id).executeTakeFirstOrThrow();
            taskCount = Number(row.n);
            taskCounts.set(t.job_id, taskCount);
          }
          const leaseId = newId('lease');
          const now = new Date();
          assertTransition('task', t.id, t.state, 'assigned');
          await trx
            .insertInto('leases')
            .values({
              id: leaseId,
              task_id: t.id,
              job_id: t.job_id,
              provider_id: match.providerId,
              state: 'offered',
              created_at: now,
              price_per_hour: match.pricePerHour,
              gpus: JSON.stringify(match.gpus),
            })
            .execute();
          await fundLease(trx, { id: leaseId, job_id: t.job_id, price_per_hour: match.pricePerHour, usage_ms: 0n, charged: 0n }, 0n, economics);
          await trx
            .updateTable('tasks')
            .set({ state: 'assigned', lease_id: leaseId, provider_id: match.providerId, error: null })
            .where('id', '=', t.id)
            .execute();
          const spec = t.spec;
          const timeoutSeconds = spec.timeoutSeconds ?? 3600;
          const lease: LeaseAssignment = {
            leaseId,
            taskId: t.id,
            jobId: t.job_id,
            taskIndex: t.idx,
            taskCount,
            runtime: {
              kind: spec.runtime.kind,
              command: spec.runtime.command,
              env: {
                ...(spec.runtime.env ?? {}),
                GRIDWORK_JOB_ID: t.job_id,
                GRIDWORK_TASK_INDEX: String(t.idx),
                GRIDWORK_TASK_COUNT: String(taskCount),
                GRIDWORK_LEASE_ID: leaseId,
              },
              network: spec.runtime.network ?? false,
              ...(spec.runtime.image ? { image: spec.runtime.image } : {}),
            },
            bundle: t.bundle_manifest ? { manifest: t.bundle_manifest } : null,
            inputs: t.inputs,
            resources: spec.resources,
            gpus: match.gpus,
            timeoutSeconds,
          };
          await enqueueForProvider(trx, match.providerId, { type: 'lease.assign', lease }, changes);
          await refreshJob(trx, t.job_id, changes);
          market.book.reserve(leaseId, match.providerId, spec.resources, match.gpus, now.getTime() + timeoutSeconds * 1000);
          reserved.push(leaseId);
          count++;
        }
        return count;
      } catch (err) {
        for (const id of reserved) market.book.release(id);
        throw err;
      }
    });
    if (placed > 0) this.deps.log.debug({ placed }, 'tasks placed');
    this.deps.publish(changes);
    return placed;
  }
}
