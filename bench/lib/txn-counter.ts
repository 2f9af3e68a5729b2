/**
 * Counts database transactions the coordinator commits, on both stores, without touching the
 * coordinator: it wraps the two drivers' query methods (node-postgres `Client.prototype.query`,
 * PGlite `prototype.query`) — the only doors Kysely's dialects use. Per connection it follows
 * `begin` … `commit`/`rollback`; a statement outside an explicit transaction is a transaction of
 * its own (autocommit) and is counted as `implicit`.
 *
 * Benchmark instrumentation only: install it before the coordinator opens its database.
 */
import { PGlite } from '@electric-sql/pglite';
import pg from 'pg';

export interface TxCounts {
  /** Explicit transactions committed. */
  commits: number;
  rollbacks: number;
  /** Statements run outside an explicit transaction (each one commits by itself). */
  implicit: number;
  /** Of those, plain reads (`select …`): transactions, but with nothing to flush. */
  implicitReads: number;
  /** Every statement, including begin/commit. */
  statements: number;
}

const counts: TxCounts = { commits: 0, rollbacks: 0, implicit: 0, implicitReads: 0, statements: 0 };
const inTx = new WeakMap<object, boolean>();
/** The benchmark's own connections (statistics, look-ups): not the coordinator's work. */
const ignored = new WeakSet<object>();
let installed = false;

function note(conn: object, text: unknown): void {
  if (typeof text !== 'string' || ignored.has(conn)) return;
  counts.statements++;
  const s = text.trim().slice(0, 20).toLowerCase();
  if (s === 'begin' || s.startsWith('start transaction')) inTx.set(conn, true);
  else if (s === 'commit') {
    counts.commits++;
    inTx.set(conn, false);
  } else if (s === 'rollback') {
    counts.rollbacks++;
    inTx.set(conn, false);
  } else if (!inTx.get(conn)) {
    counts.implicit++;
    if (s.startsWith('select')) counts.implicitReads++;
  }
}

export function installTxCounter(): void {
  if (installed) return;
  installed = true;
  type AnyQuery = (this: object, ...args: unknown[]) => unknown;
  const pgProto = pg.Client.prototype as unknown as { query: AnyQuery };
  const pgQuery = pgProto.query;
  pgProto.query = function (this: object, ...args: unknown[]) {
    const first = args[0];
    note(this, typeof first === 'string' ? first : (first as { text?: unknown } | undefined)?.text);
    return pgQuery.apply(this, args);
  };
  const liteProto = PGlite.prototype as unknown as { query: AnyQuery };
  const liteQuery = liteProto.query;
  liteProto.query = function (this: object, ...args: unknown[]) {
    note(this, args[0]);
    return liteQuery.apply(this, args);
  };
}

/** Leaves a connection of the benchmark's own out of the counts. */
export function txIgnore(conn: object): void {
  ignored.add(conn);
}

export function txSnapshot(): TxCounts {
  return { ...counts };
}

export function txDelta(before: TxCounts, after: TxCounts): TxCounts {
  return {
    commits: after.commits - before.commits,
    rollbacks: after.rollbacks - before.rollbacks,
    implicit: after.implicit - before.implicit,
    implicitReads: after.implicitReads - before.implicitReads,
    statements: after.statements - before.statements,
  };
}
