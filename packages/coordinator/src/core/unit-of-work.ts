/**
 * A unit of work: one database transaction plus the domain events it appends. The events are
 * written at the end of the transaction, under the single `event_head` row lock, so positions
 * are committed in increasing order (a subscriber reading `position > n` never skips an event
 * that commits later with a smaller position). The lock is held only from the append to the
 * commit. After the commit the events go to the bus. A retried transaction (deadlock) starts
 * with an empty event list: nothing of an aborted attempt is published. A unit started by the
 * leader's work commits only while the leader's term lasts (store/transact.ts).
 */
import { sql, type Transaction } from 'kysely';
import type { Db } from '../store/database.ts';
import type { Database } from '../store/schema.ts';
import { transact } from '../store/transact.ts';
import { unfenced } from '../leader/fence.ts';
import { type DomainEvent, jobOf, providerOf, type StoredEvent } from './events.ts';

export type Trx = Transaction<Database>;

export interface UnitOfWork {
  readonly trx: Trx;
  /** Appends an event; it is stored with the transaction and published after it commits. */
  emit(event: DomainEvent): void;
  /**
   * Runs `fn` behind a savepoint: if it throws, what it wrote and the events it emitted are both
   * undone (the error is rethrown; the rest of the unit of work goes on if the caller catches it).
   */
  savepoint<T>(fn: () => Promise<T>): Promise<T>;
}

/** Where committed events go (the bus). */
export interface EventSink {
  publish(events: readonly StoredEvent[]): void;
}

export class Units {
  constructor(
    private readonly db: Db,
    private readonly sink: EventSink,
  ) {}

  /** Runs `fn` as one transaction; its events are stored with it and published after the commit. */
  async run<T>(fn: (uow: UnitOfWork) => Promise<T>): Promise<T> {
    let stored: StoredEvent[] = [];
    const result = await transact(this.db, async (trx) => {
      const events: DomainEvent[] = [];
      let depth = 0;
      const value = await fn({
        trx,
        emit: (e) => void events.push(e),
        async savepoint(inner) {
          const name = sql.raw(`sp_${++depth}`);
          const mark = events.length;
          await sql`savepoint ${name}`.execute(trx);
          try {
            const v = await inner();
            await sql`release savepoint ${name}`.execute(trx);
            return v;
          } catch (err) {
            // Whatever failed inside the savepoint (a deadlock or a lock timeout too: PostgreSQL
            // aborts the subtransaction, not the transaction) is undone; the caller decides what next.
            await sql`rollback to savepoint ${name}`.execute(trx);
            events.length = mark;
            throw err;
          } finally {
            depth--;
          }
        },
      });
      stored = await appendEvents(trx, events);
      return value;
    });
    // The subscribers these events wake are not the leader's work: they run unfenced.
    if (stored.length > 0) unfenced(() => this.sink.publish(stored));
    return result;
  }
}

/**
 * One statement per 1,000 events: it moves the head and inserts the events at the positions it
 * frees (the lock on the head row is then held from here to the commit).
 */
async function appendEvents(trx: Trx, events: readonly DomainEvent[]): Promise<StoredEvent[]> {
  const at = new Date();
  const stored: StoredEvent[] = [];
  for (let i = 0; i < events.length; i += 1000) {
    const part = events.slice(i, i + 1000);
    const n = part.length;
    const rows = await sql<{ first: string }>`
      with h as (update event_head set position = position + ${n} where id = 1 returning position),
      appended as (
        insert into events (position, type, job_id, provider_id, data, at)
        select h.position - ${n} + u.ord, u.type, u.job_id, u.provider_id, u.data::jsonb, ${at}
        from h, unnest(${part.map((x) => x.type)}::text[], ${part.map((x) => jobOf(x))}::text[], ${part.map((x) => providerOf(x))}::text[], ${part.map(
          ({ type: _type, ...data }) => JSON.stringify(data),
        )}::text[]) with ordinality as u(type, job_id, provider_id, data, ord)
      )
      select (position - ${n} + 1)::text as first from h`.execute(trx);
    const first = BigInt((rows.rows[0] as { first: string }).first);
    for (const [k, e] of part.entries()) stored.push({ ...e, position: first + BigInt(k), at });
  }
  return stored;
}

/** Reads committed events after `position` (oldest first). */
export async function readEvents(db: Db | Trx, after: bigint, limit: number, filter: { jobId?: string } = {}): Promise<StoredEvent[]> {
  let q = db.selectFrom('events').selectAll().where('position', '>', after);
  if (filter.jobId) q = q.where('job_id', '=', filter.jobId);
  const rows = await q.orderBy('position').limit(limit).execute();
  return rows.map((r) => ({ ...(r.data as object), type: r.type, position: BigInt(r.position), at: r.at }) as StoredEvent);
}

/** The position of the last committed event. */
export async function eventHead(db: Db | Trx): Promise<bigint> {
  const row = await db.selectFrom('event_head').select('position').where('id', '=', 1).executeTakeFirstOrThrow();
  return BigInt(row.position);
}
