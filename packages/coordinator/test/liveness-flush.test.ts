/**
 * The liveness flush (providers/liveness.ts) on real PostgreSQL: it writes `last_seen_at` for
 * the providers heard since the last flush, never moving it back, and skips a provider row that
 * another transaction holds instead of waiting for it (the flush holding every other row
 * meanwhile stalled all their writers); the skipped one is written by the next flush.
 */
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import { dropSchema, postgresUrl, uniqueSchema } from '@gridwork/testkit';
import pg from 'pg';
import { Liveness } from '../src/providers/liveness.ts';
import { type Db, openDatabase } from '../src/store/database.ts';

describe('liveness flush (PostgreSQL)', { timeout: 60_000 }, () => {
  const schema = uniqueSchema('gw_liveness');
  let db: Db;
  let other: pg.Client;
  const longAgo = new Date('2026-01-01T00:00:00Z');
  const seenAt = async (id: string) =>
    (await db.selectFrom('providers').select('last_seen_at').where('id', '=', id).executeTakeFirstOrThrow()).last_seen_at.getTime();

  before(async () => {
    db = await openDatabase({ url: postgresUrl(), schema });
    for (const id of ['held', 'free']) {
      await db.insertInto('accounts').values({ id }).execute();
      await db
        .insertInto('providers')
        .values({
          id,
          name: id,
          state: 'online',
          runtime: 'process',
          slots: 1,
          hardware: '{}',
          attributes: '{}',
          instance: 'i',
          last_seen_at: longAgo,
          in_seq: 0n,
          out_seq: 0n,
        })
        .execute();
    }
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
});
