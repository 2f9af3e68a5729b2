/**
 * The job lifecycle: the only writer of `jobs`, `tasks`, `leases` and `task_logs` (and, through
 * capacity.ts, of the capacity that leases hold). Everyone else sends it commands:
 *
 *   jobs     submit · cancel · topUp · failUnfunded · expireQueued · setFunding
 *   leases   place · acknowledge · start · recordUsage · appendLogs · finish · lose · fault ·
 *            release · loseProvider (every active lease of a provider) · declareCapacity
 *
 * Trust (L2): `place` draws a secret audit seed per lease and sends only its hash with the
 * assignment; `finish` stores the provider's signed result commitment; `fault` ends a lease lost
 * to a proven fault, keeping the evidence on the lease.
 *
 * Each command runs inside the caller's unit of work — one transaction, so a provider report's
 * sequence number commits with its effect — checks every transition against the state tables
 * (state-machine.ts), moves the money that goes with it (ledger/lease-economics.ts) and appends
 * typed events (events.ts). Requeueing a task is part of `lose` and `release`.
 *
 * Row locks are FOR NO KEY UPDATE, never FOR UPDATE: a transaction that inserted a row
 * referencing a job/task/provider holds a KEY SHARE lock on it, and FOR UPDATE conflicts with
 * KEY SHARE (two such transactions deadlocked on PostgreSQL). Lock order: job, task, lease, then
 * the provider's rows (capacity, outbox sequence); a provider report records its sequence
 * number last, so placements and reports take their locks in the same order.
 */
import {
  canonicalJson,
  type FileRef,
  formatCredits,
  GridworkError,
  type InputSet,
  type JobSpec,
  type JobState,
  type LeaseAssignment,
  type LeaseState,
  type LogChunk,
  MAX_STORED_LEASE_LOG_BYTES,
  newId,
  type TaskState,
} from '@gridwork/protocol';
import { sha256Hex } from '@gridwork/protocol/node';
import { randomBytes } from 'node:crypto';
import { sql } from 'kysely';
import { balanceOf, FEES, holdOf, post, RESERVE, stakeOf } from '../ledger/ledger.ts';
import {
  addBudget,
  capCharge,
  chargeUsage,
  costOf,
  type EconomicsConfig,
  fundLease,
  holdBudget,
  type LeaseMoney,
  payEarnings,
  plausibleUsage,
  refundEarnings,
  releaseJob,
  returnEscrow,
  settleLease,
} from '../ledger/lease-economics.ts';
import { milliN } from '../market/order-price.ts';
import { enqueueForProvider } from '../providers/outbox.ts';
import type { JobPurpose } from '../store/schema.ts';
import { auditRate, drawOf, resolveVerification, type VerificationConfig } from '../verify/verification-policy.ts';
import { type Capacity, declareCapacity, freeCapacity, holdCapacity } from './capacity.ts';
import type { CheckKind, FailureReason, LeaseOutcomeKind, ProviderFaultKind } from '../core/events.ts';
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

/** How a lease ended, as the lifecycle records it. */
export type LeaseOutcome =
  | { kind: 'completed'; durationMs: number; outputs: FileRef[]; commitment?: ResultCommitment }
  /** The workload failed by itself (non-zero exit, time limit, resource limit): deterministic, not retried. */
  | { kind: 'failed'; reason: FailureReason; exitCode: number | null; durationMs: number; error: string; commitment?: ResultCommitment }
  /** The provider failed (crash, lost heartbeat, setup error, a broken report): retried elsewhere. */
  | { kind: 'lost'; error: string; fault?: ProviderFaultKind; commitment?: ResultCommitment }
  /** The provider handed the task back (draining), or the coordinator stopped it (`stop`: a cluster restarting): retried without counting an attempt. */
  | { kind: 'released'; error: string; stop?: boolean }
  | { kind: 'cancelled'; error: string };

/** A provider's signed result commitment (verified by verify/commitments.ts before it gets here). */
export interface ResultCommitment {
  outputsRoot: string;
  signature: string;
}

export interface NewJob {
  owner: string;
  spec: JobSpec;
  bundleManifest: string | null;
  budget: bigint;
  maxPerHour: bigint;
  taskInputs: InputSet[][];
  blobs: ReadonlyMap<string, 'bundle' | 'input'>;
  idempotencyKey?: string;
  /** Digest of the request, so one key reused for another request is refused. */
  requestDigest: string;
}

export interface Placement {
  taskId: string;
  providerId: string;
  pricePerHour: bigint;
  gpus: number[];
}

/** A check of a lease's result: another provider re-executes its task (verify/verification.ts decides what the result means). */
export interface NewCheck {
  kind: CheckKind;
  /** The lease whose result is checked. */
  leaseId: string;
  /** The output digest a faithful re-execution reproduces. */
  expectedDigest: string;
  /** Providers (with everyone of their operator) the check must not run on; the checked provider always is. */
  exclude?: readonly string[];
  /** The one provider the check runs on (a canary's target). */
  only?: string;
  /** A referee check settles a disagreement its parent found. */
  parentId?: string;
  /** A requester's dispute, with the bond it posted. */
  openedBy?: string;
  bondPosted?: bigint;
  checkId?: string;
  /**
   * Checkpointed work: re-execute one segment, from checkpoint step `from` (null: the start) to
   * step `to` (null: the end, compared on outputs); `expectedDigest` is then the committed digest
   * of checkpoint `to`.
   */
  segment?: Segment;
}

/** One segment of a checkpointed task: from a checkpoint step (null: the start) to the next (null: the end). */
export interface Segment {
  from: number | null;
  to: number | null;
}

/** The account that owns the protocol's check jobs (paid from `sys:fees`). */
export const PROTOCOL_ACCOUNT = 'protocol';

export type PlaceResult = { status: 'placed'; leaseId: string } | { status: 'capacity-taken' | 'underfunded' | 'gone' };

type LeaseRow = LeaseMoney & {
  task_id: string;
  created_at: Date;
  ended_at: Date | null;
  provider_id: string;
  state: string;
  started_at: Date | null;
  cpu_milli: bigint;
  mem_milli: bigint;
  gpus: number[];
  audit_seed: string | null;
  audit_commitment: string | null;
  service_token: string | null;
};

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
    const head = Buffer.from(c.data).subarray(0, room).toString('utf8').replace(/\uFFFD+$/, '');
    if (head.length > 0) kept.push({ ...c, data: head });
    kept.push({ stream: 'stderr', data: `\n[gridwork: log truncated by the coordinator after ${MAX_STORED_LEASE_LOG_BYTES} bytes]\n`, ts: c.ts });
    break;
  }
  return kept;
}


/** Digest over a task's outputs, stable across providers: sha256 of the canonical sorted list. */
export function outputDigest(outputs: readonly FileRef[]): string {
  return sha256Hex(canonicalJson([...outputs].sort((a, b) => (a.path < b.path ? -1 : a.path > b.path ? 1 : 0))));
}

export class Lifecycle {
  constructor(
    private readonly economics: EconomicsConfig,
    /** Result verification; off unless given (the coordinator always gives it). */
    private readonly verification: VerificationConfig = resolveVerification({ enabled: false }),
  ) {}

  // ---- jobs ---------------------------------------------------------------------------------

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
    const job = await this.lockJob(uow.trx, jobId);
    if (isTerminalJob(job.state)) return;
    await this.refreshJob(uow, jobId, { force: 'cancelled', error: reason });
  }

  /** Adds to the budget of a job that has not ended; clears its low-balance mark. */
  async topUp(uow: UnitOfWork, owner: string, jobId: string, amount: bigint, key: string, requestDigest: string): Promise<void> {
    // Checked under the job's row lock: a job that ended meanwhile has released its hold.
    const job = await this.lockJob(uow.trx, jobId);
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
    const job = await this.lockJob(uow.trx, jobId);
    if (isTerminalJob(job.state) || !job.low_balance_since || job.low_balance_since.getTime() > Date.now() - graceMs) return false;
    await this.refreshJob(uow, jobId, { force: 'failed', error: 'budget exhausted: the job ran out of budget and its grace period ended' });
    return true;
  }

  /** A job with a task queued longer than its spec's `queueTimeoutSeconds` fails with the reason. */
  async expireQueued(uow: UnitOfWork, jobId: string, why: string): Promise<boolean> {
    const job = await this.lockJob(uow.trx, jobId);
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
    await this.refreshJob(uow, jobId, {
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

  // ---- leases -------------------------------------------------------------------------------

  /**
   * Places a queued task on a provider at a price: checks the job can fund a metering period,
   * takes the capacity in the database, writes the lease, draws its escrow, assigns the task and
   * queues the assignment in the provider's outbox. Nothing is written unless it is placed.
   */
  async place(uow: UnitOfWork, p: Placement): Promise<PlaceResult> {
    const { trx } = uow;
    const peek = await trx.selectFrom('tasks').select('job_id').where('id', '=', p.taskId).executeTakeFirst();
    if (!peek) return { status: 'gone' };
    const job = await this.lockJob(trx, peek.job_id); // job before task: the lock order of every command
    const task = await trx.selectFrom('tasks').selectAll().where('id', '=', p.taskId).forNoKeyUpdate().executeTakeFirstOrThrow();
    if (task.state !== 'queued' || isTerminalJob(job.state)) return { status: 'gone' };
    // A check never runs on a provider it checks (the scheduler's order already excludes them).
    if (job.exclude_providers.includes(p.providerId) || (job.only_provider !== null && job.only_provider !== p.providerId)) return { status: 'gone' };
    // The job's remaining budget must fund at least one metering period at this price.
    if ((await balanceOf(trx, holdOf(job.id))) < costOf(p.pricePerHour, BigInt(this.economics.meteringIntervalMs))) {
      await this.setFunding(uow, job.id, true);
      return { status: 'underfunded' };
    }
    const spec = job.spec;
    const leaseId = newId('lease');
    // Commit–reveal of audit randomness: only the hash goes to the provider now.
    const auditSeed = randomBytes(32).toString('hex');
    const auditCommitment = sha256Hex(auditSeed);
    // A service replica: the agent's ingress accepts the coordinator's requests for it with this secret.
    const serviceToken = spec.service ? randomBytes(32).toString('hex') : null;
    const now = new Date();
    const cpuMilli = milliN(spec.resources.cpu);
    const memMilli = milliN(spec.resources.memoryGiB);
    assertTransition('task', task.id, task.state, 'assigned');
    await trx
      .insertInto('leases')
      .values({
        id: leaseId,
        task_id: task.id,
        job_id: job.id,
        provider_id: p.providerId,
        state: 'offered',
        created_at: now,
        price_per_hour: p.pricePerHour,
        gpus: JSON.stringify(p.gpus),
        cpu_milli: BigInt(cpuMilli),
        mem_milli: BigInt(memMilli),
        audit_seed: auditSeed,
        audit_commitment: auditCommitment,
        service_token: serviceToken,
      })
      .execute();
    if (!(await holdCapacity(trx, { leaseId, providerId: p.providerId, cpuMilli, memMilli, gpus: p.gpus }))) {
      await trx.deleteFrom('leases').where('id', '=', leaseId).execute();
      return { status: 'capacity-taken' };
    }
    if (job.low_balance_since) await this.setFunding(uow, job.id, false);
    await fundLease(trx, { id: leaseId, job_id: job.id, price_per_hour: p.pricePerHour, usage_ms: 0n, charged: 0n }, 0n, this.economics);
    await trx.updateTable('tasks').set({ state: 'assigned', lease_id: leaseId, provider_id: p.providerId, error: null }).where('id', '=', task.id).execute();
    // A requeued task resumes from its latest checkpoint; a segment check from the checked lease's.
    const resume = await this.resumePoint(trx, task.id, job.id, job.purpose);
    // A check replays the checked task: same index and count (its spec carries them).
    const replay = job.purpose === 'work' ? undefined : spec.runtime.env;
    const taskIndex = replay?.GRIDWORK_TASK_INDEX ? Number(replay.GRIDWORK_TASK_INDEX) : task.idx;
    const taskCount = replay?.GRIDWORK_TASK_COUNT ? Number(replay.GRIDWORK_TASK_COUNT) : await this.taskCount(trx, job.id);
    const timeoutSeconds = limitMsOf(spec) / 1000;
    const member = spec.kind === 'cluster' ? { rank: taskIndex, worldSize: taskCount } : undefined;
    const lease: LeaseAssignment = {
      leaseId,
      taskId: task.id,
      jobId: job.id,
      taskIndex,
      taskCount,
      runtime: {
        kind: spec.runtime.kind,
        command: spec.runtime.command,
        env: {
          ...(spec.runtime.env ?? {}),
          GRIDWORK_JOB_ID: job.id,
          GRIDWORK_TASK_INDEX: String(taskIndex),
          GRIDWORK_TASK_COUNT: String(taskCount),
          GRIDWORK_LEASE_ID: leaseId,
          ...(member
            ? {
                RANK: String(member.rank),
                WORLD_SIZE: String(member.worldSize),
                GRIDWORK_PEERS: Array.from({ length: member.worldSize }, (_, r) => r).filter((r) => r !== member.rank).join(','),
              }
            : {}),
        },
        network: spec.runtime.network ?? false,
        ...(spec.runtime.image ? { image: spec.runtime.image } : {}),
      },
      bundle: job.bundle_manifest ? { manifest: job.bundle_manifest } : null,
      inputs: task.inputs,
      resources: spec.resources,
      gpus: p.gpus,
      timeoutSeconds,
      auditCommitment,
      ...(resume?.from ? { resume: resume.from } : {}),
      ...(resume?.stopStep !== undefined ? { stopStep: resume.stopStep } : {}),
      ...(member ? { cluster: member } : {}),
      ...(spec.service && serviceToken
        ? {
            service: {
              port: spec.service.port,
              healthPath: spec.service.healthPath ?? '/health',
              startupTimeoutSeconds: spec.service.startupTimeoutSeconds ?? 120,
              token: serviceToken,
            },
          }
        : {}),
    };
    await enqueueForProvider(uow, p.providerId, { type: 'lease.assign', lease });
    uow.emit({
      type: 'lease.placed',
      jobId: job.id,
      taskId: task.id,
      leaseId,
      providerId: p.providerId,
      pricePerHour: formatCredits(p.pricePerHour),
      gpus: p.gpus,
      cpuMilli,
      memMilli,
      endsAt: now.getTime() + timeoutSeconds * 1000,
    });
    await this.refreshJob(uow, job.id);
    return { status: 'placed', leaseId };
  }

  /** No provider matches the job now: pending → matching (a waiting job says so). */
  async awaitMatch(uow: UnitOfWork, jobId: string): Promise<void> {
    const job = await this.lockJob(uow.trx, jobId);
    if (job.state !== 'pending') return;
    assertTransition('job', jobId, 'pending', 'matching');
    await uow.trx.updateTable('jobs').set({ state: 'matching', updated_at: new Date() }).where('id', '=', jobId).execute();
    uow.emit({ type: 'job.progressed', jobId, from: 'pending', to: 'matching' });
  }

  /** Where a task starts: its own latest checkpoint, else (a segment check) the checked lease's segment start. */
  private async resumePoint(trx: Trx, taskId: string, jobId: string, purpose: JobPurpose): Promise<{ from?: { step: number; file: FileRef }; stopStep?: number } | null> {
    const ref = (c: { step: number; path: string; digest: string; size: bigint }) => ({ step: c.step, file: { path: c.path, digest: c.digest, size: Number(c.size) } });
    const own = await trx.selectFrom('checkpoints').select(['step', 'path', 'digest', 'size']).where('task_id', '=', taskId).orderBy('step', 'desc').limit(1).executeTakeFirst();
    if (purpose === 'work') return own ? { from: ref(own) } : null;
    const check = await trx
      .selectFrom('verifications')
      .innerJoin('leases', 'leases.id', 'verifications.lease_id')
      .select(['leases.task_id', 'verifications.segment_from', 'verifications.segment_to'])
      .where('verifications.check_job_id', '=', jobId)
      .executeTakeFirst();
    if (!check || (check.segment_from === null && check.segment_to === null)) return own ? { from: ref(own) } : null;
    const start =
      check.segment_from === null
        ? undefined
        : await trx.selectFrom('checkpoints').select(['step', 'path', 'digest', 'size']).where('task_id', '=', check.task_id).where('step', '=', check.segment_from).limit(1).executeTakeFirst();
    const from = own && (!start || own.step > start.step) ? own : start;
    return { ...(from ? { from: ref(from) } : {}), ...(check.segment_to === null ? {} : { stopStep: check.segment_to }) };
  }

  private readonly taskCounts = new Map<string, number>();

  private async taskCount(trx: Trx, jobId: string): Promise<number> {
    // A job's task count never changes after submit: cache it (bounded).
    const known = this.taskCounts.get(jobId);
    if (known !== undefined) return known;
    const row = await trx.selectFrom('tasks').select(trx.fn.countAll<string>().as('n')).where('job_id', '=', jobId).executeTakeFirstOrThrow();
    const n = Number(row.n);
    if (this.taskCounts.size > 10_000) this.taskCounts.clear();
    this.taskCounts.set(jobId, n);
    return n;
  }

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
    const job = await this.lockJob(trx, reported.job_id);
    const lease = await this.lockLease(trx, reported.id);
    if (lease.state !== 'offered' && lease.state !== 'starting') return;
    assertTransition('lease', lease.id, lease.state, 'running');
    const now = new Date();
    await trx.updateTable('leases').set({ state: 'running', started_at: now }).where('id', '=', lease.id).execute();
    lease.state = 'running';
    lease.started_at = now;
    uow.emit({ type: 'lease.started', jobId: lease.job_id, leaseId: lease.id, providerId: lease.provider_id });
    const task = await trx.selectFrom('tasks').select(['id', 'state', 'lease_id']).where('id', '=', lease.task_id).forNoKeyUpdate().executeTakeFirstOrThrow();
    if (task.lease_id === lease.id && task.state === 'assigned' && !isTerminalJob(job.state)) {
      assertTransition('task', task.id, task.state, 'running');
      await trx.updateTable('tasks').set({ state: 'running', started_at: now }).where('id', '=', task.id).execute();
      await this.refreshJob(uow, lease.job_id);
    }
  }

  /**
   * A signed debit note: bills the run time (never more than has passed on this coordinator's
   * clock since the lease started, plus one metering period), tops up escrow from the job's
   * hold, and marks the job low on funds when the hold cannot.
   */
  async recordUsage(uow: UnitOfWork, reported: LeaseRow, reportedMs: number): Promise<void> {
    const { trx } = uow;
    const job = await this.lockJob(trx, reported.job_id);
    const lease = await this.lockLease(trx, reported.id);
    if (!isActiveLease(lease.state) || !lease.started_at) return;
    const usage = plausibleUsage(reportedMs, lease.started_at, this.economics, limitMsOf(job.spec));
    await this.charge(trx, lease, usage);
    const funded = await fundLease(trx, lease, usage, this.economics);
    await this.setFunding(uow, lease.job_id, !funded);
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
    const job = await this.lockJob(trx, reported.job_id);
    const lease = await this.lockLease(trx, reported.id);
    if (!isActiveLease(lease.state) || !lease.started_at) return;
    const usage = plausibleUsage(c.usageMs, lease.started_at, this.economics, limitMsOf(job.spec));
    const row = await trx
      .insertInto('checkpoints')
      .values({ lease_id: lease.id, task_id: lease.task_id, step: c.step, path: c.file.path, digest: c.file.digest, size: c.file.size, usage_ms: usage, signature: c.signature })
      .onConflict((oc) => oc.columns(['lease_id', 'step']).doNothing())
      .returning('step')
      .executeTakeFirst();
    if (!row) return;
    await trx.insertInto('job_blobs').values({ job_id: lease.job_id, digest: c.file.digest, role: 'checkpoint' }).onConflict((oc) => oc.doNothing()).execute();
    uow.emit({ type: 'task.checkpointed', jobId: lease.job_id, taskId: lease.task_id, leaseId: lease.id, step: c.step });
  }

  /**
   * A cluster member published an exchange round (its blob checked by report-handlers). The
   * latest publication per (round, rank) stands; once every rank has published the round, each
   * running member is sent the round's files (once per member lease).
   */
  async recordExchange(uow: UnitOfWork, reported: LeaseRow, round: number, file: FileRef): Promise<void> {
    const { trx } = uow;
    const job = await this.lockJob(trx, reported.job_id);
    const lease = await this.lockLease(trx, reported.id);
    if (!isActiveLease(lease.state) || job.kind !== 'cluster' || !job.spec.cluster) return;
    const task = await trx.selectFrom('tasks').select('idx').where('id', '=', lease.task_id).executeTakeFirstOrThrow();
    await trx
      .insertInto('cluster_exchange')
      .values({ job_id: job.id, round, rank: task.idx, lease_id: lease.id, digest: file.digest, size: file.size })
      .onConflict((oc) => oc.columns(['job_id', 'round', 'rank']).doUpdateSet({ lease_id: lease.id, digest: file.digest, size: file.size }))
      .execute();
    await trx.insertInto('job_blobs').values({ job_id: job.id, digest: file.digest, role: 'exchange' }).onConflict((oc) => oc.doNothing()).execute();
    const files = await trx.selectFrom('cluster_exchange').select(['rank', 'digest', 'size']).where('job_id', '=', job.id).where('round', '=', round).orderBy('rank').execute();
    if (files.length < job.spec.cluster.size) return;
    const members = await trx.selectFrom('leases').select(['id', 'provider_id']).where('job_id', '=', job.id).where('state', 'in', [...ACTIVE_LEASE_STATES]).orderBy('id').execute();
    for (const m of members) {
      const fresh = await trx.insertInto('cluster_deliveries').values({ lease_id: m.id, round }).onConflict((oc) => oc.doNothing()).returning('round').executeTakeFirst();
      if (!fresh) continue;
      await enqueueForProvider(uow, m.provider_id, { type: 'exchange.round', leaseId: m.id, round, files: files.map((f) => ({ rank: f.rank, digest: f.digest, size: Number(f.size) })) });
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
  finish(uow: UnitOfWork, leaseId: string, outcome: Extract<LeaseOutcome, { kind: 'completed' | 'failed' }>): Promise<boolean> {
    return this.end(uow, leaseId, outcome);
  }

  /** The provider failed the task (crash, lost contact, setup error): it is retried elsewhere, up to the job's retries. */
  lose(uow: UnitOfWork, leaseId: string, error: string): Promise<boolean> {
    return this.end(uow, leaseId, { kind: 'lost', error });
  }

  /**
   * A proven fault (verify/commitments.ts has the evidence): the lease ends lost like `lose`, the
   * fault and the commitment are kept on it, and `provider.fault` tells reputation.
   */
  async fault(uow: UnitOfWork, leaseId: string, fault: ProviderFaultKind, detail: string, commitment?: ResultCommitment): Promise<boolean> {
    const ended = await this.end(uow, leaseId, { kind: 'lost', error: `proven fault (${fault}): ${detail}`, fault, ...(commitment ? { commitment } : {}) });
    if (!ended) return false;
    const lease = await uow.trx.selectFrom('leases').select(['job_id', 'provider_id']).where('id', '=', leaseId).executeTakeFirstOrThrow();
    uow.emit({ type: 'provider.fault', providerId: lease.provider_id, jobId: lease.job_id, leaseId, fault, detail });
    return true;
  }

  /** The provider handed the task back (draining): it is retried without counting an attempt. */
  release(uow: UnitOfWork, leaseId: string, error: string): Promise<boolean> {
    return this.end(uow, leaseId, { kind: 'released', error });
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
    for (const l of active) await this.end(uow, l.id, { kind: 'lost', error: reason });
    return active.length;
  }

  /** Sets a provider's capacity (from its hello) and recounts what its leases hold. */
  async declareCapacity(uow: UnitOfWork, providerId: string, total: Capacity): Promise<void> {
    await declareCapacity(uow.trx, providerId, total);
  }


  // ---- results and their verification (trust L3–L6; verify/verification.ts decides) ---------

  /**
   * Whether a completed task's result is held for verification. Not a cluster member's: one member
   * re-executed alone would wait for peers that are not there (a cluster is re-run whole, which is
   * not built yet), and not a service's (it has no result).
   */
  private verifies(job: { purpose: JobPurpose; spec: JobSpec }): boolean {
    return this.verification.enabled && job.purpose === 'work' && job.spec.verification?.mode !== 'none' && job.spec.kind !== 'cluster' && job.spec.kind !== 'service';
  }

  /**
   * A completed task's result is pending: its earnings wait in the lease's account until the
   * audit window closes. Whether it is audited is drawn from the lease's secret seed, whose hash
   * the provider received with the task (commit–reveal): it could not know when it committed.
   */
  private async holdForVerification(uow: UnitOfWork, lease: LeaseRow, digest: string): Promise<void> {
    const { trx } = uow;
    const cfg = this.verification;
    const provider = await trx.selectFrom('providers').select('audit_streak').where('id', '=', lease.provider_id).executeTakeFirst();
    const stake = await balanceOf(trx, stakeOf(lease.provider_id));
    const p = auditRate(lease.charged, stake, provider?.audit_streak ?? 0, cfg);
    const audited = drawOf(lease.audit_seed ?? lease.id, 'audit') < p;
    await trx
      .updateTable('leases')
      .set({ verification: 'pending', settle_at: new Date(Date.now() + cfg.windowMs) })
      .where('id', '=', lease.id)
      .execute();
    this.emitVerification(uow, lease, 'pending', audited ? `audited (p = ${p.toFixed(4)})` : null);
    if (audited) {
      // Checkpointed work is audited one segment at a time: the seed picks which.
      const segments = await this.segmentsOf(trx, lease.id);
      const segment = segments[Math.floor(drawOf(lease.audit_seed ?? lease.id, 'segment') * segments.length)];
      await this.openCheck(uow, { kind: 'audit', leaseId: lease.id, ...(await this.expectation(trx, lease.id, segment, digest)) });
    } else if (cfg.windowMs === 0) await this.confirmResult(uow, lease.id, null);
  }

  /**
   * The segments of a lease's checkpointed work: from where it started (a checkpoint of an earlier
   * lease of its task, or the start) through each of its checkpoints to the end. Empty without checkpoints.
   */
  async segmentsOf(db: Trx, leaseId: string): Promise<Segment[]> {
    const lease = await db.selectFrom('leases').select(['task_id']).where('id', '=', leaseId).executeTakeFirstOrThrow();
    const own = (await db.selectFrom('checkpoints').select('step').where('lease_id', '=', leaseId).orderBy('step').execute()).map((c) => c.step);
    if (own.length === 0) return [];
    const before = await db
      .selectFrom('checkpoints')
      .select('step')
      .where('task_id', '=', lease.task_id)
      .where('lease_id', '!=', leaseId)
      .where('step', '<', own[0] as number)
      .orderBy('step', 'desc')
      .limit(1)
      .executeTakeFirst();
    const points: (number | null)[] = [before?.step ?? null, ...own, null];
    return points.slice(1).map((to, i) => ({ from: points[i] ?? null, to }));
  }

  /** What a check of `segment` (or of the whole task) must reproduce. */
  async expectation(db: Trx, leaseId: string, segment: Segment | undefined, outputDigest: string): Promise<{ expectedDigest: string; segment?: Segment }> {
    if (!segment) return { expectedDigest: outputDigest };
    if (segment.to === null) return { expectedDigest: outputDigest, segment };
    const c = await db.selectFrom('checkpoints').select('digest').where('lease_id', '=', leaseId).where('step', '=', segment.to).executeTakeFirstOrThrow();
    return { expectedDigest: c.digest, segment };
  }

  private emitVerification(
    uow: UnitOfWork,
    lease: { id: string; job_id: string; task_id: string; provider_id: string },
    state: 'pending' | 'verified' | 'disputed' | 'failed',
    detail: string | null,
  ): void {
    uow.emit({ type: 'lease.verification', jobId: lease.job_id, taskId: lease.task_id, leaseId: lease.id, providerId: lease.provider_id, state, detail });
  }

  /**
   * Opens a check of a lease's result: a job of the protocol's, paid from `sys:fees`, that runs
   * the same task on another provider (never the checked one, nor one of its operator). Returns
   * the check's id; a check the fees cannot pay for is recorded as abandoned.
   */
  async openCheck(uow: UnitOfWork, check: NewCheck): Promise<string> {
    let c = check;
    const { trx } = uow;
    const lease = await trx.selectFrom('leases').selectAll().where('id', '=', c.leaseId).executeTakeFirstOrThrow();
    const job = await trx.selectFrom('jobs').selectAll().where('id', '=', lease.job_id).executeTakeFirstOrThrow();
    const task = await trx.selectFrom('tasks').selectAll().where('id', '=', lease.task_id).executeTakeFirstOrThrow();
    const checkId = c.checkId ?? newId('ver');
    if (!c.segment) {
      // A lease that resumed from another lease's checkpoint answers only for its own work: its
      // check starts from the same checkpoint (a forged checkpoint it inherited is not its fault).
      const start = (await this.segmentsOf(trx, lease.id))[0]?.from ?? null;
      if (start !== null) c = { ...c, segment: { from: start, to: null } };
    }
    const cfg = this.verification;
    // Everyone of the same operator as an excluded provider is excluded too.
    const named = [lease.provider_id, ...(c.exclude ?? [])];
    const excluded = await sql<{ id: string }>`
      select id from providers
      where coalesce(attributes->>'operator', id) in (select coalesce(attributes->>'operator', id) from providers where id = any(${named}::text[]))`.execute(trx);
    const exclude = [...new Set([...named, ...excluded.rows.map((r) => r.id)])].sort();
    const multiple = BigInt(Math.round(cfg.checkPriceMultiple * 1000));
    const byLease = (lease.price_per_hour * multiple) / 1000n;
    const maxPerHour = byLease > job.max_per_hour ? byLease : job.max_per_hour;
    const limitMs = limitMsOf(job.spec);
    const runMs = Math.min(limitMs, 4 * (task.duration_ms ?? limitMs) + 4 * this.economics.meteringIntervalMs);
    const budget = costOf(maxPerHour, BigInt(runMs)) || 1n;
    const base = {
      id: checkId,
      kind: c.kind,
      lease_id: lease.id,
      provider_id: lease.provider_id,
      expected_digest: c.expectedDigest,
      opened_by: c.openedBy ?? null,
      bond: c.bondPosted ?? 0n,
      parent_id: c.parentId ?? null,
      segment_from: c.segment?.from ?? null,
      segment_to: c.segment?.to ?? null,
    };
    const jobId = newId('job');
    // Paid from the fees (the verification share), else from the reserve.
    let funded = false;
    for (const from of [FEES, RESERVE]) {
      try {
        await post(trx, {
          kind: 'check.fund',
          key: `check:${checkId}`,
          postings: [
            { account: from, amount: -budget },
            { account: holdOf(jobId), amount: budget },
          ],
          memo: { checkId, kind: c.kind, leaseId: lease.id, jobId, from },
        });
        funded = true;
        break;
      } catch (err) {
        if ((err as GridworkError).code !== 'INSUFFICIENT_FUNDS') throw err;
      }
    }
    if (!funded) {
      const detail = 'neither the verification fund (sys:fees) nor the reserve can pay for this check now';
      await trx.insertInto('verifications').values({ ...base, state: 'abandoned', detail, ended_at: new Date() }).execute();
      uow.emit({ type: 'check.closed', checkId, kind: c.kind, leaseId: lease.id, providerId: lease.provider_id, state: 'abandoned', detail });
      return checkId;
    }
    const now = new Date();
    const count = await this.taskCount(trx, job.id);
    // The requester's placement wishes (regions, reputation, stake) are for its own work: a check
    // may run anywhere but on the providers it must not trust.
    const { placement: _placement, ...checked } = job.spec;
    const spec: JobSpec = {
      ...checked,
      runtime: { ...job.spec.runtime, env: { ...(job.spec.runtime.env ?? {}), GRIDWORK_TASK_INDEX: String(task.idx), GRIDWORK_TASK_COUNT: String(count) } },
      name: `${c.kind}-${job.name}`.slice(0, 64),
      price: { maxPerHour: formatCredits(maxPerHour), budget: formatCredits(budget) },
      maxRetries: 1,
      queueTimeoutSeconds: Math.max(1, Math.ceil(cfg.checkTimeoutMs / 1000)),
      failurePolicy: 'stop',
    };
    await trx
      .insertInto('jobs')
      .values({
        id: jobId,
        owner: PROTOCOL_ACCOUNT,
        name: spec.name,
        kind: job.kind,
        state: 'pending',
        spec: JSON.stringify(spec),
        bundle_manifest: job.bundle_manifest,
        error: null,
        created_at: now,
        updated_at: now,
        budget,
        max_per_hour: maxPerHour,
        request_digest: null,
        purpose: c.kind,
        exclude_providers: JSON.stringify(c.only ? [] : exclude),
        only_provider: c.only ?? null,
      })
      .execute();
    await trx
      .insertInto('tasks')
      .values({ id: newId('task'), job_id: jobId, idx: 0, state: 'queued', attempts: 0, inputs: JSON.stringify(task.inputs), outputs: '[]', queued_at: now })
      .execute();
    // The check reads what the checked task read.
    await sql`insert into job_blobs (job_id, digest, role) select ${jobId}, digest, role from job_blobs where job_id = ${job.id} and role in ('bundle', 'input') on conflict do nothing`.execute(trx);
    if (c.segment?.from != null) {
      // A segment check starts from the checked task's checkpoint.
      await sql`insert into job_blobs (job_id, digest, role) select ${jobId}, digest, 'checkpoint' from checkpoints where task_id = ${task.id} and step = ${c.segment.from} limit 1 on conflict do nothing`.execute(trx);
    }
    await trx.insertInto('verifications').values({ ...base, state: 'open', check_job_id: jobId }).execute();
    uow.emit({ type: 'job.submitted', jobId, owner: PROTOCOL_ACCOUNT, tasks: 1 });
    uow.emit({ type: 'check.opened', checkId, kind: c.kind, leaseId: lease.id, providerId: lease.provider_id, checkJobId: jobId });
    return checkId;
  }

  /** Records how a check ended (verify/ decided); stops its job if it still runs. */
  async closeCheck(uow: UnitOfWork, checkId: string, state: 'passed' | 'failed' | 'abandoned', outcome: string, detail: string | null): Promise<boolean> {
    const row = await uow.trx
      .updateTable('verifications')
      .set({ state, outcome, detail, ended_at: new Date() })
      .where('id', '=', checkId)
      .where('state', '=', 'open')
      .returning(['kind', 'lease_id', 'provider_id', 'check_job_id'])
      .executeTakeFirst();
    if (!row) return false;
    if (row.check_job_id) await this.cancel(uow, row.check_job_id, `check ${state}`);
    uow.emit({ type: 'check.closed', checkId, kind: row.kind, leaseId: row.lease_id, providerId: row.provider_id, state, detail });
    return true;
  }

  /**
   * A result stands (confirmed by a check, or its window closed unchallenged): its earnings are
   * paid. A disputed result only by its dispute's dismissal (`disputed: true`): an audit passing
   * meanwhile must not pay what the dispute may still refund.
   */
  async confirmResult(uow: UnitOfWork, leaseId: string, detail: string | null, opts: { disputed?: boolean } = {}): Promise<boolean> {
    const { trx } = uow;
    const peek = await trx.selectFrom('leases').select('job_id').where('id', '=', leaseId).executeTakeFirstOrThrow();
    await this.lockJob(trx, peek.job_id);
    const lease = await this.lockLease(trx, leaseId);
    if (lease.verification !== (opts.disputed ? 'disputed' : 'pending')) return false;
    if (lease.settle_at !== null) await payEarnings(trx, lease, lease.provider_id, this.economics);
    await trx.updateTable('leases').set({ verification: 'verified', settle_at: null }).where('id', '=', leaseId).execute();
    this.emitVerification(uow, lease, 'verified', detail);
    await this.refreshJob(uow, lease.job_id);
    return true;
  }

  /**
   * A result proven wrong: the lease's earnings, if still pending, go back to the requester
   * (verify/ slashes the provider), and a job still verifying fails with the reason.
   */
  async rejectResult(uow: UnitOfWork, leaseId: string, detail: string): Promise<{ refunded: bigint; wasPaid: boolean } | null> {
    const { trx } = uow;
    const peek = await trx.selectFrom('leases').select('job_id').where('id', '=', leaseId).executeTakeFirstOrThrow();
    const job = await this.lockJob(trx, peek.job_id);
    const lease = await this.lockLease(trx, leaseId);
    if (lease.verification === 'failed' || lease.verification === null) return null;
    const wasPaid = lease.settle_at === null;
    const refunded = wasPaid ? 0n : await refundEarnings(trx, lease, job.owner, detail);
    await trx.updateTable('leases').set({ verification: 'failed', settle_at: null }).where('id', '=', leaseId).execute();
    this.emitVerification(uow, lease, 'failed', detail);
    if (!isTerminalJob(job.state)) {
      const task = await trx.selectFrom('tasks').select('idx').where('id', '=', lease.task_id).executeTakeFirstOrThrow();
      await this.refreshJob(uow, job.id, { force: 'failed', error: `task ${task.idx}'s result failed verification: ${detail}` });
    }
    return { refunded, wasPaid };
  }

  /**
   * A requester disputes a pending result (`disputed: true`; only while its window is open), or a
   * dispute ended without a verdict (`false`): the result stays unpaid until the dispute is decided.
   * Returns whether the result was in the expected state.
   */
  async markDisputed(uow: UnitOfWork, leaseId: string, disputed: boolean): Promise<boolean> {
    const peek = await uow.trx.selectFrom('leases').select('job_id').where('id', '=', leaseId).executeTakeFirstOrThrow();
    await this.lockJob(uow.trx, peek.job_id);
    const lease = await this.lockLease(uow.trx, leaseId);
    if (disputed ? lease.verification !== 'pending' || !lease.settle_at || lease.settle_at.getTime() <= Date.now() : lease.verification !== 'disputed') return false;
    const to = disputed ? 'disputed' : 'pending';
    await uow.trx.updateTable('leases').set({ verification: to }).where('id', '=', leaseId).execute();
    this.emitVerification(uow, lease, to, null);
    return true;
  }

  /** Pending results whose window has closed with no check open. */
  async dueResults(db: Trx | import('../store/database.ts').Db, limit: number): Promise<string[]> {
    const rows = await db
      .selectFrom('leases')
      .select('id')
      .where('settle_at', '<=', new Date())
      .where('verification', '=', 'pending')
      .where(({ not, exists, selectFrom }) =>
        not(exists(selectFrom('verifications').select('id').whereRef('verifications.lease_id', '=', 'leases.id').where('verifications.state', '=', 'open'))),
      )
      .orderBy('settle_at')
      .limit(limit)
      .execute();
    return rows.map((r) => r.id);
  }

  // ---- internals ----------------------------------------------------------------------------

  private lockLease(trx: Trx, leaseId: string) {
    return trx.selectFrom('leases').selectAll().where('id', '=', leaseId).forNoKeyUpdate().executeTakeFirstOrThrow();
  }

  private async lockJob(trx: Trx, jobId: string) {
    const job = await trx.selectFrom('jobs').selectAll().where('id', '=', jobId).forNoKeyUpdate().executeTakeFirst();
    if (!job) throw new GridworkError('JOB_NOT_FOUND', `job ${jobId} does not exist`);
    return job;
  }

  private async charge(trx: Trx, lease: LeaseRow, usageMs: bigint): Promise<void> {
    const before = lease.usage_ms;
    await chargeUsage(trx, lease, usageMs);
    if (lease.usage_ms !== before) await trx.updateTable('leases').set({ usage_ms: lease.usage_ms, charged: lease.charged }).where('id', '=', lease.id).execute();
  }

  /** Ends an active lease with its outcome; the task follows (succeeded, failed, requeued) and so does the job. */
  private async end(uow: UnitOfWork, leaseId: string, outcome: LeaseOutcome): Promise<boolean> {
    const { trx } = uow;
    const peek = await trx.selectFrom('leases').select(['job_id', 'state']).where('id', '=', leaseId).executeTakeFirst();
    if (!peek || !isActiveLease(peek.state)) return false;
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
      if (outcome.kind === 'completed' || outcome.kind === 'failed') await this.charge(trx, lease, plausibleUsage(outcome.durationMs, lease.started_at, this.economics, limitMs));
      else if (outcome.kind === 'cancelled') await this.charge(trx, lease, BigInt(Math.min(limitMs, Math.max(0, now.getTime() - lease.started_at.getTime()))));
      else if (job.kind === 'train' || job.kind === 'cluster') {
        // A lost (or handed-back) training lease is paid only for the work its next lease resumes
        // from: up to its last checkpoint, nothing without one.
        const last = await trx.selectFrom('checkpoints').select('usage_ms').where('lease_id', '=', lease.id).orderBy('step', 'desc').limit(1).executeTakeFirst();
        // The checkpoint's run time is signed like a debit note: charged up to it, and no further.
        if (last) await this.charge(trx, lease, last.usage_ms);
        const before = { charged: lease.charged, usage: lease.usage_ms };
        await capCharge(trx, lease, last?.usage_ms ?? 0n);
        if (lease.charged !== before.charged || lease.usage_ms !== before.usage) await trx.updateTable('leases').set({ usage_ms: lease.usage_ms, charged: lease.charged }).where('id', '=', lease.id).execute();
      }
    }
    // A completed task's earnings stay pending while its result can still be checked (verify/);
    // the unused escrow goes back at once either way.
    const verify = outcome.kind === 'completed' && this.verifies(job);
    if (verify) await returnEscrow(trx, lease);
    else await settleLease(trx, lease, lease.provider_id, this.economics);
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
    await freeCapacity(trx, { leaseId: lease.id, providerId: lease.provider_id, cpuMilli: Number(lease.cpu_milli), memMilli: Number(lease.mem_milli), gpus: lease.gpus });
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
      if (verify) await this.holdForVerification(uow, lease, outputDigest(outcome.outputs));
    } else if (requeue) {
      const attempts = outcome.kind === 'lost' ? task.attempts + 1 : task.attempts;
      assertTransition('task', task.id, task.state, 'queued');
      await trx
        .updateTable('tasks')
        .set({ state: 'queued', attempts, lease_id: null, provider_id: null, started_at: null, error: outcome.error, queued_at: now })
        .where('id', '=', task.id)
        .execute();
      uow.emit({ type: 'task.requeued', jobId: task.job_id, taskId: task.id, index: task.idx, attempts, reason: outcome.error });
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
        for (const o of others) await this.end(uow, o.id, { kind: 'released', stop: true, error: `cluster restarts: member ${task.idx} was lost (${outcome.error})` });
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
    await this.refreshJob(uow, task.job_id);
    return true;
  }

  /** Recomputes a job's state from its tasks (or forces an end); an ended job stops its open work and releases its hold. */
  private async refreshJob(uow: UnitOfWork, jobId: string, force?: { force: 'failed' | 'cancelled'; error: string }): Promise<JobState> {
    const { trx } = uow;
    const job = await this.lockJob(trx, jobId);
    // Counts, not rows: a 10,000-task job must not cost 10,000 rows per lease transition.
    const rows = await trx.selectFrom('tasks').select(['state', (eb) => eb.fn.countAll<string>().as('n')]).where('job_id', '=', jobId).groupBy('state').execute();
    const counts: TaskCounts = {};
    for (const r of rows) counts[r.state as TaskState] = Number(r.n);
    const current = job.state as JobState;
    const policy: FailurePolicy = job.spec.failurePolicy ?? 'stop';
    let next = force?.force ?? deriveJobState(current, counts, policy);
    // Every task done, but results still pending verification: the job is verifying until they settle.
    if (next === 'succeeded') {
      const open = await trx.selectFrom('leases').select('id').where('job_id', '=', jobId).where('verification', 'in', ['pending', 'disputed']).limit(1).executeTakeFirst();
      if (open) next = 'verifying';
    }
    if (next === current) return current;
    assertTransition('job', jobId, current, next);
    let jobError = force?.error ?? null;
    if (next === 'failed' && !jobError) {
      const first = await trx.selectFrom('tasks').select(['idx', 'error']).where('job_id', '=', jobId).where('state', '=', 'failed').orderBy('idx').limit(1).executeTakeFirst();
      const more = (counts.failed ?? 0) - 1;
      jobError = first ? `task ${first.idx} failed: ${first.error ?? 'unknown error'}${more > 0 ? ` (and ${more} more)` : ''}` : 'failed';
    }
    await trx.updateTable('jobs').set({ state: next, error: jobError, updated_at: new Date() }).where('id', '=', jobId).execute();
    if (next === 'succeeded' || next === 'failed' || next === 'cancelled') {
      await this.cancelOpenTasks(uow, jobId, `job ${next}`);
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
