/**
 * Ending leases and what follows: the task (succeeded, failed, requeued), the job's state, the
 * money of the lease (lease-economics.ts), and the row locks every lifecycle command takes (job,
 * task, lease, then the provider's rows). A completed result that is to be verified is handed to
 * result-checks.ts. Part of the lifecycle (lifecycle.ts).
 */
import { canonicalJson, type FileRef, formatCredits, GridworkError, type JobSpec, type JobState, type LeaseState, type TaskState } from '@gridwork/protocol';
import { sha256Hex } from '@gridwork/protocol/node';
import { capCharge, chargeUsage, plausibleUsage, releaseJob, returnEscrow, settleLease } from '../ledger/lease-economics.ts';
import { enqueueForProvider } from '../providers/outbox.ts';
import type { Selectable } from 'kysely';
import type { JobPurpose, JobsTable } from '../store/schema.ts';
import { freeCapacity } from './capacity.ts';
import type { LeaseOutcomeKind } from '../core/events.ts';
import {
  ACTIVE_LEASE_STATES,
  assertTransition,
  deriveJobState,
  type FailurePolicy,
  isActiveLease,
  isTerminalJob,
  OPEN_TASK_STATES,
  type TaskCounts,
} from '../core/state-machine.ts';
import type { Trx, UnitOfWork } from '../core/unit-of-work.ts';
import { limitMsOf } from '../core/time-limit.ts';
import type { LifecycleParts, LeaseKey, LeaseOutcome, LeaseRow } from './lifecycle.ts';

/** Digest over a task's outputs, stable across providers: sha256 of the canonical sorted list. */
export function outputDigest(outputs: readonly FileRef[]): string {
  return sha256Hex(canonicalJson([...outputs].sort((a, b) => (a.path < b.path ? -1 : a.path > b.path ? 1 : 0))));
}

export class LeaseEnding {
  constructor(private readonly parts: LifecycleParts) {}

  private readonly taskCounts = new Map<string, number>();

  async taskCount(trx: Trx, jobId: string): Promise<number> {
    // A job's task count never changes after submit: cache it (bounded).
    const known = this.taskCounts.get(jobId);
    if (known !== undefined) return known;
    const row = await trx.selectFrom('tasks').select(trx.fn.countAll<string>().as('n')).where('job_id', '=', jobId).executeTakeFirstOrThrow();
    const n = Number(row.n);
    if (this.taskCounts.size > 10_000) this.taskCounts.clear();
    this.taskCounts.set(jobId, n);
    return n;
  }

  /**
   * Whether a completed task's result is held for verification. Not a cluster member's: one member
   * re-executed alone would wait for peers that are not there (a cluster is re-run whole, which is
   * not built yet), and not a service's (it has no result).
   */
  private verifies(job: { purpose: JobPurpose; spec: JobSpec }): boolean {
    return (
      this.parts.verification.enabled &&
      job.purpose === 'work' &&
      job.spec.verification?.mode !== 'none' &&
      job.spec.kind !== 'cluster' &&
      job.spec.kind !== 'service'
    );
  }

  lockLease(trx: Trx, leaseId: string) {
    return trx.selectFrom('leases').selectAll().where('id', '=', leaseId).forNoKeyUpdate().executeTakeFirstOrThrow();
  }

  async lockJob(trx: Trx, jobId: string) {
    const job = await trx.selectFrom('jobs').selectAll().where('id', '=', jobId).forNoKeyUpdate().executeTakeFirst();
    if (!job) throw new GridworkError('JOB_NOT_FOUND', `job ${jobId} does not exist`);
    return job;
  }

  async charge(trx: Trx, lease: LeaseRow, usageMs: bigint): Promise<void> {
    const before = lease.usage_ms;
    await chargeUsage(trx, lease, usageMs);
    if (lease.usage_ms !== before)
      await trx.updateTable('leases').set({ usage_ms: lease.usage_ms, charged: lease.charged }).where('id', '=', lease.id).execute();
  }

  /** Ends an active lease with its outcome; the task follows (succeeded, failed, requeued) and so does the job. */
  async end(uow: UnitOfWork, key: LeaseKey, outcome: LeaseOutcome): Promise<boolean> {
    const { trx } = uow;
    const leaseId = typeof key === 'string' ? key : key.id;
    const peek = typeof key === 'string' ? await trx.selectFrom('leases').select(['job_id', 'state']).where('id', '=', leaseId).executeTakeFirst() : key;
    if (!peek || ('state' in peek && !isActiveLease(peek.state))) return false;
    const job = await this.lockJob(trx, peek.job_id);
    const lease = await trx.selectFrom('leases').selectAll().where('id', '=', leaseId).forNoKeyUpdate().executeTakeFirstOrThrow();
    if (!isActiveLease(lease.state)) return false;
    const now = new Date();
    const leaseState: LeaseState = outcome.kind === 'released' ? 'cancelled' : outcome.kind;
    assertTransition('lease', lease.id, lease.state, leaseState);

    // Money: the provider is paid for metered work — for work it finished, up to the run time it
    // reports; when the requester cancelled, the run time so far; when it lost the lease, only up
    // to its last usage report — then the lease settles and its capacity is free again.
    if (lease.started_at) {
      const limitMs = limitMsOf(job.spec);
      if (outcome.kind === 'completed' || outcome.kind === 'failed')
        await this.charge(trx, lease, plausibleUsage(outcome.durationMs, lease.started_at, this.parts.economics, limitMs));
      else if (outcome.kind === 'cancelled') await this.charge(trx, lease, BigInt(Math.min(limitMs, Math.max(0, now.getTime() - lease.started_at.getTime()))));
      else if (job.kind === 'train' || job.kind === 'cluster') {
        // A lost (or handed-back) training lease is paid only for the work its next lease resumes
        // from: up to its last checkpoint, nothing without one.
        const last = await trx
          .selectFrom('checkpoints')
          .select('usage_ms')
          .where('lease_id', '=', lease.id)
          .orderBy('step', 'desc')
          .limit(1)
          .executeTakeFirst();
        // The checkpoint's run time is signed like a debit note: charged up to it, and no further.
        if (last) await this.charge(trx, lease, last.usage_ms);
        const before = { charged: lease.charged, usage: lease.usage_ms };
        await capCharge(trx, lease, last?.usage_ms ?? 0n);
        if (lease.charged !== before.charged || lease.usage_ms !== before.usage)
          await trx.updateTable('leases').set({ usage_ms: lease.usage_ms, charged: lease.charged }).where('id', '=', lease.id).execute();
      }
    }
    // A completed task's earnings stay pending while its result can still be checked (verify/);
    // the unused escrow goes back at once either way.
    const verify = outcome.kind === 'completed' && this.verifies(job);
    if (verify) await returnEscrow(trx, lease);
    else await settleLease(trx, lease, lease.provider_id, this.parts.economics);
    const error = outcome.kind === 'completed' ? null : outcome.error;
    const commitment = 'commitment' in outcome ? outcome.commitment : undefined;
    const fault = outcome.kind === 'lost' ? outcome.fault : undefined;
    await trx
      .updateTable('leases')
      .set({
        state: leaseState,
        ended_at: now,
        exit_code: outcome.kind === 'failed' ? outcome.exitCode : outcome.kind === 'completed' ? 0 : null,
        error,
        ...(commitment ? { outputs_root: commitment.outputsRoot, commitment_signature: commitment.signature } : {}),
        ...(fault ? { fault } : {}),
      })
      .where('id', '=', lease.id)
      .execute();
    await freeCapacity(trx, {
      leaseId: lease.id,
      providerId: lease.provider_id,
      cpuMilli: Number(lease.cpu_milli),
      memMilli: Number(lease.mem_milli),
      gpus: lease.gpus,
    });
    uow.emit({
      type: 'lease.ended',
      jobId: lease.job_id,
      taskId: lease.task_id,
      leaseId: lease.id,
      providerId: lease.provider_id,
      outcome: outcome.kind as LeaseOutcomeKind,
      ...(outcome.kind === 'failed' ? { reason: outcome.reason } : {}),
      ...(fault ? { fault } : {}),
      error,
      charged: formatCredits(lease.charged),
    });
    if (outcome.kind === 'cancelled' || (outcome.kind === 'released' && outcome.stop)) {
      await enqueueForProvider(uow, lease.provider_id, { type: 'lease.cancel', leaseId: lease.id, reason: outcome.error });
    }

    const task = await trx.selectFrom('tasks').selectAll().where('id', '=', lease.task_id).forNoKeyUpdate().executeTakeFirstOrThrow();
    if (task.lease_id !== lease.id || !(OPEN_TASK_STATES as readonly string[]).includes(task.state)) return true; // the task moved on (e.g. job cancelled)
    const maxRetries = job.spec.maxRetries ?? 2;
    const requeue = outcome.kind === 'released' || (outcome.kind === 'lost' && task.attempts + 1 <= maxRetries);
    if (outcome.kind === 'completed') {
      assertTransition('task', task.id, task.state, 'succeeded');
      await trx
        .updateTable('tasks')
        .set({
          state: 'succeeded',
          exit_code: 0,
          duration_ms: outcome.durationMs,
          outputs: JSON.stringify(outcome.outputs),
          output_digest: outputDigest(outcome.outputs),
          finished_at: now,
          error: null,
        })
        .where('id', '=', task.id)
        .execute();
      if (outcome.outputs.length > 0) {
        await trx
          .insertInto('job_blobs')
          .values(outcome.outputs.map((o) => ({ job_id: task.job_id, digest: o.digest, role: 'output' as const })))
          .onConflict((oc) => oc.doNothing())
          .execute();
      }
      uow.emit({ type: 'task.ended', jobId: task.job_id, taskId: task.id, index: task.idx, state: 'succeeded' });
      if (verify) await this.parts.checks.holdForVerification(uow, lease, outputDigest(outcome.outputs));
    } else if (requeue) {
      await this.requeueTask(uow, task, outcome.kind === 'lost' ? task.attempts + 1 : task.attempts, outcome.error);
      // A cluster runs all its members or none: one lost member restarts the whole cluster (each
      // member from its latest checkpoint, placed together again).
      if (job.kind === 'cluster' && !(outcome.kind === 'released' && outcome.stop)) {
        const others = await trx
          .selectFrom('leases')
          .select('id')
          .where('job_id', '=', job.id)
          .where('id', '!=', lease.id)
          .where('state', 'in', [...ACTIVE_LEASE_STATES])
          .orderBy('id')
          .execute();
        for (const o of others)
          await this.end(uow, o.id, { kind: 'released', stop: true, error: `cluster restarts: member ${task.idx} was lost (${outcome.error})` });
        // Those ends refreshed the job: its row as locked above is out of date.
        await this.refreshJob(uow, job.id);
        return true;
      }
    } else if (outcome.kind === 'failed' || outcome.kind === 'lost') {
      const attempts = outcome.kind === 'lost' ? task.attempts + 1 : task.attempts;
      assertTransition('task', task.id, task.state, 'failed');
      await trx
        .updateTable('tasks')
        .set({
          state: 'failed',
          attempts,
          exit_code: outcome.kind === 'failed' ? outcome.exitCode : null,
          duration_ms: outcome.kind === 'failed' ? outcome.durationMs : null,
          error: outcome.kind === 'lost' ? `${outcome.error} (retries exhausted after ${attempts} attempts)` : outcome.error,
          finished_at: now,
        })
        .where('id', '=', task.id)
        .execute();
      uow.emit({ type: 'task.ended', jobId: task.job_id, taskId: task.id, index: task.idx, state: 'failed' });
    } else {
      // A cancelled lease whose task is still open: the job was not cancelled, so the task ends with it.
      assertTransition('task', task.id, task.state, 'cancelled');
      await trx.updateTable('tasks').set({ state: 'cancelled', error: outcome.error, finished_at: now }).where('id', '=', task.id).execute();
      uow.emit({ type: 'task.ended', jobId: task.job_id, taskId: task.id, index: task.idx, state: 'cancelled' });
    }
    // The job's row as locked above; if something here moved the job since (a result confirmed at
    // once, with no audit window), refreshJob reads it again.
    await this.refreshJob(uow, job);
    return true;
  }

  /**
   * Sends a task back to the scheduler (it resumes from its latest usable checkpoint, placement.ts):
   * its lease, and any result it had (a refuted one, result-checks.ts), are forgotten; `attempts`
   * counts the tries spent, `reason` says why (the task's error and the `task.requeued` event).
   */
  async requeueTask(uow: UnitOfWork, task: { id: string; job_id: string; idx: number; state: string }, attempts: number, reason: string): Promise<void> {
    assertTransition('task', task.id, task.state, 'queued');
    await uow.trx
      .updateTable('tasks')
      .set({
        state: 'queued',
        attempts,
        lease_id: null,
        provider_id: null,
        started_at: null,
        finished_at: null,
        exit_code: null,
        duration_ms: null,
        outputs: '[]',
        output_digest: null,
        error: reason,
        queued_at: new Date(),
      })
      .where('id', '=', task.id)
      .execute();
    uow.emit({ type: 'task.requeued', jobId: task.job_id, taskId: task.id, index: task.idx, attempts, reason });
  }

  /**
   * A task of the job was just assigned or started: the job is running (the state its tasks' counts
   * would give, without counting them: a job with a failed task and the `stop` policy has ended).
   * `job`: its row as locked in this transaction, state unchanged since.
   */
  async markRunning(uow: UnitOfWork, job: Selectable<JobsTable>): Promise<void> {
    const current = job.state as JobState;
    if (current === 'running' || isTerminalJob(current)) return;
    assertTransition('job', job.id, current, 'running');
    if (!(await this.moveJob(uow.trx, job.id, current, 'running', null))) {
      await this.refreshJob(uow, job.id); // the row passed was out of date
      return;
    }
    uow.emit({ type: 'job.progressed', jobId: job.id, from: current, to: 'running' });
  }

  /** Moves a job from the state its caller read to `to`; false when the job is no longer in it. */
  private async moveJob(trx: Trx, jobId: string, from: JobState, to: JobState, error: string | null): Promise<boolean> {
    const moved = await trx
      .updateTable('jobs')
      .set({ state: to, error, updated_at: new Date() })
      .where('id', '=', jobId)
      .where('state', '=', from)
      .returning('id')
      .executeTakeFirst();
    return moved !== undefined;
  }

  /**
   * Recomputes a job's state from its tasks (or forces an end); an ended job stops its open work
   * and releases its hold. `of`: the job's id, or its row as the caller locked it in this
   * transaction (saves reading it again; read again when its state has changed since).
   */
  async refreshJob(uow: UnitOfWork, of: string | Selectable<JobsTable>, force?: { force: 'failed' | 'cancelled'; error: string }): Promise<JobState> {
    const { trx } = uow;
    const job = typeof of === 'string' ? await this.lockJob(trx, of) : of;
    const jobId = job.id;
    // Counts, not rows: a 10,000-task job must not cost 10,000 rows per lease transition.
    const rows = await trx
      .selectFrom('tasks')
      .select(['state', (eb) => eb.fn.countAll<string>().as('n')])
      .where('job_id', '=', jobId)
      .groupBy('state')
      .execute();
    const counts: TaskCounts = {};
    for (const r of rows) counts[r.state as TaskState] = Number(r.n);
    const current = job.state as JobState;
    const policy: FailurePolicy = job.spec.failurePolicy ?? 'stop';
    let next = force?.force ?? deriveJobState(current, counts, policy);
    // Every task done, but results still pending verification: the job is verifying until they settle.
    if (next === 'succeeded') {
      const open = await trx
        .selectFrom('leases')
        .select('id')
        .where('job_id', '=', jobId)
        .where('verification', 'in', ['pending', 'disputed'])
        .limit(1)
        .executeTakeFirst();
      if (open) next = 'verifying';
    }
    if (next === current) return current;
    assertTransition('job', jobId, current, next);
    let jobError = force?.error ?? null;
    if (next === 'failed' && !jobError) {
      const first = await trx
        .selectFrom('tasks')
        .select(['idx', 'error'])
        .where('job_id', '=', jobId)
        .where('state', '=', 'failed')
        .orderBy('idx')
        .limit(1)
        .executeTakeFirst();
      const more = (counts.failed ?? 0) - 1;
      jobError = first ? `task ${first.idx} failed: ${first.error ?? 'unknown error'}${more > 0 ? ` (and ${more} more)` : ''}` : 'failed';
    }
    // The row the caller passed was out of date (something it called moved the job since): read it again.
    if (!(await this.moveJob(trx, jobId, current, next, jobError))) return this.refreshJob(uow, jobId, force);
    if (next === 'succeeded' || next === 'failed' || next === 'cancelled') {
      if ((counts.queued ?? 0) + (counts.assigned ?? 0) + (counts.running ?? 0) > 0) await this.cancelOpenTasks(uow, jobId, `job ${next}`);
      // Every lease of the job has settled by now: what is left of the budget goes back.
      await releaseJob(trx, job.purpose === 'work' ? job.owner : null, jobId);
      uow.emit({ type: 'job.ended', jobId, owner: job.owner, state: next, error: jobError });
    } else {
      uow.emit({ type: 'job.progressed', jobId, from: current, to: next });
    }
    return next;
  }

  /** Cancels every unfinished task of an ended job and stops their leases (paid for their run time so far). */
  private async cancelOpenTasks(uow: UnitOfWork, jobId: string, reason: string): Promise<void> {
    const { trx } = uow;
    const open = await trx
      .selectFrom('tasks')
      .select(['id', 'idx', 'state', 'lease_id'])
      .where('job_id', '=', jobId)
      .where('state', 'in', [...OPEN_TASK_STATES])
      .orderBy('idx')
      .forNoKeyUpdate()
      .execute();
    const now = new Date();
    for (const t of open) {
      assertTransition('task', t.id, t.state, 'cancelled');
      await trx.updateTable('tasks').set({ state: 'cancelled', error: reason, finished_at: now }).where('id', '=', t.id).execute();
      uow.emit({ type: 'task.ended', jobId, taskId: t.id, index: t.idx, state: 'cancelled' });
      if (t.lease_id) await this.end(uow, t.lease_id, { kind: 'cancelled', error: reason });
    }
  }
}
