/**
 * The fencing epoch of the leader's writes. Work that only the leader may do (the scheduler's
 * placements, the sweeps that end leases, pay results and release stake) runs inside
 * `asLeader(epoch, …)`; every unit of work started inside it first takes a share lock on the
 * `coordinator_leader` row and checks that the epoch there is still the one it was started
 * with (unit-of-work.ts). A new term bumps that epoch with an update of the same row, which
 * waits for the share locks: so a deposed leader's transaction either committed before the new
 * term began, or sees the new epoch and is refused — a leader that wakes up late (a long GC
 * pause, a partition) cannot place or settle anything.
 *
 * The epoch travels in an AsyncLocalStorage, so the services the sweeps call need no extra
 * parameter; the events a fenced unit publishes leave the context (the subscribers they wake are
 * not the leader's work).
 */
import { AsyncLocalStorage } from 'node:async_hooks';
import type { Transaction } from 'kysely';
import type { Database } from '../store/schema.ts';

const storage = new AsyncLocalStorage<bigint>();

/** Thrown inside a fenced unit of work whose term has ended: the unit is rolled back. */
export class Deposed extends Error {
  override readonly name = 'Deposed';
  constructor(
    readonly epoch: bigint,
    readonly current: bigint | null,
  ) {
    super(`leader term ${epoch} has ended (the office is at epoch ${current ?? 'none'}): nothing of this unit of work is written`);
  }
}

/** Runs `fn` as the leader of term `epoch`: its units of work commit only while that term lasts. */
export function asLeader<T>(epoch: bigint, fn: () => Promise<T>): Promise<T> {
  return storage.run(epoch, fn);
}

/** Runs `fn` outside any leader term (what it starts is not fenced). */
export function unfenced<T>(fn: () => T): T {
  return storage.exit(fn);
}

/** The term the current work runs under, if any. */
export function fencingEpoch(): bigint | undefined {
  return storage.getStore();
}

/** Holds the office's row (shared) for the rest of the transaction, and refuses it unless the office is still at `epoch`. */
export async function checkFence(trx: Transaction<Database>, epoch: bigint): Promise<void> {
  const row = await trx.selectFrom('coordinator_leader').select('epoch').where('id', '=', 1).forShare().executeTakeFirst();
  const current = row ? BigInt(row.epoch) : null;
  if (current !== epoch) throw new Deposed(epoch, current);
}
