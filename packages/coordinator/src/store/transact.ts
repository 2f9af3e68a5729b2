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

// deadlock_detected, serialization_failure, lock_not_available (a NOWAIT lock: providers/counter-locks.ts)
const RETRYABLE = new Set(['40P01', '40001', '55P03']);

/** A conflict PostgreSQL resolved by aborting the transaction (or a lock not waited for): running it again is safe. */
export function isRetryable(err: unknown): boolean {
  const code = (err as { code?: unknown } | null)?.code;
  return typeof code === 'string' && RETRYABLE.has(code);
}

/** SQLSTATE classes and node/pg messages of a database that cannot be reached or went away (a restart, a network cut). */
const CONNECTION_CODES = new Set(['ECONNREFUSED', 'ECONNRESET', 'ETIMEDOUT', 'EPIPE', 'ENOTFOUND', '57P01', '57P02', '57P03', '08000', '08001', '08003', '08004', '08006']);
const CONNECTION_MESSAGES = [/Connection terminated/i, /not queryable/i, /timeout exceeded when trying to connect/i, /Client was closed/i];

/** The database was unreachable for this request (it may be back for the next): not the request's fault, nor a bug. */
export function isConnectionLost(err: unknown): boolean {
  for (let e: unknown = err, depth = 0; e && depth < 4; e = (e as { cause?: unknown }).cause, depth++) {
    const code = (e as { code?: unknown }).code;
    if (typeof code === 'string' && CONNECTION_CODES.has(code)) return true;
    const message = (e as { message?: unknown }).message;
    if (typeof message === 'string' && CONNECTION_MESSAGES.some((m) => m.test(message))) return true;
    // An AggregateError (a connect to several addresses, all refused) carries its reasons in `errors`.
    const errors = (e as { errors?: unknown }).errors;
    if (Array.isArray(errors) && errors.some((x) => isConnectionLost(x))) return true;
  }
  return false;
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
