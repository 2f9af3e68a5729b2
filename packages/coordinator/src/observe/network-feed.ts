/**
 * The live picture of the network for the console's public view: providers (online, busy,
 * offline) with hardware and reputation, the market's asks, price history and lease counts. A
 * bus subscriber (not durable: it reads committed state) that reads the network once per burst of
 * events and publishes it to every open stream. A stream gets one snapshot, then deltas: for each
 * provider only the fields that changed since that stream's previous frame, at most one frame per
 * interval and within a byte rate. What a stream costs is bounded by time, not by how often
 * providers come and go; and since the stream is public, how many may be open is bounded too.
 * Owns no table; reads providers and leases.
 */
import { setTimeout as delay } from 'node:timers/promises';
import { GridworkError, type MarketClass, type ProviderListing } from '@gridwork/protocol';
import type { Subscriber } from '../bus/bus.ts';
import { providerOf } from '../core/events.ts';
import { ACTIVE_LEASE_STATES } from '../core/state-machine.ts';
import type { Market } from '../market/market.ts';
import { listProviders } from '../market/provider-directory.ts';
import type { Db } from '../store/database.ts';
import type { PricePoint, PriceHistory } from './price-history.ts';

export type NetworkProvider = ProviderListing & { activeLeases: number };

export interface NetworkSnapshot {
  type: 'network';
  at: string;
  providers: NetworkProvider[];
  market: MarketClass[];
  history: readonly PricePoint[];
  /** Since this coordinator started. */
  leases: { placed: number; ended: Record<string, number> };
}

/**
 * What changed since the stream's previous frame; an absent field did not change. `providers`
 * holds the whole record of a provider new to the stream, else its `id` and the changed fields;
 * `removed` names providers no longer listed; `history` holds only the new points.
 */
export interface NetworkDelta {
  type: 'network.delta';
  at: string;
  providers?: (Partial<NetworkProvider> & { id: string })[];
  removed?: string[];
  market?: MarketClass[];
  history?: PricePoint[];
  leases?: NetworkSnapshot['leases'];
}

export type NetworkFrame = NetworkSnapshot | NetworkDelta;

export interface NetworkFeedOptions {
  /** Events closer together than this are read once. @default 200 */
  coalesceMs?: number;
  /** Least time between two frames of one stream: a provider changes at most once per interval on it. @default 1000 */
  frameIntervalMs?: number;
  /** Average bytes per second of one stream: a frame of n bytes delays the next by n / rate. @default 65536 */
  maxBytesPerSecond?: number;
  /** Streams open at once (anyone may open one); beyond it, UNAVAILABLE. @default 100 */
  maxStreams?: number;
  /** A client that has not taken a frame for this long is disconnected, never buffered for. @default 30000 */
  slowConsumerMs?: number;
}

export type NetworkFeedConfig = Required<NetworkFeedOptions>;

export function resolveNetworkFeedOptions(o: NetworkFeedOptions = {}): NetworkFeedConfig {
  return {
    coalesceMs: o.coalesceMs ?? 200,
    frameIntervalMs: o.frameIntervalMs ?? 1000,
    maxBytesPerSecond: o.maxBytesPerSecond ?? 65_536,
    maxStreams: o.maxStreams ?? 100,
    slowConsumerMs: o.slowConsumerMs ?? 30_000,
  };
}

/** A provider as published, with each field's JSON so that streams compare strings. */
interface Entry {
  value: NetworkProvider;
  json: Record<string, string>;
}

interface Published {
  at: string;
  providers: Map<string, Entry>;
  market: MarketClass[];
  marketJson: string;
  leases: NetworkSnapshot['leases'];
  leasesJson: string;
}

/** Heartbeats move `lastSeenAt` without an event; publishing each move would make every frame name every provider. */
const SEEN_REFRESH_MS = 60_000;

function entryOf(value: NetworkProvider): Entry {
  const json: Record<string, string> = {};
  for (const [k, v] of Object.entries(value)) json[k] = JSON.stringify(v);
  return { value, json };
}

function sameBesidesSeen(a: Entry, b: Entry): boolean {
  const keys = Object.keys(b.json);
  return keys.length === Object.keys(a.json).length && keys.every((k) => k === 'lastSeenAt' || a.json[k] === b.json[k]);
}

export class NetworkFeed {
  private readonly listeners = new Set<() => void>();
  private readonly config: NetworkFeedConfig;
  private timer: NodeJS.Timeout | undefined;
  private placed = 0;
  private readonly ended: Record<string, number> = {};
  /** Providers named by events since the last read: their `lastSeenAt` is published too. */
  private dirty = new Set<string>();
  private published: Published | undefined;
  /** Events came since the last read began: a snapshot must not miss them. */
  private stale = true;
  private reading: Promise<Published> | undefined;
  private queued: Promise<Published> | undefined;
  private open = 0;
  private closed = false;

  constructor(
    private readonly deps: { db: Db; market: Market; history: PriceHistory },
    options: NetworkFeedOptions = {},
  ) {
    this.config = resolveNetworkFeedOptions(options);
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
          const id = providerOf(e);
          if (id) this.dirty.add(id);
        }
        this.stale = true;
        this.changed();
      },
    };
  }

  /** The market index is another subscriber: sample it after the burst, not inside it. */
  private changed(): void {
    if (this.timer || this.closed) return;
    this.timer = setTimeout(() => {
      this.timer = undefined;
      this.read()
        .then(() => {
          for (const l of this.listeners) l();
        })
        .catch(() => this.changed());
    }, this.config.coalesceMs);
    this.timer.unref();
  }

  /** Reads the network, one read at a time (callers meanwhile share the next); providers whose record did not change keep their entry. */
  private read(): Promise<Published> {
    if (this.queued) return this.queued;
    const next = (this.reading ?? Promise.resolve()).catch(() => {}).then(async () => {
      this.queued = undefined;
      this.stale = false;
      const { db, market, history } = this.deps;
      const dirty = this.dirty;
      this.dirty = new Set();
      const [rows, active] = await Promise.all([
        listProviders(db, { all: true }),
        db
          .selectFrom('leases')
          .select(['provider_id', db.fn.countAll<string>().as('n')])
          .where('state', 'in', [...ACTIVE_LEASE_STATES])
          .groupBy('provider_id')
          .execute(),
      ]).catch((err) => {
        for (const id of dirty) this.dirty.add(id);
        this.stale = true;
        throw err;
      });
      const activeBy = new Map(active.map((r) => [r.provider_id, Number(r.n)]));
      const before = this.published?.providers;
      const providers = new Map<string, Entry>();
      for (const p of rows) {
        const fresh = entryOf({ ...p, activeLeases: activeBy.get(p.id) ?? 0 });
        const old = before?.get(p.id);
        const keep =
          old && !dirty.has(p.id) && sameBesidesSeen(old, fresh) && Date.parse(p.lastSeenAt) - Date.parse(old.value.lastSeenAt) < SEEN_REFRESH_MS;
        providers.set(p.id, keep ? old : fresh);
      }
      const summary = market.summary();
      history.record(summary);
      const leases = { placed: this.placed, ended: { ...this.ended } };
      this.published = {
        at: new Date().toISOString(),
        providers,
        market: summary,
        marketJson: JSON.stringify(summary),
        leases,
        leasesJson: JSON.stringify(leases),
      };
      return this.published;
    });
    this.reading = next;
    this.queued = next;
    return next;
  }

  private current(): Promise<Published> {
    return this.published && !this.stale ? Promise.resolve(this.published) : this.read();
  }

  async snapshot(): Promise<NetworkSnapshot> {
    return this.snapshotOf(await this.current());
  }

  private snapshotOf(p: Published): NetworkSnapshot {
    return {
      type: 'network',
      at: p.at,
      providers: [...p.providers.values()].map((e) => e.value),
      market: p.market,
      // A copy: points recorded before this snapshot is written out belong to the next delta.
      history: this.deps.history.points().slice(),
      leases: p.leases,
    };
  }

  /**
   * Takes one of the `maxStreams` places, or refuses with UNAVAILABLE; call the returned
   * function (idempotent) when the stream's connection closes.
   */
  admit(): () => void {
    if (this.open >= this.config.maxStreams) {
      throw new GridworkError(
        'UNAVAILABLE',
        `too many open network streams (${this.config.maxStreams}); try again later, or read one snapshot from GET /v1/network`,
      );
    }
    this.open++;
    let released = false;
    return () => {
      if (!released) this.open--;
      released = true;
    };
  }

  /**
   * A snapshot now, then a delta after changes, paced (one frame per `frameIntervalMs`, and a
   * frame of n bytes delays the next by n / `maxBytesPerSecond`), until the signal aborts. Changes
   * that come while a stream waits merge into its next frame, so a slow stream skips states, never
   * queues them. `drop` disconnects a client that has not taken a frame within `slowConsumerMs`.
   */
  async *stream(signal: AbortSignal, drop: () => void = () => {}): AsyncGenerator<NetworkFrame> {
    const { frameIntervalMs, maxBytesPerSecond, slowConsumerMs } = this.config;
    let pending = false;
    let wake: (() => void) | undefined;
    const listener = () => {
      pending = true;
      wake?.();
    };
    this.listeners.add(listener);
    const onAbort = () => wake?.();
    signal.addEventListener('abort', onAbort, { once: true });
    try {
      let seen = await this.current();
      const snapshot = this.snapshotOf(seen);
      let historyAt = snapshot.history.at(-1)?.at ?? 0;
      let frame: NetworkFrame | undefined = snapshot;
      while (!signal.aborted) {
        if (frame) {
          const bytes = Buffer.byteLength(JSON.stringify(frame)) + 1;
          const slow = setTimeout(drop, slowConsumerMs);
          try {
            yield frame;
          } finally {
            clearTimeout(slow);
          }
          await delay(Math.max(frameIntervalMs, (bytes * 1000) / maxBytesPerSecond), undefined, { signal, ref: false }).catch(() => {});
        }
        if (!pending) await new Promise<void>((r) => (wake = r));
        wake = undefined;
        if (signal.aborted) break;
        pending = false;
        const now = this.published as Published;
        const history = this.deps.history.points().filter((h) => h.at > historyAt);
        frame = deltaOf(seen, now, history);
        seen = now;
        historyAt = history.at(-1)?.at ?? historyAt;
      }
    } finally {
      this.listeners.delete(listener);
      signal.removeEventListener('abort', onAbort);
    }
  }

  close(): void {
    this.closed = true;
    clearTimeout(this.timer);
    this.listeners.clear();
  }
}

/** What a stream that last saw `from` needs to see `to`; undefined when nothing it shows changed. */
function deltaOf(from: Published, to: Published, history: PricePoint[]): NetworkDelta | undefined {
  const providers: NetworkDelta['providers'] = [];
  for (const [id, e] of to.providers) {
    const old = from.providers.get(id);
    if (old === e) continue;
    if (!old) {
      providers.push(e.value);
      continue;
    }
    const changed: Partial<NetworkProvider> & { id: string } = { id };
    for (const k of Object.keys(e.json) as (keyof NetworkProvider)[]) {
      if (old.json[k] !== e.json[k]) Object.assign(changed, { [k]: e.value[k] });
    }
    if (Object.keys(changed).length > 1) providers.push(changed);
  }
  const removed = [...from.providers.keys()].filter((id) => !to.providers.has(id));
  const delta: NetworkDelta = {
    type: 'network.delta',
    at: to.at,
    ...(providers.length ? { providers } : {}),
    ...(removed.length ? { removed } : {}),
    ...(from.marketJson !== to.marketJson ? { market: to.market } : {}),
    ...(history.length ? { history } : {}),
    ...(from.leasesJson !== to.leasesJson ? { leases: to.leases } : {}),
  };
  return Object.keys(delta).length > 2 ? delta : undefined;
}
