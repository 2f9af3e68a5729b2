/**
 * Places queued tasks on connected providers. One pass runs at a time; kicks during a pass
 * coalesce into one more pass. A placement (lease row, task update, outbox message) commits
 * in one transaction before anything is sent, so a crash never leaves a task half-placed.
 */
import { type LeaseAssignment, newId } from '@gridwork/protocol';
import type { Logger } from 'pino';
import { type Changes, enqueueForProvider, newChanges, refreshJob } from '../jobs/lease-lifecycle.ts';
import { ACTIVE_LEASE_STATES, assertTransition } from '../jobs/state-machine.ts';
import type { Db } from '../store/database.ts';
import type { Candidate, Matcher } from './matcher.ts';

export interface SchedulerDeps {
  db: Db;
  log: Logger;
  matcher: Matcher;
  /** Ids of providers with a live connection right now. */
  connected: () => ReadonlySet<string>;
  publish: (changes: Changes) => void;
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
    const connected = this.deps.connected();
    if (connected.size === 0) return 0;
    const changes = newChanges();
    const placed = await this.deps.db.transaction().execute(async (trx) => {
      const providers = await trx
        .selectFrom('providers')
        .select(['id', 'hardware', 'attributes', 'slots'])
        .where('state', '=', 'online')
        .where('id', 'in', [...connected])
        .execute();
      if (providers.length === 0) return 0;
      const busy = await trx
        .selectFrom('leases')
        .select(['provider_id', trx.fn.countAll<string>().as('n')])
        .where('state', 'in', [...ACTIVE_LEASE_STATES])
        .where('provider_id', 'in', providers.map((p) => p.id))
        .groupBy('provider_id')
        .execute();
      const busyBy = new Map(busy.map((b) => [b.provider_id, Number(b.n)]));
      const candidates: Candidate[] = providers.map((p) => ({ id: p.id, hardware: p.hardware, attributes: p.attributes, freeSlots: p.slots - (busyBy.get(p.id) ?? 0) }));
      if (!candidates.some((c) => c.freeSlots > 0)) return 0;

      const queued = await trx
        .selectFrom('tasks')
        .innerJoin('jobs', 'jobs.id', 'tasks.job_id')
        .select(['tasks.id', 'tasks.idx', 'tasks.state', 'tasks.inputs', 'tasks.job_id', 'jobs.spec', 'jobs.bundle_manifest', 'jobs.state as job_state'])
        .where('tasks.state', '=', 'queued')
        .orderBy('tasks.queued_at')
        .orderBy('tasks.idx')
        .limit(this.batchSize)
        .forUpdate()
        .execute();
      const taskCounts = new Map<string, number>();
      let count = 0;
      for (const t of queued) {
        const i = this.deps.matcher.pick({ resources: t.spec.resources, regions: t.spec.placement?.regions }, candidates);
        if (i < 0) {
          if (t.job_state === 'pending') await refreshJob(trx, t.job_id, changes, 'matching');
          continue;
        }
        const provider = candidates[i] as Candidate;
        provider.freeSlots -= 1;
        let taskCount = taskCounts.get(t.job_id);
        if (taskCount === undefined) {
          const row = await trx.selectFrom('tasks').select(trx.fn.countAll<string>().as('n')).where('job_id', '=', t.job_id).executeTakeFirstOrThrow();
          taskCount = Number(row.n);
          taskCounts.set(t.job_id, taskCount);
        }
        const leaseId = newId('lease');
        const now = new Date();
        assertTransition('task', t.id, t.state, 'assigned');
        await trx.insertInto('leases').values({ id: leaseId, task_id: t.id, job_id: t.job_id, provider_id: provider.id, state: 'offered', created_at: now }).execute();
        await trx.updateTable('tasks').set({ state: 'assigned', lease_id: leaseId, provider_id: provider.id, error: null }).where('id', '=', t.id).execute();
        const spec = t.spec;
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
          timeoutSeconds: spec.timeoutSeconds ?? 3600,
        };
        await enqueueForProvider(trx, provider.id, { type: 'lease.assign', lease }, changes);
        await refreshJob(trx, t.job_id, changes);
        count++;
      }
      return count;
    });
    if (placed > 0) this.deps.log.debug({ placed }, 'tasks placed');
    this.deps.publish(changes);
    return placed;
  }
}
