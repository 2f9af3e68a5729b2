/**
 * Provider rows locked for a subscriber's counter updates (reputation, audit results), without
 * waiting. A replica's provider reports commit in batches (core/group-commit.ts) that hold several
 * provider rows until they commit; a subscriber that updated one provider's counters and then
 * waited for another's closed a cycle with such a batch, which PostgreSQL broke only after its
 * deadlock_timeout (1 s), both stalled meanwhile. With NOWAIT the subscriber gives up at once
 * (55P03, which transact() retries after a short pause) and so never holds a provider row while
 * it waits for one.
 */
import { sql } from 'kysely';
import type { Trx } from '../core/unit-of-work.ts';

export async function lockForCounters(trx: Trx, providerIds: readonly string[]): Promise<void> {
  if (providerIds.length === 0) return;
  await sql`select id from providers where id = any(${[...providerIds].sort()}::text[]) order by id for no key update nowait`.execute(trx);
}
