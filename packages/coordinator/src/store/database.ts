/**
 * Opens the coordinator's database: PGlite under the data directory by default (zero setup),
 * PostgreSQL when a URL is given. Same Kysely code and migrations for both.
 */
import { spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import { mkdir, rename, rm, rmdir } from 'node:fs/promises';
import { join } from 'node:path';
import { PGlite } from '@electric-sql/pglite';
import { Kysely, PostgresDialect } from 'kysely';
import pg from 'pg';
import { migrateToLatest } from './migrations.ts';
import { PGliteDialect } from './pglite-dialect.ts';
import { SearchPathIntrospector } from './search-path-introspector.ts';
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

/** node-postgres under Kysely, with the introspector that reads only our own schema (search-path-introspector.ts). */
class SearchPathPostgresDialect extends PostgresDialect {
  override createIntrospector(db: Kysely<unknown>) {
    return new SearchPathIntrospector(db);
  }
}

export async function openDatabase(options: DatabaseOptions): Promise<Db> {
  let db: Db;
  if (options.url) {
    const schema = options.schema ?? 'public';
    if (!/^[a-z_][a-z0-9_]{0,62}$/.test(schema)) throw new Error(`invalid schema name ${schema}`);
    if (schema !== 'public') {
      const client = new pg.Client({ connectionString: options.url });
      client.on('error', () => {}); // a broken connection fails the query below instead
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
    // A connection that breaks (PostgreSQL restarting) must not take the process with it: node-postgres
    // emits the error on the client, and an 'error' event without a listener is the process's last.
    // Idle ones the pool drops (its 'error'); one checked out between two queries of a transaction
    // has no listener of the pool's, so each gets its own — the transaction's next query then fails
    // with the connection error, the transaction is retried or reported, the client discarded.
    pool.on('error', () => {});
    pool.on('connect', (client) => client.on('error', () => {}));
    db = new Kysely<Database>({ dialect: new SearchPathPostgresDialect({ pool }) });
  } else {
    const dataDir = options.dataDir ?? 'memory://';
    if (!dataDir.startsWith('memory://')) {
      await mkdir(dataDir, { recursive: true });
      if (!existsSync(join(dataDir, 'PG_VERSION'))) await createStore(dataDir, options.migrate !== false);
    }
    const pglite = await openPGlite(dataDir);
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

/** PGlite as the coordinator uses it, on a data directory or `memory://`. */
function openPGlite(dataDir: string): Promise<PGlite> {
  return PGlite.create(dataDir, {
    // PGlite's own int8 parser gives a number when the value is small and a bigint otherwise:
    // parse int8 as bigint always, as node-postgres does above.
    parsers: { 20: (v: string) => BigInt(v) },
    // Sized for an embedded store with one connection: PostgreSQL's defaults (128 MB of shared
    // buffers, 100 connections' worth of shared memory) live in WebAssembly memory here, and
    // PGlite's allocator zeroes all of it at start, so every megabyte here is resident.
    postgresqlconf: ['shared_buffers = 16MB', 'max_connections = 5', 'wal_buffers = 1MB'],
  });
}

/**
 * Creates a PGlite store (initdb, and the migrations unless `migrate` is false) in a child
 * process, so that the coordinator itself only ever opens an existing one.
 *
 * Why (issue 9, item 6; bench/pglite-memory.ts): PGlite's initdb on a directory starts a second
 * PGlite and the initdb WebAssembly module beside the first and copies their result over as a
 * tarball. All of it is garbage afterwards, but a process that then idles runs no major GC: a
 * coordinator that created its store stayed at ~675 MiB resident, one that reopened it at
 * ~245 MiB. A forced GC still left ~330 MiB; for PGlite alone, initdb in a worker thread left
 * 283 MiB against 158 MiB after a child process (freed native memory stays in the allocator's
 * arenas); the migrations of a new store, run in-process, cost another ~20 MiB. A child process
 * returns all of it to the system when it exits.
 *
 * The child builds a sibling directory that is renamed into place once complete, so a process
 * killed during creation never leaves a half-made store that would later open as if whole.
 */
async function createStore(dataDir: string, migrate: boolean): Promise<void> {
  const child = childCommand();
  if (!child) return; // no way to run this module in a child: PGlite.create() builds the store in-process
  const pending = `${dataDir}.creating`;
  await rm(pending, { recursive: true, force: true });
  // A data directory that already holds other files is initialised where it is.
  const empty = await rmdir(dataDir).then(
    () => true,
    () => false,
  );
  const target = empty ? pending : dataDir;
  const stderr: string[] = [];
  const code = await new Promise<number | null>((resolve, reject) => {
    // Its stdin stays open while this process lives: the child gives up when it closes.
    const proc = spawn(process.execPath, [...child, target, String(migrate)], { stdio: ['pipe', 'ignore', 'pipe'] });
    proc.stderr.setEncoding('utf8').on('data', (d: string) => stderr.push(d));
    proc.once('error', reject);
    proc.once('close', resolve);
  }).catch((err: Error) => {
    stderr.push(err.message);
    return null;
  });
  if (code === 0 && existsSync(join(target, 'PG_VERSION'))) {
    if (empty) await rename(pending, dataDir);
    return;
  }
  if (empty) {
    await rm(pending, { recursive: true, force: true });
    await mkdir(dataDir, { recursive: true });
  }
  throw new Error(`could not create the PGlite store in ${dataDir} (exit ${code}): ${stderr.join('').trim().slice(-4000)}`);
}

/**
 * Node arguments that run `createStoreHere` of this very module in a child process: its data
 * directory and whether to migrate follow. From TypeScript sources (tests, a source checkout)
 * the child needs tsx's loader too; undefined where that cannot be found.
 */
function childCommand(): string[] | undefined {
  const self = import.meta.url;
  const script = [
    'const [, url, dir, migrate] = process.argv;',
    // A parent killed mid-creation must not leave this process writing a directory that its next start clears.
    'process.stdin.on("end", () => process.exit(1)).resume();',
    'const { createStoreHere } = await import(url);',
    'await createStoreHere(dir, migrate === "true");',
    'process.exit(0);',
  ].join(' ');
  const args = ['--input-type=module', '-e', script, self];
  if (!self.endsWith('.ts')) return args;
  try {
    return ['--import', import.meta.resolve('tsx'), ...args];
  } catch {
    return undefined;
  }
}

/** The child's side of createStore(): opens (so creates) the store, migrates it, closes it. */
export async function createStoreHere(dataDir: string, migrate: boolean): Promise<void> {
  const pglite = await openPGlite(dataDir);
  const db = new Kysely<Database>({ dialect: new PGliteDialect(pglite) });
  try {
    if (migrate) await migrateToLatest(db as Kysely<unknown>, undefined);
  } finally {
    await db.destroy();
  }
}
