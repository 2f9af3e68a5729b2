/**
 * The bus inside one coordinator process. Published events are kept in a bounded in-memory
 * window; a subscriber that needs events the window no longer holds (or that another process
 * committed) reads them from the `events` table. Each subscriber has its own position and its
 * own serial delivery loop, so a slow one never delays the others; a handler that throws is
 * logged and retried from the same position on the next publish (or after a short delay).
 *
 * Subscribers are handed events only up to the settled position (core/event-log.ts): commits
 * do not finish in the order they took positions, and nothing past a gap is delivered until the
 * gap is filled or proven a hole. This process's own commits settle it as they arrive; a gap
 * they leave, and events other replicas commit (`refresh`, rung by bus/replica-doorbell.ts),
 * are settled by reading the table.
 */
import type { Logger } from 'pino';
import { Horizon, readEvents } from '../core/event-log.ts';
import type { StoredEvent } from '../core/events.ts';
import type { Units } from '../core/unit-of-work.ts';
import type { Db } from '../store/database.ts';
import type { Bus, LocalProgress, Subscriber } from './bus.ts';

const WINDOW = 20_000;
const BATCH = 1000;
const RETRY_MS = 500;
/** How long a gap this process's own commits left may stay before the table is read (the commit that fills it usually lands first). */
const GAP_GRACE_MS = 5;
/** Longest wait between two reads of the table while a gap stays open. */
const GAP_MAX_MS = 500;
/** A gap (or a start) held up this long by an append still open is logged. */
const STUCK_WARN_MS = 10_000;

/** How often a durable subscriber with nothing to handle stores how far it has read. */
const IDLE_STORE_MS = 1000;

interface Cursor {
  sub: Subscriber;
  types: ReadonlySet<string> | undefined;
  position: bigint;
  running: Promise<void> | undefined;
  again: boolean;
  closed: boolean;
  waiters: { position: bigint; resolve: () => void }[];
  retry: NodeJS.Timeout | undefined;
  /** A durable subscriber's position passed with nothing to handle, stored at most every IDLE_STORE_MS. */
  idle: { position: bigint; timer: NodeJS.Timeout | undefined; writing: Promise<void> | undefined };
}

export class InProcessBus implements Bus, LocalProgress {
  private readonly horizon = new Horizon();
  private refreshing: Promise<void> | undefined;
  private refreshAgain = false;
  private gapTimer: NodeJS.Timeout | undefined;
  private gapWaitMs = GAP_GRACE_MS;
  /** When the settled position last moved while a gap was open (for the stuck-append warning). */
  private stuckSince: number | undefined;
  private readonly window = new Map<bigint, StoredEvent>();
  private readonly cursors = new Map<string, Cursor>();
  private units: Units | undefined;
  private closed = false;

  constructor(
    private readonly db: Db,
    private readonly log: Logger,
  ) {}

  /** Settles on the log's newest position; call once before subscribing. `units` runs durable subscribers' transactions. */
  async start(units: Units): Promise<void> {
    this.units = units;
    const since = Date.now();
    let warned = false;
    await this.horizon.start(this.db, async (ms) => {
      if (!warned && Date.now() - since > STUCK_WARN_MS) {
        warned = true;
        this.log.warn({ pids: await this.horizon.appenderPids(this.db) }, 'bus: start waits for appends to the event log still open (a transaction left open?)');
      }
      await new Promise((resolve) => setTimeout(resolve, ms));
    });
  }

  head(): bigint {
    return this.horizon.seen;
  }

  publish(events: readonly StoredEvent[]): void {
    for (const e of events) this.window.set(e.position, e);
    // Oldest entries first (insertion order): keep the window bounded.
    for (const key of this.window.keys()) {
      if (this.window.size <= WINDOW) break;
      this.window.delete(key);
    }
    const moved = this.horizon.saw(
      events.map((e) => e.position),
      (p) => this.window.has(p),
    );
    if (moved) this.progressed();
    if (this.horizon.open) this.waitForGap();
    this.pumpAll();
  }

  /** Events may have been committed elsewhere (another replica rang, or a poll): read the table up from the settled position. */
  refresh(): void {
    this.read(false);
  }

  /** `checkAppenders`: the timer's reads also ask who could still fill a gap (rings do not: they come at the rate of commits). */
  private read(checkAppenders: boolean): void {
    if (this.closed) return;
    if (this.refreshing) {
      this.refreshAgain = true;
      return;
    }
    clearTimeout(this.gapTimer);
    this.gapTimer = undefined;
    this.refreshing = this.readLog(checkAppenders);
  }

  private async readLog(checkAppenders: boolean): Promise<void> {
    let open = false;
    let check = checkAppenders;
    do {
      this.refreshAgain = false;
      const from = this.horizon.settled;
      try {
        open = await this.horizon.refresh(this.db, check);
      } catch (err) {
        if (!this.closed) this.log.warn({ err }, 'bus: could not read the event log');
        open = true;
      }
      check = false;
      if (this.horizon.settled > from) this.progressed();
      this.pumpAll();
    } while (this.refreshAgain && !this.closed);
    // Cleared in the same turn as the last check of refreshAgain: a refresh() from now on starts a new read.
    this.refreshing = undefined;
    if (open || this.horizon.open) {
      this.stuckSince ??= Date.now();
      if (Date.now() - this.stuckSince > STUCK_WARN_MS) {
        this.stuckSince = Date.now();
        const pids = await this.horizon.appenderPids(this.db).catch(() => []);
        this.log.warn({ settled: this.horizon.settled.toString(), pids }, 'bus: delivery waits for an append to the event log still open (a transaction left open?)');
      }
      this.waitForGap();
    } else this.stuckSince = undefined;
  }

  /** The settled position moved: a gap that opens next is waited for from the shortest wait again, and is not stuck. */
  private progressed(): void {
    this.gapWaitMs = GAP_GRACE_MS;
    this.stuckSince = undefined;
  }

  /** Reads the table again after a while (longer each time the gap is still there without progress) unless the gap closes first. */
  private waitForGap(): void {
    if (this.gapTimer || this.closed) return;
    this.gapTimer = setTimeout(() => {
      this.gapTimer = undefined;
      if (!this.horizon.open) return;
      const wait = this.gapWaitMs;
      this.gapWaitMs = Math.min(wait * 2, GAP_MAX_MS);
      this.read(true);
    }, this.gapWaitMs);
    this.gapTimer.unref();
  }

  private pumpAll(): void {
    for (const c of this.cursors.values()) this.pump(c);
  }

  async subscribe(sub: Subscriber, options: { after?: bigint } = {}): Promise<() => void> {
    if (this.cursors.has(sub.name)) throw new Error(`bus subscriber "${sub.name}" already exists`);
    let position = options.after ?? this.horizon.settled;
    if (sub.durable) {
      // The row exists before any delivery locks it: replicas delivering the same first batch at
      // once would otherwise each find no row to lock, and each handle the batch.
      await this.db
        .insertInto('bus_positions')
        .values({ subscriber: sub.name, position: 0n })
        .onConflict((oc) => oc.column('subscriber').doNothing())
        .execute();
      const row = await this.db.selectFrom('bus_positions').select('position').where('subscriber', '=', sub.name).executeTakeFirstOrThrow();
      position = BigInt(row.position);
      // Events committed by others since the bus started are found in the table.
      this.refresh();
    }
    const cursor: Cursor = {
      sub,
      types: sub.types ? new Set(sub.types) : undefined,
      position,
      running: undefined,
      again: false,
      closed: false,
      waiters: [],
      retry: undefined,
      idle: { position, timer: undefined, writing: undefined },
    };
    this.cursors.set(sub.name, cursor);
    this.pump(cursor);
    return () => this.remove(cursor);
  }

  reached(name: string, position: bigint): Promise<void> {
    const c = this.cursors.get(name);
    if (!c || c.closed || c.position >= position) return Promise.resolve();
    return new Promise((resolve) => c.waiters.push({ position, resolve }));
  }

  async close(): Promise<void> {
    this.closed = true;
    clearTimeout(this.gapTimer);
    const running = [...this.cursors.values()].flatMap((c) => [c.running, c.idle.writing]);
    running.push(this.refreshing);
    for (const c of [...this.cursors.values()]) this.remove(c);
    await Promise.all(running);
  }

  private remove(c: Cursor): void {
    c.closed = true;
    clearTimeout(c.retry);
    clearTimeout(c.idle.timer);
    if (this.cursors.get(c.sub.name) === c) this.cursors.delete(c.sub.name);
    for (const w of c.waiters.splice(0)) w.resolve();
  }

  private pump(c: Cursor): void {
    if (c.closed || this.closed) return;
    if (c.running) {
      c.again = true;
      return;
    }
    const run = async () => {
      try {
        do {
          c.again = false;
          while (!c.closed && c.position < this.horizon.settled) {
            const { events, reached } = await this.next(c.position);
            if (reached <= c.position) break;
            await this.deliver(c, events, reached);
          }
        } while (c.again && !c.closed);
      } catch (err) {
        this.log.error({ err, subscriber: c.sub.name }, 'bus subscriber failed; retrying');
        clearTimeout(c.retry);
        c.retry = setTimeout(() => this.pump(c), RETRY_MS);
        c.retry.unref();
      }
    };
    // Set before the loop starts: a loop with nothing to do finishes synchronously.
    c.running = Promise.resolve()
      .then(run)
      .finally(() => {
        c.running = undefined;
      });
  }

  /**
   * The events after `position`, up to the settled position: from the window when it holds them in
   * sequence, else from the table. `reached`: how far they take the reader (past holes, up to the
   * settled position, when the table had no more).
   */
  private async next(position: bigint): Promise<{ events: StoredEvent[]; reached: bigint }> {
    const upTo = this.horizon.settled;
    const events: StoredEvent[] = [];
    for (let p = position + 1n; p <= upTo && events.length < BATCH; p++) {
      const e = this.window.get(p);
      if (!e) break;
      events.push(e);
    }
    if (events.length === 0) {
      const read = await readEvents(this.db, position, BATCH, { upTo });
      return { events: read, reached: read.length === BATCH ? (read[BATCH - 1] as StoredEvent).position : upTo };
    }
    return { events, reached: (events[events.length - 1] as StoredEvent).position };
  }

  /**
   * A durable subscriber that passed events with none of its types stores that position too, but
   * at most every IDLE_STORE_MS, one write at a time, and without a transaction of its own: a
   * subscriber whose events are rare (verdicts) would otherwise keep its stored position far back,
   * and retention keeps every event after the lowest stored position. Never moves a stored
   * position back; nothing of its types lies below the position stored (events are delivered only
   * up to the settled position). This holds because every instance of a subscriber name handles
   * the same types: a release never changes a durable subscriber's types (a new type gets a new
   * name), or an instance that does not know a type would store a position past it.
   */
  private storeIdle(c: Cursor, position: bigint): void {
    c.idle.position = position;
    if (c.idle.timer) return;
    c.idle.timer = setTimeout(() => {
      c.idle.timer = undefined;
      if (c.closed || this.closed) return;
      // The last write still waits (a row lock held long): the next one goes after it.
      if (c.idle.writing) return this.storeIdle(c, c.idle.position);
      const at = c.idle.position;
      c.idle.writing = this.db
        .updateTable('bus_positions')
        .set({ position: at })
        .where('subscriber', '=', c.sub.name)
        .where('position', '<', at)
        .execute()
        .then(
          () => undefined,
          (err: unknown) => this.log.warn({ err, subscriber: c.sub.name }, 'bus: could not store a subscriber position'),
        )
        .finally(() => {
          c.idle.writing = undefined;
        });
    }, IDLE_STORE_MS);
    c.idle.timer.unref();
  }

  private async deliver(c: Cursor, batch: readonly StoredEvent[], lastPosition: bigint): Promise<void> {
    const relevant = c.types ? batch.filter((e) => c.types?.has(e.type)) : batch;
    // A durable subscriber with nothing to handle moves its in-memory position, and stores it only
    // now and then (storeIdle): no transaction per batch of events it does not care about; after a
    // restart it re-reads (and skips) at most the events since.
    let reached = lastPosition;
    if (c.sub.durable && relevant.length > 0) {
      const units = this.units;
      if (!units) throw new Error('bus not started');
      reached = await units.run(async (uow) => {
        const stored = await uow.trx.selectFrom('bus_positions').select('position').where('subscriber', '=', c.sub.name).forUpdate().executeTakeFirst();
        const from = stored ? BigInt(stored.position) : 0n;
        // Another replica's subscriber of the same name got further: never move its position back
        // (the events between would be handled twice), go on from there.
        if (from >= lastPosition) return from;
        const fresh = relevant.filter((e) => e.position > from);
        if (fresh.length > 0) await c.sub.handle(fresh, uow);
        await uow.trx
          .insertInto('bus_positions')
          .values({ subscriber: c.sub.name, position: lastPosition })
          .onConflict((oc) => oc.column('subscriber').doUpdateSet({ position: lastPosition }))
          .execute();
        return lastPosition;
      });
    } else if (!c.sub.durable && relevant.length > 0) {
      await c.sub.handle(relevant);
    } else if (c.sub.durable) this.storeIdle(c, lastPosition);
    c.position = reached;
    c.waiters = c.waiters.filter((w) => {
      if (w.position > reached) return true;
      w.resolve();
      return false;
    });
  }
}
