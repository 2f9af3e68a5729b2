/**
 * The leader's fencing epoch (leader/fence.ts), on real PostgreSQL: a unit of work started as the
 * leader of a term that has ended is refused and writes nothing; one of the current term commits;
 * and a new term's epoch bump waits for the previous term's unit in flight, so that unit either
 * commits before the new term begins or not at all.
 */
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import { dropSchema, postgresUrl, uniqueSchema, until } from '@gridwork/testkit';
import pg from 'pg';
import { asLeader, Deposed } from '../src/leader/fence.ts';
import { Units } from '../src/core/unit-of-work.ts';
import { type Db, openDatabase } from '../src/store/database.ts';

describe('leader fencing epoch (PostgreSQL)', { timeout: 60_000 }, () => {
  const schema = uniqueSchema('gw_fence');
  let db: Db;
  let units: Units;
  /** For looking at locks; `bumper` is the other connection, the one that waits. */
  let client: pg.Client;
  let bumper: pg.Client;

  const positionOf = async (name: string) => {
    const row = await db.selectFrom('bus_positions').select('position').where('subscriber', '=', name).executeTakeFirst();
    return row ? BigInt(row.position) : undefined;
  };
  const write = (name: string, gate?: Promise<void>) =>
    units.run(async ({ trx }) => {
      await trx.insertInto('bus_positions').values({ subscriber: name, position: 1n }).execute();
      await gate;
    });
  const bumpEpoch = () => bumper.query<{ epoch: string }>(`update "${schema}".coordinator_leader set epoch = epoch + 1 where id = 1 returning epoch`);

  before(async () => {
    db = await openDatabase({ url: postgresUrl(), schema });
    units = new Units(db, { publish() {} });
    await db.insertInto('coordinator_leader').values({ id: 1, epoch: 7n, holder: 'test', since: new Date() }).execute();
    client = new pg.Client({ connectionString: postgresUrl() });
    await client.connect();
    bumper = new pg.Client({ connectionString: postgresUrl() });
    await bumper.connect();
  });

  after(async () => {
    await client?.end();
    await bumper?.end();
    await db?.destroy();
    await dropSchema(schema);
  });

  test('a term that has ended writes nothing; the current one commits; work outside any term is not fenced', async () => {
    await assert.rejects(
      asLeader(6n, () => write('old-term')),
      (err: unknown) => err instanceof Deposed && err.epoch === 6n && err.current === 7n,
    );
    assert.equal(await positionOf('old-term'), undefined, 'nothing of the refused unit was written');
    await asLeader(7n, () => write('this-term'));
    assert.equal(await positionOf('this-term'), 1n);
    await write('no-term');
    assert.equal(await positionOf('no-term'), 1n);
  });

  test('the next term begins only after the last term’s unit in flight has committed, and refuses its later ones', async () => {
    let open!: () => void;
    const gate = new Promise<void>((resolve) => {
      open = resolve;
    });
    const inFlight = asLeader(7n, () => write('in-flight', gate));
    // The unit holds the office's row (shared) once its first write is in: the bump must wait on it.
    await until(() => positionOfUncommitted(), (n) => n > 0, { what: 'the fenced unit to start writing' });
    const bump = bumpEpoch();
    await until(
      async () => (await client.query<{ n: string }>(`select count(*)::text as n from pg_stat_activity where wait_event_type = 'Lock' and query like 'update "${schema}".coordinator_leader%'`)).rows[0]?.n,
      (n) => n === '1',
      { what: 'the epoch bump to wait for the lock' },
    );
    open();
    await inFlight;
    const { rows } = await bump;
    assert.equal(BigInt(rows[0]?.epoch ?? 0), 8n, 'the bump went through after the unit committed');
    assert.equal(await positionOf('in-flight'), 1n, 'the unit of the old term committed before the new term began');
    await assert.rejects(asLeader(7n, () => write('too-late')), Deposed);
    assert.equal(await positionOf('too-late'), undefined);
  });

  /** Rows the in-flight unit has inserted, seen through the lock it holds (a waiting insert would block, a count does not). */
  async function positionOfUncommitted(): Promise<number> {
    const { rows } = await client.query<{ n: string }>(
      `select count(*)::text as n from pg_locks l join pg_class c on c.oid = l.relation join pg_namespace s on s.oid = c.relnamespace where s.nspname = '${schema}' and c.relname = 'bus_positions' and l.mode = 'RowExclusiveLock'`,
    );
    return Number(rows[0]?.n ?? 0);
  }
});
