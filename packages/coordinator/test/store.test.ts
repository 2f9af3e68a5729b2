/**
 * The store under both engines (PGlite through our Kysely dialect, PostgreSQL through pg):
 * migrations, types, transactions, concurrency, the nonce insert the authenticator relies
 * on, and PGlite on disk surviving a kill -9 of its writer.
 */
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { type Db, openDatabase } from '@gridwork/coordinator/internal';
import { postgresUrl, tempDir, uniqueSchema } from '@gridwork/testkit';
import { sql } from 'kysely';
import pg from 'pg';
import { migrateToLatest } from '../src/store/migrations.ts';
import { insertProviderRow } from './fixtures/provider-row.ts';

const repoRoot = fileURLToPath(new URL('../../..', import.meta.url));
const coordinatorEntry = pathToFileURL(fileURLToPath(new URL('../src/internal.ts', import.meta.url))).href;

const uid = (prefix: string) => `${prefix}-${randomBytes(6).toString('hex')}`;

function withTimeout<T>(p: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  return Promise.race([
    p.finally(() => clearTimeout(timer)),
    new Promise<never>((_, reject) => {
      timer = setTimeout(() => reject(new Error(`${what} took longer than ${ms} ms`)), ms);
    }),
  ]);
}

function addProvider(db: Db, id: string): Promise<void> {
  return insertProviderRow(db, id, { instance: 'test-instance' });
}

async function migrationNames(db: Db): Promise<string[]> {
  const r = await sql<{ name: string }>`select name from kysely_migration order by name`.execute(db);
  return r.rows.map((x) => x.name);
}

for (const store of ['pglite', 'postgres'] as const) {
  describe(`store (${store})`, () => {
    let db: Db;
    const schema = uniqueSchema('gw_store');
    const open = () => (store === 'pglite' ? openDatabase({ dataDir: 'memory://' }) : openDatabase({ url: postgresUrl(), schema }));

    before(async () => {
      db = await open();
    });

    after(async () => {
      await db?.destroy();
      if (store === 'postgres') {
        const c = new pg.Client({ connectionString: postgresUrl() });
        await c.connect();
        try {
          await c.query(`drop schema if exists ${schema} cascade`);
        } finally {
          await c.end();
        }
      }
    });

    it('migrations are idempotent: migrating again changes nothing and keeps data', async () => {
      const names = await migrationNames(db);
      assert.ok(names.length >= 1, 'migrations were recorded');
      await db.insertInto('accounts').values({ id: 'kept-across-migrations' }).execute();
      if (store === 'pglite') {
        await migrateToLatest(db as never);
      } else {
        // A second open of the same schema runs the migrator again from scratch.
        const second = await open();
        try {
          assert.deepEqual(await migrationNames(second), names);
          const seen = await second.selectFrom('accounts').select('id').where('id', '=', 'kept-across-migrations').executeTakeFirst();
          assert.equal(seen?.id, 'kept-across-migrations');
        } finally {
          await second.destroy();
        }
      }
      assert.deepEqual(await migrationNames(db), names);
      const kept = await db.selectFrom('accounts').select('id').where('id', '=', 'kept-across-migrations').executeTakeFirst();
      assert.equal(kept?.id, 'kept-across-migrations');
    });

    if (store === 'postgres') {
      it('opens racing on a fresh schema all succeed and migrate it once', async () => {
        const fresh = uniqueSchema('gw_store_race');
        const results = await Promise.allSettled(Array.from({ length: 4 }, () => openDatabase({ url: postgresUrl(), schema: fresh })));
        const opened = results.flatMap((r) => (r.status === 'fulfilled' ? [r.value] : []));
        try {
          assert.deepEqual(
            results.map((r) => (r.status === 'rejected' ? String((r.reason as Error).message) : 'ok')),
            ['ok', 'ok', 'ok', 'ok'],
          );
          const names = await migrationNames(opened[0] as Db);
          assert.ok(names.includes('0001_foundation'));
          assert.equal(new Set(names).size, names.length, 'no migration recorded twice');
          await (opened[0] as Db).insertInto('accounts').values({ id: 'raced' }).execute();
          const seen = await (opened[3] as Db).selectFrom('accounts').select('id').where('id', '=', 'raced').executeTakeFirst();
          assert.equal(seen?.id, 'raced', 'all opens use the same schema');
        } finally {
          await Promise.all(opened.map((d) => d.destroy()));
          const c = new pg.Client({ connectionString: postgresUrl() });
          await c.connect();
          await c.query(`drop schema if exists ${fresh} cascade`).finally(() => c.end());
        }
      });
    }

    it('int8 columns come back as bigint, small or large', async () => {
      const big = 2n ** 60n + 7n;
      const small = sha('small');
      const large = sha('large');
      await db
        .insertInto('blobs')
        .values([
          { digest: small, size: 5n },
          { digest: large, size: big },
        ])
        .execute();
      const rows = await db.selectFrom('blobs').select(['digest', 'size']).where('digest', 'in', [small, large]).execute();
      const size = new Map(rows.map((r) => [r.digest, r.size]));
      assert.equal(typeof size.get(small), 'bigint');
      assert.equal(size.get(small), 5n);
      assert.equal(typeof size.get(large), 'bigint');
      assert.equal(size.get(large), big);
      const n = await db
        .selectFrom('blobs')
        .select((eb) => eb.fn.countAll().as('n'))
        .executeTakeFirstOrThrow();
      assert.equal(typeof n.n, 'bigint', 'count(*) is int8 too');
    });

    it('a transaction that throws rolls back everything it wrote', async () => {
      const account = uid('rollback');
      const digest = sha(account);
      await assert.rejects(
        db.transaction().execute(async (trx) => {
          await trx.insertInto('accounts').values({ id: account }).execute();
          await trx.insertInto('blobs').values({ digest, size: 1n }).execute();
          const inside = await trx.selectFrom('accounts').select('id').where('id', '=', account).executeTakeFirst();
          assert.equal(inside?.id, account, 'visible inside the transaction');
          throw new Error('boom');
        }),
        /boom/,
      );
      assert.equal(await db.selectFrom('accounts').select('id').where('id', '=', account).executeTakeFirst(), undefined);
      assert.equal(await db.selectFrom('blobs').select('digest').where('digest', '=', digest).executeTakeFirst(), undefined);
    });

    it('a transaction failing in SQL rolls back, and the store stays usable', async () => {
      const account = uid('sqlfail');
      await db
        .insertInto('accounts')
        .values({ id: 'existing-account' })
        .onConflict((oc) => oc.doNothing())
        .execute();
      await assert.rejects(
        db.transaction().execute(async (trx) => {
          await trx.insertInto('accounts').values({ id: account }).execute();
          await trx.insertInto('accounts').values({ id: 'existing-account' }).execute(); // duplicate key
        }),
        /duplicate key|unique/i,
      );
      assert.equal(await db.selectFrom('accounts').select('id').where('id', '=', account).executeTakeFirst(), undefined);
      // The connection was released and is not stuck in an aborted transaction.
      await db.transaction().execute(async (trx) => {
        await trx.insertInto('accounts').values({ id: account }).execute();
      });
      assert.equal((await db.selectFrom('accounts').select('id').where('id', '=', account).executeTakeFirst())?.id, account);
    });

    it('a query outside a transaction never sees its uncommitted writes', async () => {
      const account = uid('isolated');
      let outside: Promise<unknown> | undefined;
      await assert.rejects(
        db.transaction().execute(async (trx) => {
          await trx.insertInto('accounts').values({ id: account }).execute();
          // Started while the transaction is open; on PGlite it must wait for the connection.
          outside = db.selectFrom('accounts').select('id').where('id', '=', account).executeTakeFirst();
          await new Promise((r) => setImmediate(r));
          await trx.selectFrom('accounts').select('id').execute();
          throw new Error('roll back');
        }),
        /roll back/,
      );
      assert.equal(await outside, undefined);
    });

    it('50 concurrent read-modify-write transactions with forUpdate lose no update', async () => {
      const id = uid('counter');
      await addProvider(db, id);
      const events: string[] = [];
      let open = 0;
      let maxOpen = 0;
      await Promise.all(
        Array.from({ length: 50 }, (_, i) =>
          db.transaction().execute(async (trx) => {
            const row = await trx.selectFrom('providers').select('in_seq').where('id', '=', id).forUpdate().executeTakeFirstOrThrow();
            open++;
            maxOpen = Math.max(maxOpen, open);
            events.push(`start ${i}`);
            // Give every other transaction the chance to run in between.
            await new Promise((r) => setImmediate(r));
            await trx
              .updateTable('providers')
              .set({ in_seq: BigInt(row.in_seq) + 1n })
              .where('id', '=', id)
              .execute();
            events.push(`end ${i}`);
            open--;
          }),
        ),
      );
      const final = await db.selectFrom('providers').select('in_seq').where('id', '=', id).executeTakeFirstOrThrow();
      assert.equal(final.in_seq, 50n);
      assert.equal(events.length, 100);
      if (store === 'pglite') {
        // One connection: a transaction's statements never interleave with another's.
        assert.equal(maxOpen, 1, 'transactions ran one at a time');
        for (let k = 0; k < events.length; k += 2) {
          const i = (events[k] as string).split(' ')[1];
          assert.equal(events[k + 1], `end ${i}`, `transaction ${i} was interleaved: ${events.slice(k, k + 4).join(', ')}`);
        }
      } else {
        // Row locks serialize the read-modify-write sections even though connections run in parallel.
        assert.equal(maxOpen, 1, 'forUpdate held the other transactions back');
      }
    });

    it('a duplicate nonce insert with onConflict doNothing reports 0n rows', async () => {
      const account = uid('nonce');
      await db.insertInto('accounts').values({ id: account }).execute();
      const insert = () =>
        db
          .insertInto('request_nonces')
          .values({ account_id: account, nonce: 'n0nce-0123456789abcdef', seen_at: new Date() })
          .onConflict((oc) => oc.doNothing())
          .executeTakeFirst();
      const first = await insert();
      assert.equal(first.numInsertedOrUpdatedRows, 1n);
      const second = await insert();
      assert.equal(second.numInsertedOrUpdatedRows, 0n);
      const rows = await db.selectFrom('request_nonces').select('nonce').where('account_id', '=', account).execute();
      assert.equal(rows.length, 1);
    });
  });
}

function sha(s: string): string {
  return Buffer.from(s.padEnd(32, '.').slice(0, 32)).toString('hex');
}

describe('store (pglite on disk)', () => {
  it('every transaction reported committed survives kill -9 of the writer', { timeout: 180_000 }, async () => {
    const dir = await tempDir('gridwork-crash-');
    const dataDir = join(dir.path, 'db');
    try {
      const script = `
        import { openDatabase } from ${JSON.stringify(coordinatorEntry)};
        const db = await openDatabase({ dataDir: process.env.CRASH_DATA_DIR });
        process.stdout.write('ready\\n');
        for (let i = 0; ; i++) {
          await db.transaction().execute(async (trx) => {
            await trx.insertInto('accounts').values({ id: 'crash-' + i + '-a' }).execute();
            await trx.insertInto('accounts').values({ id: 'crash-' + i + '-b' }).execute();
          });
          process.stdout.write(i + '\\n');
        }
      `;
      const child = spawn(process.execPath, ['--import', 'tsx', '--input-type=module', '-e', script], {
        cwd: repoRoot,
        env: { ...process.env, CRASH_DATA_DIR: dataDir },
        stdio: ['ignore', 'pipe', 'pipe'],
      });
      let stderr = '';
      child.stderr.on('data', (c: Buffer) => {
        stderr += c.toString();
      });
      const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) =>
        child.on('exit', (code, signal) => resolve({ code, signal })),
      );
      const reported: number[] = [];
      let buffer = '';
      await withTimeout(
        new Promise<void>((resolve, reject) => {
          child.stdout.on('data', (c: Buffer) => {
            buffer += c.toString();
            const lines = buffer.split('\n');
            buffer = lines.pop() ?? '';
            for (const line of lines) if (/^\d+$/.test(line)) reported.push(Number(line));
            if (reported.length >= 50 && child.exitCode === null && !child.killed) {
              child.kill('SIGKILL');
              resolve();
            }
          });
          void exited.then(({ code, signal }) =>
            reject(new Error(`writer exited early (${code ?? signal}) after ${reported.length} rows: ${stderr.slice(-2000)}`)),
          );
        }),
        120_000,
        'the writer reporting 50 commits',
      );
      const { signal } = await exited;
      assert.equal(signal, 'SIGKILL');
      assert.ok(reported.length >= 50);
      assert.deepEqual(
        reported,
        reported.map((_, i) => i),
        'the writer reported its commits in order',
      );

      const db = await withTimeout(openDatabase({ dataDir }), 60_000, 'reopening the killed PGlite directory');
      try {
        const rows = await db.selectFrom('accounts').select('id').where('id', 'like', 'crash-%').execute();
        const ids = new Set(rows.map((r) => r.id));
        for (const i of reported) {
          assert.ok(ids.has(`crash-${i}-a`) && ids.has(`crash-${i}-b`), `committed transaction ${i} is missing after the crash`);
        }
        // Atomic across the crash: a transaction is there whole or not at all (at most the one
        // in flight at the kill may have committed without being reported).
        const present = new Set([...ids].map((id) => Number(id.split('-')[1])));
        for (const i of present) assert.ok(ids.has(`crash-${i}-a`) && ids.has(`crash-${i}-b`), `transaction ${i} is half there`);
        assert.ok(present.size <= reported.length + 1, `${present.size} transactions present, ${reported.length} reported`);
        // Reopening re-ran the migrator on a migrated directory without harm.
        const names = await migrationNames(db);
        assert.ok(names.includes('0001_foundation'));
        assert.equal(new Set(names).size, names.length, 'no migration recorded twice');
      } finally {
        await db.destroy();
      }
    } finally {
      await dir.remove();
    }
  });
});

describe('store (pglite closing)', () => {
  it('closing lets the transactions already queued commit, and refuses new ones with a clear error', async () => {
    const db = await openDatabase({ dataDir: 'memory://' });
    await db.insertInto('accounts').values({ id: 'closing' }).execute();
    // 50 units of work queued on the one connection, then a close while they wait.
    const queued = Array.from({ length: 50 }, (_, i) =>
      db.transaction().execute(async (trx) => {
        await trx.insertInto('request_nonces').values({ account_id: 'closing', nonce: `n${i}`, seen_at: new Date() }).execute();
      }),
    );
    const closed = db.destroy();
    const outcomes = await Promise.allSettled(queued);
    await closed;
    assert.deepEqual(
      outcomes.map((o) => o.status),
      queued.map(() => 'fulfilled'),
      `queued before the close, yet refused: ${outcomes.flatMap((o) => (o.status === 'rejected' ? [String(o.reason)] : [])).join('; ')}`,
    );
    await assert.rejects(db.selectFrom('accounts').selectAll().execute(), /closing|closed|destroyed/);
  });
});
