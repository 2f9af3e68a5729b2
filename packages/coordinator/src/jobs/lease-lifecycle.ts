/**
 * What happens to a task when its lease ends, and how a job's state follows. Every function
 * takes the caller's transaction: the transition and its effects commit together or not at all.
 * Row locks are FOR NO KEY UPDATE, never FOR UPDATE: a transaction that inserted a row
 * referencing a job/task/provider (logs, job_blobs, leases, outbox) holds a KEY SHARE lock on
 * it, and FOR UPDATE conflicts with KEY SHARE, so two such transactions deadlocked on PostgreSQL.
 */
import { canonicalJson, type FileRef, type JobState, type LeaseState } from '@gridwork/protocol';
import { sha256Hex } from '@gridwork/protocol/node';
import type { Transaction } from 'kysely';
import { chargeUsage, type EconomicsConfig, plausibleUsage, releaseJob, settleLease } from '../ledger/lease-economics.ts';
import type { Database } from '../store/schema.ts';
import { ACTIVE_LEASE_STATES, assertTransition, deriveJobState } from './state-machine.ts';

type Trx = Transaction<Database>;

/**
 * One unit of work: what a transaction changed, published after it commits (streams, outbox
 * delivery, the matching index, the scheduler), plus the money rules it applies.
 */
export interface Changes {
  readonly economics: EconomicsConfig;
  jobs: Set<string>;
  /** Providers that have new outbox messages to send. */
  providers: Set<string>;
  /** Providers whose row (state, asks, reputation, stake) changed: the matching index reloads them. */
  providersChanged: Set<string>;
  /** Leases that ended: their capacity returns to the matching index. */
  leasesEnded: Set<string>;
  /** Capacity was freed or work was queued. */
  work: boolean;
}

export function newChanges(economics: EconomicsConfig): Changes {
  return { economics, jobs: new Set(), providers: new Set(), providersChanged: new Set(), leasesEnded: new Set(), work: false };
}

export type LeaseOutcome =
  | { kind: 'completed'; exitCode: number; durationMs: number; outputs: FileRef[] }
  /** The workload failed by itself (non-zero exit, time limit): deterministic, not retried. */
  | { kind: 'failed'; exitCode: number | null; durationMs: number; error: string }
  /** The provider failed (crash, lost heartbeat, setup error): the task is retried elsewhere. */
  | { kind: 'lost'; error: string }
  /** The provider handed the task back (draining): retried without counting an attempt. */
  | { kind: 'released'; error: string }
  | { kind: 'cancelled'; error: string };

/** Digest over a task's outputs, stable across providers: sha256 of canonical sorted list. */
export function outputDigest(outputs: readonly FileRef[]): string {
  return sha256Hex(canonicalJson([...outputs].sort((a, b) => (a.path < b.path ? -1 : a.path > b.path ? 1 : 0))));
}

export async function endLease(trx: Trx, leaseId: string, outcome: LeaseOutcome, changes: Changes): Promise<boolean> {
  const lease = await trx.selectFrom('leases').selectAll().where('id', '=', leaseId).forNoKeyUpdate().executeTakeFirst();
  if (!lease || !(ACTIVE_LEASE_STATES as readonly string[]).includes(lease.state)) return false;
  const now = new Date();
  const leaseState: LeaseState =
    outcome.kind === 'completed' ? 'completed' : outcome.kind === 'failed' ? 'failed' : outcome.kind === 'lost' ? 'lost' : 'cancelled';
  assertTransition('lease', lease.id, lease.state, leaseState);
  await trx
    .updateTable('leases')
    .set({
      state: leaseState,
      ended_at: now,
      exit_code: outcome.kind === 'completed' || outcome.kind === 'failed' ? outcome.exitCode : null,
      error: outcome.kind === 'completed' ? null : outcome.error,
    })
    .where('id', '=', lease.id)
    .execute();
  changes.work = true;
  changes.leasesEnded.add(lease.id);
  changes.providersChanged.add(lease.provider_id);

  // Money: the provider is paid for metered work — for work it finished, up to the run time it
  // reports; when it lost the lease, only up to its last usage report — then the lease settles.
  if ((outcome.kind === 'completed' || outcome.kind === 'failed') && lease.started_at) {
    await chargeUsage(trx, lease, plausibleUsage(outcome.durationMs, lease.started_at, changes.economics));
  }
  await settleLease(trx, lease, lease.provider_id, changes.economics);
  const faulted = outcome.kind === 'lost';
  if (outcome.kind === 'completed' || outcome.kind === 'failed' || faulted) {
    await trx
      .updateTable('providers')
      .set((eb) => (faulted ? { leases_faulted: eb('leases_faulted', '+', 1) } : { leases_completed: eb('leases_completed', '+', 1) }))
      .where('id', '=', lease.provider_id)
      .execute();
  }

  const task = await trx.selectFrom('tasks').selectAll().where('id', '=', lease.task_id).forNoKeyUpdate().executeTakeFirstOrThrow();
  if (task.lease_id !== lease.id) return true; // the task moved on already (e.g. job cancelled)
  const job = await trx.selectFrom('jobs').select(['spec']).where('id', '=', task.job_id).executeTakeFirstOrThrow();
  const maxRetries = job.spec.maxRetries ?? 2;

  if (outcome.kind === 'completed') {
    assertTransition('task', task.id, task.state, 'succeeded');
    await trx
      .updateTable('tasks')
      .set({
        state: 'succeeded',
        exit_code: outcome.exitCode,
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
  } else if (outcome.kind === 'failed' || (outcome.kind === 'lost' && task.attempts + 1 > maxRetries)) {
    assertTransition('task', task.id, task.state, 'failed');
    const error = outcome.kind === 'lost' ? `${outcome.error} (retries exhausted after ${task.attempts + 1} attempts)` : outcome.error;
    await trx
      .updateTable('tasks')
      .set({
        state: 'failed',
        attempts: outcome.kind === 'lost' ? task.attempts + 1 : task.attempts,
        exit_code: outcome.kind === 'failed' ? outcome.exitCode : null,
        duration_ms: outcome.kind === 'failed' ? outcome.durationMs : null,
        error,
        finished_at: now,
      })
      .where('id', '=', task.id)
      .execute();
  } else if (outcome.kind === 'lost' || outcome.kind === 'released') {
    assertTransition('task', task.id, task.state, 'queued');
    await trx
      .updateTable('tasks')
      .set({
        state: 'queued',
        attempts: outcome.kind === 'lost' ? task.attempts + 1 : task.attempts,
        lease_id: null,
        provider_id: null,
        started_at: null,
        error: outcome.error,
        queued_at: now,
      })
      .where('id', '=', task.id)
      .execute();
  }
  // 'cancelled' leases belong to tasks already cancelled by the caller.
  await refreshJob(trx, task.job_id, changes);
  return true;
}

/** Recomputes a job's state from its tasks; a failed job cancels the rest of its work. */
export async function refreshJob(trx: Trx, jobId: string, changes: Changes, forceState?: JobState, error?: string): Promise<JobState> {
  const job = await trx.selectFrom('jobs').select(['state', 'error', 'owner']).where('id', '=', jobId).forNoKeyUpdate().executeTakeFirstOrThrow();
  const tasks = await trx.selectFrom('tasks').select(['id', 'state', 'error', 'idx']).where('job_id', '=', jobId).execute();
  const current = job.state as JobState;
  const next = forceState ?? deriveJobState(current, tasks);
  changes.jobs.add(jobId);
  if (next === current) return current;
  assertTransition('job', jobId, current, next);
  let jobError = error ?? null;
  if (next === 'failed' && !jobError) {
    const failed = tasks.find((t) => t.state === 'failed');
    jobError = failed ? `task ${failed.idx} failed: ${failed.error ?? 'unknown error'}` : 'failed';
  }
  await trx.updateTable('jobs').set({ state: next, error: jobError, updated_at: new Date() }).where('id', '=', jobId).execute();
  if (next === 'failed' || next === 'cancelled') await cancelOpenTasks(trx, jobId, `job ${next}`, changes);
  // Every lease of a finished job has settled by now: what is left of the budget goes back.
  if (next === 'succeeded' || next === 'failed' || next === 'cancelled') await releaseJob(trx, job.owner, jobId);
  return next;
}

/** Cancels every unfinished task of a job and tells providers to stop their leases. */
async function cancelOpenTasks(trx: Trx, jobId: string, reason: string, changes: Changes): Promise<void> {
  const open = await trx
    .selectFrom('tasks')
    .select(['id', 'state', 'lease_id'])
    .where('job_id', '=', jobId)
    .where('state', 'in', ['queued', 'assigned', 'running'])
    .forNoKeyUpdate()
    .execute();
  for (const t of open) {
    assertTransition('task', t.id, t.state, 'cancelled');
    await trx.updateTable('tasks').set({ state: 'cancelled', error: reason, finished_at: new Date() }).where('id', '=', t.id).execute();
    if (!t.lease_id) continue;
    const lease = await trx.selectFrom('leases').selectAll().where('id', '=', t.lease_id).forNoKeyUpdate().executeTakeFirst();
    if (!lease || !(ACTIVE_LEASE_STATES as readonly string[]).includes(lease.state)) continue;
    const now = new Date();
    await trx.updateTable('leases').set({ state: 'cancelled', ended_at: now, error: reason }).where('id', '=', lease.id).execute();
    // The requester stopped work the provider was doing: pay the run time so far (within escrow).
    if (lease.started_at) await chargeUsage(trx, lease, BigInt(Math.max(0, now.getTime() - lease.started_at.getTime())));
    await settleLease(trx, lease, lease.provider_id, changes.economics);
    changes.leasesEnded.add(lease.id);
    changes.providersChanged.add(lease.provider_id);
    await enqueueForProvider(trx, lease.provider_id, { type: 'lease.cancel', leaseId: lease.id, reason }, changes);
  }
  changes.work = true;
}

/** Appends a sequenced message to a provider's durable outbox. */
export async function enqueueForProvider(trx: Trx, providerId: string, message: Record<string, unknown>, changes: Changes): Promise<number> {
  const row = await trx
    .updateTable('providers')
    .set((eb) => ({ out_seq: eb('out_seq', '+', 1n) }))
    .where('id', '=', providerId)
    .returning('out_seq')
    .executeTakeFirstOrThrow();
  const seq = Number(row.out_seq);
  await trx
    .insertInto('provider_outbox')
    .values({ provider_id: providerId, seq: BigInt(seq), message: JSON.stringify({ ...message, seq }) })
    .execute();
  changes.providers.add(providerId);
  return seq;
}

/** A provider is gone (heartbeat timeout, or a new agent instance): its leases are lost. */
export async function loseProviderLeases(trx: Trx, providerId: string, reason: string, changes: Changes): Promise<number> {
  const active = await trx
    .selectFrom('leases')
    .select('id')
    .where('provider_id', '=', providerId)
    .where('state', 'in', [...ACTIVE_LEASE_STATES])
    .execute();
  for (const l of active) await endLease(trx, l.id, { kind: 'lost', error: reason }, changes);
  return active.length;
}
