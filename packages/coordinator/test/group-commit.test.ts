/**
 * Group commit (core/group-commit.ts), on PostgreSQL and on the embedded PGlite: commands
 * given together share one transaction; one that fails is undone alone, its events too, and its
 * caller alone gets the error; a command resolves only once its batch has committed (another
 * connection sees its write); a batch aborted by a serialization failure runs again whole and
 * commits once; and a batch is never fenced by the leader term of the caller that started it.
 */
import assert from 'node:assert/strict';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { dropSchema, postgresUrl, uniqueSchema } from '@gridwork/testkit';
import pg from 'pg';
import { sql } from 'kysely';
import { asLeader } from '../src/leader/fence.ts';
import type { StoredEvent } from '../src/core/events.ts';
import { GroupCommit } from '../src/core/group-commit.ts';
import { type UnitOfWork, Units } from '../src/core/unit-of-work.ts';
import { type Db, openDatabase } from '../src/store/database.ts';

const ID = (n: number) => `acct-${String(n).padStart(3, '0')}`;

for (const store of ['postgres', 'pglite'] as const) {
  describe(`group commit (${store})`, { timeout: 60_000 }, () => {
    const schema = uniqueSchema('gw_group');
    let dir = '';
    let db: Db;
    let published: StoredEvent[];
    let group: GroupCommit;
    let units: Units;

    const xact = async (uow: UnitOfWork) => (await sql<{ x: string }>`select pg_current_xact_id()::text as x`.execute(uow.trx)).rows[0]?.x as string;
    const exists = async (id: string) => (await db.selectFrom('accounts').select('id').where('id', '=', id).executeTakeFirst()) !== undefined;
    const insert = (uow: UnitOfWork, id: string) => uow.trx.insertInto('accounts').values({ id }).execute();
    const emitFor = (uow: UnitOfWork, id: string) => uow.emit({ type: 'provider.disconnected', providerId: id, welcomedAt: 1 });

    before(async () => {
      dir = await mkdtemp(join(tmpdir(), 'gw-group-'));
      db = store === 'postgres' ? await openDatabase({ url: postgresUrl(), schema }) : await openDatabase({ url: '', dataDir: join(dir, 'db') });
      published = [];
      units = new Units(db, { publish: (events) => void published.push(...events) });
      // Always batched (nothing runs in a unit of its own), to see the batches.
      group = new GroupCommit(units, { maxDirect: 0 });
    });

    after(async () => {
      await group?.idle();
      await db?.destroy();
      if (store === 'postgres') await dropSchema(schema);
      await rm(dir, { recursive: true, force: true });
    });

    test('commands given together share one transaction, and each resolves with its own value', async () => {
      const results = await Promise.all(
        Array.from({ length: 50 }, (_, i) =>
          group.run(async (uow) => {
            await insert(uow, ID(i));
            return { i, x: await xact(uow) };
          }),
        ),
      );
      assert.deepEqual(
        results.map((r) => r.i),
        Array.from({ length: 50 }, (_, i) => i),
      );
      assert.equal(new Set(results.map((r) => r.x)).size, 1, 'one transaction for the 50 commands');
      for (let i = 0; i < 50; i++) assert.ok(await exists(ID(i)));
    });

    test('a command that throws is undone alone, its events too; the others commit', async () => {
      published.length = 0;
      const boom = new Error('refused');
      const [a, b, c, d] = await Promise.allSettled([
        group.run(async (uow) => {
          await insert(uow, ID(100));
          emitFor(uow, ID(100));
        }),
        group.run(async (uow) => {
          await insert(uow, ID(101));
          emitFor(uow, ID(101));
          throw boom;
        }),
        // A statement that fails (a duplicate key) leaves the transaction usable for the rest.
        group.run((uow) => insert(uow, ID(100))),
        group.run(async (uow) => {
          await insert(uow, ID(103));
          emitFor(uow, ID(103));
        }),
      ]);
      assert.equal(a?.status, 'fulfilled');
      assert.equal(b?.status === 'rejected' && b.reason, boom, 'the thrower gets its own error');
      assert.equal(c?.status, 'rejected', 'the duplicate insert fails for its caller');
      assert.equal(d?.status, 'fulfilled');
      assert.equal(await exists(ID(101)), false, "the failed command's write is undone");
      assert.ok(await exists(ID(100)));
      assert.ok(await exists(ID(103)));
      assert.deepEqual(
        published.map((e) => (e.type === 'provider.disconnected' ? e.providerId : e.type)),
        [ID(100), ID(103)],
        'only the committed commands publish events, in order, with consecutive positions',
      );
      assert.equal((published[1] as StoredEvent).position, (published[0] as StoredEvent).position + 1n);
    });

    // PGlite has one connection: nothing else could look.
    if (store === 'postgres')
      test('a command resolves only after its batch committed: another connection already sees its write', async () => {
        const other = new pg.Client({ connectionString: postgresUrl() });
        await other.connect();
        try {
          const seen = await Promise.all(
            [200, 201, 202].map((n) =>
              group
                .run((uow) => insert(uow, ID(n)))
                .then(async () => (await other.query(`select 1 from "${schema}".accounts where id = $1`, [ID(n)])).rowCount),
            ),
          );
          assert.deepEqual(seen, [1, 1, 1]);
        } finally {
          await other.end();
        }
      });

    test('a command PostgreSQL aborts (a serialization failure, a deadlock) is undone alone and runs again in the next batch', async () => {
      let runs = 0;
      let failed = false;
      const [first, second] = await Promise.all([
        group.run(async (uow) => {
          runs++;
          await insert(uow, ID(300));
          return runs;
        }),
        group.run(async (uow) => {
          await insert(uow, ID(301));
          if (!failed) {
            failed = true;
            throw Object.assign(new Error('could not serialize access'), { code: '40001' });
          }
          return 'second';
        }),
      ]);
      assert.equal(runs, 1, 'the other command ran once: its batch committed without the failed one');
      assert.equal(first, 1);
      assert.equal(second, 'second', 'the failed command ran again and succeeded');
      const n = await db.selectFrom('accounts').select((eb) => eb.fn.countAll<string>().as('n')).where('id', 'in', [ID(300), ID(301)]).executeTakeFirstOrThrow();
      assert.equal(Number(n.n), 2, 'each write committed once (the aborted attempt was undone at its savepoint)');
    });

    // PGlite has one connection: nothing else could hold a lock.
    if (store === 'postgres')
      test('a command waiting on a lock held elsewhere is put off after the lock timeout: the rest of its batch commits meanwhile', async () => {
        await db.insertInto('accounts').values({ id: ID(500) }).execute();
        const holder = new pg.Client({ connectionString: postgresUrl() });
        await holder.connect();
        try {
          await holder.query('begin');
          await holder.query(`select id from "${schema}".accounts where id = $1 for update`, [ID(500)]);
          let locked = false;
          const waiting = group.run(async (uow) => {
            await uow.trx.deleteFrom('accounts').where('id', '=', ID(500)).execute();
            return locked;
          });
          const other = group.run((uow) => insert(uow, ID(501)));
          await other;
          assert.ok(await exists(ID(501)), 'the other command committed while the lock was still held');
          assert.ok(await exists(ID(500)), 'the waiting command has not run to its end');
          locked = true;
          await holder.query('commit');
          assert.equal(await waiting, true, 'it ran again after the lock was released, and committed');
          assert.equal(await exists(ID(500)), false);
        } finally {
          await holder.end();
        }
      });

    test('under light load a command runs in a unit of its own at once; a burst beyond maxDirect shares a batch', async () => {
      const light = new GroupCommit(units, { maxDirect: 2 });
      const alone = await light.run(xact);
      const burst = await Promise.all(Array.from({ length: 10 }, () => light.run(xact)));
      assert.notEqual(alone, burst[0]);
      assert.equal(new Set(burst.slice(0, 2)).size, 2, 'the first two ran in units of their own');
      assert.equal(new Set(burst.slice(2)).size, 1, 'the other eight shared one batch');
      assert.ok(!burst.slice(0, 2).includes(burst[2] as string));
      await light.idle();
    });

    test('a batch started from a leader term is not fenced by it', async () => {
      // No coordinator_leader row: a fenced unit of work would be refused (Deposed).
      await asLeader(42n, () => group.run((uow) => insert(uow, ID(400))));
      assert.ok(await exists(ID(400)));
    });
  });
}
