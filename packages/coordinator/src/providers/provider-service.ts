/**
 * Providers as the coordinator knows them: registration by signed hello, the exactly-once
 * application of their sequenced reports (each handled in report-handlers.ts), acks of the
 * durable outbox, heartbeats, the sweep that declares silent providers offline, and the one that
 * expires registrations that never proved anything. Owns
 * `providers` (and, through outbox.ts, `provider_outbox`); lease changes go through the lifecycle.
 */
import { formatRuntimeList, GridworkError, offeredRuntimes, type ProviderHello, type ProviderSequenced } from '@gridwork/protocol';
import { sql } from 'kysely';
import type { Logger } from 'pino';
import type { Lifecycle } from '../lifecycle/lifecycle.ts';
import { milliN } from '../market/order-price.ts';
import { ACTIVE_LEASE_STATES } from '../core/state-machine.ts';
import { GroupCommit } from '../core/group-commit.ts';
import type { Units, UnitOfWork } from '../core/unit-of-work.ts';
import { balancesOf, stakeOf, unbondingOf } from '../ledger/ledger.ts';
import type { Db } from '../store/database.ts';
import type { CapacityChallenges } from '../verify/capacity-challenges.ts';
import { verifyAsks } from './asks.ts';
import { provenIngress } from './ingress-proof.ts';
import { Liveness } from './liveness.ts';
import { enqueueForProvider } from './outbox.ts';
import { REJECTED_REPORT_CODES, reportHandlers } from './report-handlers.ts';

export interface ProviderServiceDeps {
  db: Db;
  units: Units;
  lifecycle: Lifecycle;
  log: Logger;
  /** Capacity challenges: their answers arrive as sequenced reports (consumed without effect when absent). */
  challenges?: CapacityChallenges;
  /** How long an agent's ingress has to answer its proof. */
  ingressProofTimeoutMs: number;
}

export type ApplyResult = 'applied' | 'duplicate' | 'gap';

/** One thing a provider sent that changes the database: a sequenced report (with when it arrived, ms), or an ack of ours. */
export type ProviderInput = { kind: 'report'; msg: ProviderSequenced; receivedAt: number } | { kind: 'ack'; seq: number };

export class ProviderService {
  /** When this replica last heard each provider it holds: heartbeats go here, not to the database. */
  readonly liveness = new Liveness();
  /**
   * Reports and acks of every provider on this replica share commits when they queue up
   * (core/group-commit.ts), instead of a transaction each that waited on the others' locks.
   * (Several lanes side by side measured worse: their batches lock provider rows in different
   * orders and deadlock with each other and with the reputation subscriber.)
   */
  private readonly reports: GroupCommit;

  constructor(private readonly deps: ProviderServiceDeps) {
    this.reports = new GroupCommit(deps.units);
  }

  /**
   * Registers or resumes a provider. A new agent instance means the previous one died with
   * whatever it ran: those leases are lost and both sequence counters start over.
   */
  async hello(providerId: string, hello: ProviderHello, remoteAddress: string | null = null): Promise<{ lastApplied: number; outbox: Record<string, unknown>[] }> {
    verifyAsks(providerId, hello.asks, hello.instance, hello.asksSignature);
    // Each GPU once: a doubled index would be quoted for orders the database then refuses,
    // capturing them forever (the index would keep choosing it).
    const indices = hello.hardware.gpus.map((g) => g.index);
    if (new Set(indices).size !== indices.length) throw new GridworkError('PROTOCOL_ERROR', 'hello lists a GPU index twice');
    const { lifecycle, log } = this.deps;
    // Proven before the transaction: the proof is a round trip to the agent, never held under a lock.
    const ingressUrl = await provenIngress(providerId, hello.ingressUrl, remoteAddress, this.deps.ingressProofTimeoutMs);
    if (hello.ingressUrl && !ingressUrl) log.warn({ providerId, ingress: hello.ingressUrl, remoteAddress }, 'provider ingress not used: not on its own address, or it did not prove itself');
    // One instant for both: the sweep compares what it heard with last_seen_at (another replica's hello writes a later one).
    const heardAt = Date.now();
    this.liveness.heard(providerId, heardAt);
    return this.deps.units.run(async (uow) => {
      const { trx } = uow;
      await trx
        .insertInto('accounts')
        .values({ id: providerId })
        .onConflict((oc) => oc.doNothing())
        .execute();
      const existing = await trx.selectFrom('providers').selectAll().where('id', '=', providerId).forNoKeyUpdate().executeTakeFirst();
      const row = {
        name: hello.name,
        // Every runtime offered, as a list (the matching index reads it back with parseRuntimeList).
        runtime: formatRuntimeList(offeredRuntimes(hello)),
        slots: hello.slots,
        hardware: JSON.stringify(hello.hardware),
        attributes: JSON.stringify(hello.attributes),
        asks: JSON.stringify(hello.asks),
        benchmarks: JSON.stringify(hello.benchmarks),
        bids: hello.bids,
        instance: hello.instance,
        ingress_url: ingressUrl,
        last_seen_at: new Date(heardAt),
        // A hello revives an expired registration: the key proves it is back.
        expired_at: null,
      };
      const capacity = { slots: hello.slots, cpuMilli: milliN(hello.hardware.cpu.cores), memMilli: milliN(hello.hardware.memoryGiB) };
      if (!existing) {
        await trx
          .insertInto('providers')
          .values({ id: providerId, state: 'online', in_seq: 0n, out_seq: 0n, ...row })
          .execute();
        await lifecycle.declareCapacity(uow, providerId, capacity);
        uow.emit({ type: 'provider.online', providerId, restarted: false });
        return { lastApplied: 0, outbox: [] };
      }
      if (existing.instance !== hello.instance) {
        const lost = await lifecycle.loseProvider(uow, providerId, `provider ${hello.name} restarted`);
        if (lost > 0) log.warn({ providerId, lost }, 'provider restarted: its leases are lost');
        await trx.deleteFrom('provider_outbox').where('provider_id', '=', providerId).execute();
        await trx
          .updateTable('providers')
          .set({ ...row, state: 'online', in_seq: 0n, out_seq: 0n })
          .where('id', '=', providerId)
          .execute();
        await lifecycle.declareCapacity(uow, providerId, capacity);
        uow.emit({ type: 'provider.online', providerId, restarted: true });
        return { lastApplied: 0, outbox: [] };
      }
      await trx
        .updateTable('providers')
        .set({ ...row, state: existing.state === 'draining' ? 'draining' : 'online' })
        .where('id', '=', providerId)
        .execute();
      await lifecycle.declareCapacity(uow, providerId, capacity);
      await this.ackWithin(uow, providerId, hello.lastApplied);
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
          await enqueueForProvider(uow, providerId, { type: 'lease.cancel', leaseId, reason: 'lease no longer held by this provider' });
        }
      }
      uow.emit({ type: 'provider.online', providerId, restarted: false });
      const outbox = await trx.selectFrom('provider_outbox').select('message').where('provider_id', '=', providerId).orderBy('seq').execute();
      return { lastApplied: Number(existing.in_seq), outbox: outbox.map((r) => r.message) };
    });
  }

  /** Drops acknowledged outbox messages; an acknowledged assignment means the lease is starting. */
  private async ackWithin(uow: UnitOfWork, providerId: string, seq: number): Promise<void> {
    const acked = await uow.trx.deleteFrom('provider_outbox').where('provider_id', '=', providerId).where('seq', '<=', BigInt(seq)).returning('message').execute();
    const leaseIds = acked
      .map((r) => r.message as { type?: string; lease?: { leaseId: string } })
      .flatMap((m) => (m.type === 'lease.assign' && m.lease ? [m.lease.leaseId] : []));
    await this.deps.lifecycle.acknowledge(uow, providerId, leaseIds);
  }

  async ack(providerId: string, seq: number): Promise<void> {
    this.liveness.heard(providerId);
    await this.reports.run((uow) => this.ackWithin(uow, providerId, seq));
  }

  /** A heartbeat: remembered here, written with the next flush (liveness.ts). */
  heartbeat(providerId: string): void {
    this.liveness.heard(providerId);
  }

  /**
   * Applies one sequenced report exactly once: its effect and the new seq commit together.
   * `receivedAt`: when it arrived (ms). A report the lifecycle refuses (REJECTED_REPORT_CODES) is
   * consumed without effect: its unit is undone whole, a second one records its seq alone, and the
   * refusal is thrown after that commit. (Refusals are rare: a savepoint around every handler cost
   * every report two more statements.)
   */
  async apply(providerId: string, msg: ProviderSequenced, receivedAt = Date.now()): Promise<ApplyResult> {
    this.liveness.heard(providerId, receivedAt);
    const consume = (effect: ((uow: UnitOfWork) => Promise<void>) | null) =>
      this.reports
        .run(async (uow): Promise<ApplyResult> => {
          const last = await this.appliedUpTo(uow, providerId);
          if (msg.seq <= last) return 'duplicate';
          if (msg.seq !== last + 1) return 'gap';
          await effect?.(uow);
          await this.recordSeq(uow, providerId, last, msg.seq, receivedAt);
          return 'applied';
        })
        .catch((err) => {
          if (err instanceof AppliedElsewhere) return 'duplicate' as const;
          throw err;
        });
    try {
      return await consume((uow) => this.handle(uow, providerId, msg, receivedAt));
    } catch (err) {
      if (!(err instanceof GridworkError && REJECTED_REPORT_CODES.has(err.code))) throw err;
      // Consumed (so the stream goes on) but without effect; a duplicate or a gap by now is answered as such.
      const outcome = await consume(null);
      if (outcome !== 'applied') return outcome;
      this.deps.log.warn({ providerId, type: msg.type, code: err.code }, 'provider report rejected');
      throw err;
    }
  }

  /**
   * Applies what one provider sent back to back — sequenced reports and acks, in their order — in
   * one command of the shared commit, instead of one commit round each: a provider with eight
   * leases otherwise waited eight rounds for the eighth `lease.started`. The jobs the run's reports
   * will take are locked first, in id order, so that two such commands never wait on each other in
   * a cycle over jobs (each handler then takes its job again, already held). Returns each item's outcome
   * ('acked' for an ack; reports after a gap are 'gap' too). Throws if anything in it fails —
   * nothing of it is then applied, and the caller applies the items one by one (`apply`, `ack`),
   * which gives a refused report or a failure its exact answer.
   */
  async applyMany(providerId: string, items: readonly ProviderInput[]): Promise<(ApplyResult | 'acked')[]> {
    for (const it of items) if (it.kind === 'report') this.liveness.heard(providerId, it.receivedAt);
    return this.reports.run(async (uow) => {
      const first = await this.appliedUpTo(uow, providerId);
      // Only the jobs this run will touch: reports it applies (not duplicates, nothing past a gap), on
      // this provider's own leases, whose handlers take the job (a log line does not); and, with an
      // ack, those of its offered leases.
      const leaseIds: string[] = [];
      let next = first + 1;
      for (const it of items) {
        if (it.kind !== 'report' || it.msg.seq < next) continue;
        if (it.msg.seq > next) break;
        next++;
        if ('leaseId' in it.msg && it.msg.type !== 'lease.log') leaseIds.push(it.msg.leaseId);
      }
      const acks = items.some((it) => it.kind === 'ack');
      if (leaseIds.length > 0 || acks) {
        await sql`select id from jobs where id in (
            select job_id from leases where provider_id = ${providerId}
              and (id = any(${leaseIds}::text[]) ${acks ? sql`or state = 'offered'` : sql``})
          ) order by id for no key update`.execute(uow.trx);
      }
      let last = first;
      let heardAt = 0;
      let gap = false;
      const outcomes: (ApplyResult | 'acked')[] = [];
      for (const it of items) {
        if (it.kind === 'ack') {
          await this.ackWithin(uow, providerId, it.seq);
          outcomes.push('acked');
          continue;
        }
        const { msg } = it;
        if (gap || msg.seq > last + 1) {
          gap = true;
          outcomes.push('gap');
          continue;
        }
        if (msg.seq <= last) {
          outcomes.push('duplicate');
          continue;
        }
        await this.handle(uow, providerId, msg, it.receivedAt);
        last = msg.seq;
        heardAt = Math.max(heardAt, it.receivedAt);
        outcomes.push('applied');
      }
      // Applied meanwhile by another connection of the same provider: undone (the items one by one say what happened).
      if (last > first) await this.recordSeq(uow, providerId, first, last, heardAt);
      return outcomes;
    });
  }

  /**
   * The provider's last applied seq, read without a lock and checked again when the next is
   * recorded: the provider row is locked last (after the job and lease rows the handlers lock),
   * the order placements use too.
   */
  private async appliedUpTo(uow: UnitOfWork, providerId: string): Promise<number> {
    const p = await uow.trx.selectFrom('providers').select(['in_seq']).where('id', '=', providerId).executeTakeFirst();
    if (!p) throw new GridworkError('PROVIDER_UNKNOWN', 'say hello first');
    return Number(p.in_seq);
  }

  /** Records `to` as applied if `from` still is; else throws AppliedElsewhere (another connection applied them meanwhile). */
  private async recordSeq(uow: UnitOfWork, providerId: string, from: number, to: number, heardAt: number): Promise<void> {
    const recorded = await uow.trx
      .updateTable('providers')
      // Never back: a flush may already have written a later heartbeat.
      .set((eb) => ({ in_seq: BigInt(to), last_seen_at: sql<Date>`greatest(${eb.ref('last_seen_at')}, ${new Date(heardAt)})` }))
      .where('id', '=', providerId)
      .where('in_seq', '=', BigInt(from))
      .returning('id')
      .executeTakeFirst();
    if (!recorded) throw new AppliedElsewhere();
  }

  /** Turns one report into its effect (report-handlers.ts). */
  private handle(uow: UnitOfWork, providerId: string, msg: ProviderSequenced, receivedAt: number): Promise<void> {
    const { lifecycle, challenges } = this.deps;
    const handler = reportHandlers[msg.type] as (ctx: Parameters<(typeof reportHandlers)['lease.started']>[0], m: ProviderSequenced) => Promise<void>;
    return handler({ uow, providerId, lifecycle, challenges, receivedAt }, msg);
  }

  /**
   * Declares providers offline, and their leases lost, that went silent: those this replica holds
   * (or held) when it has not heard them for `timeoutMs`, and those nobody holds when their
   * `last_seen_at` (flushed by whichever replica hears them) is older than `orphanTimeoutMs`
   * (null: not judged here; the leader does). Time spent while this coordinator was down does not
   * count (`since`). Returns the providers whose connection here, if any, should close.
   */
  async sweep(timeoutMs: number, since: Date, orphanTimeoutMs: number | null = 2 * timeoutMs): Promise<string[]> {
    const now = Date.now();
    // Returned to be disconnected: every provider silent here (declared now, or already offline
    // by another replica's verdict), and those declared by the orphan rule.
    const lostIds = new Set<string>();
    const heardSince = (id: string, at: number) => (this.liveness.lastHeard(id) ?? 0) > at;
    for (const [id, at] of this.liveness.silentSince(now - timeoutMs)) {
      // Not lost if another replica heard it after we last did (its hello wrote a later last_seen_at),
      // nor if it spoke here while the row lock was awaited (a heartbeat after that check is too late).
      await this.declareSilent(id, new Date(at), () => heardSince(id, at));
      if (!heardSince(id, at)) lostIds.add(id);
      this.liveness.forget(id, at);
    }
    if (orphanTimeoutMs === null || now - since.getTime() < orphanTimeoutMs) return [...lostIds];
    const cutoff = new Date(now - orphanTimeoutMs);
    const stale = await this.deps.db.selectFrom('providers').select('id').where('state', '!=', 'offline').where('last_seen_at', '<', cutoff).execute();
    for (const { id } of stale) {
      const heard = this.liveness.lastHeard(id);
      // Heard here lately: its last_seen_at is only waiting for the next flush.
      if (lostIds.has(id) || (heard !== undefined && heard >= now - timeoutMs)) continue;
      if (await this.declareSilent(id, cutoff, () => heardSince(id, now - timeoutMs))) lostIds.add(id);
    }
    return [...lostIds];
  }

  /** The socket of a provider's connection, welcomed at `welcomedAt` (ms), closed here: the other replicas' indexes hear of it. */
  async disconnected(providerId: string, welcomedAt: number): Promise<void> {
    await this.deps.units.run(async (uow) => uow.emit({ type: 'provider.disconnected', providerId, welcomedAt }));
  }

  /** A provider whose channel keeps failing is out of matching until `until` (ms), on every replica. */
  async paused(providerId: string, until: number): Promise<void> {
    await this.deps.units.run(async (uow) => uow.emit({ type: 'provider.paused', providerId, until }));
  }

  /** Marks a provider offline and its leases lost, unless it was seen after `seenBefore` or is offline already. */
  private declareSilent(providerId: string, seenBefore: Date, spokeSince: () => boolean): Promise<boolean> {
    return this.deps.units.run(async (uow) => {
      // Provider row first, as hello and apply lock it (then leases). Re-checked here: a hello may have come.
      const still = await uow.trx
        .selectFrom('providers')
        .select(['id', 'name'])
        .where('id', '=', providerId)
        .where('state', '!=', 'offline')
        .where('last_seen_at', '<=', seenBefore)
        .forNoKeyUpdate()
        .executeTakeFirst();
      if (!still || spokeSince()) return false;
      const reason = `provider ${still.name} stopped responding`;
      const lost = await this.deps.lifecycle.loseProvider(uow, providerId, reason);
      await uow.trx.updateTable('providers').set({ state: 'offline' }).where('id', '=', providerId).execute();
      uow.emit({ type: 'provider.offline', providerId, reason });
      this.deps.log.warn({ providerId, name: still.name, lost }, 'provider missed its heartbeats: marked offline');
      return true;
    });
  }

  /**
   * Expires registrations that never proved anything and have been offline for `maxOfflineMs`:
   * keys cost nothing, so without this every key that ever said hello, with whatever hardware it
   * claimed, would stay listed, streamed and summarised forever. Proven means any of: a passed
   * capacity challenge, a completed lease, a passed audit, or stake (bonded or unbonding). The row
   * stays (leases, challenges and capacity rows may name it), marked `expired_at`; the key's next
   * hello revives it. Returns the ids expired (at most `limit` per call).
   */
  async expireUnproven(maxOfflineMs: number, limit = 1000): Promise<string[]> {
    const cutoff = new Date(Date.now() - maxOfflineMs);
    return this.deps.units.run(async (uow) => {
      const { trx } = uow;
      const candidates = await trx
        .selectFrom('providers')
        .select('id')
        .where('state', '=', 'offline')
        .where('expired_at', 'is', null)
        .where('last_seen_at', '<', cutoff)
        .where('challenges_passed', '=', 0)
        .where('leases_completed', '=', 0)
        .where('audits_passed', '=', 0)
        .orderBy('last_seen_at')
        .limit(limit)
        .execute();
      const balances = await balancesOf(
        trx,
        candidates.flatMap((c) => [stakeOf(c.id), unbondingOf(c.id)]),
      );
      const ids = candidates.map((c) => c.id).filter((id) => balances.get(stakeOf(id)) === 0n && balances.get(unbondingOf(id)) === 0n);
      if (ids.length === 0) return [];
      // Offline and silent checked again on the locked rows: a hello may have come since the select.
      const expired = await trx
        .updateTable('providers')
        .set({ expired_at: new Date() })
        .where('id', 'in', ids)
        .where('state', '=', 'offline')
        .where('expired_at', 'is', null)
        .where('last_seen_at', '<', cutoff)
        .returning('id')
        .execute();
      // The matching index and the network feed reload these providers and find them gone.
      for (const { id } of expired) uow.emit({ type: 'provider.changed', providerId: id, what: 'state' });
      return expired.map((r) => r.id);
    });
  }
}

/** Rolls back a report whose sequence number another connection recorded first. */
class AppliedElsewhere extends Error {}
