/**
 * One small handler per sequenced provider report. Each runs inside the unit of work that also
 * records the report's sequence number, and turns the report into lifecycle commands. A report
 * about a lease that is not the sender's throws NOT_LEASE_OWNER / LEASE_NOT_FOUND; a usage record
 * whose signature does not verify throws BAD_SIGNATURE: the report is consumed without effect.
 */
import { canonicalJson, checkpointMessage, checkpointStep, type FileRef, type LeaseEnd, type ProviderSequenced } from '@gridwork/protocol';
import { verifyBytes } from '@gridwork/protocol/node';
import { GridworkError } from '@gridwork/protocol';
import type { Lifecycle, LeaseOutcome } from '../lifecycle/lifecycle.ts';
import { notUploadedBy } from '../blobs/blob-service.ts';
import type { UnitOfWork } from '../core/unit-of-work.ts';
import { checkResultCommitment } from '../verify/commitments.ts';
import type { CapacityChallenges } from '../verify/capacity-challenges.ts';
import { verifyAsks } from './asks.ts';

export interface ReportContext {
  uow: UnitOfWork;
  providerId: string;
  lifecycle: Lifecycle;
  challenges?: CapacityChallenges;
  /** When the report reached this coordinator (ms): deadlines are judged by it, not by when its turn to be applied came. */
  receivedAt: number;
}

type Handlers = { [K in ProviderSequenced['type']]: (ctx: ReportContext, msg: Extract<ProviderSequenced, { type: K }>) => Promise<void> };

/** The codes of reports that are consumed (their seq recorded) but change nothing. */
export const REJECTED_REPORT_CODES = new Set(['NOT_LEASE_OWNER', 'LEASE_NOT_FOUND', 'BAD_SIGNATURE']);

export const reportHandlers: Handlers = {
  async 'provider.state'({ uow, providerId, lifecycle }, msg) {
    // A provider that says it is going offline gives up its leases now: the sweep never judges
    // an offline provider again, so leases left on it would never be requeued.
    if (msg.state === 'offline') await lifecycle.loseProvider(uow, providerId, 'provider went offline');
    await uow.trx.updateTable('providers').set({ state: msg.state }).where('id', '=', providerId).execute();
    uow.emit({ type: 'provider.changed', providerId, what: 'state' });
  },

  async 'provider.asks'({ uow, providerId }, msg) {
    const { instance } = await uow.trx.selectFrom('providers').select('instance').where('id', '=', providerId).executeTakeFirstOrThrow();
    verifyAsks(providerId, msg.asks, instance, msg.signature);
    await uow.trx
      .updateTable('providers')
      .set({ asks: JSON.stringify(msg.asks) })
      .where('id', '=', providerId)
      .execute();
    uow.emit({ type: 'provider.changed', providerId, what: 'asks' });
  },

  async 'lease.started'({ uow, providerId, lifecycle }, msg) {
    await lifecycle.start(uow, await lifecycle.leaseOf(uow, providerId, msg.leaseId));
  },

  async 'lease.log'({ uow, providerId, lifecycle }, msg) {
    await lifecycle.appendLogs(uow, await lifecycle.leaseOf(uow, providerId, msg.leaseId), msg.chunks);
  },

  async 'lease.usage'({ uow, providerId, lifecycle }, msg) {
    const lease = await lifecycle.leaseOf(uow, providerId, msg.leaseId);
    if (!verifyBytes(providerId, canonicalJson({ leaseId: lease.id, usageMs: msg.usageMs }), msg.signature)) {
      throw new GridworkError('BAD_SIGNATURE', 'usage record signature does not verify');
    }
    await lifecycle.recordUsage(uow, lease, msg.usageMs);
  },

  async 'lease.checkpoint'({ uow, providerId, lifecycle }, msg) {
    const lease = await lifecycle.leaseOf(uow, providerId, msg.leaseId);
    const signed = checkpointMessage({ leaseId: lease.id, step: msg.step, digest: msg.file.digest, usageMs: msg.usageMs, auditCommitment: lease.audit_commitment ?? '' });
    if (!verifyBytes(providerId, signed, msg.signature)) throw new GridworkError('BAD_SIGNATURE', 'checkpoint signature does not verify');
    // Only a file named for its step, that this provider uploaded during the lease, is a checkpoint to resume from.
    if (checkpointStep(msg.file.path) !== msg.step) throw new GridworkError('BAD_SIGNATURE', `checkpoint ${msg.file.path} is not named for step ${msg.step}`);
    if (!(await uploadedDuring(uow, providerId, lease.created_at, [msg.file]))) throw new GridworkError('BAD_SIGNATURE', 'checkpoint was not uploaded by this provider during the lease');
    await lifecycle.recordCheckpoint(uow, lease, { step: msg.step, file: msg.file, usageMs: msg.usageMs, signature: msg.signature });
  },

  async 'lease.exchange'({ uow, providerId, lifecycle }, msg) {
    const lease = await lifecycle.leaseOf(uow, providerId, msg.leaseId);
    if (!(await uploadedDuring(uow, providerId, lease.created_at, [msg.file]))) throw new GridworkError('BAD_SIGNATURE', 'exchange file was not uploaded by this provider during the lease');
    await lifecycle.recordExchange(uow, lease, msg.round, msg.file);
  },

  async 'lease.service'({ uow, providerId, lifecycle }, msg) {
    await lifecycle.serviceHealth(uow, await lifecycle.leaseOf(uow, providerId, msg.leaseId), msg.health);
  },

  async 'lease.finished'({ uow, providerId, lifecycle }, msg) {
    const lease = await lifecycle.leaseOf(uow, providerId, msg.leaseId);
    // L2: a signed commitment that does not match what is delivered is a proven fault.
    const check = checkResultCommitment(providerId, lease.audit_commitment, msg);
    if (!check.ok) {
      await lifecycle.fault(uow, lease.id, check.fault, check.detail, msg.commitment);
      return;
    }
    if (msg.outputs.length > 0 && !(await uploadedDuring(uow, providerId, lease.created_at, msg.outputs))) {
      await lifecycle.fault(uow, lease.id, 'outputs-not-uploaded', 'provider reported outputs it did not upload during the lease', msg.commitment);
      return;
    }
    // The outputs must be what they say: each path once, each size the stored blob's.
    const misstated = await misstatedOutputs(uow, msg.outputs);
    if (misstated) {
      await lifecycle.fault(uow, lease.id, 'commitment-mismatch', misstated, msg.commitment);
      return;
    }
    const outcome = outcomeOf(msg.outcome, msg.durationMs, msg.outputs);
    // A service replica never ends by itself: one that exited (or was stopped unhealthy) is replaced.
    if (lease.service_token !== null && outcome.kind !== 'lost') {
      await lifecycle.lose(uow, lease, `service replica ended: ${outcome.kind === 'failed' ? outcome.error : 'exited with code 0'}`);
      return;
    }
    if (outcome.kind === 'lost') await lifecycle.lose(uow, lease, outcome.error);
    else if (outcome.kind === 'completed' || outcome.kind === 'failed') {
      await lifecycle.finish(uow, lease, msg.commitment ? { ...outcome, commitment: msg.commitment } : outcome);
    }
  },

  async 'challenge.committed'({ uow, providerId, challenges, receivedAt }, msg) {
    await challenges?.committed(uow, providerId, msg, receivedAt);
  },

  async 'challenge.opened'({ uow, providerId, challenges, receivedAt }, msg) {
    await challenges?.opened(uow, providerId, msg, receivedAt);
  },

  async 'lease.released'({ uow, providerId, lifecycle }, msg) {
    await lifecycle.leaseOf(uow, providerId, msg.leaseId);
    // Handing work back is free only while draining (announced first); otherwise it counts as
    // a lost attempt, so a provider cannot hold a task hostage by taking and returning it.
    const provider = await uow.trx.selectFrom('providers').select('state').where('id', '=', providerId).executeTakeFirstOrThrow();
    if (provider.state === 'draining') await lifecycle.release(uow, msg.leaseId, `handed back by provider: ${msg.reason}`);
    else await lifecycle.lose(uow, msg.leaseId, `handed back by a provider that is not draining: ${msg.reason}`);
  },
};

const LIMIT_CODE = { memory: 'MEMORY_LIMIT', processes: 'PROCESS_LIMIT', disk: 'DISK_LIMIT', outputs: 'PAYLOAD_TOO_LARGE' } as const;

/** The wire's typed end of a lease as the lifecycle's outcome. */
export function outcomeOf(end: LeaseEnd, durationMs: number, outputs: FileRef[]): LeaseOutcome {
  switch (end.kind) {
    case 'exited':
      if (end.exitCode === 0) return { kind: 'completed', durationMs, outputs };
      return { kind: 'failed', reason: 'exit', exitCode: end.exitCode, durationMs, error: `exited with code ${end.exitCode}${end.signal ? ` (${end.signal})` : ''}` };
    case 'timeout':
      return { kind: 'failed', reason: 'timeout', exitCode: null, durationMs, error: `timeout after ${end.limitSeconds}s` };
    case 'limit':
      return { kind: 'failed', reason: 'limit', exitCode: null, durationMs, error: `${LIMIT_CODE[end.limit]}: ${end.limit} limit reached: ${end.message}` };
    case 'cancelled':
      // Only a lease the coordinator still counts as active gets here: the provider stopped it by itself.
      return { kind: 'lost', error: 'the provider stopped the task without being asked' };
    case 'error':
      return { kind: 'lost', error: end.message };
  }
}

/** Outputs count only if this provider uploaded each of them since the lease was created. */
async function uploadedDuring(uow: UnitOfWork, providerId: string, since: Date, outputs: readonly FileRef[]): Promise<boolean> {
  return (await notUploadedBy(uow.trx, providerId, outputs.map((o) => o.digest), since)).length === 0;
}

/** Why a list of outputs misstates them (a path twice, a size that is not the blob's), or null. */
async function misstatedOutputs(uow: UnitOfWork, outputs: readonly FileRef[]): Promise<string | null> {
  if (new Set(outputs.map((o) => o.path)).size !== outputs.length) return 'an output path is listed twice';
  if (outputs.length === 0) return null;
  const sizes = new Map<string, bigint>();
  const digests = [...new Set(outputs.map((o) => o.digest))];
  for (let i = 0; i < digests.length; i += 1000) {
    const rows = await uow.trx.selectFrom('blobs').select(['digest', 'size']).where('digest', 'in', digests.slice(i, i + 1000)).execute();
    for (const r of rows) sizes.set(r.digest, BigInt(r.size));
  }
  const wrong = outputs.find((o) => sizes.get(o.digest) !== BigInt(o.size));
  return wrong ? `output ${wrong.path} is said to be ${wrong.size} bytes; its blob has ${sizes.get(wrong.digest) ?? 'no'} bytes` : null;
}
