/**
 * Provider rows under contention, on real PostgreSQL. The liveness flush (providers/liveness.ts)
 * writes `last_seen_at` for the providers heard since the last flush, never moving it back, and
 * skips a row another transaction holds instead of waiting for it (the flush holding every other
 * row meanwhile stalled all their writers); the skipped one is written by the next flush. A
 * subscriber's counter update (providers/counter-locks.ts) does not wait for a held row either:
 * its unit of work fails at once with a retryable error, and succeeds once the row is free; one
 * that takes its rows first waits for them, but gives up in a cycle with a batch.
 */
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import { dropSchema, postgresUrl, uniqueSchema } from '@gridwork/testkit';
import pg from 'pg';
import { Units } from '../src/core/unit-of-work.ts';
import { lockForCounters } from '../src/providers/counter-locks.ts';
import { Liveness } from '../src/providers/liveness.ts';
import { isRetryable } from '../src/store/transact.ts';
import { type Db, openDatabase } from '../src/store/database.ts';
import { insertProviderRow } from './fixtures/provider-row.ts';

describe('provider rows under contention (PostgreSQL)', { timeout: 60_000 }, () => {
  const schema = uniqueSchema('gw_liveness');
  let db: Db;
  let other: pg.Client;
  const longAgo = new Date('2026-01-01T00:00:00Z');
  const seenAt = async (id: string) =>
    (await db.selectFrom('providers').select('last_seen_at').where('id', '=', id).executeTakeFirstOrThrow()).last_seen_at.getTime();

  before(async () => {
    db = await openDatabase({ url: postgresUrl(), schema });
    for (const id of ['held', 'free']) await insertProviderRow(db, id, { hardware: '{}', last_seen_at: longAgo });
    other = new pg.Client({ connectionString: postgresUrl() });
    await other.connect();
  });

  after(async () => {
    await other?.end();
    await db?.destroy();
    await dropSchema(schema);
  });

  test('a row another transaction holds is skipped, not waited for, and written by the next flush', async () => {
    const liveness = new Liveness();
    const heard = Date.now();
    liveness.heard('held', heard);
    liveness.heard('free', heard);
    await other.query('begin');
    await other.query(`select id from "${schema}".providers where id = 'held' for no key update`);
    try {
      assert.equal(await liveness.flush(db), 1, 'only the free row was written');
      assert.equal(await seenAt('free'), heard);
      assert.equal(await seenAt('held'), longAgo.getTime(), 'the held row was left alone');
    } finally {
      await other.query('commit');
    }
    assert.equal(await liveness.flush(db), 1, 'the next flush writes the one it skipped');
    assert.equal(await seenAt('held'), heard);
    assert.equal(await liveness.flush(db), 0, 'nothing left to write');
  });

  test('never moves last_seen_at back', async () => {
    const liveness = new Liveness();
    liveness.heard('free', longAgo.getTime());
    await liveness.flush(db);
    assert.ok((await seenAt('free')) > longAgo.getTime());
  });

  test('a counter update does not wait for a held provider row: its unit fails, retryably, and runs once the row is free', async () => {
    const units = new Units(db, { publish() {} });
    const bump = () =>
      units.run(async ({ trx }) => {
        await lockForCounters(trx, ['held', 'free']);
        await trx.updateTable('providers').set({ slots: 2 }).where('id', '=', 'held').execute();
      });
    await other.query('begin');
    await other.query(`select id from "${schema}".providers where id = 'held' for no key update`);
    try {
      await assert.rejects(bump(), (err: unknown) => isRetryable(err) && (err as { code?: string }).code === '55P03');
      const slots = await db.selectFrom('providers').select('slots').where('id', '=', 'held').executeTakeFirstOrThrow();
      assert.equal(slots.slots, 1, 'nothing of the refused unit was written');
    } finally {
      await other.query('commit');
    }
    await bump();
    const slots = await db.selectFrom('providers').select('slots').where('id', '=', 'held').executeTakeFirstOrThrow();
    assert.equal(slots.slots, 2);
  });

  test('a subscriber that waits for its rows gives up in a cycle (lock_not_available) instead of stalling both until the deadlock check', async () => {
    // The cycle of a report batch: it holds one provider's row and then wants another's, which
    // the subscriber took first (id order) while it waits for the held one.
    await other.query('begin');
    await other.query(`select id from "${schema}".providers where id = 'held' for no key update`);
    try {
      const subscriber = db.transaction().execute((trx) => lockForCounters(trx, ['free', 'held'], { wait: true }));
      const outcome = subscriber.then(
        () => 'locked',
        (err: { code?: string }) => err.code,
      );
      // Waiting for 'held' while holding 'free'.
      const waiting = async () =>
        Number((await other.query('select count(*) as n from pg_stat_activity where pg_backend_pid() = any(pg_blocking_pids(pid))')).rows[0].n);
      while ((await waiting()) === 0) await new Promise((r) => setImmediate(r));
      await other.query(`select id from "${schema}".providers where id = 'free' for no key update`);
      assert.equal(await outcome, '55P03', 'the subscriber gave up; the batch got its row and was not aborted');
    } finally {
      await other.query('commit');
    }
  });
});
