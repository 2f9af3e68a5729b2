/**
 * Opens the coordinator's database: PGlite under the data directory by default (zero setup),
 * PostgreSQL when a URL is given. Same Kysely code and migrations for both.
 */
import { mkdir } from 'node:fs/promises';
import { PGlite } from '@electric-sql/pglite';
import { Kysely, PostgresDialect } from 'kysely';
import pg from 'pg';
import { migrateToLatest } from './migrations.ts';
import { PGliteDialect } from './pglite-dialect.ts';
import type { Database } from './schema.ts';

export type Db = Kysely<Database>;

export interface DatabaseOptions {
  /** PostgreSQL URL; when absent, PGlite is used. @default process.env.GRIDWORK_DATABASE_URL */
  url?: string;
  /** PGlite data directory (ignored with a URL); `memory://` for an in-memory store. */
  dataDir?: string;
  /** PostgreSQL schema to use (created if missing); lets tests share one database. @default 'public' */
  schema?: string;
  /** Run migrations on open. @default true */
  migrate?: boolean;
  /** Connection pool size for PostgreSQL. @default 10 */
  poolSize?: number;
}

// node-postgres returns int8 as string by default; money and sequence numbers must be bigint.
pg.types.setTypeParser(20, (v: string) => BigInt(v));

export async function openDatabase(options: DatabaseOptions): Promise<Db> {
  let db: Db;
  if (options.url) {
    const schema = options.schema ?? 'public';
    if (!/^[a-z_][a-z0-9_]{0,62}$/.test(schema)) throw new Error(`invalid schema name ${schema}`);
    if (schema !== 'public') {
      const client = new pg.Client({ connectionString: options.url });
      await client.connect();
      try {
        await client.query(`create schema if not exists ${schema}`);
      } catch (err) {
        // Two opens racing to create the schema: the loser gets a unique violation, and the schema exists.
        if ((err as { code?: string }).code !== '23505') throw err;
      } finally {
        await client.end();
      }
    }
    const pool = new pg.Pool({
      connectionString: options.url,
      max: options.poolSize ?? 10,
      ...(schema === 'public' ? {} : { options: `-c search_path=${schema}` }),
    });
    db = new Kysely<Database>({ dialect: new PostgresDialect({ pool }) });
  } else {
    const dataDir = options.dataDir ?? 'memory://';
    if (!dataDir.startsWith('memory://')) await mkdir(dataDir, { recursive: true });
    // PGlite's own int8 parser gives a number when the value is small and a bigint otherwise:
    // parse int8 as bigint always, as node-postgres does above.
    const pglite = await PGlite.create(dataDir, {
      parsers: { 20: (v: string) => BigInt(v) },
      // Sized for an embedded store with one connection: PostgreSQL's defaults (128 MB of shared
      // buffers, 100 connections' worth of shared memory) live in WebAssembly memory here.
      postgresqlconf: ['shared_buffers = 16MB', 'max_connections = 5', 'wal_buffers = 1MB'],
    });
    db = new Kysely<Database>({ dialect: new PGliteDialect(pglite) });
  }
  if (options.migrate !== false) {
    try {
      await migrateToLatest(db as Kysely<unknown>, options.url ? (options.schema ?? 'public') : undefined);
    } catch (err) {
      await db.destroy();
      throw err;
    }
  }
  return db;
}
