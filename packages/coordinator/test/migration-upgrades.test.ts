/**
 * Data outlives code: a database created at any earlier schema version and migrated to the
 * latest must have exactly the schema of a fresh one (tables, columns, types, defaults,
 * constraints, indexes). Also replays the one migration edited after it was committed (0009
 * gained two indexes later): a database migrated with 0009 as first committed is repaired.
 * Real PostgreSQL, one schema per database.
 */
import assert from 'node:assert/strict';
import { after, describe, test } from 'node:test';
import { postgresUrl, uniqueSchema } from '@gridwork/testkit';
import { type Kysely, sql } from 'kysely';
import { type Db, openDatabase } from '../src/store/database.ts';
import { MIGRATION_NAMES, migrateTo, migrateToLatest } from '../src/store/migrations.ts';

/** Everything about a schema that migrations decide, as sorted text lines. */
async function describeSchema(db: Db, schema: string): Promise<string[]> {
  const columns = await sql<{ line: string }>`
    select table_name || '.' || column_name || ' ' || data_type || ' null=' || is_nullable || ' default=' || coalesce(column_default, '') as line
    from information_schema.columns where table_schema = ${schema}`.execute(db);
  const indexes = await sql<{ line: string }>`
    select tablename || ' ' || replace(indexdef, ${`${schema}.`}, '') as line from pg_indexes where schemaname = ${schema}`.execute(db);
  const constraints = await sql<{ line: string }>`
    select c.conrelid::regclass::text || ' ' || c.conname || ' ' || pg_get_constraintdef(c.oid) as line
    from pg_constraint c join pg_namespace n on n.oid = c.connamespace where n.nspname = ${schema}`.execute(db);
  return [...columns.rows, ...indexes.rows, ...constraints.rows].map((r) => r.line.replaceAll(`${schema}.`, '')).sort();
}

describe('schema upgrades from every earlier version (PostgreSQL)', { timeout: 300_000 }, () => {
  const opened: { db: Db; schema: string }[] = [];
  const open = async (migrate: boolean) => {
    const schema = uniqueSchema('gw_mig');
    const db = await openDatabase({ url: postgresUrl(), schema, migrate, poolSize: 2 });
    opened.push({ db, schema });
    return { db, schema };
  };
  after(async () => {
    for (const { db, schema } of opened) {
      await sql.raw(`drop schema if exists ${schema} cascade`).execute(db);
      await db.destroy();
    }
  });

  test('each version migrated to the latest equals a fresh database', async () => {
    const fresh = await open(true);
    const expected = await describeSchema(fresh.db, fresh.schema);
    assert.ok(expected.some((l) => l.includes('verifications_open')), 'the fresh schema has the indexes 0009 gained late');
    for (const version of MIGRATION_NAMES.slice(0, -1)) {
      const old = await open(false);
      await migrateTo(old.db as Kysely<unknown>, version, old.schema);
      // Data written by the older version survives the upgrade.
      await old.db.insertInto('accounts').values({ id: `written-at-${version}` }).execute();
      await migrateToLatest(old.db as Kysely<unknown>, old.schema);
      assert.deepEqual(await describeSchema(old.db, old.schema), expected, `upgraded from ${version}`);
      const kept = await old.db.selectFrom('accounts').select('id').where('id', '=', `written-at-${version}`).executeTakeFirst();
      assert.equal(kept?.id, `written-at-${version}`);
    }
  });

  test('a database migrated with 0009 as first committed (before its edit) gets the missing indexes', async () => {
    const old = await open(false);
    await migrateTo(old.db as Kysely<unknown>, '0008_clusters', old.schema);
    // 0009 as it was first committed: two lease indexes, recorded as applied.
    await sql.raw('create index leases_job on leases (job_id)').execute(old.db);
    await sql.raw(`create index leases_lost_task on leases (task_id) where state = 'lost'`).execute(old.db);
    await sql`insert into kysely_migration (name, timestamp) values ('0009_lease_lookups', ${new Date().toISOString()})`.execute(old.db);
    const before = await describeSchema(old.db, old.schema);
    assert.ok(!before.some((l) => l.includes('verifications_open')), 'the pre-edit 0009 lacks them');
    await migrateToLatest(old.db as Kysely<unknown>, old.schema);
    const fresh = await open(true);
    assert.deepEqual(await describeSchema(old.db, old.schema), await describeSchema(fresh.db, fresh.schema));
  });
});
