/**
 * Runs a database transaction, retrying it when PostgreSQL aborts it to break a deadlock or a
 * serialization conflict. Transactions here lock rows in orders that follow the work (a
 * provider's report, a placement across providers, a settlement touching several accounts), so
 * two of them can occasionally wait on each other; PostgreSQL then aborts one, and running it
 * again from the start is always safe: nothing of the aborted attempt was committed. The
 * function must keep its own side effects idempotent (or undo them on throw).
 *
 * A transaction started by the leader's work (inside `asLeader`) is fenced: it first checks that
 * the leader's term is still current, and holds that check to its commit (leader/fence.ts).
 */
import type { Transaction } from 'kysely';
import { checkFence, fencingEpoch } from '../leader/fence.ts';
import type { Db } from './database.ts';
import type { Database } from './schema.ts';

const RETRYABLE = new Set(['40P01', '40001']); // deadlock_detected, serialization_failure

/** A conflict PostgreSQL resolved by aborting the transaction: running it again is safe. */
export function isRetryable(err: unknown): boolean {
  const code = (err as { code?: unknown } | null)?.code;
  return typeof code === 'string' && RETRYABLE.has(code);
}

export async function transact<T>(db: Db, fn: (trx: Transaction<Database>) => Promise<T>, attempts = 6): Promise<T> {
  const epoch = fencingEpoch();
  for (let attempt = 1; ; attempt++) {
    try {
      return await db.transaction().execute(async (trx) => {
        if (epoch !== undefined) await checkFence(trx, epoch);
        return fn(trx);
      });
    } catch (err) {
      if (attempt >= attempts || !isRetryable(err)) throw err;
      await new Promise((r) => setTimeout(r, Math.random() * 20 * attempt));
    }
  }
}
