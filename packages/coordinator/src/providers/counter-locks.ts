/**
 * Provider rows locked for a subscriber's counter updates (reputation, audit results). A replica's
 * provider reports commit in batches (core/group-commit.ts) that hold several provider rows until
 * they commit; a subscriber that updated one provider's counters and then waited for another's
 * closed a cycle with such a batch, which PostgreSQL broke only after its deadlock_timeout (1 s),
 * both stalled meanwhile. So a subscriber either takes every provider row it will count on first,
 * in id order, before it holds anything else a batch could want (`wait`), or, where it already
 * holds other rows, takes them with NOWAIT: it gives up at once (55P03, which transact() retries
 * after a short pause) instead of waiting while it holds them.
 *
 * Taking several rows in id order still holds the first while it waits for the next, and a batch
 * takes its providers' rows in the order their reports came: a batch holding the next row and
 * waiting for the first closes a cycle. So `wait` waits at most WAIT_LOCK_MS for the rows (the
 * rest of that unit of work too, which takes no other row a batch could hold): in a cycle the
 * subscriber gives up (55P03 again) long before PostgreSQL's deadlock check would stall both.
 */
import { sql } from 'kysely';
import type { Trx } from '../core/unit-of-work.ts';

/** How long a subscriber waits for the provider rows it counts on before it gives up and retries. */
const WAIT_LOCK_MS = 250;

export async function lockForCounters(trx: Trx, providerIds: readonly string[], options: { wait?: boolean } = {}): Promise<void> {
  if (providerIds.length === 0) return;
  const ids = [...providerIds].sort();
  if (options.wait) {
    await sql`set local lock_timeout = ${sql.lit(`${WAIT_LOCK_MS}ms`)}`.execute(trx);
    await sql`select id from providers where id = any(${ids}::text[]) order by id for no key update`.execute(trx);
  } else await sql`select id from providers where id = any(${ids}::text[]) order by id for no key update nowait`.execute(trx);
}
