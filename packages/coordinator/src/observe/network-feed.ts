/**
 * The live picture of the network for the console's public view: providers (online, busy,
 * offline) with hardware and reputation, the market's asks, price history and lease counts. A
 * bus subscriber (not durable: it reads committed state) that coalesces bursts of events into
 * one snapshot for every open stream. Owns no table; reads providers and leases.
 */
import type { MarketClass, ProviderListing } from '@gridwork/protocol';
import type { Subscriber } from '../bus/bus.ts';
import { ACTIVE_LEASE_STATES } from '../lifecycle/state-machine.ts';
import type { Market } from '../market/market.ts';
import { listProviders } from '../market/provider-directory.ts';
import type { Db } from '../store/database.ts';
import type { PricePoint, PriceHistory } from './price-history.ts';

export interface NetworkSnapshot {
  type: 'network';
  at: string;
  providers: (ProviderListing & { activeLeases: number })[];
  market: MarketClass[];
  history: readonly PricePoint[];
  /** Since this coordinator started. */
  leases: { placed: number; ended: Record<string, number> };
}

export interface NetworkFeedOptions {
  /** Events closer together than this make one snapshot. @default 200 */
  coalesceMs?: number;
}

export class NetworkFeed {
  private readonly listeners = new Set<() => void>();
  private timer: NodeJS.Timeout | undefined;
  private placed = 0;
  private readonly ended: Record<string, number> = {};
  private readonly coalesceMs: number;
  /** One snapshot per change, shared by every open stream. */
  private generation = 0;
  private cached: { generation: number; snapshot: Promise<NetworkSnapshot> } | undefined;

  constructor(
    private readonly deps: { db: Db; market: Market; history: PriceHistory },
    options: NetworkFeedOptions = {},
  ) {
    this.coalesceMs = options.coalesceMs ?? 200;
    deps.history.record(deps.market.summary());
  }

  subscriber(): Subscriber {
    return {
      name: 'network-feed',
      types: ['provider.online', 'provider.offline', 'provider.changed', 'lease.placed', 'lease.started', 'lease.ended'],
      handle: (events) => {
        for (const e of events) {
          if (e.type === 'lease.placed') this.placed++;
          if (e.type === 'lease.ended') this.ended[e.outcome] = (this.ended[e.outcome] ?? 0) + 1;
        }
        this.changed();
      },
    };
  }

  /** The market index is another subscriber: sample it after the burst, not inside it. */
  private changed(): void {
    if (this.timer) return;
    this.timer = setTimeout(() => {
      this.timer = undefined;
      this.generation++;
      this.deps.history.record(this.deps.market.summary());
      for (const l of this.listeners) l();
    }, this.coalesceMs);
    this.timer.unref();
  }

  snapshot(): Promise<NetworkSnapshot> {
    if (this.cached?.generation !== this.generation) {
      const snapshot = this.read();
      this.cached = { generation: this.generation, snapshot };
      snapshot.catch(() => (this.cached = undefined));
    }
    return this.cached!.snapshot;
  }

  private async read(): Promise<NetworkSnapshot> {
    const { db, market, history } = this.deps;
    const providers = await listProviders(db, { all: true });
    const active = await db
      .selectFrom('leases')
      .select(['provider_id', db.fn.countAll<string>().as('n')])
      .where('state', 'in', [...ACTIVE_LEASE_STATES])
      .groupBy('provider_id')
      .execute();
    const activeBy = new Map(active.map((r) => [r.provider_id, Number(r.n)]));
    return {
      type: 'network',
      at: new Date().toISOString(),
      providers: providers.map((p) => ({ ...p, activeLeases: activeBy.get(p.id) ?? 0 })),
      market: market.summary(),
      history: history.points(),
      leases: { placed: this.placed, ended: { ...this.ended } },
    };
  }

  /** A snapshot now, then one after every change, until the signal aborts. */
  async *stream(signal: AbortSignal): AsyncGenerator<NetworkSnapshot> {
    let pending = true;
    let wake: (() => void) | undefined;
    const listener = () => {
      pending = true;
      wake?.();
    };
    this.listeners.add(listener);
    const onAbort = () => wake?.();
    signal.addEventListener('abort', onAbort, { once: true });
    try {
      while (!signal.aborted) {
        if (!pending) await new Promise<void>((r) => (wake = r));
        wake = undefined;
        if (signal.aborted) break;
        pending = false;
        yield await this.snapshot();
      }
    } finally {
      this.listeners.delete(listener);
      signal.removeEventListener('abort', onAbort);
    }
  }

  close(): void {
    clearTimeout(this.timer);
    this.listeners.clear();
  }
}
