/**
 * Provider rows locked for a subscriber's counter updates (reputation, audit results). A replica's
 * provider reports commit in batches (core/group-commit.ts) that hold several provider rows until
 * they commit; a subscriber that updated one provider's counters and then waited for another's
 * closed a cycle with such a batch, which PostgreSQL broke only after its deadlock_timeout (1 s),
 * both stalled meanwhile. So a subscriber either takes every provider row it will count on first,
 * in id order, before it holds anything a batch could want (`wait`), or, where it already holds
 * other rows, takes them with NOWAIT: it gives up at once (55P03, which transact() retries after a
 * short pause) instead of waiting while it holds them.
 */
import { sql } from 'kysely';
import type { Trx } from '../core/unit-of-work.ts';

export async function lockForCounters(trx: Trx, providerIds: readonly string[], options: { wait?: boolean } = {}): Promise<void> {
  if (providerIds.length === 0) return;
  const ids = [...providerIds].sort();
  if (options.wait) await sql`select id from providers where id = any(${ids}::text[]) order by id for no key update`.execute(trx);
  else await sql`select id from providers where id = any(${ids}::text[]) order by id for no key update nowait`.execute(trx);
}
