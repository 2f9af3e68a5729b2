/**
 * A Kysely dialect for PGlite 0.5 (no maintained one exists): Kysely's own Postgres adapter
 * and compiler and our SearchPathIntrospector over PGlite's single connection, serialized by a mutex so a
 * transaction never interleaves with another query.
 *
 * PGlite runs each query synchronously on this thread, and one awaited query after another (a
 * transaction, then the next waiting on the mutex) continues in microtasks only: without a
 * yield, ten queued hellos ran as one 250 ms stretch in which no socket was read
 * (bench/hostile-load.ts). So a query yields to the event loop first once the database has had
 * the thread for YIELD_AFTER_MS since its last yield: I/O waits a few milliseconds and one
 * query at most, and a busy loop does not cost every statement a turn of it.
 */
import type { PGlite } from '@electric-sql/pglite';
import {
  CompiledQuery,
  type DatabaseConnection,
  type Dialect,
  type Driver,
  type Kysely,
  PostgresAdapter,
  PostgresQueryCompiler,
  type QueryResult,
} from 'kysely';
import { SearchPathIntrospector } from './search-path-introspector.ts';

const YIELD_AFTER_MS = 2;

class PGliteConnection implements DatabaseConnection {
  private lastYield = performance.now();

  constructor(private readonly db: PGlite) {}

  async executeQuery<R>(query: CompiledQuery): Promise<QueryResult<R>> {
    if (performance.now() - this.lastYield > YIELD_AFTER_MS) {
      await new Promise<void>((resolve) => setImmediate(resolve));
      this.lastYield = performance.now();
    }
    const res = await this.db.query<R>(query.sql, query.parameters as unknown[]);
    return {
      rows: res.rows,
      ...(res.affectedRows === undefined ? {} : { numAffectedRows: BigInt(res.affectedRows) }),
    };
  }

  // biome-ignore lint/correctness/useYield: streaming is not supported by this driver
  async *streamQuery<R>(): AsyncIterableIterator<QueryResult<R>> {
    throw new Error('PGlite driver does not support streaming');
  }
}

class PGliteDriver implements Driver {
  private readonly connection: PGliteConnection;
  private tail: Promise<void> = Promise.resolve();
  private release: (() => void) | undefined;
  private closing = false;

  constructor(private readonly db: PGlite) {
    this.connection = new PGliteConnection(db);
  }

  async init(): Promise<void> {}

  async acquireConnection(): Promise<DatabaseConnection> {
    if (this.closing) throw new Error('the database is closing');
    const previous = this.tail;
    let release!: () => void;
    this.tail = new Promise<void>((resolve) => {
      release = resolve;
    });
    await previous;
    this.release = release;
    return this.connection;
  }

  async beginTransaction(conn: DatabaseConnection): Promise<void> {
    await conn.executeQuery(CompiledQuery.raw('begin'));
  }

  async commitTransaction(conn: DatabaseConnection): Promise<void> {
    await conn.executeQuery(CompiledQuery.raw('commit'));
  }

  async rollbackTransaction(conn: DatabaseConnection): Promise<void> {
    await conn.executeQuery(CompiledQuery.raw('rollback'));
  }

  async releaseConnection(): Promise<void> {
    const release = this.release;
    this.release = undefined;
    release?.();
  }

  /** Lets the work already queued finish (a shutdown must not cut into it), refuses more, then closes. */
  async destroy(): Promise<void> {
    this.closing = true;
    await this.tail;
    await this.db.close();
  }
}

export class PGliteDialect implements Dialect {
  constructor(private readonly db: PGlite) {}
  createAdapter() {
    return new PostgresAdapter();
  }
  createDriver(): Driver {
    return new PGliteDriver(this.db);
  }
  createQueryCompiler() {
    return new PostgresQueryCompiler();
  }
  createIntrospector(db: Kysely<unknown>) {
    return new SearchPathIntrospector(db);
  }
}
