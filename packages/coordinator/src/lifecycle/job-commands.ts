/**
 * Job commands: submit (tasks recorded, budget held), cancel, top up, fail when unfunded, expire
 * when queued too long, funding state, waiting for a match. Part of the lifecycle (lifecycle.ts).
 */
import { formatCredits, GridworkError, newId } from '@gridwork/protocol';
import { addBudget, holdBudget } from '../ledger/lease-economics.ts';
import { assertTransition, isTerminalJob } from '../core/state-machine.ts';
import type { UnitOfWork } from '../core/unit-of-work.ts';
import type { LifecycleParts, NewJob } from './lifecycle.ts';

export class JobCommands {
  constructor(private readonly parts: LifecycleParts) {}

  /** Records a validated job with its tasks and holds its whole budget. Idempotent per (owner, key). */
  async submit(uow: UnitOfWork, job: NewJob): Promise<{ jobId: string; created: boolean }> {
    const { trx } = uow;
    const jobId = newId('job');
    const now = new Date();
    // With a key, the insert itself is the check: a concurrent submit with the same key waits on
    // the unique index and then inserts nothing, and both answer with the one job.
    const inserted = await trx
      .insertInto('jobs')
      .values({
        id: jobId,
        owner: job.owner,
        name: job.spec.name,
        kind: job.spec.kind,
        state: 'pending',
        spec: JSON.stringify(job.spec),
        bundle_manifest: job.bundleManifest,
        error: null,
        created_at: now,
        updated_at: now,
        budget: job.budget,
        max_per_hour: job.maxPerHour,
        idempotency_key: job.idempotencyKey ?? null,
        request_digest: job.requestDigest,
      })
      .onConflict((oc) => oc.columns(['owner', 'idempotency_key']).where('idempotency_key', 'is not', null).doNothing())
      .returning('id')
      .executeTakeFirst();
    if (!inserted) {
      const prior = await trx
        .selectFrom('jobs')
        .select(['id', 'request_digest'])
        .where('owner', '=', job.owner)
        .where('idempotency_key', '=', job.idempotencyKey ?? '')
        .executeTakeFirstOrThrow();
      if (prior.request_digest !== job.requestDigest) {
        throw new GridworkError('IDEMPOTENCY_CONFLICT', 'this idempotency key was already used to submit a different job', { details: { jobId: prior.id } });
      }
      return { jobId: prior.id, created: false };
    }
    // The whole budget is held now, so no two jobs can spend the same credits.
    await holdBudget(trx, job.owner, jobId, job.budget);
    // In chunks: one statement has at most 65,535 parameters.
    for (let from = 0; from < job.taskInputs.length; from += 1000) {
      await trx
        .insertInto('tasks')
        .values(
          job.taskInputs.slice(from, from + 1000).map((inputs, i) => ({
            id: newId('task'),
            job_id: jobId,
            idx: from + i,
            state: 'queued',
            attempts: 0,
            inputs: JSON.stringify(inputs),
            outputs: '[]',
            queued_at: now,
          })),
        )
        .execute();
    }
    const roles = [...job.blobs.entries()];
    for (let i = 0; i < roles.length; i += 1000) {
      await trx
        .insertInto('job_blobs')
        .values(roles.slice(i, i + 1000).map(([digest, role]) => ({ job_id: jobId, digest, role })))
        .execute();
    }
    uow.emit({ type: 'job.submitted', jobId, owner: job.owner, tasks: job.taskInputs.length });
    return { jobId, created: true };
  }

  /** Cancels a job that has not ended: open tasks stop, running leases are paid their time so far. */
  async cancel(uow: UnitOfWork, jobId: string, reason: string): Promise<void> {
    const job = await this.parts.ending.lockJob(uow.trx, jobId);
    if (isTerminalJob(job.state)) return;
    await this.parts.ending.refreshJob(uow, jobId, { force: 'cancelled', error: reason });
  }

  /** Adds to the budget of a job that has not ended; clears its low-balance mark. */
  async topUp(uow: UnitOfWork, owner: string, jobId: string, amount: bigint, key: string, requestDigest: string): Promise<void> {
    // Checked under the job's row lock: a job that ended meanwhile has released its hold.
    const job = await this.parts.ending.lockJob(uow.trx, jobId);
    if (isTerminalJob(job.state)) throw new GridworkError('INVALID_TRANSITION', `job ${jobId} has ended (${job.state})`);
    if (!(await addBudget(uow.trx, owner, jobId, amount, `${owner}:${key}`, requestDigest))) return;
    await uow.trx
      .updateTable('jobs')
      .set((eb) => ({ budget: eb('budget', '+', amount), low_balance_since: null, updated_at: new Date() }))
      .where('id', '=', jobId)
      .execute();
    uow.emit({ type: 'job.topped-up', jobId, amount: formatCredits(amount) });
    if (job.low_balance_since) uow.emit({ type: 'job.funding', jobId, low: false });
  }

  /** A job whose grace period for a low balance ran out fails; finished tasks keep their outputs. */
  async failUnfunded(uow: UnitOfWork, jobId: string, graceMs: number): Promise<boolean> {
    const job = await this.parts.ending.lockJob(uow.trx, jobId);
    if (isTerminalJob(job.state) || !job.low_balance_since || job.low_balance_since.getTime() > Date.now() - graceMs) return false;
    await this.parts.ending.refreshJob(uow, jobId, { force: 'failed', error: 'budget exhausted: the job ran out of budget and its grace period ended' });
    return true;
  }

  /** A job with a task queued longer than its spec's `queueTimeoutSeconds` fails with the reason. */
  async expireQueued(uow: UnitOfWork, jobId: string, why: string): Promise<boolean> {
    const job = await this.parts.ending.lockJob(uow.trx, jobId);
    if (isTerminalJob(job.state)) return false;
    const timeout = job.spec.queueTimeoutSeconds;
    if (timeout === undefined) return false;
    const waiting = await uow.trx
      .selectFrom('tasks')
      .select(['idx'])
      .where('job_id', '=', jobId)
      .where('state', '=', 'queued')
      .where('queued_at', '<', new Date(Date.now() - timeout * 1000))
      .orderBy('idx')
      .executeTakeFirst();
    if (!waiting) return false;
    await this.parts.ending.refreshJob(uow, jobId, {
      force: 'failed',
      error: `queue timeout: task ${waiting.idx} waited more than ${timeout}s for a provider${why ? ` (${why})` : ''}`,
    });
    return true;
  }

  /** Marks (or clears) that a job's budget cannot fund its leases; the grace period runs from the mark. */
  async setFunding(uow: UnitOfWork, jobId: string, low: boolean): Promise<void> {
    const updated = await uow.trx
      .updateTable('jobs')
      .set({ low_balance_since: low ? new Date() : null })
      .where('id', '=', jobId)
      .where('low_balance_since', low ? 'is' : 'is not', null)
      .returning('id')
      .executeTakeFirst();
    if (updated) uow.emit({ type: 'job.funding', jobId, low });
  }

  /** No provider matches the job now: pending → matching (a waiting job says so). */
  async awaitMatch(uow: UnitOfWork, jobId: string): Promise<void> {
    const job = await this.parts.ending.lockJob(uow.trx, jobId);
    if (job.state !== 'pending') return;
    assertTransition('job', jobId, 'pending', 'matching');
    await uow.trx.updateTable('jobs').set({ state: 'matching', updated_at: new Date() }).where('id', '=', jobId).execute();
    uow.emit({ type: 'job.progressed', jobId, from: 'pending', to: 'matching' });
  }
}
