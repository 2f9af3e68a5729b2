/**
 * The market as the rest of the coordinator sees it: the order book (matching index) loaded
 * from the database at start and refreshed from committed changes, plus explain and summary.
 * Nothing here is the source of truth: it can always be rebuilt from the database.
 */
import { type Benchmarks, parseCredits, parseRuntimeList, type JobSpec, type MarketClass, type MatchExplanation } from '@gridwork/protocol';
import { balancesOf, stakeOf } from '../ledger/ledger.ts';
import { limitMsOf } from '../core/time-limit.ts';
import { ACTIVE_LEASE_STATES } from '../core/state-machine.ts';
import type { StoredEvent } from '../core/events.ts';
import type { Db } from '../store/database.ts';
import { type BookProvider, type Match, type Order, OrderBook } from './order-book.ts';

/** How much one failed capacity challenge weighs against a provider, in lost leases. */
export const CHALLENGE_FAILURE_WEIGHT = 2;
/** How much one proven fault (a commitment that does not match) weighs, in lost leases. */
export const PROVEN_FAULT_WEIGHT = 10;

/** A provider's trust record beyond its lease history (trust layers L1, L2). */
export interface TrustRecord {
  /** Audits, canaries and disputes its results passed (L3–L5): evidence, like a passed challenge. */
  auditsPassed?: number;
  challengesPassed?: number;
  challengesFailed?: number;
  faultsProven?: number;
}

/**
 * Reputation with a neutral prior: (good + 1) / (good + bad + 2), where good = completed leases
 * + passed challenges + passed audits and bad = lost leases + 2 × failed challenges + 10 × proven faults. Lying
 * costs more than bad luck: a failed challenge or a proven fault is evidence, a lost lease may
 * be a power cut.
 */
export function reputationOf(completed: number, faulted: number, trust: TrustRecord = {}): number {
  const good = completed + (trust.challengesPassed ?? 0) + (trust.auditsPassed ?? 0);
  const bad = faulted + CHALLENGE_FAILURE_WEIGHT * (trust.challengesFailed ?? 0) + PROVEN_FAULT_WEIGHT * (trust.faultsProven ?? 0);
  return (good + 1) / (good + bad + 2);
}

type ProviderCounters = {
  leases_completed: number;
  leases_faulted: number;
  challenges_passed: number;
  challenges_failed: number;
  challenge_fail_streak: number;
  faults_proven: number;
  audits_passed: number;
};

export function reputationOfProvider(r: ProviderCounters): number {
  return reputationOf(r.leases_completed, r.leases_faulted, {
    challengesPassed: r.challenges_passed,
    challengesFailed: r.challenges_failed,
    faultsProven: r.faults_proven,
    auditsPassed: r.audits_passed,
  });
}

/**
 * The throughput matching assumes of a claim nobody proved: the order book's own default (it
 * divides a price by 1 when a provider has no benchmark).
 */
export const UNPROVEN_PERF = 1;

/**
 * What the order book may believe of a provider's benchmarks: only what a capacity challenge
 * proved. The CPU figure is min(current claim, the claim its latest passed challenge was sized
 * for), never below the floor; with no passed challenge (or one from before sizes were recorded)
 * it is the floor. A fresh key that claims the largest benchmark a hello may carry and asks 25
 * times the honest price is thus scored on its price, not on its words. GPU figures are never proven (the agent has no GPU
 * kernel for challenges yet: GPU providers are challenged on their CPU), so every GPU counts as
 * the floor and price and reputation decide among GPU providers; an empty `gpu` map is exactly
 * that to the order book.
 */
export function provenBenchmarks(claimed: Benchmarks | null, provedMops: number | null): Benchmarks {
  const claim = claimed?.cpuMopsPerCore ?? UNPROVEN_PERF;
  const cpuMopsPerCore = provedMops === null ? UNPROVEN_PERF : Math.max(UNPROVEN_PERF, Math.min(claim, provedMops));
  return { cpuMopsPerCore, gpu: {} };
}

/** A provider that failed `maxConsecutiveFailures` capacity challenges in a row gets no work until it passes one. */
export function isEligible(r: Pick<ProviderCounters, 'challenge_fail_streak'>, maxConsecutiveFailures: number): boolean {
  return r.challenge_fail_streak < maxConsecutiveFailures;
}

export function orderOf(spec: JobSpec, maxPerHour: bigint, only?: { exclude?: readonly string[]; provider?: string | null }): Order {
  return {
    ...(only?.exclude?.length ? { excludeProviders: only.exclude } : {}),
    ...(only?.provider ? { onlyProvider: only.provider } : {}),
    resources: spec.resources,
    workload: spec.runtime.kind,
    regions: spec.placement?.regions,
    minReputation: spec.placement?.minReputation,
    minStake: spec.placement?.minStake === undefined ? undefined : parseCredits(spec.placement.minStake),
    maxPerHour,
  };
}

export class Market {
  readonly book = new OrderBook();
  /** Providers the index counts as connected to some replica: online, vouched for since this replica started, not away. */
  private readonly present = new Set<string>();
  /** Online at this replica's start, and not heard from since: nobody has vouched for them yet. */
  private readonly unconfirmed = new Set<string>();
  /** Their socket closed, by when the closed connection was welcomed (ms): until a later hello, anywhere. */
  private readonly away = new Map<string, number>();
  /** Paused (their channel keeps failing) until then (ms). */
  private readonly pausedUntil = new Map<string, number>();
  /** When each provider last said hello, as far as this replica knows (ms). */
  private readonly lastHello = new Map<string, number>();
  private readonly bidding = new Set<string>();
  private startedAt = new Date();
  /** Told when a provider comes back into matching by itself (its pause ended): the scheduler looks again. */
  onAvailable: ((providerId: string) => void) | undefined;

  constructor(
    private readonly db: Db,
    /** Failed capacity challenges in a row that take a provider out of matching. @default 3 */
    private readonly maxConsecutiveFailures = 3,
  ) {}

  /**
   * Rebuilds the index from the database: providers, their stake, and the leases holding capacity.
   * A provider whose row says online may hold a socket on another replica, or may be one that
   * died with the previous process: it is matched once a hello shows it (`provider.online`) or a
   * replica flushes a heartbeat of it (`confirmPresence`), and never before.
   */
  async load(): Promise<void> {
    this.startedAt = new Date();
    const online = await this.db.selectFrom('providers').select('id').where('state', '!=', 'offline').where('expired_at', 'is', null).execute();
    for (const r of online) this.unconfirmed.add(r.id);
    await this.refreshProviders();
    await this.loadLeases();
  }

  /** Providers online at start whose heartbeats some replica has written since: they are connected there. Returns how many wait still. */
  async confirmPresence(): Promise<number> {
    if (this.unconfirmed.size === 0) return 0;
    const seen = await this.db.selectFrom('providers').select('id').where('id', 'in', [...this.unconfirmed]).where('last_seen_at', '>', this.startedAt).execute();
    for (const r of seen) this.unconfirmed.delete(r.id);
    if (seen.length > 0) await this.refreshProviders(seen.map((r) => r.id));
    return this.unconfirmed.size;
  }

  /** Reloads what the active leases of these providers hold (the database refused a placement the index allowed). */
  async resync(providerIds: Iterable<string>): Promise<void> {
    const ids = [...providerIds];
    for (const id of ids) this.book.releaseProvider(id);
    await this.loadLeases(ids);
  }

  private async loadLeases(providerIds?: string[]): Promise<void> {
    let q = this.db
      .selectFrom('leases')
      .innerJoin('jobs', 'jobs.id', 'leases.job_id')
      .select(['leases.id', 'leases.provider_id', 'leases.created_at', 'leases.gpus', 'jobs.spec'])
      .where('leases.state', 'in', [...ACTIVE_LEASE_STATES]);
    if (providerIds) q = q.where('leases.provider_id', 'in', providerIds);
    for (const l of await q.execute()) {
      this.book.reserve(l.id, l.provider_id, l.spec.resources, l.gpus, l.created_at.getTime() + limitMsOf(l.spec));
    }
  }

  /**
   * Reloads some providers (or all) from the database into the index, each with the claim its
   * latest passed capacity challenge was sized for (one index probe each: `provenBenchmarks`).
   */
  async refreshProviders(ids?: Iterable<string>): Promise<void> {
    let q = this.db
      .selectFrom('providers')
      .leftJoinLateral(
        (eb) =>
          eb
            .selectFrom('capacity_challenges')
            .select('capacity_challenges.claimed_mops')
            .whereRef('capacity_challenges.provider_id', '=', 'providers.id')
            .where('capacity_challenges.state', '=', 'passed')
            .orderBy('capacity_challenges.ended_at', 'desc')
            .limit(1)
            .as('proof'),
        (join) => join.onTrue(),
      )
      .selectAll('providers')
      .select('proof.claimed_mops as proved_mops');
    const list = ids ? [...ids] : undefined;
    if (list) {
      if (list.length === 0) return;
      q = q.where('providers.id', 'in', list);
    } else {
      q = q.where('providers.expired_at', 'is', null);
    }
    const rows = await q.execute();
    const stakes = await balancesOf(
      this.db,
      rows.map((r) => stakeOf(r.id)),
    );
    for (const r of rows) {
      if (r.state === 'offline') this.unconfirmed.delete(r.id);
      // Ineligible: out of the index until it passes a challenge again (its running leases stay
      // reserved). Expired: out until its next hello.
      if (r.expired_at || !isEligible(r, this.maxConsecutiveFailures)) {
        this.book.removeProvider(r.id);
        this.bidding.delete(r.id);
        this.present.delete(r.id);
        continue;
      }
      if (r.bids) this.bidding.add(r.id);
      else this.bidding.delete(r.id);
      const connected = r.state !== 'offline' && !this.unconfirmed.has(r.id) && !this.away.has(r.id) && !this.pausedUntil.has(r.id);
      if (connected) this.present.add(r.id);
      else this.present.delete(r.id);
      const p: BookProvider = {
        id: r.id,
        name: r.name,
        state: r.state,
        connected,
        hardware: r.hardware,
        attributes: r.attributes,
        asks: r.asks,
        // Scored on what challenges proved, never on the claim alone.
        benchmarks: provenBenchmarks(r.benchmarks, r.proved_mops),
        slots: r.slots,
        reputation: reputationOfProvider(r),
        stake: stakes.get(stakeOf(r.id)) ?? 0n,
        // The column holds the offered runtimes as a list (formatRuntimeList); old rows hold one name.
        runtimes: parseRuntimeList(r.runtime),
      };
      this.book.upsertProvider(p);
    }
  }

  /**
   * This replica's own sockets: a provider that said hello here (its connection welcomed at
   * `welcomedAt`) is connected; when that connection closes it is not, until it says hello again,
   * here or elsewhere — unless a later hello is already known (it moved to another replica before
   * this one noticed the close).
   */
  async setConnected(id: string, connected: boolean, welcomedAt: number): Promise<void> {
    if (connected) this.hello(id, welcomedAt);
    else this.gone(id, welcomedAt);
    await this.refreshProviders([id]);
  }

  /**
   * Hellos (`provider.online`, stamped before their commit), closed sockets (`provider.disconnected`,
   * of the connection welcomed at `welcomedAt`, after that commit) and pauses on any replica, in log order.
   */
  async presenceChanged(events: readonly StoredEvent[]): Promise<void> {
    const ids = new Set<string>();
    for (const e of events) {
      if (e.type === 'provider.online') this.hello(e.providerId, e.at.getTime());
      else if (e.type === 'provider.disconnected') this.gone(e.providerId, e.welcomedAt);
      else if (e.type === 'provider.paused') this.pause(e.providerId, e.until);
      else continue;
      ids.add(e.providerId);
    }
    await this.refreshProviders(ids);
  }

  private hello(id: string, at: number): void {
    this.lastHello.set(id, Math.max(at, this.lastHello.get(id) ?? 0));
    this.unconfirmed.delete(id);
    const gone = this.away.get(id);
    if (gone !== undefined && gone < at) this.away.delete(id);
  }

  /** The connection welcomed at `welcomedAt` closed: away, unless a later hello is known. */
  private gone(id: string, welcomedAt: number): void {
    if ((this.lastHello.get(id) ?? 0) > welcomedAt) return;
    this.away.set(id, Math.max(welcomedAt, this.away.get(id) ?? 0));
  }

  /** Out of matching until `until` (ms), whatever its connection does; back in when the pause ends. */
  private pause(id: string, until: number): void {
    const wait = until - Date.now();
    if (wait <= 0 || (this.pausedUntil.get(id) ?? 0) >= until) return;
    this.pausedUntil.set(id, until);
    setTimeout(() => {
      if (this.pausedUntil.get(id) !== until) return;
      this.pausedUntil.delete(id);
      this.refreshProviders([id])
        .then(() => this.onAvailable?.(id))
        .catch(() => undefined);
    }, wait).unref();
  }

  /** Whether any connected provider is not in `ids` (so work can wait for one of them instead). */
  hasConnectedBesides(ids: readonly string[]): boolean {
    for (const id of this.present) if (!ids.includes(id)) return true;
    return false;
  }

  /** Connected providers that answer auction announcements. */
  bidders(): string[] {
    return [...this.bidding].filter((id) => this.present.has(id));
  }

  match(order: Order, bids?: ReadonlyMap<string, bigint>): Match | null {
    return this.book.match(order, bids);
  }

  explain(order: Order): MatchExplanation {
    return this.book.explain(order);
  }

  summary(): MarketClass[] {
    return this.book.summary();
  }
}
