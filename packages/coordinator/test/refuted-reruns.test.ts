/**
 * A refuted result re-runs inside its job (issue 16), on PGlite and PostgreSQL, with a real
 * coordinator and real sandboxed agents. A cheater makes up the results of two one-task jobs;
 * every result is audited, two referees side with the auditor, and the cheater is convicted.
 *   - With retries left, the refuted task runs again in its job on another provider — neither
 *     the cheater nor the cheapest provider of its operator — and the job ends `succeeded` with a
 *     verified, correct result. The refuted attempt's charge went back into the job's hold (it paid
 *     for the re-run), so the requester paid exactly the verified lease's charge; the refuted
 *     attempt stays visible in the job view (`refuted`), in the events and in the ledger.
 *   - With no retries left (`maxRetries: 0`) the job fails as before and the requester gets back
 *     everything it paid.
 * Money is conserved throughout (ledger audit). Every wait is on state read from the coordinator.
 */
import assert from 'node:assert/strict';
import { readFile, writeFile } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { fileURLToPath } from 'node:url';
import { internalsOf } from '@gridwork/coordinator/internal';
import { formatCredits, type JobSpec, type JobView, parseCredits, TERMINAL_JOB_STATES } from '@gridwork/protocol';
import { generateIdentity } from '@gridwork/protocol/node';
import { fixedPricing, type ProviderAgent } from '@gridwork/provider';
import type { GridworkClient } from '@gridwork/sdk';
import { type StoreKind, startTestNetwork, type TestNetwork, until } from '@gridwork/testkit';
import { verifyLedger } from '../src/ledger/ledger.ts';
import type { Db } from '../src/store/database.ts';

const fixtures = join(dirname(fileURLToPath(import.meta.url)), 'fixtures');
const WAIT_MS = 120_000;
const FUNDS = '10';
/** Every result audited (p = 1), paid from the verification fund; two referees convict. */
const VERIFICATION = {
  windowMs: 300_000,
  probationTasks: 0,
  minAuditRate: 1,
  maxAuditRate: 1,
  canaryRate: 0,
  genesisFees: '50',
  minSlash: '5',
  checkTimeoutMs: 300_000,
};

function spec(name: string, extra: Partial<JobSpec> = {}): JobSpec {
  return {
    version: 1,
    name,
    kind: 'batch',
    runtime: { kind: 'bundle', path: './tasks', command: ['node', 'task.mjs', 'square', '1500'] },
    resources: { cpu: 1, memoryGiB: 1 },
    price: { maxPerHour: '5', budget: '1.00' },
    ...extra,
  };
}

/** A provider that makes its results up instead of computing them. */
const madeUp = async (outputsDir: string) => writeFile(join(outputsDir, 'result.txt'), 'a result nobody computed\n');
const taskOf = (job: JobView) => job.tasks[0] as JobView['tasks'][number];
const pricing = (perCoreHour: string) => fixedPricing({ cpuCoreHour: perCoreHour, memoryGiBHour: '0' });

/** What the requester's account is worth: available plus what its jobs still hold. */
async function worth(client: GridworkClient): Promise<bigint> {
  const b = await client.balance();
  return parseCredits(b.available, { allowZero: true }) + parseCredits(b.held, { allowZero: true });
}

/** A requester's job once it has ended. */
const ended = ({ client, job }: { client: GridworkClient; job: JobView }) =>
  until(
    () => client.get(job.id),
    (j) => TERMINAL_JOB_STATES.includes(j.state),
    { timeoutMs: WAIT_MS, what: `${job.name} to end` },
  );

const leasesOf = (db: Db, jobId: string) =>
  db.selectFrom('leases').select(['id', 'provider_id', 'state', 'verification', 'charged']).where('job_id', '=', jobId).orderBy('created_at').execute();

for (const store of ['pglite', 'postgres'] as StoreKind[]) {
  describe(`a refuted result re-runs inside its job on ${store}`, { timeout: 300_000 }, () => {
    let net: TestNetwork;
    let db: Db;
    let cheater: ProviderAgent;
    let sibling: ProviderAgent;
    let cheaterClient: GridworkClient;
    let retried: { client: GridworkClient; job: JobView };
    let exhausted: { client: GridworkClient; job: JobView };

    before(async () => {
      net = await startTestNetwork({ store, coordinator: { verification: VERIFICATION }, provider: { benchmarks: { cpuMopsPerCore: 1000, gpu: {} } } });
      db = internalsOf(net.coordinator).db;
      cheater = await net.addProvider({ name: 'cheater', attributes: { operator: 'shady' }, pricing: pricing('1'), resultTamper: madeUp });
      cheaterClient = await net.fundedClient('30', net.identityOf(cheater));
      await cheaterClient.stake('20');
      // Both jobs land on the cheater (two slots), the only provider online when they are submitted.
      const submit = async (name: string, extra: Partial<JobSpec> = {}) => {
        const client = await net.fundedClient(FUNDS, generateIdentity());
        const job = await client.submit(spec(name, extra), { baseDir: fixtures });
        return { client, job };
      };
      retried = await submit('rerun-me');
      exhausted = await submit('no-retries', { maxRetries: 0 });
      for (const { client, job } of [retried, exhausted]) {
        const v = await until(
          () => client.get(job.id),
          (j) => j.state === 'verifying' || j.state === 'failed',
          { timeoutMs: WAIT_MS, what: `${job.name}'s result` },
        );
        assert.equal(taskOf(v).providerId, cheater.id);
      }
      // The cheater leaves with its results pending (its audits would otherwise make it a cheap
      // checker of the re-run, answering wrong again). Its fault is proven and slashed all the same.
      net.providers.splice(net.providers.indexOf(cheater), 1);
      await cheater.close();
      // The others join: one more provider of the cheater's operator, the cheapest of all (the
      // re-run would go to it if the operator were not excluded), and three honest ones of other
      // operators, staked so they may check (an auditor and two independent referees).
      sibling = await net.addProvider({ name: 'sibling', attributes: { operator: 'shady' }, pricing: pricing('0.5') });
      for (const name of ['honest-a', 'honest-b', 'honest-c']) {
        const p = await net.addProvider({ name, pricing: pricing('1.5') });
        await (await net.fundedClient('30', net.identityOf(p))).stake('10');
      }
    });
    after(async () => {
      await net?.close();
    });

    test('with retries left, the refuted task re-runs on a provider of another operator and the job succeeds; the requester pays only the verified lease', async () => {
      const { client, job } = retried;
      const done = await ended(retried);
      const t = taskOf(done);
      assert.equal(done.state, 'succeeded', done.error ?? '');
      assert.equal(t.state, 'succeeded');
      assert.equal(t.verification?.state, 'verified', 'the re-run was audited and confirmed');
      assert.equal(t.attempts, 1, 'the refutation counted as an attempt');
      assert.equal(t.error, null);
      assert.ok(t.providerId !== cheater.id && t.providerId !== sibling.id, `the re-run ran on ${t.providerName}, a provider of the cheater's operator`);
      // The re-run's result is the task's real one (the fixture's square of the task index).
      const dir = join(net.dir, `results-${store}`);
      await client.results(job.id, dir);
      assert.equal(await readFile(join(dir, 'task-0', 'result.txt'), 'utf8'), 'task 0 of 1: 0\n');
      const manifest = JSON.parse(await readFile(join(dir, 'manifest.json'), 'utf8')) as { tasks: { refuted: { provider: { id: string } }[] }[] };
      assert.deepEqual(
        manifest.tasks[0]?.refuted.map((r) => r.provider.id),
        [cheater.id],
      );

      // The refuted attempt stays visible: who produced it, what it charged, the checks that refuted it.
      const refuted = t.refuted ?? [];
      assert.equal(refuted.length, 1);
      const r = refuted[0] as NonNullable<typeof t.refuted>[number];
      assert.equal(r.providerId, cheater.id);
      assert.ok(parseCredits(r.charged) > 0n, 'the refuted attempt had charged something');
      // Refuted by an audit and two referees (an audit that ended without a verdict is run again).
      const verdicts = r.checks.map((c) => `${c.kind}:${c.state}/${c.outcome}`);
      assert.ok(verdicts.includes('audit:failed/original-refuted') && verdicts.includes('referee:failed/original-refuted'), JSON.stringify(r.checks));
      assert.ok(!r.checks.some((c) => c.state === 'passed' && c.kind !== 'referee'), JSON.stringify(r.checks));
      const leases = await leasesOf(db, job.id);
      assert.deepEqual(
        leases.map((l) => [l.provider_id === cheater.id ? 'cheater' : 'other', l.verification]),
        [
          ['cheater', 'failed'],
          ['other', 'verified'],
        ],
      );
      const [bad, good] = leases as [(typeof leases)[number], (typeof leases)[number]];
      const exclude = (await db.selectFrom('jobs').select('exclude_providers').where('id', '=', job.id).executeTakeFirstOrThrow()).exclude_providers;
      assert.deepEqual([...exclude].sort(), [cheater.id, sibling.id].sort(), 'the cheater and every provider of its operator are excluded from the job');
      const requeued = await db.selectFrom('events').select(['data']).where('type', '=', 'task.requeued').where('job_id', '=', job.id).execute();
      assert.equal(requeued.length, 1);
      assert.match(String((requeued[0]?.data as { reason?: string } | undefined)?.reason), /refuted/);

      // Money: the refuted charge went back into the job's hold (it paid for the re-run); the job's
      // end returned what was left. The requester paid the verified lease's charge and nothing else.
      const refund = await db.selectFrom('ledger_transactions').selectAll().where('idempotency_key', '=', `refund:${bad.id}`).executeTakeFirstOrThrow();
      assert.equal(refund.kind, 'lease.refund');
      assert.equal((refund.memo as { to?: string }).to, 'hold');
      const postings = await db.selectFrom('ledger_postings').select(['account', 'amount']).where('tx_id', '=', refund.id).execute();
      assert.deepEqual(postings.find((p) => p.amount > 0n)?.account, `job:${job.id}:hold`);
      assert.equal(
        postings.reduce((s, p) => s + (p.amount > 0n ? p.amount : 0n), 0n),
        bad.charged,
      );
      assert.equal(await worth(client), parseCredits(FUNDS) - good.charged, "the requester's net spend is the verified lease's charge");
      assert.equal((await client.balance()).held, '0');
      assert.equal(done.money.spent, formatCredits(good.charged), 'the job view counts only the verified lease');
      assert.equal(t.cost, done.money.spent);
    });

    test('with no retries left, the refuted result fails its job as before and the requester gets back all it paid', async () => {
      const { client, job } = exhausted;
      const done = await ended(exhausted);
      assert.equal(done.state, 'failed');
      assert.match(done.error ?? '', /failed verification/);
      const t = taskOf(done);
      assert.equal(t.providerId, cheater.id, 'the task did not run again');
      assert.equal(t.verification?.state, 'failed');
      assert.equal(t.refuted, undefined, 'the refuted result is the task’s current one (its verification says so)');
      const leases = await leasesOf(db, job.id);
      assert.equal(leases.length, 1);
      assert.ok((leases[0]?.charged ?? 0n) > 0n);
      const refund = await db
        .selectFrom('ledger_transactions')
        .select(['kind', 'memo'])
        .where('idempotency_key', '=', `refund:${leases[0]?.id}`)
        .executeTakeFirstOrThrow();
      assert.equal((refund.memo as { to?: string }).to, 'requester');
      assert.equal(await worth(client), parseCredits(FUNDS), 'refunded in full');
      assert.equal(done.money.spent, '0');
      // Neither job ever let the cheater keep its pay; its stake paid for both faults.
      const b = await until(
        () => cheaterClient.balance(),
        (x) => parseCredits(x.stake, { allowZero: true }) <= parseCredits('10'),
        { timeoutMs: WAIT_MS, what: 'both slashes' },
      );
      assert.equal(b.stake, '10');
      assert.equal(b.available, '10', 'the cheater was paid nothing');
      const audit = await verifyLedger(db);
      assert.equal(audit.total, 0n, 'money is conserved');
      assert.deepEqual(audit.mismatched, []);
      assert.deepEqual(audit.negative, []);
    });
  });
}
