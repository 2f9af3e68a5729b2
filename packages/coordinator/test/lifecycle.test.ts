/**
 * The lifecycle module against real databases: capacity guarded in the database when two
 * schedulers (two connections, as two coordinator replicas) place at once; the event log and
 * the bus (positions, atomicity with the change, durable subscribers resuming after a
 * restart); every state transition allowed or refused by the tables; fair share across
 * requesters in the scheduler.
 */
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { GridworkError, type JobSpec } from '@gridwork/protocol';
import { generateIdentity } from '@gridwork/protocol/node';
import { postgresUrl, silentLogger, tempDir, uniqueSchema, until } from '@gridwork/testkit';
import fc from 'fast-check';
import { sql } from 'kysely';
import pg from 'pg';
import { InProcessBus } from '../src/bus/in-process-bus.ts';
import { lastPosition } from '../src/core/event-log.ts';
import { jobOf, type StoredEvent } from '../src/core/events.ts';
import { Lifecycle } from '../src/lifecycle/lifecycle.ts';
import { canTransition, countTasks, deriveJobState, JOB_TRANSITIONS, LEASE_TRANSITIONS, TASK_TRANSITIONS } from '../src/core/state-machine.ts';
import { Units } from '../src/core/unit-of-work.ts';
import { available, post, WORLD } from '../src/ledger/ledger.ts';
import { resolveEconomics } from '../src/ledger/lease-economics.ts';
import { Auctions } from '../src/market/auctions.ts';
import { Market } from '../src/market/market.ts';
import { Scheduler } from '../src/scheduler/scheduler.ts';
import { resolveVerification } from '../src/verify/verification-policy.ts';
import { type Db, openDatabase } from '../src/store/database.ts';
import { insertProviderRow } from './fixtures/provider-row.ts';

const economics = resolveEconomics({ meteringIntervalMs: 1000 });
const log = silentLogger();

function spec(overrides: Partial<JobSpec> = {}): JobSpec {
  return {
    version: 1,
    name: 'job',
    kind: 'batch',
    runtime: { kind: 'bundle', path: '.', command: ['true'] },
    resources: { cpu: 1, memoryGiB: 1 },
    price: { maxPerHour: '1', budget: '10' },
    ...overrides,
  } as JobSpec;
}

/** A bus that records what it is handed, for tests that look at events directly. */
class Recorder {
  events: StoredEvent[] = [];
  publish(events: readonly StoredEvent[]) {
    this.events.push(...events);
  }
}

async function fund(db: Db, account: string, credits: bigint): Promise<void> {
  await db
    .insertInto('accounts')
    .values({ id: account })
    .onConflict((oc) => oc.doNothing())
    .execute();
  await db.transaction().execute((trx) =>
    post(trx, {
      kind: 'deposit',
      key: `fund:${account}:${randomBytes(4).toString('hex')}`,
      postings: [
        { account: WORLD, amount: -credits },
        { account: available(account), amount: credits },
      ],
    }),
  );
}

async function addProvider(db: Db, units: Units, lifecycle: Lifecycle, opts: { slots: number; cores: number; gpus?: number }): Promise<string> {
  const id = generateIdentity().publicKey;
  const gpus = Array.from({ length: opts.gpus ?? 0 }, (_, i) => ({ index: i, uuid: `GPU-${i}`, model: 'rtx-4090', vramGiB: 24 }));
  await insertProviderRow(db, id, {
    name: `p-${id.slice(0, 6)}`,
    slots: opts.slots,
    hardware: JSON.stringify({ cpu: { model: 'x', cores: opts.cores }, memoryGiB: 64, diskGiB: 100, gpus }),
    attributes: JSON.stringify({ region: 'eu' }),
    instance: 'instance-1',
    asks: JSON.stringify({ cpuCoreHour: '0.01', memoryGiBHour: '0.001', gpuHour: { 'rtx-4090': '0.5' } }),
    benchmarks: JSON.stringify({ cpuMopsPerCore: 100, gpu: { 'rtx-4090': 1 } }),
  });
  await units.run((uow) => lifecycle.declareCapacity(uow, id, { slots: opts.slots, cpuMilli: opts.cores * 1000, memMilli: 64_000 }));
  return id;
}

async function submit(units: Units, lifecycle: Lifecycle, owner: string, s: JobSpec, tasks: number): Promise<string[]> {
  const { jobId } = await units.run((uow) =>
    lifecycle.submit(uow, {
      owner,
      spec: s,
      bundleManifest: null,
      budget: 10_000_000n,
      maxPerHour: 1_000_000n,
      taskInputs: Array.from({ length: tasks }, () => []),
      blobs: new Map(),
      requestDigest: randomBytes(8).toString('hex'),
    }),
  );
  return [jobId];
}

for (const store of ['pglite', 'postgres'] as const) {
  describe(`lifecycle (${store})`, () => {
    let db: Db;
    let dir: { path: string; remove: () => Promise<void> };
    const schema = uniqueSchema('gw_lc');
    const extra: Db[] = [];

    const open = () => (store === 'pglite' ? openDatabase({ dataDir: join(dir.path, 'db') }) : openDatabase({ url: postgresUrl(), schema }));

    before(async () => {
      dir = await tempDir();
      db = await open();
    });
    after(async () => {
      for (const d of extra) await d.destroy();
      if (store === 'postgres') await sql`drop schema if exists ${sql.id(schema)} cascade`.execute(db);
      await db.destroy();
      await dir.remove();
    });

    it('a job moves through each state once: placed and started mark it running once; with no audit window its last result ends it once', async () => {
      const rec = new Recorder();
      const units = new Units(db, rec);
      // Results confirmed at once (audit window 0): the confirmation ends the job inside the lease's end.
      const lifecycle = new Lifecycle(economics, resolveVerification({ windowMs: 0, probationTasks: 0, minAuditRate: 0, maxAuditRate: 0, canaryRate: 0 }));
      const owner = generateIdentity().publicKey;
      await fund(db, owner, 100_000_000n);
      const provider = await addProvider(db, units, lifecycle, { slots: 1, cores: 8 });
      const [jobId] = await submit(units, lifecycle, owner, spec(), 1);
      const task = await db
        .selectFrom('tasks')
        .select('id')
        .where('job_id', '=', jobId as string)
        .executeTakeFirstOrThrow();
      const placed = await units.run((uow) => lifecycle.place(uow, { taskId: task.id, providerId: provider, pricePerHour: 100_000n, gpus: [] }));
      assert.equal(placed.status, 'placed');
      const leaseId = (placed as { leaseId: string }).leaseId;
      await units.run(async (uow) => lifecycle.start(uow, await lifecycle.leaseOf(uow, provider, leaseId)));
      await units.run(async (uow) => {
        await lifecycle.finish(uow, await lifecycle.leaseOf(uow, provider, leaseId), { kind: 'completed', durationMs: 10, outputs: [] });
      });
      const jobEvents = rec.events
        .filter((e) => e.type.startsWith('job.') && jobOf(e) === jobId)
        .map((e) => (e.type === 'job.progressed' ? `${e.from}->${e.to}` : e.type === 'job.ended' ? `ended:${e.state}` : e.type));
      assert.deepEqual(jobEvents, ['job.submitted', 'pending->running', 'ended:succeeded']);
      const job = await db
        .selectFrom('jobs')
        .select('state')
        .where('id', '=', jobId as string)
        .executeTakeFirstOrThrow();
      assert.equal(job.state, 'succeeded');
    });

    it('events commit with their change, at increasing positions; a rolled-back change leaves none', async () => {
      const rec = new Recorder();
      const units = new Units(db, rec);
      const lifecycle = new Lifecycle(economics);
      const owner = generateIdentity().publicKey;
      await fund(db, owner, 100_000_000n);
      const [jobId] = await submit(units, lifecycle, owner, spec(), 2);
      assert.deepEqual(
        rec.events.map((e) => e.type),
        ['job.submitted'],
      );
      const stored = await db
        .selectFrom('events')
        .selectAll()
        .where('job_id', '=', jobId as string)
        .execute();
      assert.equal(stored.length, 1);
      assert.equal(BigInt(stored[0]?.position ?? 0), rec.events[0]?.position);
      const before = rec.events.length;
      const eventCount = async () =>
        Number(
          (
            await db
              .selectFrom('events')
              .select((eb) => eb.fn.countAll<string>().as('n'))
              .executeTakeFirstOrThrow()
          ).n,
        );
      const storedBefore = await eventCount();
      await assert.rejects(
        units.run(async (uow) => {
          await lifecycle.cancel(uow, jobId as string, 'test');
          throw new Error('boom');
        }),
        /boom/,
      );
      assert.equal(rec.events.length, before, 'nothing published from a rolled-back unit of work');
      assert.equal(await eventCount(), storedBefore, 'no event of the rolled-back unit of work is stored');
      const job = await db
        .selectFrom('jobs')
        .select('state')
        .where('id', '=', jobId as string)
        .executeTakeFirstOrThrow();
      assert.equal(job.state, 'pending', 'the cancel rolled back with its events');
      await units.run((uow) => lifecycle.cancel(uow, jobId as string, 'test'));
      const types = rec.events.slice(before).map((e) => e.type);
      assert.deepEqual(types, ['task.ended', 'task.ended', 'job.ended']);
      const positions = rec.events.map((e) => e.position);
      for (let i = 1; i < positions.length; i++) assert.equal(positions[i], (positions[i - 1] as bigint) + 1n, 'positions are contiguous');
    });

    it('two schedulers racing for one slot, or one GPU: exactly one placement wins', async () => {
      // Two connections to one database, as two coordinator replicas would have.
      const db2 = await (store === 'pglite' ? Promise.resolve(db) : open());
      if (db2 !== db) extra.push(db2);
      const rec = new Recorder();
      const a = { units: new Units(db, rec), lifecycle: new Lifecycle(economics) };
      const b = { units: new Units(db2, rec), lifecycle: new Lifecycle(economics) };
      const owner = generateIdentity().publicKey;
      await fund(db, owner, 1_000_000_000n);

      for (const shape of ['slot', 'gpu'] as const) {
        for (let round = 0; round < 5; round++) {
          const provider =
            shape === 'slot'
              ? await addProvider(db, a.units, a.lifecycle, { slots: 1, cores: 8 })
              : await addProvider(db, a.units, a.lifecycle, { slots: 8, cores: 8, gpus: 1 });
          const s = shape === 'gpu' ? spec({ resources: { cpu: 1, memoryGiB: 1, gpu: { count: 1 } } }) : spec();
          await submit(a.units, a.lifecycle, owner, s, 2);
          const tasks = await db.selectFrom('tasks').select('id').where('state', '=', 'queued').orderBy('queued_at', 'desc').limit(2).execute();
          const gpus = shape === 'gpu' ? [0] : [];
          const results = await Promise.all(
            [a, b].map((r, i) =>
              r.units.run((uow) => r.lifecycle.place(uow, { taskId: tasks[i]?.id as string, providerId: provider, pricePerHour: 100_000n, gpus })),
            ),
          );
          const statuses = results.map((r) => r.status).sort();
          assert.deepEqual(statuses, ['capacity-taken', 'placed'], `${shape} round ${round}: ${statuses.join(', ')}`);
          const cap = await db.selectFrom('provider_capacity').selectAll().where('provider_id', '=', provider).executeTakeFirstOrThrow();
          assert.ok(cap.used_slots <= cap.slots);
          const leases = await db.selectFrom('leases').select('id').where('provider_id', '=', provider).execute();
          assert.equal(leases.length, 1, 'the refused placement left no lease behind');
        }
      }
    });

    it('a durable subscriber resumes from its stored position after a restart, exactly once', async () => {
      const seen: bigint[] = [];
      const name = `durable-${randomBytes(3).toString('hex')}`;
      const startBus = async () => {
        const bus = new InProcessBus(db, log);
        const units = new Units(db, bus);
        await bus.start(units);
        await bus.subscribe({
          name,
          durable: true,
          types: ['job.submitted'],
          async handle(events, uow) {
            assert.ok(uow, 'durable subscribers get the unit of work their position commits with');
            for (const e of events) seen.push(e.position);
          },
        });
        return { bus, units };
      };
      const lifecycle = new Lifecycle(economics);
      const owner = generateIdentity().publicKey;
      await fund(db, owner, 100_000_000n);

      let { bus, units } = await startBus();
      await submit(units, lifecycle, owner, spec(), 1);
      await bus.reached(name, bus.head());
      const firstCount = seen.length;
      assert.ok(firstCount >= 1);
      await bus.close();

      // While it is down, two more jobs are submitted (by "another replica").
      const offline = new Units(db, new Recorder());
      await submit(offline, lifecycle, owner, spec(), 1);
      await submit(offline, lifecycle, owner, spec(), 1);

      ({ bus, units } = await startBus());
      await bus.reached(name, await lastPosition(db));
      await bus.close();
      assert.equal(seen.length, firstCount + 2, 'the two missed events were delivered after the restart, none twice');
      assert.equal(new Set(seen).size, seen.length);
    });

    /** A bus and lifecycle on this database, with everything queued before cancelled: a scheduling pass sees only what the test adds. */
    const emptyQueue = async () => {
      const bus = new InProcessBus(db, log);
      const units = new Units(db, bus);
      await bus.start(units);
      const lifecycle = new Lifecycle(economics);
      const open = await db.selectFrom('jobs').select('id').where('state', 'in', ['pending', 'matching', 'running']).execute();
      for (const j of open) await units.run((uow) => lifecycle.cancel(uow, j.id, 'test reset'));
      return { bus, units, lifecycle };
    };

    /** A scheduler whose market holds `provider` alone: the other tests' providers stay out of it. */
    const schedulerOf = async (q: Awaited<ReturnType<typeof emptyQueue>>, provider: string, epoch?: () => bigint | null) => {
      const market = new Market(db);
      await market.load();
      await market.setConnected(provider, true, Date.now());
      const auctions = new Auctions({ log, announce: () => 0, closed: () => {} });
      return new Scheduler({ db, units: q.units, lifecycle: q.lifecycle, log, market, auctions, ...(epoch ? { epoch } : {}) });
    };

    it('fair share: a one-task job queued behind a 40-task job of another account is placed in the first pass', async () => {
      const q = await emptyQueue();
      const { bus, units, lifecycle } = q;
      const big = generateIdentity().publicKey;
      const small = generateIdentity().publicKey;
      await fund(db, big, 1_000_000_000n);
      await fund(db, small, 1_000_000_000n);
      const provider = await addProvider(db, units, lifecycle, { slots: 4, cores: 4 });
      const [bigJob] = await submit(units, lifecycle, big, spec({ name: 'big' }), 40);
      const [smallJob] = await submit(units, lifecycle, small, spec({ name: 'small' }), 1);
      const scheduler = await schedulerOf(q, provider);
      await scheduler.kick();
      await scheduler.close();
      await bus.close();
      const smallTask = await db
        .selectFrom('tasks')
        .select('state')
        .where('job_id', '=', smallJob as string)
        .executeTakeFirstOrThrow();
      assert.equal(smallTask.state, 'assigned', 'the small job did not wait for the large one');
      const bigAssigned = await db
        .selectFrom('tasks')
        .select('id')
        .where('job_id', '=', bigJob as string)
        .where('state', '=', 'assigned')
        .execute();
      assert.equal(bigAssigned.length, 3, 'the large job got the rest of the slots');
    });

    // PGlite has one connection: nothing else could hold the job's row.
    if (store === 'postgres')
      it("a placement never waits for a job's row while its unit holds provider rows: that task waits for the next pass", async () => {
        const q = await emptyQueue();
        const { bus, units, lifecycle } = q;
        const owner = generateIdentity().publicKey;
        await fund(db, owner, 1_000_000_000n);
        const provider = await addProvider(db, units, lifecycle, { slots: 2, cores: 2 });
        const [first] = await submit(units, lifecycle, owner, spec({ name: 'first' }), 1);
        const [held] = await submit(units, lifecycle, owner, spec({ name: 'held' }), 1);
        const scheduler = await schedulerOf(q, provider);
        const stateOf = async (job: string) => (await db.selectFrom('tasks').select('state').where('job_id', '=', job).executeTakeFirstOrThrow()).state;
        const other = new pg.Client({ connectionString: postgresUrl() });
        await other.connect();
        try {
          await other.query('begin');
          await other.query(`select id from "${schema}".jobs where id = $1 for no key update`, [held]);
          // The pass ends although the job's row stays held: it did not wait for it.
          await scheduler.kick();
          assert.equal(await stateOf(first as string), 'assigned');
          assert.equal(await stateOf(held as string), 'queued', 'the held job was skipped, not waited for');
          await other.query('commit');
          await until(
            () => stateOf(held as string),
            (s) => s === 'assigned',
            { what: 'the skipped task placed by a later pass' },
          );
        } finally {
          await other.end();
          await scheduler.close();
          await bus.close();
        }
      });

    it('only the leader schedules: a replica that does not lead places nothing, nor does a leader whose term has ended', async () => {
      const q = await emptyQueue();
      const { bus, units, lifecycle } = q;
      const owner = generateIdentity().publicKey;
      await fund(db, owner, 1_000_000_000n);
      const provider = await addProvider(db, units, lifecycle, { slots: 2, cores: 2 });
      const [job] = await submit(units, lifecycle, owner, spec({ name: 'fenced' }), 1);
      await db
        .insertInto('coordinator_leader')
        .values({ id: 1, epoch: 3n, holder: 'test', since: new Date() })
        .onConflict((oc) => oc.column('id').doUpdateSet({ epoch: 3n }))
        .execute();
      let epoch: bigint | null = null;
      const scheduler = await schedulerOf(q, provider, () => epoch);
      const taskState = async () =>
        (
          await db
            .selectFrom('tasks')
            .select('state')
            .where('job_id', '=', job as string)
            .executeTakeFirstOrThrow()
        ).state;
      try {
        await scheduler.kick();
        assert.equal(await taskState(), 'queued', 'an edge replica placed the task');
        epoch = 2n;
        await scheduler.kick();
        assert.equal(await taskState(), 'queued', 'a deposed leader (term 2, the office at 3) placed the task');
        epoch = 3n;
        await scheduler.kick();
        assert.equal(await taskState(), 'assigned', 'the leader of the current term placed it');
      } finally {
        await scheduler.close();
        await bus.close();
      }
    });
  });
}

describe('state tables', () => {
  const machines = { job: JOB_TRANSITIONS, task: TASK_TRANSITIONS, lease: LEASE_TRANSITIONS } as const;
  it('every pair of states is allowed exactly when its table lists it; terminal states have no way out', () => {
    // The one exception: a task's result refuted while its job is open runs again (succeeded → queued).
    const reopens: Record<string, readonly string[]> = { 'task succeeded': ['queued'] };
    for (const [machine, table] of Object.entries(machines) as [keyof typeof machines, Record<string, readonly string[]>][]) {
      const states = Object.keys(table);
      for (const from of states) {
        for (const to of states) assert.equal(canTransition(machine, from, to), (table[from] ?? []).includes(to), `${machine} ${from} → ${to}`);
      }
      for (const terminal of ['succeeded', 'failed', 'cancelled', 'completed', 'lost']) {
        if (terminal in table) assert.deepEqual(table[terminal], reopens[`${machine} ${terminal}`] ?? [], `${machine} ${terminal} is terminal`);
      }
      assert.equal(canTransition(machine, 'no-such-state', states[0] as string), false);
    }
  });

  it('a refused transition throws INVALID_TRANSITION through a command', async () => {
    const { assertTransition } = await import('../src/core/state-machine.ts');
    assert.throws(
      () => assertTransition('lease', 'lease_x', 'completed', 'running'),
      (e: unknown) => e instanceof GridworkError && e.code === 'INVALID_TRANSITION',
    );
  });

  it('a job state derived from any mix of task states is one its current state may move to', () => {
    const taskStates = ['queued', 'assigned', 'running', 'succeeded', 'failed', 'cancelled'] as const;
    const jobStates = ['pending', 'matching', 'running', 'verifying'] as const;
    fc.assert(
      fc.property(
        fc.constantFrom(...jobStates),
        fc.array(fc.constantFrom(...taskStates), { minLength: 1, maxLength: 8 }),
        fc.constantFrom('stop' as const, 'continue' as const),
        (current, tasks, policy) => {
          const next = deriveJobState(current, countTasks(tasks.map((state) => ({ state }))), policy);
          if (next !== current) assert.ok(canTransition('job', current, next), `${current} → ${next}`);
          if (policy === 'continue' && tasks.some((t) => ['queued', 'assigned', 'running'].includes(t))) assert.notEqual(next, 'failed');
          if (policy === 'stop' && tasks.includes('failed')) assert.equal(next, 'failed');
        },
      ),
    );
  });
});
