/**
 * A unit of work: one database transaction plus the domain events it appends. The events are
 * written at the end of the transaction, at positions from a sequence (no lock shared by other
 * commits; core/event-log.ts says how readers stay gap-safe). After the commit the events go to
 * the bus. A retried transaction (deadlock) starts
 * with an empty event list: nothing of an aborted attempt is published. A unit started by the
 * leader's work commits only while the leader's term lasts (store/transact.ts).
 */
import { sql, type Transaction } from 'kysely';
import type { Db } from '../store/database.ts';
import type { Database } from '../store/schema.ts';
import { transact } from '../store/transact.ts';
import { unfenced } from '../leader/fence.ts';
import { appendEvents } from './event-log.ts';
import type { DomainEvent, StoredEvent } from './events.ts';

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
