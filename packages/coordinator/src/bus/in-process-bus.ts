/**
 * The bus inside one coordinator process. Published events are kept in a bounded in-memory
 * window; a subscriber that needs events the window no longer holds (or that another process
 * committed) reads them from the `events` table. Each subscriber has its own position and its
 * own serial delivery loop, so a slow one never delays the others; a handler that throws is
 * logged and retried from the same position on the next publish (or after a short delay).
 * Events other replicas commit arrive through `advance` (bus/replica-doorbell.ts).
 */
import type { Logger } from 'pino';
import type { StoredEvent } from '../core/events.ts';
import { eventHead, readEvents, type Units } from '../core/unit-of-work.ts';
import type { Db } from '../store/database.ts';
import type { Bus, LocalProgress, Subscriber } from './bus.ts';

const WINDOW = 20_000;
const BATCH = 1000;
const RETRY_MS = 500;

interface Cursor {
  sub: Subscriber;
  types: ReadonlySet<string> | undefined;
  position: bigint;
  running: Promise<void> | undefined;
  again: boolean;
  closed: boolean;
  waiters: { position: bigint; resolve: () => void }[];
  retry: NodeJS.Timeout | undefined;
}

export class InProcessBus implements Bus, LocalProgress {
  private last = 0n;
  private readonly window = new Map<bigint, StoredEvent>();
  private readonly cursors = new Map<string, Cursor>();
  private units: Units | undefined;
  private closed = false;

  constructor(
    private readonly db: Db,
    private readonly log: Logger,
  ) {}

  /** Reads the current head; call once before subscribing. `units` runs durable subscribers' transactions. */
  async start(units: Units): Promise<void> {
    this.units = units;
    const head = await eventHead(this.db);
    if (head > this.last) this.last = head;
  }

  head(): bigint {
    return this.last;
  }

  publish(events: readonly StoredEvent[]): void {
    for (const e of events) {
      this.window.set(e.position, e);
      if (e.position > this.last) this.last = e.position;
    }
    // Oldest entries first (insertion order): keep the window bounded.
    for (const key of this.window.keys()) {
      if (this.window.size <= WINDOW) break;
      this.window.delete(key);
    }
    for (const c of this.cursors.values()) this.pump(c);
  }

  /** Another replica committed events up to `position` (a committed head: every event up to it is in the table). */
  advance(position: bigint): void {
    if (position <= this.last) return;
    this.last = position;
    for (const c of this.cursors.values()) this.pump(c);
  }

  async subscribe(sub: Subscriber, options: { after?: bigint } = {}): Promise<() => void> {
    if (this.cursors.has(sub.name)) throw new Error(`bus subscriber "${sub.name}" already exists`);
    let position = options.after ?? this.last;
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
      // Events committed by others since our head was read are found in the table.
      const head = await eventHead(this.db);
      if (head > this.last) this.last = head;
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
    const running = [...this.cursors.values()].map((c) => c.running);
    for (const c of [...this.cursors.values()]) this.remove(c);
    await Promise.all(running);
  }

  private remove(c: Cursor): void {
    c.closed = true;
    clearTimeout(c.retry);
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
          while (!c.closed && c.position < this.last) {
            const batch = await this.next(c.position);
            if (batch.length === 0) break;
            await this.deliver(c, batch);
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

  /** The events after `position`: from the window when it holds them in sequence, else from the table. */
  private async next(position: bigint): Promise<StoredEvent[]> {
    const batch: StoredEvent[] = [];
    for (let p = position + 1n; batch.length < BATCH; p++) {
      const e = this.window.get(p);
      if (!e) break;
      batch.push(e);
    }
    if (batch.length > 0) return batch;
    return readEvents(this.db, position, BATCH);
  }

  private async deliver(c: Cursor, batch: readonly StoredEvent[]): Promise<void> {
    const lastPosition = (batch[batch.length - 1] as StoredEvent).position;
    const relevant = c.types ? batch.filter((e) => c.types?.has(e.type)) : batch;
    // A durable subscriber with nothing to handle moves only its in-memory position: the stored
    // one catches up with the next batch it handles, and after a restart it re-reads (and skips)
    // these events again. No transaction per batch of events it does not care about.
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
    }
    c.position = reached;
    c.waiters = c.waiters.filter((w) => {
      if (w.position > reached) return true;
      w.resolve();
      return false;
    });
  }
}
