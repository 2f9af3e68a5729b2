/**
 * Retention of `events` and `task_logs` (lifecycle/retention.ts) in a real network: a coordinator
 * (PGlite, then PostgreSQL) with a ten-minute window, one provider running tasks in the sandbox,
 * the SDK. The sweep is called by the test (with a clock moved past the window), never waited for.
 * Old events and logs of ended jobs go; a live job keeps everything and its streams replay from
 * the start; nothing a durable subscriber has not passed goes (one with no stored position keeps
 * everything); the newest event stays; the bus, the ledger and job views carry on.
 */
import assert from 'node:assert/strict';
import { dirname, join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { fileURLToPath } from 'node:url';
import { internalsOf, verifyLedger } from '@gridwork/coordinator/internal';
import type { GridworkClient, JobSpec, JobView, LogEntry } from '@gridwork/sdk';
import { postgresUrl, silentLogger, type TestNetwork, startTestNetwork, tempDir, uniqueSchema, until } from '@gridwork/testkit';
import { sql } from 'kysely';
import pg from 'pg';
import { InProcessBus } from '../src/bus/in-process-bus.ts';
import { lastPosition } from '../src/core/event-log.ts';
import { SubscriberRoster } from '../src/bus/subscriber-roster.ts';
import { resolveRetentionOptions, Retention, retentionOf, type SweepResult } from '../src/lifecycle/retention.ts';
import { type Db, openDatabase } from '../src/store/database.ts';

const fixturesDir = join(dirname(fileURLToPath(import.meta.url)), 'fixtures');
const WAIT_MS = 60_000;
const WINDOW_MS = 10 * 60_000;
const TERMINAL = ['succeeded', 'failed', 'cancelled'];

function spec(name: string, args: string[]): JobSpec {
  return {
    version: 1,
    name,
    kind: 'batch',
    runtime: { kind: 'bundle', path: './tasks', command: ['node', 'task.mjs', ...args] },
    resources: { cpu: 1, memoryGiB: 1 },
    price: { maxPerHour: '0.50', budget: '1.00' },
  };
}

/** A clock past the window: everything written so far is older than it. */
const pastTheWindow = () => new Date(Date.now() + 2 * WINDOW_MS);

interface EventRow {
  position: bigint;
  type: string;
  job_id: string | null;
  at: Date;
}

async function allEvents(db: Db): Promise<EventRow[]> {
  const rows = await db.selectFrom('events').select(['position', 'type', 'job_id', 'at']).orderBy('position').execute();
  return rows.map((r) => ({ ...r, position: BigInt(r.position) }));
}

async function logCount(db: Db, jobId: string): Promise<number> {
  const r = await db
    .selectFrom('task_logs')
    .select((eb) => eb.fn.countAll<string>().as('n'))
    .where('job_id', '=', jobId)
    .executeTakeFirstOrThrow();
  return Number(r.n);
}

async function head(db: Db): Promise<bigint> {
  return lastPosition(db);
}

async function allLogs(client: GridworkClient, jobId: string): Promise<LogEntry[]> {
  const out: LogEntry[] = [];
  for await (const e of client.logs(jobId)) out.push(e);
  return out;
}

/** Jobs that ended before `cutoff`, by id. */
async function endedBefore(db: Db, cutoff: Date): Promise<Set<string>> {
  const rows = await db.selectFrom('jobs').select('id').where('state', 'in', TERMINAL).where('updated_at', '<', cutoff).execute();
  return new Set(rows.map((r) => r.id));
}

/**
 * What a sweep must have done to the rows that existed before it: every event the rule allows is
 * gone (at or below `passed`; of no job and older than the window, or of a job that ended before
 * it), every other one is still there, and so is the newest.
 */
async function assertSwept(db: Db, beforeRows: readonly EventRow[], result: SweepResult, now: Date, ended: Set<string>): Promise<void> {
  const cutoff = new Date(now.getTime() - WINDOW_MS);
  const passed = result.passed ?? 0n;
  const eligible = (e: EventRow) => e.position <= passed && (e.job_id === null ? e.at < cutoff : ended.has(e.job_id));
  const afterRows = await allEvents(db);
  const remaining = new Set(afterRows.map((e) => e.position));
  assert.deepEqual(
    afterRows.filter((e) => beforeRows.some((b) => b.position === e.position) && eligible(e)).map((e) => `${e.position} ${e.type}`),
    [],
    'no event the rule allows to delete is left',
  );
  assert.deepEqual(
    beforeRows.filter((e) => !eligible(e) && !remaining.has(e.position)).map((e) => `${e.position} ${e.type} ${e.job_id}`),
    [],
    'every event the rule keeps is still there',
  );
  // (It may also have deleted events written since `beforeRows` was read.)
  assert.ok(result.events >= beforeRows.filter(eligible).length, 'the sweep counts what it deleted');
  assert.ok(remaining.has(await head(db)), 'the newest event is kept');
}

for (const store of ['pglite', 'postgres'] as const) {
  describe(`retention of events and task logs (${store})`, { timeout: 300_000 }, () => {
    let net: TestNetwork;
    let client: GridworkClient;
    let db: Db;
    let retention: Retention;
    let roster: SubscriberRoster;
    let live: JobView;
    let done: JobView;
    let doneView: JobView;
    let scratch: { path: string; remove: () => Promise<void> };

    before(async () => {
      scratch = await tempDir('gridwork-retention-test-');
      net = await startTestNetwork({ store, providers: 1, coordinator: { retention: { eventsMs: WINDOW_MS, taskLogsMs: WINDOW_MS } } });
      client = await net.fundedClient('100');
      const internals = internalsOf(net.coordinator);
      db = internals.db;
      assert.ok(internals.bus instanceof SubscriberRoster, 'every subscriber registers through the roster');
      roster = internals.bus;
      retention = retentionOf(net.coordinator);
    });

    after(async () => {
      await net?.close();
      await scratch?.remove();
      if (store === 'postgres' && net) {
        const pgClient = new pg.Client({ connectionString: postgresUrl() });
        await pgClient.connect();
        try {
          await pgClient.query(`drop schema if exists "${net.coordinator.config.databaseSchema}" cascade`);
        } finally {
          await pgClient.end();
        }
      }
    });

    /** Resolves once every durable subscriber has stored a position at or past `position`. */
    async function durablePassed(position: bigint): Promise<void> {
      const names = roster.durable();
      await until(
        () => db.selectFrom('bus_positions').select(['subscriber', 'position']).where('subscriber', 'in', names).execute(),
        (rows) => rows.length === names.length && rows.every((r) => BigInt(r.position) >= position),
        { what: `durable subscribers (${names.join(', ')}) past ${position}` },
      );
    }

    test('the option is resolved once, with its defaults', () => {
      assert.deepEqual(net.coordinator.config.retention, { eventsMs: WINDOW_MS, taskLogsMs: WINDOW_MS, intervalMs: 600_000, batchRows: 10_000 });
      assert.deepEqual(roster.durable().sort(), ['audit-counts', 'reputation', 'verification']);
    });

    test('inside the window nothing goes', async () => {
      live = await client.submit(spec('live', ['hang']), { baseDir: fixturesDir });
      await until(
        () => allLogs(client, live.id),
        (logs) => logs.some((e) => e.data.includes('fixture: task 0 started')),
        { what: 'the live task to print its first line' },
      );
      done = await client.submit(spec('done', ['work', '100']), { baseDir: fixturesDir });
      doneView = await client.wait(done.id, { until: 'end', signal: AbortSignal.timeout(WAIT_MS) });
      assert.equal(doneView.state, 'succeeded', doneView.error ?? '');
      const ofDone = (await allEvents(db)).filter((e) => e.job_id === done.id);
      await durablePassed(ofDone.at(-1)?.position ?? 0n);

      const beforeRows = await allEvents(db);
      const logs = await logCount(db, done.id);
      assert.ok(logs > 0);
      const result = await retention.sweep();
      assert.equal(result.events, 0);
      assert.equal(result.taskLogs, 0);
      const afterRows = await allEvents(db);
      assert.deepEqual(
        beforeRows.filter((b) => !afterRows.some((a) => a.position === b.position)),
        [],
      );
      assert.equal(await logCount(db, done.id), logs);
    });

    test('past the window: events and logs of the ended job and old events of no job go; the live job keeps everything', async () => {
      const beforeRows = await allEvents(db);
      const liveEvents = beforeRows.filter((e) => e.job_id === live.id).map((e) => e.position);
      const liveLogs = await logCount(db, live.id);
      const doneLogs = await logCount(db, done.id);
      const ledgerBefore = await verifyLedger(db);
      const viewBefore = await client.get(done.id);
      assert.equal(viewBefore.state, 'succeeded');
      assert.equal(ledgerBefore.total, 0n);

      const now = pastTheWindow();
      const ended = await endedBefore(db, new Date(now.getTime() - WINDOW_MS));
      assert.ok(ended.has(done.id) && !ended.has(live.id));
      const result = await retention.sweep(now);
      assert.ok(
        result.passed !== null && result.passed >= (beforeRows.filter((e) => e.job_id === done.id).at(-1)?.position ?? 0n),
        'the subscribers had passed the ended job',
      );
      assert.equal(result.taskLogs, doneLogs);
      await assertSwept(db, beforeRows, result, now, ended);
      assert.ok(result.events > 0);

      const afterRows = await allEvents(db);
      assert.deepEqual(
        afterRows.filter((e) => e.job_id === done.id),
        [],
        'the ended job has no event left',
      );
      assert.deepEqual(
        afterRows.filter((e) => e.job_id === live.id).map((e) => e.position),
        liveEvents,
        'the live job keeps every event',
      );
      assert.equal(await logCount(db, done.id), 0);
      assert.equal(await logCount(db, live.id), liveLogs, 'the live job keeps every line');

      // What users see of the ended job, and the money, are not the event log's.
      assert.deepEqual(await client.get(done.id), viewBefore);
      assert.ok((await client.list()).some((j) => j.id === done.id && j.state === 'succeeded'));
      const files = await client.results(done.id, join(scratch.path, 'done'));
      assert.equal(files.length, 1);
      assert.deepEqual(await allLogs(client, done.id), [], 'its log is gone');
      const ledger = await verifyLedger(db);
      assert.equal(ledger.total, 0n);
      assert.deepEqual(ledger.mismatched, []);
      assert.deepEqual(ledger.negative, []);
      assert.ok(ledger.transactions >= ledgerBefore.transactions);
    });

    test("the live job's streams replay from the start, and the bus carries on: the live job ends, a new one runs", async () => {
      const logs = await allLogs(client, live.id);
      assert.equal(logs.length, await logCount(db, live.id), 'its log replays from the first line');
      assert.ok(logs.some((e) => e.data.includes('fixture: task 0 started')));
      const snapshots = client.watch(live.id, { signal: AbortSignal.timeout(WAIT_MS) });
      const first = await snapshots.next();
      assert.equal(first.done, false);
      assert.equal(first.value?.state, 'running');
      assert.equal(first.value?.tasks[0]?.state, 'running');
      await client.cancel(live.id);
      let last: JobView | undefined;
      for await (const j of snapshots) last = j;
      assert.equal(last?.state, 'cancelled', 'the stream saw the job end (its wake-up came through the bus)');

      const next = await client.submit(spec('next', ['work', '100']), { baseDir: fixturesDir });
      const states: string[] = [];
      for await (const j of client.watch(next.id, { signal: AbortSignal.timeout(WAIT_MS) })) states.push(j.state);
      assert.equal(states.at(-1), 'succeeded', states.join(' → '));
      assert.ok((await allLogs(client, next.id)).some((e) => e.data.includes('fixture: task 0 finished')));
    });

    test('a durable subscriber that has handled nothing keeps every event; one that lags keeps what it has not passed', async () => {
      const lagging = `lagging-${store}`;
      // Durable, and stopped at once (as on a replica that is down): its stored position stays at 0,
      // where it starts, until this test moves it.
      const off = await roster.subscribe({ name: lagging, durable: true, types: ['job.topped-up'], handle() {} });
      off();
      try {
        const job = await client.submit(spec('after-lag', ['work', '100']), { baseDir: fixturesDir });
        const view = await client.wait(job.id, { until: 'end', signal: AbortSignal.timeout(WAIT_MS) });
        assert.equal(view.state, 'succeeded', view.error ?? '');
        const ofJob = (await allEvents(db)).filter((e) => e.job_id === job.id);
        const real = roster.durable().filter((n) => n !== lagging);
        await until(
          () => db.selectFrom('bus_positions').select('position').where('subscriber', 'in', real).execute(),
          (rows) => rows.length === real.length && rows.every((r) => BigInt(r.position) >= (ofJob.at(-1)?.position ?? 0n)),
          { what: 'the real durable subscribers past the job' },
        );
        const logs = await logCount(db, job.id);
        assert.ok(logs > 0);

        let now = pastTheWindow();
        let beforeRows = await allEvents(db);
        let result = await retention.sweep(now);
        assert.equal(result.passed, 0n, 'a durable subscriber at position 0 blocks every event');
        assert.equal(result.events, 0);
        assert.equal((await allEvents(db)).length, beforeRows.length);
        assert.equal(await logCount(db, job.id), 0, 'logs of ended jobs do not wait for subscribers');

        // It stored a position halfway through the job's events: what is above it stays.
        const middle = ofJob[Math.floor(ofJob.length / 2)]?.position ?? 0n;
        await db.updateTable('bus_positions').set({ position: middle }).where('subscriber', '=', lagging).execute();
        now = pastTheWindow();
        beforeRows = await allEvents(db);
        result = await retention.sweep(now);
        assert.equal(result.passed, middle);
        await assertSwept(db, beforeRows, result, now, await endedBefore(db, new Date(now.getTime() - WINDOW_MS)));
        const left = (await allEvents(db)).filter((e) => e.job_id === job.id).map((e) => e.position);
        assert.deepEqual(
          left,
          ofJob.filter((e) => e.position > middle).map((e) => e.position),
          'only the events it has not passed are left',
        );

        // It catches up: the rest goes (all but the newest event).
        const top = await head(db);
        await db.updateTable('bus_positions').set({ position: top }).where('subscriber', '=', lagging).execute();
        now = pastTheWindow();
        beforeRows = await allEvents(db);
        result = await retention.sweep(now);
        await assertSwept(db, beforeRows, result, now, await endedBefore(db, new Date(now.getTime() - WINDOW_MS)));
        const rest = await allEvents(db);
        assert.ok(
          rest.every((e) => e.position > (result.passed ?? 0n)),
          `only events past every subscriber are left: ${rest.map((e) => `${e.position} ${e.type}`).join(', ')}`,
        );
      } finally {
        off();
      }
      // Still a working network.
      const again = await client.submit(spec('again', ['work', '100']), { baseDir: fixturesDir });
      const view = await client.wait(again.id, { until: 'end', signal: AbortSignal.timeout(WAIT_MS) });
      assert.equal(view.state, 'succeeded', view.error ?? '');
    });

    test('a durable subscriber with nothing of its types to handle stores how far it has read, and does not hold retention back', async () => {
      const idle = `idle-${store}`;
      // Durable, for an event nobody emits here: it handles nothing, but passes everything.
      const off = await roster.subscribe({ name: idle, durable: true, types: ['job.topped-up'], handle() {} });
      try {
        const job = await client.submit(spec('while-idle', ['work', '100']), { baseDir: fixturesDir });
        const view = await client.wait(job.id, { until: 'end', signal: AbortSignal.timeout(WAIT_MS) });
        assert.equal(view.state, 'succeeded', view.error ?? '');
        const last = (await allEvents(db)).filter((e) => e.job_id === job.id).at(-1)?.position ?? 0n;
        assert.ok(last > 0n);
        await until(
          () => db.selectFrom('bus_positions').select('position').where('subscriber', '=', idle).executeTakeFirst(),
          (row) => row !== undefined && BigInt(row.position) >= last,
          { what: 'the idle subscriber to store a position past the job' },
        );
      } finally {
        off();
      }
    });
  });
}

const DAY = 24 * 3600_000;

describe('retention options', () => {
  test('defaults: 7 days, swept every 10 minutes, 10,000 rows a statement; nonsense is refused', () => {
    assert.deepEqual(resolveRetentionOptions(), { eventsMs: 7 * DAY, taskLogsMs: 7 * DAY, intervalMs: 600_000, batchRows: 10_000 });
    assert.equal(resolveRetentionOptions({ eventsMs: Number.POSITIVE_INFINITY }).eventsMs, Number.POSITIVE_INFINITY);
    assert.throws(() => resolveRetentionOptions({ eventsMs: -1 }), RangeError);
    assert.throws(() => resolveRetentionOptions({ taskLogsMs: Number.NaN }), RangeError);
    assert.throws(() => resolveRetentionOptions({ intervalMs: 0 }), RangeError);
    assert.throws(() => resolveRetentionOptions({ batchRows: 0.5 }), RangeError);
  });
});

/**
 * The sweep against a store filled by SQL: more ended jobs than one step of the walk takes, more
 * rows than one statement deletes, and a persisted mark that the next sweep starts from.
 */
for (const store of ['pglite', 'postgres'] as const) {
  describe(`the retention sweep in batches (${store})`, { timeout: 120_000 }, () => {
    const schema = uniqueSchema('gw_ret');
    let db: Db;
    const ENDED = 1234;
    const LIVE = 10;
    const OLD_JOBLESS = 2000;

    before(async () => {
      db = store === 'pglite' ? await openDatabase({ dataDir: 'memory://' }) : await openDatabase({ url: postgresUrl(), schema });
      await db.insertInto('accounts').values({ id: 'owner' }).execute();
      // Jobs 1..ENDED ended a month ago, one second apart; LIVE more are running.
      await sql`insert into jobs (id, owner, name, kind, state, spec, created_at, updated_at)
        select 'job-' || g, 'owner', 'n', 'batch', case when g <= ${sql.lit(ENDED)} then 'succeeded' else 'running' end, '{}'::jsonb,
               now() - interval '31 days', now() - interval '30 days' + g * interval '1 second'
        from generate_series(1, ${sql.lit(ENDED + LIVE)}) g`.execute(db);
      // Three events per job, then old events of no job, then two recent ones (the newest last).
      await sql`insert into events (position, type, job_id, data, at)
        select g, 'job.progressed', 'job-' || ((g - 1) / 3 + 1), '{}'::jsonb, now() - interval '30 days'
        from generate_series(1, ${sql.lit(3 * (ENDED + LIVE))}) g`.execute(db);
      const jobEvents = 3 * (ENDED + LIVE);
      await sql`insert into events (position, type, job_id, data, at)
        select g, 'provider.online', null, '{}'::jsonb, case when g > ${sql.lit(jobEvents + OLD_JOBLESS)} then now() else now() - interval '20 days' end
        from generate_series(${sql.lit(jobEvents + 1)}, ${sql.lit(jobEvents + OLD_JOBLESS + 2)}) g`.execute(db);
      await sql`select setval('event_positions', ${sql.lit(jobEvents + OLD_JOBLESS + 2)})`.execute(db);
      await sql`insert into task_logs (job_id, task_idx, lease_id, stream, data, ts)
        select 'job-' || (g / 4 + 1), 0, 'lease', 'stdout', 'line', now() from generate_series(0, ${sql.lit(4 * (ENDED + LIVE) - 1)}) g`.execute(db);
    });

    after(async () => {
      if (store === 'postgres') await sql`drop schema if exists ${sql.id(schema)} cascade`.execute(db);
      await db?.destroy();
    });

    const count = async (table: 'events' | 'task_logs', where: 'live' | 'ended' | 'jobless') => {
      let q = db.selectFrom(table).select((eb) => eb.fn.countAll<string>().as('n'));
      if (where === 'jobless') q = q.where('job_id', 'is', null);
      else
        q = q.where(
          'job_id',
          'in',
          db
            .selectFrom('jobs')
            .select('id')
            .where('state', where === 'live' ? '=' : '<>', 'running'),
        );
      return Number((await q.executeTakeFirstOrThrow()).n);
    };

    test('everything past the window goes, 100 rows a statement, across steps of the walk; the marks remember how far it got', async () => {
      const roster = new SubscriberRoster(new InProcessBus(db, silentLogger()));
      const retention = new Retention({ db, bus: roster, log: silentLogger() }, resolveRetentionOptions({ batchRows: 100 }));
      const first = await retention.sweep();
      assert.equal(first.taskLogs, 4 * ENDED);
      assert.equal(first.events, 3 * ENDED + OLD_JOBLESS);
      assert.equal(first.passed, BigInt(3 * (ENDED + LIVE) + OLD_JOBLESS + 1), 'no durable subscriber: everything but the newest event');
      assert.deepEqual([await count('events', 'ended'), await count('task_logs', 'ended'), await count('events', 'jobless')], [0, 0, 2]);
      assert.deepEqual([await count('events', 'live'), await count('task_logs', 'live')], [3 * LIVE, 4 * LIVE], 'live jobs keep everything');
      const marks = await db.selectFrom('retention_marks').select(['name', 'job_id']).orderBy('name').execute();
      assert.deepEqual(marks, [
        { name: 'events', job_id: `job-${ENDED}` },
        { name: 'task_logs', job_id: `job-${ENDED}` },
      ]);

      const second = await retention.sweep();
      assert.deepEqual([second.events, second.taskLogs], [0, 0]);

      // A live job ends (eight days ago: past the window): its rows go at the next sweep, from the mark on.
      await db
        .updateTable('jobs')
        .set({ state: 'failed', updated_at: new Date(Date.now() - 8 * DAY) })
        .where('id', '=', `job-${ENDED + 1}`)
        .execute();
      const third = await retention.sweep();
      assert.deepEqual([third.events, third.taskLogs], [3, 4]);
      assert.deepEqual([await count('events', 'live'), await count('task_logs', 'live')], [3 * (LIVE - 1), 4 * (LIVE - 1)]);

      // A durable subscriber that never stored a position keeps every event (not the logs).
      await roster.subscribe({ name: 'never-stored', durable: true, types: ['job.topped-up'], handle() {} });
      await db
        .updateTable('jobs')
        .set({ state: 'cancelled', updated_at: new Date(Date.now() - 8 * DAY) })
        .where('id', '=', `job-${ENDED + 2}`)
        .execute();
      const blocked = await retention.sweep();
      assert.deepEqual([blocked.events, blocked.taskLogs, blocked.passed], [0, 4, 0n]);
      await roster.close();

      retention.stop();
      assert.deepEqual(await retention.sweep(), { events: 0, taskLogs: 0, passed: null }, 'a stopped retention does nothing');
    });
  });
}
