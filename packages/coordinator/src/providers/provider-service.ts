/**
 * Providers as the coordinator knows them: registration by signed hello, the exactly-once
 * application of their sequenced reports, acks of the durable outbox, heartbeats, and the
 * failure detector that declares silent providers lost. Owns `providers` and
 * `provider_outbox`, and the lease transitions a provider's reports cause.
 */
import { canonicalJson, GridworkError, type ProviderHello, type ProviderSequenced } from '@gridwork/protocol';
import { verifyBytes } from '@gridwork/protocol/node';
import { chargeUsage, type EconomicsConfig, fundLease, plausibleUsage } from '../ledger/lease-economics.ts';
import { parseAsks } from '../market/order-price.ts';
import type { Logger } from 'pino';
import type { EventBus } from '../bus/event-bus.ts';
import type { Transaction } from 'kysely';
import { type Changes, endLease, enqueueForProvider, loseProviderLeases, newChanges, refreshJob } from '../jobs/lease-lifecycle.ts';
import { ACTIVE_LEASE_STATES, assertTransition } from '../jobs/state-machine.ts';
import type { Db } from '../store/database.ts';
import { transact } from '../store/transact.ts';
import type { Database } from '../store/schema.ts';

export interface ProviderServiceDeps {
  db: Db;
  economics: EconomicsConfig;
  bus: EventBus;
  log: Logger;
  publish: (changes: Changes) => void;
}

export type ApplyResult = 'applied' | 'duplicate' | 'gap';

export class ProviderService {
  constructor(private readonly deps: ProviderServiceDeps) {}

  /**
   * Registers or resumes a provider. A new agent instance means the previous one died with
   * whatever it ran: those leases are lost and both sequence counters start over.
   */
  async hello(providerId: string, hello: ProviderHello): Promise<{ lastApplied: number; outbox: Record<string, unknown>[] }> {
    verifyAsks(providerId, hello.asks, hello.instance, hello.asksSignature);
    const changes = newChanges(this.deps.economics);
    const result = await transact(this.deps.db, async (trx) => {
      await trx
        .insertInto('accounts')
        .values({ id: providerId })
        .onConflict((oc) => oc.doNothing())
        .execute();
      const existing = await trx.selectFrom('providers').selectAll().where('id', '=', providerId).forNoKeyUpdate().executeTakeFirst();
      const now = new Date();
      const row = {
        name: hello.name,
        runtime: hello.runtime,
        slots: hello.slots,
        hardware: JSON.stringify(hello.hardware),
        attributes: JSON.stringify(hello.attributes),
        asks: JSON.stringify(hello.asks),
        benchmarks: JSON.stringify(hello.benchmarks),
        bids: hello.bids,
        instance: hello.instance,
        last_seen_at: now,
      };
      if (!existing) {
        await trx
          .insertInto('providers')
          .values({ id: providerId, state: 'online', in_seq: 0n, out_seq: 0n, ...row })
          .execute();
        return { lastApplied: 0, outbox: [] };
      }
      if (existing.instance !== hello.instance) {
        const lost = await loseProviderLeases(trx, providerId, `provider ${hello.name} restarted`, changes);
        if (lost > 0) this.deps.log.warn({ providerId, lost }, 'provider restarted: its leases are lost');
        await trx.deleteFrom('provider_outbox').where('provider_id', '=', providerId).execute();
        await trx
          .updateTable('providers')
          .set({ ...row, state: 'online', in_seq: 0n, out_seq: 0n })
          .where('id', '=', providerId)
          .execute();
        return { lastApplied: 0, outbox: [] };
      }
      await trx
        .updateTable('providers')
        .set({ ...row, state: existing.state === 'draining' ? 'draining' : 'online' })
        .where('id', '=', providerId)
        .execute();
      await this.ackWithin(trx, providerId, hello.lastApplied);
      // Work the agent still runs that is no longer its lease here (declared lost while it was
      // unreachable, or cancelled): tell it to stop, so it frees the slots the market counts as free.
      if (hello.running.length > 0) {
        const active = await trx
          .selectFrom('leases')
          .select('id')
          .where('id', 'in', hello.running)
          .where('provider_id', '=', providerId)
          .where('state', 'in', [...ACTIVE_LEASE_STATES])
          .execute();
        const keep = new Set(active.map((l) => l.id));
        for (const leaseId of hello.running.filter((id) => !keep.has(id))) {
          await enqueueForProvider(trx, providerId, { type: 'lease.cancel', leaseId, reason: 'lease no longer held by this provider' }, changes);
        }
      }
      const outbox = await trx.selectFrom('provider_outbox').select('message').where('provider_id', '=', providerId).orderBy('seq').execute();
      return { lastApplied: Number(existing.in_seq), outbox: outbox.map((r) => r.message) };
    });
    changes.work = true;
    changes.providersChanged.add(providerId);
    this.deps.publish(changes);
    return result;
  }

  /** Drops acknowledged outbox messages; an acknowledged assignment means the lease is starting. */
  private async ackWithin(trx: Transaction<Database>, providerId: string, seq: number): Promise<void> {
    const acked = await trx.deleteFrom('provider_outbox').where('provider_id', '=', providerId).where('seq', '<=', BigInt(seq)).returning('message').execute();
    const leaseIds = acked
      .map((r) => r.message as { type?: string; lease?: { leaseId: string } })
      .flatMap((m) => (m.type === 'lease.assign' && m.lease ? [m.lease.leaseId] : []));
    if (leaseIds.length > 0) {
      await trx.updateTable('leases').set({ state: 'starting' }).where('id', 'in', leaseIds).where('state', '=', 'offered').execute();
    }
  }

  async ack(providerId: string, seq: number): Promise<void> {
    await transact(this.deps.db, (trx) => this.ackWithin(trx, providerId, seq));
  }

  async heartbeat(providerId: string): Promise<void> {
    await this.deps.db.updateTable('providers').set({ last_seen_at: new Date() }).where('id', '=', providerId).execute();
  }

  /** Applies one sequenced report exactly once: the effect and the new seq commit together. */
  async apply(providerId: string, msg: ProviderSequenced): Promise<ApplyResult> {
    const changes = newChanges(this.deps.economics);
    const logged = new Set<string>();
    const result = await transact(this.deps.db, async (trx): Promise<ApplyResult> => {
      const p = await trx.selectFrom('providers').select(['in_seq']).where('id', '=', providerId).forNoKeyUpdate().executeTakeFirst();
      if (!p) throw new GridworkError('PROVIDER_UNKNOWN', 'say hello first');
      const last = Number(p.in_seq);
      if (msg.seq <= last) return 'duplicate';
      if (msg.seq !== last + 1) return 'gap';
      await trx
        .updateTable('providers')
        .set({ in_seq: BigInt(msg.seq), last_seen_at: new Date() })
        .where('id', '=', providerId)
        .execute();

      if (msg.type === 'provider.state') {
        await trx.updateTable('providers').set({ state: msg.state }).where('id', '=', providerId).execute();
        changes.work = true;
        changes.providersChanged.add(providerId);
        return 'applied';
      }
      if (msg.type === 'provider.asks') {
        const { instance } = await trx.selectFrom('providers').select('instance').where('id', '=', providerId).executeTakeFirstOrThrow();
        verifyAsks(providerId, msg.asks, instance, msg.signature);
        await trx
          .updateTable('providers')
          .set({ asks: JSON.stringify(msg.asks) })
          .where('id', '=', providerId)
          .execute();
        changes.work = true;
        changes.providersChanged.add(providerId);
        return 'applied';
      }
      const lease = await trx.selectFrom('leases').selectAll().where('id', '=', msg.leaseId).forNoKeyUpdate().executeTakeFirst();
      if (!lease || lease.provider_id !== providerId) {
        // Consumed (so the stream goes on) but without effect: a provider reports only on its own leases.
        this.deps.log.warn({ providerId, leaseId: msg.leaseId, type: msg.type }, 'report on a lease that is not this provider’s: ignored');
        throw new ReportRejected(lease ? 'NOT_LEASE_OWNER' : 'LEASE_NOT_FOUND', `lease ${msg.leaseId} is not yours`, msg.seq);
      }
      switch (msg.type) {
        case 'lease.started': {
          if (lease.state === 'offered' || lease.state === 'starting') {
            assertTransition('lease', lease.id, lease.state, 'running');
            const now = new Date();
            await trx.updateTable('leases').set({ state: 'running', started_at: now }).where('id', '=', lease.id).execute();
            const task = await trx.selectFrom('tasks').select(['id', 'state', 'lease_id']).where('id', '=', lease.task_id).executeTakeFirstOrThrow();
            if (task.lease_id === lease.id && task.state === 'assigned') {
              await trx.updateTable('tasks').set({ state: 'running', started_at: now }).where('id', '=', task.id).execute();
              await refreshJob(trx, lease.job_id, changes);
            }
          }
          return 'applied';
        }
        case 'lease.log': {
          if (msg.chunks.length === 0) return 'applied';
          const task = await trx.selectFrom('tasks').select('idx').where('id', '=', lease.task_id).executeTakeFirstOrThrow();
          await trx
            .insertInto('task_logs')
            .values(
              msg.chunks.map((c) => ({ job_id: lease.job_id, task_idx: task.idx, lease_id: lease.id, stream: c.stream, data: c.data, ts: new Date(c.ts) })),
            )
            .execute();
          logged.add(lease.job_id);
          return 'applied';
        }
        case 'lease.finished': {
          if (msg.outputs.length > 0) {
            const digests = [...new Set(msg.outputs.map((o) => o.digest))];
            const found = await trx.selectFrom('blobs').select('digest').where('digest', 'in', digests).execute();
            if (found.length !== digests.length) {
              await endLease(trx, lease.id, { kind: 'lost', error: 'provider reported outputs it did not upload' }, changes);
              return 'applied';
            }
          }
          if (msg.exitCode === 0 && msg.error === null) {
            await endLease(trx, lease.id, { kind: 'completed', exitCode: 0, durationMs: msg.durationMs, outputs: msg.outputs }, changes);
          } else if (msg.exitCode === null && msg.error !== null && !msg.error.startsWith('timeout')) {
            await endLease(trx, lease.id, { kind: 'lost', error: msg.error }, changes);
          } else {
            const error = msg.error ?? `exited with code ${msg.exitCode}`;
            await endLease(trx, lease.id, { kind: 'failed', exitCode: msg.exitCode, durationMs: msg.durationMs, error }, changes);
          }
          return 'applied';
        }
        case 'lease.usage': {
          if (!verifyBytes(providerId, canonicalJson({ leaseId: lease.id, usageMs: msg.usageMs }), msg.signature)) {
            throw new ReportRejected('BAD_SIGNATURE', 'usage record signature does not verify', msg.seq);
          }
          if (!(ACTIVE_LEASE_STATES as readonly string[]).includes(lease.state) || !lease.started_at) return 'applied';
          // A debit note never bills more time than has passed since the lease started here.
          const usage = plausibleUsage(msg.usageMs, lease.started_at, this.deps.economics);
          await chargeUsage(trx, lease, usage);
          const funded = await fundLease(trx, lease, usage, this.deps.economics);
          const job = await trx.selectFrom('jobs').select('low_balance_since').where('id', '=', lease.job_id).executeTakeFirstOrThrow();
          if (!funded && !job.low_balance_since) {
            await trx.updateTable('jobs').set({ low_balance_since: new Date() }).where('id', '=', lease.job_id).execute();
            changes.jobs.add(lease.job_id);
            this.deps.log.warn({ jobId: lease.job_id }, 'job budget is running out: leases stop after the grace period unless it is topped up');
          } else if (funded && job.low_balance_since) {
            // Escrow returned by another lease refunded the job: the warning is over.
            await trx.updateTable('jobs').set({ low_balance_since: null }).where('id', '=', lease.job_id).execute();
            changes.jobs.add(lease.job_id);
          }
          return 'applied';
        }
        case 'lease.released':
          await endLease(trx, lease.id, { kind: 'released', error: `handed back by provider: ${msg.reason}` }, changes);
          return 'applied';
      }
    }).catch(async (err) => {
      if (!(err instanceof ReportRejected)) throw err;
      // Record the seq alone, in its own transaction, so the rejected report changes nothing else.
      await this.deps.db
        .updateTable('providers')
        .set({ in_seq: BigInt(err.seq) })
        .where('id', '=', providerId)
        .where('in_seq', '=', BigInt(err.seq - 1))
        .execute();
      throw new GridworkError(err.code, err.message);
    });
    for (const jobId of logged) this.deps.bus.emit('job.log', jobId);
    this.deps.publish(changes);
    return result;
  }

  /**
   * Declares providers lost whose last sign of life is older than `timeoutMs`. Time spent
   * while this coordinator was down does not count against them (`since`).
   */
  async sweep(timeoutMs: number, since: Date): Promise<string[]> {
    if (Date.now() - since.getTime() < timeoutMs) return [];
    const cutoff = new Date(Date.now() - timeoutMs);
    const stale = await this.deps.db
      .selectFrom('providers')
      .select(['id', 'name'])
      .where('state', '!=', 'offline')
      .where('last_seen_at', '<', cutoff)
      .execute();
    const changes = newChanges(this.deps.economics);
    const lostIds: string[] = [];
    for (const p of stale) {
      await transact(this.deps.db, async (trx) => {
        // Provider row first, as hello and apply lock it (then leases): the other order
        // deadlocked against a report being applied. Re-checked here: a heartbeat may have come.
        const still = await trx
          .selectFrom('providers')
          .select('id')
          .where('id', '=', p.id)
          .where('state', '!=', 'offline')
          .where('last_seen_at', '<', cutoff)
          .forNoKeyUpdate()
          .executeTakeFirst();
        if (!still) return;
        const lost = await loseProviderLeases(trx, p.id, `provider ${p.name} stopped responding`, changes);
        await trx.updateTable('providers').set({ state: 'offline' }).where('id', '=', p.id).execute();
        lostIds.push(p.id);
        this.deps.log.warn({ providerId: p.id, name: p.name, lost }, 'provider missed its heartbeats: marked offline');
      });
    }
    this.deps.publish(changes);
    return lostIds;
  }

  async setOffline(providerId: string): Promise<void> {
    await this.deps.db.updateTable('providers').set({ state: 'offline' }).where('id', '=', providerId).execute();
  }
}

/** Standing asks are signed with the provider's key over { asks, instance }. Prices must parse. */
function verifyAsks(providerId: string, asks: ProviderHello['asks'], instance: string, signature: string): void {
  if (!verifyBytes(providerId, canonicalJson({ asks, instance }), signature)) {
    throw new GridworkError('BAD_SIGNATURE', 'asks signature does not verify');
  }
  parseAsks(asks);
}

class ReportRejected extends Error {
  constructor(
    readonly code: 'NOT_LEASE_OWNER' | 'LEASE_NOT_FOUND' | 'BAD_SIGNATURE',
    message: string,
    readonly seq: number,
  ) {
    super(message);
  }
}
