/**
 * The event log without a global lock (core/event-log.ts): positions come from a sequence, so
 * commits land out of position order, and some positions never land (a rolled-back append).
 * A reader must deliver every committed event exactly once, in position order, and never move
 * past a position that may still commit. Real PostgreSQL, real concurrent transactions.
 */
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { join } from 'node:path';
import { postgresUrl, silentLogger, tempDir, uniqueSchema, until } from '@gridwork/testkit';
import { sql } from 'kysely';
import pg from 'pg';
import { InProcessBus } from '../src/bus/in-process-bus.ts';
import { appendEvents, Horizon, lastPosition } from '../src/core/event-log.ts';
import type { DomainEvent, StoredEvent } from '../src/core/events.ts';
import { type Trx, Units } from '../src/core/unit-of-work.ts';
import { type Db, openDatabase } from '../src/store/database.ts';
import { migrateTo, migrateToLatest } from '../src/store/migrations.ts';
import { startCoordinator } from '../src/server.ts';

const log = silentLogger();

const event = (n: number): DomainEvent => ({ type: 'task.logged', jobId: `job-${n}`, last: String(n) });

/** A transaction that appends `events` and then waits to be told to commit or roll back. */
function openAppend(db: Db, events: DomainEvent[]) {
  let finish!: (commit: boolean) => void;
  const decided = new Promise<boolean>((resolve) => {
    finish = resolve;
  });
  let appended!: (stored: StoredEvent[]) => void;
  const positions = new Promise<StoredEvent[]>((resolve) => {
    appended = resolve;
  });
  const done = db
    .transaction()
    .execute(async (trx: Trx) => {
      appended(await appendEvents(trx, events));
      if (!(await decided)) throw new Error('rolled back');
    })
    .then(
      () => true,
      (err: Error) => {
        if (err.message !== 'rolled back') throw err;
        return false;
      },
    );
  return { positions, commit: () => finish(true), rollBack: () => finish(false), done };
}

/** An append left open (to be rolled back: a hole), then a later one committed; `k` is the committed event. */
async function holeBeforeCommitted(db: Db, n: number) {
  const hole = openAppend(db, [event(n)]);
  await hole.positions;
  const kept = openAppend(db, [event(n + 1)]);
  const [k] = await kept.positions;
  kept.commit();
  await kept.done;
  return { hole, k };
}

/** Sessions of this database waiting for a lock in a statement like `pattern`. */
async function lockWaits(db: Db, pattern: string): Promise<number> {
  const { rows } = await sql<{ n: string }>`select count(*)::text as n from pg_stat_activity
    where datname = current_database() and wait_event_type = 'Lock' and query like ${pattern} and pid <> pg_backend_pid()`.execute(db);
  return Number(rows[0]?.n);
}

describe('the event log: positions without a lock (PostgreSQL)', () => {
  const schema = uniqueSchema('gw_evlog');
  let db: Db;

  before(async () => {
    db = await openDatabase({ url: postgresUrl(), schema });
  });

  after(async () => {
    await sql`drop schema if exists ${sql.id(schema)} cascade`.execute(db);
    await db.destroy();
  });

  it('a later position committed first does not settle past an earlier one still in flight; once it commits both settle', async () => {
    const horizon = new Horizon();
    await horizon.start(db, (ms) => new Promise((r) => setTimeout(r, ms)));
    const first = openAppend(db, [event(1)]);
    const [early] = await first.positions;
    const second = openAppend(db, [event(2)]);
    const [late] = await second.positions;
    assert.ok(early && late && late.position > early.position);
    second.commit();
    assert.equal(await second.done, true);

    assert.equal(await horizon.refresh(db, true), true, 'a gap is open while the earlier position is in flight');
    assert.ok(horizon.settled < early.position, `settled ${horizon.settled} stays below the position in flight ${early.position}`);
    assert.equal(horizon.seen, late.position);

    first.commit();
    assert.equal(await first.done, true);
    assert.equal(await horizon.refresh(db, true), false);
    assert.equal(horizon.settled, late.position);
  });

  it('a transaction that began writing first and takes its position last still holds the settled position (its id is older than the gap)', async () => {
    const horizon = new Horizon();
    await horizon.start(db, (ms) => new Promise((r) => setTimeout(r, ms)));
    // A writes (so it has a transaction id) before B exists; B takes q; then A takes v = q + 1 and commits.
    const a = await db.connection().execute(async (conn) => {
      await sql`begin`.execute(conn);
      await sql`select pg_current_xact_id()`.execute(conn);
      const b = openAppend(db, [event(10)]);
      const [q] = await b.positions;
      const [v] = await appendEvents(conn as unknown as Trx, [event(11)]);
      await sql`commit`.execute(conn);
      return { b, q: (q as StoredEvent).position, v: (v as StoredEvent).position };
    });
    assert.equal(a.v, a.q + 1n);
    assert.equal(await horizon.refresh(db, true), true);
    assert.equal(await horizon.refresh(db, true), true, 'still open while B, holding q, runs');
    assert.ok(horizon.settled < a.q);
    a.b.commit();
    assert.equal(await a.b.done, true);
    assert.equal(await horizon.refresh(db, true), false);
    assert.equal(horizon.settled, a.v);
  });

  it('a transaction open in another database of the server holds up neither a start nor a hole', async () => {
    const other = new pg.Client({ connectionString: postgresUrl().replace(/\/[^/]*$/, '/postgres') });
    await other.connect();
    try {
      await other.query('begin');
      await other.query('select pg_current_xact_id()');
      const horizon = new Horizon();
      await horizon.start(db, () => Promise.reject(new Error('start waited for a transaction that appends nothing here')));
      const { hole, k } = await holeBeforeCommitted(db, 12);
      assert.equal(await horizon.refresh(db, true), true);
      hole.rollBack();
      await hole.done;
      assert.equal(await horizon.refresh(db, true), false, 'the hole settles at the next read');
      assert.equal(horizon.settled, k?.position);
    } finally {
      await other.query('rollback');
      await other.end();
    }
  });

  it('a position whose transaction rolled back is a hole: it settles once that transaction has ended, never before', async () => {
    const horizon = new Horizon();
    await horizon.start(db, (ms) => new Promise((r) => setTimeout(r, ms)));
    const aborted = openAppend(db, [event(3), event(4)]);
    const holes = await aborted.positions;
    const kept = openAppend(db, [event(5)]);
    const [after] = await kept.positions;
    kept.commit();
    await kept.done;
    assert.equal(await horizon.refresh(db, true), true);
    assert.equal(await horizon.refresh(db, true), true, 'still open: the transaction holding the earlier positions may yet commit');
    assert.ok(horizon.settled < (holes[0] as StoredEvent).position);

    aborted.rollBack();
    assert.equal(await aborted.done, false);
    assert.equal(await horizon.refresh(db, true), false, 'its appender is gone: the next read settles past the hole');
    assert.equal(horizon.settled, after?.position);
    const stored = await db
      .selectFrom('events')
      .select('position')
      .where(
        'position',
        'in',
        holes.map((e) => e.position),
      )
      .execute();
    assert.deepEqual(stored, [], 'the rolled-back positions never appear');
  });

  it('many concurrent commits and rollbacks: a subscriber gets every committed event once, in position order, and nothing rolled back', async () => {
    const bus = new InProcessBus(db, log);
    const units = new Units(db, bus);
    await bus.start(units);
    const got: bigint[] = [];
    await bus.subscribe({
      name: 'collector',
      handle(events) {
        for (const e of events) got.push(e.position);
      },
    });
    const committed: bigint[] = [];
    let n = 100;
    // 60 units of work at once, up to 8 in flight, each appending 1–3 events; every fifth rolls back after its append.
    const work = Array.from({ length: 60 }, (_, i) => async () => {
      const events = Array.from({ length: 1 + (i % 3) }, () => event(n++));
      try {
        await units.run(async (uow) => {
          for (const e of events) uow.emit(e);
          // Yield so that the transactions interleave, and their commits overtake each other.
          await sql`select pg_sleep(${(i * 7) % 5} / 1000.0)`.execute(uow.trx);
          if (i % 5 === 4) {
            // Appended (the sequence gave out its positions), then thrown: the unit rolls back after its append.
            await appendEvents(uow.trx, [event(-1)]);
            throw new Error('abort');
          }
        });
      } catch (err) {
        if ((err as Error).message !== 'abort') throw err;
        return;
      }
      const mine = await db
        .selectFrom('events')
        .select('position')
        .where(
          'job_id',
          'in',
          events.map((e) => (e as { jobId: string }).jobId),
        )
        .execute();
      committed.push(...mine.map((r) => BigInt(r.position)));
    });
    const queue = [...work];
    await Promise.all(
      Array.from({ length: 8 }, async () => {
        for (let next = queue.shift(); next; next = queue.shift()) await next();
      }),
    );
    const newest = await lastPosition(db);
    await bus.reached('collector', newest);
    await bus.close();
    committed.sort((a, b) => (a < b ? -1 : 1));
    const fromNow = got.filter((p) => p >= (committed[0] as bigint));
    assert.deepEqual(fromNow, committed, 'every committed event once, in order; no rolled-back position');
    assert.equal(
      committed.length,
      [...Array(60).keys()].filter((i) => i % 5 !== 4).reduce((s, i) => s + 1 + (i % 3), 0),
    );
  });

  it('a replica of the previous release still appending under event_head gets a contiguous block of the same sequence', async () => {
    const mine = openAppend(db, [event(900)]);
    const [before] = await mine.positions;
    // The previous release's append, as it was: move the head, insert at the freed positions.
    const oldAppend = db.transaction().execute(async (trx) => {
      const { rows } = await sql<{ position: string }>`
        with h as (update event_head set position = position + 3 where id = 1 returning position),
        appended as (
          insert into events (position, type, job_id, data)
          select h.position - 3 + g, 'task.logged', 'old-' || g, '{"last":"0"}'::jsonb from h, generate_series(1, 3) g
        )
        select position::text from h`.execute(trx);
      return BigInt((rows[0] as { position: string }).position);
    });
    // Its block waits for the appends in flight (so none of their positions can fall inside it).
    await until(
      () => lockWaits(db, '%event_head%'),
      (n) => n === 1,
      { what: 'the old append to wait' },
    );
    mine.commit();
    await mine.done;
    const old = await oldAppend;
    const [afterwards] = await (async () => {
      const next = openAppend(db, [event(901)]);
      const stored = await next.positions;
      next.commit();
      await next.done;
      return stored;
    })();
    assert.ok(before && afterwards);
    assert.ok(old - 2n > before.position, 'the old block comes after the position given out before it');
    assert.ok(afterwards.position > old, 'and before the next one: no position is given out twice');
    const oldRows = await db.selectFrom('events').select('position').where('job_id', 'like', 'old-%').orderBy('position').execute();
    assert.deepEqual(
      oldRows.map((r) => BigInt(r.position)),
      [old - 2n, old - 1n, old],
    );
  });

  it('ordered (a database the previous release may still read): positions commit in order under the head row', async () => {
    await db.updateTable('event_log').set({ ordered: true }).execute();
    try {
      const first = openAppend(db, [event(950)]);
      const [early] = await first.positions;
      // The second append waits for the first one's commit (the head row), so it cannot commit first.
      const second = openAppend(db, [event(951)]);
      const order: string[] = [];
      const secondDone = second.positions.then(() => order.push('second appended'));
      await until(
        () => lockWaits(db, '%next_event_positions%'),
        (n) => n === 1,
        { what: 'the second append to wait for the head row' },
      );
      order.push('first commits');
      first.commit();
      await first.done;
      await secondDone;
      second.commit();
      await second.done;
      const [late] = await second.positions;
      assert.deepEqual(order, ['first commits', 'second appended']);
      assert.ok(early && late && late.position === early.position + 1n, 'contiguous, in commit order');
    } finally {
      await db.updateTable('event_log').set({ ordered: false }).execute();
    }
  });
});

describe('migration 0015 while a previous-release replica appends (PostgreSQL)', () => {
  it('an append in flight when the migration starts is waited for: the sequence starts past it, and no position is given out twice', async () => {
    const schema = uniqueSchema('gw_evlog_mig');
    const db = await openDatabase({ url: postgresUrl(), schema, migrate: false });
    const old = new pg.Client({ connectionString: postgresUrl(), options: `-c search_path=${schema}` });
    try {
      await migrateTo(db as never, '0014_coordinator_leader', schema);
      await old.connect();
      const oldAppend = `with h as (update event_head set position = position + 3 where id = 1 returning position)
        insert into events (position, type, job_id, data) select h.position - 3 + g, 'task.logged', 'old', '{"last":"0"}'::jsonb from h, generate_series(1, 3) g`;
      await old.query(oldAppend);
      await old.query('begin');
      await old.query(oldAppend);
      const migrating = migrateToLatest(db as never, schema);
      await until(
        () => lockWaits(db, '%event_head%'),
        (n) => n === 1,
        { what: 'the migration to wait for the append in flight' },
      );
      await old.query('commit');
      await migrating;
      const units = new Units(db, { publish() {} });
      for (let i = 0; i < 3; i++) await units.run(async (uow) => uow.emit(event(20 + i)));
      const positions = (await db.selectFrom('events').select('position').orderBy('position').execute()).map((r) => BigInt(r.position));
      assert.deepEqual(positions, [1n, 2n, 3n, 4n, 5n, 6n, 7n, 8n, 9n]);
      assert.equal(
        (await db.selectFrom('event_log').select('ordered').executeTakeFirstOrThrow()).ordered,
        true,
        'it had events: ordered until every replica is upgraded',
      );
    } finally {
      await old.end().catch(() => undefined);
      await sql`drop schema if exists ${sql.id(schema)} cascade`.execute(db);
      await db.destroy();
    }
  });
});

describe('migration 0015 on a schema of an earlier version with no events yet (PostgreSQL)', () => {
  it('is ordered too: a previous-release replica may be running on it', async () => {
    const schema = uniqueSchema('gw_evlog_mig0');
    const db = await openDatabase({ url: postgresUrl(), schema, migrate: false });
    try {
      await migrateTo(db as never, '0014_coordinator_leader', schema);
      await migrateToLatest(db as never, schema);
      assert.equal((await db.selectFrom('event_log').select('ordered').executeTakeFirstOrThrow()).ordered, true);
    } finally {
      await sql`drop schema if exists ${sql.id(schema)} cascade`.execute(db);
      await db.destroy();
    }
  });
});

describe('event_log locks are told apart by database (PostgreSQL)', () => {
  it('an append left open in a database made from this one as a template (same table oids) holds up neither a start nor a hole here', async () => {
    const suffix = uniqueSchema('').slice(1).toLowerCase();
    const [one, two] = [`gw_evlog_a${suffix}`, `gw_evlog_b${suffix}`];
    const admin = new pg.Client({ connectionString: postgresUrl() });
    await admin.connect();
    const urlOf = (name: string) => postgresUrl().replace(/\/[^/]*$/, `/${name}`);
    let db: Db | undefined;
    const other = new pg.Client({ connectionString: urlOf(two), options: '-c search_path=gw' });
    try {
      await admin.query(`create database ${one}`);
      await (await openDatabase({ url: urlOf(one), schema: 'gw' })).destroy();
      await admin.query(`create database ${two} template ${one}`);
      db = await openDatabase({ url: urlOf(one), schema: 'gw' });
      await other.connect();
      const oids = [
        (await sql<{ oid: number }>`select 'event_log'::regclass::oid as oid`.execute(db)).rows[0]?.oid,
        (await other.query(`select 'event_log'::regclass::oid as oid`)).rows[0]?.oid,
      ];
      assert.equal(oids[0], oids[1], 'the clone has the same table oids');
      await other.query('begin');
      await other.query(`insert into events (position, type, job_id, data) select p, 'task.logged', 'o', '{}' from next_event_positions(1) p`);
      const horizon = new Horizon();
      await horizon.start(db, () => Promise.reject(new Error('start waited for an append in another database')));
      const { hole, k } = await holeBeforeCommitted(db, 30);
      hole.rollBack();
      await hole.done;
      assert.equal(await horizon.refresh(db, true), true, 'first sight of the gap');
      assert.equal(await horizon.refresh(db, true), false, 'no append of this database holds it: a hole');
      assert.equal(horizon.settled, k?.position);
    } finally {
      await other.end().catch(() => undefined);
      await db?.destroy();
      await admin.query(`drop database if exists ${two}`);
      await admin.query(`drop database if exists ${one}`);
      await admin.end();
    }
  });
});

describe('the embedded store migrated from an earlier version (PGlite)', () => {
  it('is ordered after the migration, and unordered once a coordinator opens it: one process, no older replica can read it', async () => {
    const dir = await tempDir();
    try {
      const store = join(dir.path, 'db');
      const db = await openDatabase({ dataDir: store, migrate: false });
      await migrateTo(db as never, '0014_coordinator_leader');
      await migrateToLatest(db as never);
      assert.equal((await db.selectFrom('event_log').select('ordered').executeTakeFirstOrThrow()).ordered, true);
      await db.destroy();
      const coordinator = await startCoordinator({ dataDir: dir.path, port: 0, dev: true, logger: log });
      await coordinator.close();
      const reopened = await openDatabase({ dataDir: store });
      try {
        assert.equal((await reopened.selectFrom('event_log').select('ordered').executeTakeFirstOrThrow()).ordered, false);
      } finally {
        await reopened.destroy();
      }
    } finally {
      await dir.remove();
    }
  });
});

describe('the event log on a fresh database starts unordered (PostgreSQL and PGlite)', () => {
  for (const store of ['pglite', 'postgres'] as const) {
    it(store, async () => {
      const schema = uniqueSchema('gw_evlog_fresh');
      const db = store === 'pglite' ? await openDatabase({ dataDir: 'memory://' }) : await openDatabase({ url: postgresUrl(), schema });
      try {
        const mode = await db.selectFrom('event_log').select('ordered').executeTakeFirstOrThrow();
        assert.equal(mode.ordered, false);
        const bus = new InProcessBus(db, log);
        const units = new Units(db, bus);
        await bus.start(units);
        const got: bigint[] = [];
        await bus.subscribe({ name: 'c', handle: (events) => void got.push(...events.map((e) => e.position)) });
        await units.run(async (uow) => uow.emit(event(1)));
        // A rolled-back unit leaves a hole the bus settles on its own (no other commit comes to close it).
        await assert.rejects(
          units.run(async (uow) => {
            await appendEvents(uow.trx, [event(2)]);
            throw new Error('abort');
          }),
          /abort/,
        );
        await units.run(async (uow) => uow.emit(event(3)));
        await bus.reached('c', await lastPosition(db));
        await bus.close();
        assert.equal(got.length, 2);
        assert.ok((got[1] as bigint) - (got[0] as bigint) === 2n, `a hole between the two: ${got.join(', ')}`);
      } finally {
        if (store === 'postgres') await sql`drop schema if exists ${sql.id(schema)} cascade`.execute(db);
        await db.destroy();
      }
    });
  }
});
