/**
 * Lease reports: what a provider tells about its leases (acknowledged, started, usage, logs,
 * checkpoints, cluster exchange, service health, finished, lost, faulted, handed back), and a
 * provider's capacity and loss as a whole. Part of the lifecycle (lifecycle.ts).
 */
import { type FileRef, GridworkError, type LogChunk, MAX_STORED_LEASE_LOG_BYTES } from '@gridwork/protocol';
import { fundLease, plausibleUsage } from '../ledger/lease-economics.ts';
import { enqueueForProvider } from '../providers/outbox.ts';
import { type Capacity, declareCapacity } from './capacity.ts';
import type { ProviderFaultKind } from '../core/events.ts';
import { ACTIVE_LEASE_STATES, isActiveLease, isTerminalJob } from '../core/state-machine.ts';
import type { Trx, UnitOfWork } from '../core/unit-of-work.ts';
import { limitMsOf } from '../core/time-limit.ts';
import type { LifecycleParts, LeaseKey, LeaseOutcome, ResultCommitment, LeaseRow } from './lifecycle.ts';

/** How long after the coordinator stopped a lease its agent's last log lines are still kept. */
const CLOSING_LOGS_MS = 30_000;

/**
 * The chunks of a lease's log that fit under MAX_STORED_LEASE_LOG_BYTES, counted on the lease row
 * (the update locks it, so concurrent reports count once each); the chunk that crosses the cap is
 * cut and followed by one marker line, and everything after is dropped.
 */
async function keepWithinLogCap(trx: Trx, leaseId: string, chunks: readonly LogChunk[]): Promise<LogChunk[]> {
  const sizes = chunks.map((c) => Buffer.byteLength(c.data));
  const total = sizes.reduce((a, b) => a + b, 0);
  const row = await trx
    .updateTable('leases')
    .set((eb) => ({ log_bytes: eb('log_bytes', '+', BigInt(total)) }))
    .where('id', '=', leaseId)
    .returning('log_bytes')
    .executeTakeFirstOrThrow();
  const before = Number(row.log_bytes) - total;
  if (before + total <= MAX_STORED_LEASE_LOG_BYTES) return [...chunks];
  if (before >= MAX_STORED_LEASE_LOG_BYTES) return [];
  const kept: LogChunk[] = [];
  let room = MAX_STORED_LEASE_LOG_BYTES - before;
  for (const [i, c] of chunks.entries()) {
    const size = sizes[i] as number;
    if (size <= room) {
      kept.push(c);
      room -= size;
      continue;
    }
    // Cut by bytes, then drop a split character's remains (U+FFFD) at the end.
    const head = Buffer.from(c.data)
      .subarray(0, room)
      .toString('utf8')
      .replace(/\uFFFD+$/, '');
    if (head.length > 0) kept.push({ ...c, data: head });
    kept.push({ stream: 'stderr', data: `\n[gridwork: log truncated by the coordinator after ${MAX_STORED_LEASE_LOG_BYTES} bytes]\n`, ts: c.ts });
    break;
  }
  return kept;
}

export class LeaseReports {
  constructor(private readonly parts: LifecycleParts) {}

  /** The provider acknowledged these assignments: offered → starting. */
  async acknowledge(uow: UnitOfWork, providerId: string, leaseIds: readonly string[]): Promise<void> {
    if (leaseIds.length === 0) return;
    await uow.trx
      .updateTable('leases')
      .set({ state: 'starting' })
      .where('id', 'in', [...leaseIds])
      .where('provider_id', '=', providerId)
      .where('state', '=', 'offered')
      .execute();
  }

  /**
   * A lease of `providerId`, locked, for a report about it. Throws NOT_LEASE_OWNER or
   * LEASE_NOT_FOUND: a provider reports only on its own leases.
   */
  async leaseOf(uow: UnitOfWork, providerId: string, leaseId: string): Promise<LeaseRow> {
    // Not locked here: commands lock the job, then the lease (the one lock order of this module).
    const lease = await uow.trx.selectFrom('leases').selectAll().where('id', '=', leaseId).executeTakeFirst();
    if (!lease) throw new GridworkError('LEASE_NOT_FOUND', `lease ${leaseId} does not exist`);
    if (lease.provider_id !== providerId) throw new GridworkError('NOT_LEASE_OWNER', `lease ${leaseId} is not yours`);
    return lease;
  }

  /** The task began running on the provider: lease, task and job become running. */
  async start(uow: UnitOfWork, reported: LeaseRow): Promise<void> {
    const { trx } = uow;
    const job = await this.parts.ending.lockJob(trx, reported.job_id);
    const now = new Date();
    // Locks the lease (after its job: the one lock order) and moves it only from a state that starts.
    const lease = await trx
      .updateTable('leases')
      .set({ state: 'running', started_at: now })
      .where('id', '=', reported.id)
      .where('state', 'in', ['offered', 'starting'])
      .returning(['id', 'job_id', 'task_id', 'provider_id'])
      .executeTakeFirst();
    if (!lease) return;
    uow.emit({ type: 'lease.started', jobId: lease.job_id, leaseId: lease.id, providerId: lease.provider_id });
    if (isTerminalJob(job.state)) return;
    const task = await trx
      .updateTable('tasks')
      .set({ state: 'running', started_at: now })
      .where('id', '=', lease.task_id)
      .where('lease_id', '=', lease.id)
      .where('state', '=', 'assigned')
      .returning('id')
      .executeTakeFirst();
    if (task) await this.parts.ending.markRunning(uow, job);
  }

  /**
   * A signed debit note: bills the run time (never more than has passed on this coordinator's
   * clock since the lease started, plus one metering period), tops up escrow from the job's
   * hold, and marks the job low on funds when the hold cannot.
   */
  async recordUsage(uow: UnitOfWork, reported: LeaseRow, reportedMs: number): Promise<void> {
    const { trx } = uow;
    const job = await this.parts.ending.lockJob(trx, reported.job_id);
    const lease = await this.parts.ending.lockLease(trx, reported.id);
    if (!isActiveLease(lease.state) || !lease.started_at) return;
    const usage = plausibleUsage(reportedMs, lease.started_at, this.parts.economics, limitMsOf(job.spec));
    await this.parts.ending.charge(trx, lease, usage);
    const funded = await fundLease(trx, lease, usage, this.parts.economics);
    await this.parts.jobs.setFunding(uow, lease.job_id, !funded);
  }

  /** Stores a batch of a lease's log lines. */
  async appendLogs(uow: UnitOfWork, lease: LeaseRow, chunks: readonly LogChunk[]): Promise<void> {
    // The agent sends a lease's last lines before it reports the end: later ones are not the
    // task's. The one exception is a lease the coordinator stopped (cancelled): the agent's
    // closing lines ("task cancelled") arrive after, and are kept for a short while.
    if (chunks.length === 0) return;
    const closingWords = lease.state === 'cancelled' && lease.ended_at !== null && Date.now() - lease.ended_at.getTime() < CLOSING_LOGS_MS;
    if (!isActiveLease(lease.state) && !closingWords) return;
    const kept = await keepWithinLogCap(uow.trx, lease.id, chunks);
    if (kept.length === 0) return;
    const task = await uow.trx.selectFrom('tasks').select('idx').where('id', '=', lease.task_id).executeTakeFirstOrThrow();
    const rows = await uow.trx
      .insertInto('task_logs')
      .values(kept.map((c) => ({ job_id: lease.job_id, task_idx: task.idx, lease_id: lease.id, stream: c.stream, data: c.data, ts: new Date(c.ts) })))
      .returning('id')
      .execute();
    const last = rows.reduce((m, r) => (r.id > m ? r.id : m), 0n);
    uow.emit({ type: 'task.logged', jobId: lease.job_id, last: last.toString() });
  }

  /**
   * The task wrote a checkpoint (signed and uploaded by its provider; report-handlers checked
   * both): a requeued task resumes from its latest, and a lost training lease is paid up to it.
   */
  async recordCheckpoint(uow: UnitOfWork, reported: LeaseRow, c: { step: number; file: FileRef; usageMs: number; signature: string }): Promise<void> {
    const { trx } = uow;
    const job = await this.parts.ending.lockJob(trx, reported.job_id);
    const lease = await this.parts.ending.lockLease(trx, reported.id);
    if (!isActiveLease(lease.state) || !lease.started_at) return;
    const usage = plausibleUsage(c.usageMs, lease.started_at, this.parts.economics, limitMsOf(job.spec));
    const row = await trx
      .insertInto('checkpoints')
      .values({
        lease_id: lease.id,
        task_id: lease.task_id,
        step: c.step,
        path: c.file.path,
        digest: c.file.digest,
        size: c.file.size,
        usage_ms: usage,
        signature: c.signature,
      })
      .onConflict((oc) => oc.columns(['lease_id', 'step']).doNothing())
      .returning('step')
      .executeTakeFirst();
    if (!row) return;
    await trx
      .insertInto('job_blobs')
      .values({ job_id: lease.job_id, digest: c.file.digest, role: 'checkpoint' })
      .onConflict((oc) => oc.doNothing())
      .execute();
    uow.emit({ type: 'task.checkpointed', jobId: lease.job_id, taskId: lease.task_id, leaseId: lease.id, step: c.step });
  }

  /**
   * A cluster member published an exchange round (its blob checked by report-handlers). The
   * latest publication per (round, rank) stands; once every rank has published the round, each
   * running member is sent the round's files (once per member lease).
   */
  async recordExchange(uow: UnitOfWork, reported: LeaseRow, round: number, file: FileRef): Promise<void> {
    const { trx } = uow;
    const job = await this.parts.ending.lockJob(trx, reported.job_id);
    const lease = await this.parts.ending.lockLease(trx, reported.id);
    if (!isActiveLease(lease.state) || job.kind !== 'cluster' || !job.spec.cluster) return;
    const task = await trx.selectFrom('tasks').select('idx').where('id', '=', lease.task_id).executeTakeFirstOrThrow();
    await trx
      .insertInto('cluster_exchange')
      .values({ job_id: job.id, round, rank: task.idx, lease_id: lease.id, digest: file.digest, size: file.size })
      .onConflict((oc) => oc.columns(['job_id', 'round', 'rank']).doUpdateSet({ lease_id: lease.id, digest: file.digest, size: file.size }))
      .execute();
    await trx
      .insertInto('job_blobs')
      .values({ job_id: job.id, digest: file.digest, role: 'exchange' })
      .onConflict((oc) => oc.doNothing())
      .execute();
    const files = await trx
      .selectFrom('cluster_exchange')
      .select(['rank', 'digest', 'size'])
      .where('job_id', '=', job.id)
      .where('round', '=', round)
      .orderBy('rank')
      .execute();
    if (files.length < job.spec.cluster.size) return;
    const members = await trx
      .selectFrom('leases')
      .select(['id', 'provider_id'])
      .where('job_id', '=', job.id)
      .where('state', 'in', [...ACTIVE_LEASE_STATES])
      .orderBy('id')
      .execute();
    for (const m of members) {
      const fresh = await trx
        .insertInto('cluster_deliveries')
        .values({ lease_id: m.id, round })
        .onConflict((oc) => oc.doNothing())
        .returning('round')
        .executeTakeFirst();
      if (!fresh) continue;
      await enqueueForProvider(uow, m.provider_id, {
        type: 'exchange.round',
        leaseId: m.id,
        round,
        files: files.map((f) => ({ rank: f.rank, digest: f.digest, size: Number(f.size) })),
      });
    }
  }

  /** A service replica's health, as its agent reports it: the ingress routes only to healthy ones. */
  async serviceHealth(uow: UnitOfWork, reported: LeaseRow, health: 'healthy' | 'unhealthy'): Promise<void> {
    const updated = await uow.trx
      .updateTable('leases')
      .set({ service_health: health })
      .where('id', '=', reported.id)
      .where('state', 'in', [...ACTIVE_LEASE_STATES])
      .where('service_token', 'is not', null)
      .returning('id')
      .executeTakeFirst();
    if (updated) uow.emit({ type: 'lease.service', jobId: reported.job_id, leaseId: reported.id, providerId: reported.provider_id, health });
  }

  /** The task ran to its end on the provider: it succeeded, or the workload failed by itself. */
  finish(uow: UnitOfWork, lease: LeaseKey, outcome: Extract<LeaseOutcome, { kind: 'completed' | 'failed' }>): Promise<boolean> {
    return this.parts.ending.end(uow, lease, outcome);
  }

  /** The provider failed the task (crash, lost contact, setup error): it is retried elsewhere, up to the job's retries. */
  lose(uow: UnitOfWork, lease: LeaseKey, error: string): Promise<boolean> {
    return this.parts.ending.end(uow, lease, { kind: 'lost', error });
  }

  /**
   * A proven fault (verify/commitments.ts has the evidence): the lease ends lost like `lose`, the
   * fault and the commitment are kept on it, and `provider.fault` tells reputation.
   */
  async fault(uow: UnitOfWork, leaseId: string, fault: ProviderFaultKind, detail: string, commitment?: ResultCommitment): Promise<boolean> {
    const ended = await this.parts.ending.end(uow, leaseId, {
      kind: 'lost',
      error: `proven fault (${fault}): ${detail}`,
      fault,
      ...(commitment ? { commitment } : {}),
    });
    if (!ended) return false;
    const lease = await uow.trx.selectFrom('leases').select(['job_id', 'provider_id']).where('id', '=', leaseId).executeTakeFirstOrThrow();
    uow.emit({ type: 'provider.fault', providerId: lease.provider_id, jobId: lease.job_id, leaseId, fault, detail });
    return true;
  }

  /** The provider handed the task back (draining): it is retried without counting an attempt. */
  release(uow: UnitOfWork, leaseId: string, error: string): Promise<boolean> {
    return this.parts.ending.end(uow, leaseId, { kind: 'released', error });
  }

  /** A provider is gone (heartbeat timeout, or a new agent instance): its active leases are lost. */
  async loseProvider(uow: UnitOfWork, providerId: string, reason: string): Promise<number> {
    const active = await uow.trx
      .selectFrom('leases')
      .select('id')
      .where('provider_id', '=', providerId)
      .where('state', 'in', [...ACTIVE_LEASE_STATES])
      .orderBy('id')
      .execute();
    for (const l of active) await this.parts.ending.end(uow, l.id, { kind: 'lost', error: reason });
    return active.length;
  }

  /** Sets a provider's capacity (from its hello) and recounts what its leases hold. */
  async declareCapacity(uow: UnitOfWork, providerId: string, total: Capacity): Promise<void> {
    await declareCapacity(uow.trx, providerId, total);
  }
}
