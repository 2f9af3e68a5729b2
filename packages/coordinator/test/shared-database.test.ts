/**
 * Coordinators and other users sharing one PostgreSQL: opening (and migrating) our schema must
 * not depend on the rest of the database. CI once failed a test because Kysely's introspector
 * read every schema by name while another test dropped its own (`schema "..." does not exist`).
 */
import assert from 'node:assert/strict';
import { after, describe, test } from 'node:test';
import { dropSchema, postgresUrl, uniqueSchema } from '@gridwork/testkit';
import { type Kysely, sql } from 'kysely';
import pg from 'pg';
import { openDatabase } from '../src/store/database.ts';
import { migrateToLatest } from '../src/store/migrations.ts';

describe('a schema of our own on a shared PostgreSQL', { timeout: 120_000 }, () => {
  const made: string[] = [];
  after(async () => {
    for (const schema of made) await dropSchema(schema);
  });

  test('the introspector sees only the search path: other schemas and their tables are not read', async () => {
    const schema = uniqueSchema('gw_shared');
    const other = uniqueSchema('gw_other');
    made.push(schema, other);
    const db = await openDatabase({ url: postgresUrl(), schema, poolSize: 2 });
    try {
      await sql.raw(`create schema ${other}; create table ${other}.kysely_migration (name text)`).execute(db);
      const tables = await db.introspection.getTables({ withInternalKyselyTables: true });
      assert.ok(tables.length > 10, 'our tables are listed');
      assert.deepEqual([...new Set(tables.map((t) => t.schema))], [schema]);
      assert.ok(tables.some((t) => t.name === 'kysely_migration' && t.schema === schema));
    } finally {
      await db.destroy();
    }
  });

  test('migrations succeed while another client keeps dropping and creating schemas', async () => {
    const churn = new pg.Client({ connectionString: postgresUrl() });
    await churn.connect();
    let stop = false;
    let dropped = 0;
    const churning = (async () => {
      while (!stop) {
        const victim = uniqueSchema('gw_churn');
        await churn.query(`create schema ${victim}; create table ${victim}.t (id serial primary key, v text); create table ${victim}.u (id int)`);
        await churn.query(`drop schema ${victim} cascade`);
        dropped++;
      }
    })();
    try {
      for (let i = 0; i < 12; i++) {
        const schema = uniqueSchema('gw_shared');
        made.push(schema);
        // One attempt only: a race with the churn would fail it rather than be retried away.
        const db = await openDatabase({ url: postgresUrl(), schema, migrate: false, poolSize: 1 });
        try {
          await migrateToLatest(db as Kysely<unknown>, schema, 1);
        } finally {
          await db.destroy();
        }
      }
    } finally {
      stop = true;
      await churning;
      await churn.end();
    }
    assert.ok(dropped > 0, 'schemas were dropped while the migrations ran');
  });
});
