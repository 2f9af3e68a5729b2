/**
 * Checkpointed training on real, sandboxed agents (PGlite, then PostgreSQL): the task writes
 * checkpoints, the agent uploads and reports each one signed; when its provider dies the task
 * resumes on another provider from the last checkpoint and ends with exactly the result of an
 * uninterrupted run; the dead provider is paid only for the work up to that checkpoint. A
 * dispute of a training result bisects the two runs' committed checkpoints and a referee
 * re-execute only the first segment where they part (two referees, independent of each other);
 * the upheld dispute sends the training back into its job, on another provider, from no
 * checkpoint the refuted lease wrote. Every wait is on state read from the coordinator.
 */
import assert from 'node:assert/strict';
import { dirname, join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { fileURLToPath } from 'node:url';
import { internalsOf } from '@gridwork/coordinator/internal';
import { readFile, writeFile } from 'node:fs/promises';
import type { JobSpec } from '@gridwork/protocol';
import { generateIdentity, signRequest } from '@gridwork/protocol/node';
import type { ProviderAgent } from '@gridwork/provider';
import { type StoreKind, startTestNetwork, type TestNetwork, until } from '@gridwork/testkit';
import { costOf } from '../src/ledger/lease-economics.ts';
import { verifyLedger } from '../src/ledger/ledger.ts';

const fixtures = join(dirname(fileURLToPath(import.meta.url)), 'fixtures');
const WAIT_MS = 60_000;
const STEPS = 40;

/** What the fixture's training loop computes in 40 uninterrupted steps. */
function expectedState(): number {
  let state = 7;
  for (let step = 1; step <= STEPS; step++) state = (state * 31 + step) % 2147483647;
  return state;
}

const trainSpec: JobSpec = {
  version: 1,
  name: 'train-resume',
  kind: 'train',
  runtime: { kind: 'bundle', path: './tasks', command: ['node', 'task.mjs', 'train', String(STEPS), '10', '150'] },
  resources: { cpu: 1, memoryGiB: 1 },
  price: { maxPerHour: '3600', budget: '100' },
};

for (const store of ['pglite', 'postgres'] as StoreKind[]) {
  describe(`checkpointed training on ${store}`, { timeout: 180_000 }, () => {
    let net: TestNetwork;

    before(async () => {
      net = await startTestNetwork({ store, coordinator: { economics: { meteringIntervalMs: 300 } } });
      await net.addProvider({ name: 'first', slots: 1 });
    });
    after(async () => {
      await net?.close();
    });

    test('a training task resumes on another provider from its last checkpoint; the dead provider is paid up to it', async () => {
      const client = await net.fundedClient('200');
      const { db } = internalsOf(net.coordinator);
      const job = await client.submit(trainSpec, { baseDir: fixtures });
      // Wait for two checkpoints on the first provider, then let it die (no goodbye, no reports).
      const first = await until(
        () => db.selectFrom('checkpoints').innerJoin('tasks', 'tasks.id', 'checkpoints.task_id').select(['checkpoints.lease_id', 'checkpoints.step']).where('tasks.job_id', '=', job.id).orderBy('step', 'desc').execute(),
        (rows) => rows.length >= 2,
        { timeoutMs: WAIT_MS, what: 'two checkpoints' },
      );
      const deadLease = (first[0] as { lease_id: string }).lease_id;
      await net.addProvider({ name: 'second', slots: 1 });
      await (net.providers[0] as ProviderAgent).close();

      const done = await until(() => client.get(job.id), (j) => j.state === 'succeeded' || j.state === 'failed', { timeoutMs: WAIT_MS, what: 'the resumed job' });
      assert.equal(done.state, 'succeeded', done.error ?? '');
      const task = done.tasks[0];
      assert.equal(task?.providerName, 'second');
      assert.equal(task?.attempts, 1, 'the dead provider cost one attempt');

      // The same result as an uninterrupted run.
      const out = await client.results(job.id, join(net.dir, 'results'));
      assert.equal(out.length, 1);
      const { readFile } = await import('node:fs/promises');
      assert.equal(await readFile(out[0] as string, 'utf8'), `state after ${STEPS} steps: ${expectedState()}\n`);

      // The second lease resumed: its log says so, and its first checkpoint follows the last of the first lease.
      const all = await db.selectFrom('checkpoints').select(['lease_id', 'step', 'usage_ms']).where('task_id', '=', task?.id as string).orderBy('step').execute();
      const shown = JSON.stringify(all.map((c) => ({ ...c, usage_ms: Number(c.usage_ms) })));
      const deadSteps = all.filter((c) => c.lease_id === deadLease).map((c) => c.step);
      const liveSteps = all.filter((c) => c.lease_id !== deadLease).map((c) => c.step);
      assert.ok(deadSteps.length >= 2 && liveSteps.length >= 1, shown);
      assert.ok(Math.min(...liveSteps) > Math.max(...deadSteps), `resumed after step ${Math.max(...deadSteps)}: ${shown}`);
      assert.equal(Math.max(...liveSteps), STEPS);
      const logs = [];
      for await (const e of client.logs(job.id)) logs.push(e);
      assert.ok(
        logs.some((e) => e.leaseId !== deadLease && e.data.includes(`resumed from step ${Math.max(...deadSteps)}`)),
        'the second lease resumed from the last checkpoint',
      );

      // The dead lease is paid for its run time up to its last checkpoint, not a millisecond more.
      const dead = await db.selectFrom('leases').select(['state', 'charged', 'price_per_hour', 'usage_ms']).where('id', '=', deadLease).executeTakeFirstOrThrow();
      assert.equal(dead.state, 'lost');
      const lastDead = all.filter((c) => c.lease_id === deadLease).at(-1) as { usage_ms: bigint };
      assert.equal(dead.usage_ms, lastDead.usage_ms);
      assert.equal(dead.charged, costOf(dead.price_per_hour, lastDead.usage_ms));
      const audit = await verifyLedger(db);
      assert.equal(audit.total, 0n);
      assert.deepEqual(audit.mismatched, []);
      assert.deepEqual(audit.negative, []);
    });
  });

  describe(`a disputed training result on ${store}`, { timeout: 180_000 }, () => {
    let net: TestNetwork;

    before(async () => {
      net = await startTestNetwork({
        store,
        coordinator: {
          economics: { meteringIntervalMs: 300 },
          verification: { windowMs: 300_000, probationTasks: 0, minAuditRate: 0, maxAuditRate: 0, genesisFees: '50', minSlash: '5', checkTimeoutMs: 300_000 },
        },
      });
    });
    after(async () => {
      await net?.close();
    });

    test('bisection over committed checkpoints finds the first divergent segment; a referee re-runs only it, the dispute is upheld, and the training runs again elsewhere from no refuted checkpoint', async () => {
      // A provider whose training goes wrong from step 20 on: its checkpoints and its result say so.
      const cheater = await net.addProvider({
        name: 'diverges',
        slots: 1,
        attributes: { region: 'c' },
        checkpointTamper: async (file, step) => {
          if (step >= 20) await writeFile(file, JSON.stringify({ step, state: 1 }));
        },
        resultTamper: async (dir) => writeFile(join(dir, 'result.txt'), 'state after 40 steps: 1\n'),
      });
      const cheaterClient = await net.fundedClient('20', net.identityOf(cheater));
      await cheaterClient.stake('20');
      const identity = generateIdentity();
      const client = await net.fundedClient('200', identity);
      const job = await client.submit({ ...trainSpec, placement: { regions: ['c'] } }, { baseDir: fixtures });
      await until(() => client.get(job.id), (j) => j.tasks[0]?.state === 'running', { timeoutMs: WAIT_MS, what: 'the training to start' });
      // Honest providers of the same region join once the cheater has the task (staked: checkers answer with stake).
      for (const name of ['honest-a', 'honest-b', 'honest-c']) {
        const p = await net.addProvider({ name, slots: 1, attributes: { region: 'c' } });
        await (await net.fundedClient('20', net.identityOf(p))).stake('10');
      }
      const verifying = await until(() => client.get(job.id), (j) => j.state === 'verifying', { timeoutMs: WAIT_MS, what: 'the training result' });
      assert.equal(verifying.tasks[0]?.providerName, 'diverges');
      const refutedLease = verifying.tasks[0]?.leaseId as string;

      const path = `/v1/jobs/${job.id}/tasks/0/dispute`;
      const res = await fetch(new URL(path, net.coordinator.url), { method: 'POST', headers: signRequest(identity, 'POST', path) });
      assert.equal(res.status, 201, await res.clone().text());

      const decided = await until(() => client.get(job.id), (j) => (j.tasks[0]?.refuted ?? []).length > 0, { timeoutMs: WAIT_MS, what: 'the dispute' });
      const checks = decided.tasks[0]?.refuted?.[0]?.checks ?? [];
      assert.deepEqual(
        checks.map((c) => `${c.kind}:${c.state}:${c.outcome}`),
        ['dispute:failed:dispute-upheld', 'referee:failed:sided-with-checker', 'referee:failed:original-refuted'],
      );
      const { db } = internalsOf(net.coordinator);
      const referees = await db.selectFrom('verifications').selectAll().where('kind', '=', 'referee').orderBy('created_at').execute();
      assert.equal(referees.length, 2, 'two independent referees');
      for (const r of referees) assert.deepEqual([r.segment_from, r.segment_to], [10, 20], 'the first segment where the runs part');
      const referee = referees[0] as (typeof referees)[number];
      // The referee re-ran that segment only: it resumed from step 10 and wrote no checkpoint past 20.
      const refereeSteps = await db
        .selectFrom('checkpoints')
        .innerJoin('tasks', 'tasks.id', 'checkpoints.task_id')
        .select('checkpoints.step')
        .where('tasks.job_id', '=', referee.check_job_id as string)
        .execute();
      assert.deepEqual(
        refereeSteps.map((c) => c.step),
        [20],
      );
      assert.match(checks[0]?.detail ?? '', /steps 10–20/);
      const slashed = await until(
        () => cheaterClient.balance(),
        (b) => b.stake !== '20',
        { what: 'the slash' },
      );
      assert.equal(slashed.stake, '15');

      // The training runs again inside the job on an honest provider — from the start: every
      // checkpoint of the refuted lease is skipped, its honest step 10 too — and gets it right.
      const rerun = await until(() => client.get(job.id), (j) => j.state === 'verifying' || j.state === 'failed', { timeoutMs: WAIT_MS, what: 'the re-run' });
      const t = rerun.tasks[0];
      assert.equal(rerun.state, 'verifying', rerun.error ?? '');
      assert.ok(t && t.providerName !== 'diverges' && t.attempts === 1, JSON.stringify(t));
      const steps = await db.selectFrom('checkpoints').select('step').where('lease_id', '=', t.leaseId as string).orderBy('step').execute();
      assert.deepEqual(
        steps.map((c) => c.step),
        [10, 20, 30, 40],
      );
      const dir = join(net.dir, 'rerun-results');
      await client.results(job.id, dir);
      assert.equal(await readFile(join(dir, 'task-0', 'result.txt'), 'utf8'), `state after ${STEPS} steps: ${expectedState()}\n`);
      assert.notEqual(t.leaseId, refutedLease);
    });
  });
}
