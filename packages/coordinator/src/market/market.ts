/**
 * The market as the rest of the coordinator sees it: the order book (matching index) loaded
 * from the database at start and refreshed from committed changes, plus explain and summary.
 * Nothing here is the source of truth: it can always be rebuilt from the database.
 */
import { parseCredits, type JobSpec, type MarketClass, type MatchExplanation } from '@gridwork/protocol';
import { balancesOf, stakeOf } from '../ledger/ledger.ts';
import { ACTIVE_LEASE_STATES } from '../lifecycle/state-machine.ts';
import type { Db } from '../store/database.ts';
import { type BookProvider, type Match, type Order, OrderBook } from './order-book.ts';

/** Reputation from lease history, with a neutral prior: (completed + 1) / (completed + faulted + 2). */
export function reputationOf(completed: number, faulted: number): number {
  return (completed + 1) / (completed + faulted + 2);
}

export function orderOf(spec: JobSpec, maxPerHour: bigint): Order {
  return {
    resources: spec.resources,
    regions: spec.placement?.regions,
    minReputation: spec.placement?.minReputation,
    minStake: spec.placement?.minStake === undefined ? undefined : parseCredits(spec.placement.minStake),
    maxPerHour,
  };
}

export class Market {
  readonly book = new OrderBook();
  private readonly connected = new Set<string>();
  private readonly bidding = new Set<string>();

  constructor(private readonly db: Db) {}

  /** Rebuilds the index from the database: providers, their stake, and the leases holding capacity. */
  async load(): Promise<void> {
    await this.refreshProviders();
    await this.loadLeases();
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
      this.book.reserve(l.id, l.provider_id, l.spec.resources, l.gpus, l.created_at.getTime() + (l.spec.timeoutSeconds ?? 3600) * 1000);
    }
  }

  /** Reloads some providers (or all) from the database into the index. */
  async refreshProviders(ids?: Iterable<string>): Promise<void> {
    let q = this.db.selectFrom('providers').selectAll();
    const list = ids ? [...ids] : undefined;
    if (list) {
      if (list.length === 0) return;
      q = q.where('id', 'in', list);
    }
    const rows = await q.execute();
    const stakes = await balancesOf(
      this.db,
      rows.map((r) => stakeOf(r.id)),
    );
    for (const r of rows) {
      if (r.bids) this.bidding.add(r.id);
      else this.bidding.delete(r.id);
      const p: BookProvider = {
        id: r.id,
        name: r.name,
        state: r.state,
        connected: this.connected.has(r.id),
        hardware: r.hardware,
        attributes: r.attributes,
        asks: r.asks,
        benchmarks: r.benchmarks,
        slots: r.slots,
        reputation: reputationOf(r.leases_completed, r.leases_faulted),
        stake: stakes.get(stakeOf(r.id)) ?? 0n,
      };
      this.book.upsertProvider(p);
    }
  }

  async setConnected(id: string, connected: boolean): Promise<void> {
    if (connected) this.connected.add(id);
    else this.connected.delete(id);
    await this.refreshProviders([id]);
  }

  /** Connected providers that answer auction announcements. */
  bidders(): string[] {
    return [...this.bidding].filter((id) => this.connected.has(id));
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
