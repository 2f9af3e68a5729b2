/**
 * The event log (`events`): how positions are given out, and how a reader knows how far it may
 * read without ever skipping an event that commits later.
 *
 * Positions come from a sequence (`next_event_positions`, migration 0015), so commits that carry
 * events share no row lock. The price: positions are no longer committed in order. Two units of
 * work take positions p and p + 1; the second may commit first, and a reader that then moves past
 * p + 1 would never see p. A position may also never commit at all (its transaction rolled back,
 * or its process died): a hole.
 *
 * A reader therefore keeps a *settled* position: every position at or below it is either
 * committed and visible or never will be. It only delivers up to there. It moves the settled
 * position in two ways (`Horizon`):
 * - Positions it sees committed right after the settled one settle at once. That is every
 *   position in the usual case, where commits finish in the order they took positions, or the
 *   gap closes when the slower commit lands.
 * - A gap that stays open needs proof that no transaction can still fill it. Every append holds
 *   a lock on `event_log` (ROW EXCLUSIVE; SHARE for an ordered or previous-release append) from
 *   before it takes its first position until its transaction ends. Say a statement with snapshot
 *   S sees position v committed and position q < v missing, and a later statement lists the
 *   transactions L holding that lock. The sequence gave out q before
 *   v, and v committed before S, so q's transaction held the lock when S was taken: by the time L
 *   is read it is in L, or it has ended. Once none of L holds the lock any more, q's transaction
 *   has ended, and a snapshot taken after that sees q if it committed. So the next read settles
 *   up to v; whatever is still missing there is a hole.
 * A gap is first taken for a commit in flight (it usually lands in a moment); only a later read
 * on the bus's timer, still seeing it, reads the holders from pg_locks. An append left open (a
 * stuck transaction) holds delivery past its positions until it ends; the bus logs who holds it.
 * Only this schema's appends count (the lock is on this schema's table): a long transaction
 * elsewhere on the server holds nobody up. Holes are rare (an abort after the append), and so
 * is the wait. On one connection (PGlite) no two transactions overlap: a gap is a hole at once.
 */
import { sql } from 'kysely';
import type { Db } from '../store/database.ts';
import { type DomainEvent, jobOf, providerOf, type StoredEvent } from './events.ts';
import type { Trx } from './unit-of-work.ts';

/** Most positions one refresh reads. */
const SCAN = 1000;

/** Appends the events (one statement per 1,000) at positions from the sequence, oldest first. */
export async function appendEvents(trx: Trx, events: readonly DomainEvent[]): Promise<StoredEvent[]> {
  const at = new Date();
  const stored: StoredEvent[] = [];
  for (let i = 0; i < events.length; i += 1000) {
    const part = events.slice(i, i + 1000);
    const rows = await sql<{ position: string }>`
      with p as (select position, row_number() over (order by position) as ord from next_event_positions(${part.length}) as position)
      insert into events (position, type, job_id, provider_id, data, at)
      select p.position, u.type, u.job_id, u.provider_id, u.data::jsonb, ${at}
      from unnest(${part.map((x) => x.type)}::text[], ${part.map((x) => jobOf(x))}::text[], ${part.map((x) => providerOf(x))}::text[], ${part.map(
        ({ type: _type, ...data }) => JSON.stringify(data),
      )}::text[]) with ordinality as u(type, job_id, provider_id, data, ord)
      join p on p.ord = u.ord
      returning position::text`.execute(trx);
    const positions = rows.rows.map((r) => BigInt(r.position)).sort((a, b) => (a < b ? -1 : a > b ? 1 : 0));
    for (const [k, e] of part.entries()) stored.push({ ...e, position: positions[k] as bigint, at });
  }
  return stored;
}

/** Reads committed events after `after` (oldest first); `upTo`: none above it (a reader's settled position). */
export async function readEvents(db: Db | Trx, after: bigint, limit: number, filter: { jobId?: string; upTo?: bigint } = {}): Promise<StoredEvent[]> {
  let q = db.selectFrom('events').selectAll().where('position', '>', after);
  if (filter.upTo !== undefined) q = q.where('position', '<=', filter.upTo);
  if (filter.jobId) q = q.where('job_id', '=', filter.jobId);
  const rows = await q.orderBy('position').limit(limit).execute();
  return rows.map((r) => ({ ...(r.data as object), type: r.type, position: BigInt(r.position), at: r.at }) as StoredEvent);
}

/** The newest committed position (0 when the log is empty): positions below it may still be in flight. */
export async function lastPosition(db: Db | Trx): Promise<bigint> {
  const row = await db
    .selectFrom('events')
    .select((eb) => eb.fn.max('position').as('last'))
    .executeTakeFirst();
  return row?.last == null ? 0n : BigInt(row.last);
}

/** How far a reader of the log may go (see the top of this file). */
export class Horizon {
  /** Every position at or below it is committed, or never will be. */
  settled = 0n;
  /** The newest position known to be committed. */
  seen = 0n;
  /**
   * An open gap, seen by a read that saw `upTo` committed. `appenders`: the transactions holding
   * the lock, read after such a read (null until the gap is seen a second time: most gaps are a
   * commit in flight that lands in a moment, and reading pg_locks is not free).
   */
  private gap: { upTo: bigint; appenders: string[] | null } | undefined;

  /** Whether something committed is known beyond the settled position. */
  get open(): boolean {
    return this.seen > this.settled;
  }

  /**
   * Starts at the newest committed position, once every append that could still commit a
   * position below it has ended (a wait only as long as the appends in flight now).
   */
  async start(db: Db, wait: (ms: number) => Promise<void>): Promise<void> {
    const head = await lastPosition(db);
    // Read after the head: an append holding a position below it holds the lock now, or has ended.
    const appenders = await appendersNow(db);
    for (let ms = 1; await stillAppending(db, appenders); ms = Math.min(ms * 2, 100)) await wait(ms);
    if (head > this.settled) this.settled = head;
    if (head > this.seen) this.seen = head;
  }

  /** Positions this process saw committed (its own commits): settles what follows the settled one. Whether it moved. */
  saw(positions: Iterable<bigint>, has: (position: bigint) => boolean): boolean {
    const from = this.settled;
    for (const p of positions) if (p > this.seen) this.seen = p;
    while (has(this.settled + 1n)) this.settled++;
    if (this.gap && this.settled >= this.gap.upTo) this.gap = undefined;
    return this.settled > from;
  }

  /**
   * Reads the log past the settled position and settles what it can; true while a gap stays
   * open. `checkAppenders`: this read may also ask who could still fill a gap (a timer's read; a
   * read on every ring would ask pg_locks at the rate of commits).
   */
  async refresh(db: Db, checkAppenders: boolean): Promise<boolean> {
    let final = 0n;
    for (;;) {
      const { rows } = await sql<{ positions: string }>`
        select array_to_string(array(select position from events where position > ${this.settled} order by position limit ${SCAN}), ',') as positions`.execute(
        db,
      );
      const joined = (rows[0] as { positions: string }).positions;
      const positions = joined === '' ? [] : joined.split(',').map(BigInt);
      let settled = final > this.settled ? final : this.settled;
      let gapAt: bigint | undefined;
      for (const p of positions) {
        if (p <= settled) continue;
        if (p !== settled + 1n) {
          gapAt = p;
          break;
        }
        settled = p;
      }
      const last = positions[positions.length - 1];
      if (last !== undefined && last > this.seen) this.seen = last;
      this.settled = settled;
      if (this.gap && settled >= this.gap.upTo) this.gap = undefined;
      if (gapAt === undefined) {
        if (positions.length < SCAN) return false;
        continue;
      }
      const upTo = last as bigint;
      if (!this.gap) {
        this.gap = { upTo, appenders: null };
        return true;
      }
      if (!checkAppenders) return true;
      if (this.gap.appenders === null) {
        // Seen again: who could still fill it, read after this read.
        const appenders = await appendersNow(db);
        this.gap = { upTo, appenders };
        if (appenders.length > 0) return true;
      } else if (await stillAppending(db, this.gap.appenders)) return true;
      // Every append that could fill it has ended: the next read sees all of them.
      final = this.gap.upTo;
      this.gap = undefined;
    }
  }

  /** The sessions holding the lock for an append now, for a log line about a gap that stays open. */
  async appenderPids(db: Db): Promise<number[]> {
    return (await holders(db)).flatMap((h) => (h.pid === null ? [] : [h.pid]));
  }
}

/** pg_locks rows of this database's `event_log` (table oids repeat across databases, e.g. one made from another as a template). */
const THIS_EVENT_LOG = sql`locktype = 'relation' and relation = 'event_log'::regclass
  and database = (select oid from pg_database where datname = current_database())`;

/** The transactions holding `event_log` for an append now: virtual id, and session (null for a prepared transaction). */
async function holders(db: Db): Promise<{ vxid: string; pid: number | null }[]> {
  const { rows } = await sql<{ vxid: string; pid: number | null }>`
    select virtualtransaction as vxid, pid from pg_locks
    where ${THIS_EVENT_LOG} and granted and mode in ('RowExclusiveLock', 'ShareLock')`.execute(db);
  return rows;
}

/** The transactions (virtual ids) holding `event_log` for an append now. */
async function appendersNow(db: Db): Promise<string[]> {
  return (await holders(db)).map((h) => h.vxid);
}

/** Whether any of these transactions still holds `event_log` for an append. */
async function stillAppending(db: Db, appenders: string[]): Promise<boolean> {
  if (appenders.length === 0) return false;
  const { rows } = await sql<{ any: boolean }>`
    select exists (select 1 from pg_locks where ${THIS_EVENT_LOG} and virtualtransaction = any(${appenders}::text[])) as any`.execute(db);
  return rows[0]?.any === true;
}
