/**
 * Placement: a queued task on a provider — capacity taken in the database, lease and escrow,
 * the secret audit seed, the assignment in the provider's outbox, resuming from the last usable
 * checkpoint. Part of the lifecycle (lifecycle.ts).
 */
import { type FileRef, formatCredits, type LeaseAssignment, newId } from '@gridwork/protocol';
import { sha256Hex } from '@gridwork/protocol/node';
import { randomBytes } from 'node:crypto';
import { holdOf } from '../ledger/ledger.ts';
import { costOf, fundLease, lockedBalance } from '../ledger/lease-economics.ts';
import { milliN } from '../market/order-price.ts';
import { enqueueForProvider } from '../providers/outbox.ts';
import type { JobPurpose } from '../store/schema.ts';
import { holdCapacity } from './capacity.ts';
import { assertTransition, isTerminalJob } from '../core/state-machine.ts';
import type { Trx, UnitOfWork } from '../core/unit-of-work.ts';
import { limitMsOf } from '../core/time-limit.ts';
import type { LifecycleParts, Placement, PlaceResult } from './lifecycle.ts';

export class Placements {
  constructor(private readonly parts: LifecycleParts) {}

  /**
   * Places a queued task on a provider at a price: checks the job can fund a metering period,
   * takes the capacity in the database, writes the lease, draws its escrow, assigns the task and
   * queues the assignment in the provider's outbox. Nothing is written unless it is placed.
   */
  async place(uow: UnitOfWork, p: Placement): Promise<PlaceResult> {
    const { trx } = uow;
    const jobId = p.jobId ?? (await trx.selectFrom('tasks').select('job_id').where('id', '=', p.taskId).executeTakeFirst())?.job_id;
    if (!jobId) return { status: 'gone' };
    const job = await this.parts.ending.lockJob(trx, jobId); // job before task: the lock order of every command
    const task = await trx.selectFrom('tasks').selectAll().where('id', '=', p.taskId).forNoKeyUpdate().executeTakeFirst();
    if (!task || task.job_id !== job.id || task.state !== 'queued' || isTerminalJob(job.state)) return { status: 'gone' };
    // A check never runs on a provider it checks (the scheduler's order already excludes them).
    if (job.exclude_providers.includes(p.providerId) || (job.only_provider !== null && job.only_provider !== p.providerId)) return { status: 'gone' };
    // The job's remaining budget must fund at least one metering period at this price (locked:
    // the escrow below is drawn from it).
    const hold = await lockedBalance(trx, holdOf(job.id));
    if (hold < costOf(p.pricePerHour, BigInt(this.parts.economics.meteringIntervalMs))) {
      await this.parts.jobs.setFunding(uow, job.id, true);
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
    if (job.low_balance_since) await this.parts.jobs.setFunding(uow, job.id, false);
    await fundLease(trx, { id: leaseId, job_id: job.id, price_per_hour: p.pricePerHour, usage_ms: 0n, charged: 0n }, 0n, this.parts.economics, {
      escrow: 0n, // a new lease's
      lockedHold: hold,
    });
    await trx.updateTable('tasks').set({ state: 'assigned', lease_id: leaseId, provider_id: p.providerId, error: null }).where('id', '=', task.id).execute();
    // A requeued task resumes from its latest checkpoint; a segment check from the checked lease's.
    const resume = await this.resumePoint(trx, task.id, job.id, job.purpose);
    // A check replays the checked task: same index and count (its spec carries them).
    const replay = job.purpose === 'work' ? undefined : spec.runtime.env;
    const taskIndex = replay?.GRIDWORK_TASK_INDEX ? Number(replay.GRIDWORK_TASK_INDEX) : task.idx;
    const taskCount = replay?.GRIDWORK_TASK_COUNT ? Number(replay.GRIDWORK_TASK_COUNT) : await this.parts.ending.taskCount(trx, job.id);
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
                GRIDWORK_PEERS: Array.from({ length: member.worldSize }, (_, r) => r)
                  .filter((r) => r !== member.rank)
                  .join(','),
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
    await this.parts.ending.markRunning(uow, job);
    return { status: 'placed', leaseId };
  }

  /**
   * Where a task starts: its own latest checkpoint — never one written by a lease whose result was
   * refuted (the task runs again because that work was wrong) — else (a segment check) the checked
   * lease's segment start.
   */
  private async resumePoint(
    trx: Trx,
    taskId: string,
    jobId: string,
    purpose: JobPurpose,
  ): Promise<{ from?: { step: number; file: FileRef }; stopStep?: number } | null> {
    const ref = (c: { step: number; path: string; digest: string; size: bigint }) => ({
      step: c.step,
      file: { path: c.path, digest: c.digest, size: Number(c.size) },
    });
    const own = await trx
      .selectFrom('checkpoints')
      .select(['step', 'path', 'digest', 'size'])
      .where('task_id', '=', taskId)
      .where(({ not, exists, selectFrom }) =>
        not(exists(selectFrom('leases').select('leases.id').whereRef('leases.id', '=', 'checkpoints.lease_id').where('leases.verification', '=', 'failed'))),
      )
      .orderBy('step', 'desc')
      .limit(1)
      .executeTakeFirst();
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
        : await trx
            .selectFrom('checkpoints')
            .select(['step', 'path', 'digest', 'size'])
            .where('task_id', '=', check.task_id)
            .where('step', '=', check.segment_from)
            .limit(1)
            .executeTakeFirst();
    const from = own && (!start || own.step > start.step) ? own : start;
    return { ...(from ? { from: ref(from) } : {}), ...(check.segment_to === null ? {} : { stopStep: check.segment_to }) };
  }
}
