/**
 * Attacks on verification by its checkers (issue 16), each played through the real wire protocol
 * by raw provider clients, as an attacker with a few free keys would, against a real coordinator
 * with real sandboxed honest agents (PGlite). Each test fails on the code before checkers had to
 * hold stake, before an audit without a verdict was audited again, and before a check's price was
 * bounded by the market:
 *
 *   - framing: unstaked keys asking almost nothing took the audit and both referee runs of an
 *     honest provider's result, and refuted it (the honest provider was slashed);
 *   - confirming: an unstaked auditor confirmed a made-up answer;
 *   - dropping: an auditor that never ran its check made the audit end without a verdict, and the
 *     made-up result was then paid when its window closed;
 *   - draining: a requester with a huge maxPerHour, its own provider and its own auditor had the
 *     verification fund pay the audit at the requester's price.
 *
 * Every wait is on a condition read from the coordinator, never on time.
 */
import assert from 'node:assert/strict';
import { dirname, join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { fileURLToPath } from 'node:url';
import { internalsOf } from '@gridwork/coordinator/internal';
import { type JobSpec, parseCredits } from '@gridwork/protocol';
import { generateIdentity } from '@gridwork/protocol/node';
import type { ProviderAgent } from '@gridwork/provider';
import { GridworkClient } from '@gridwork/sdk';
import { startTestNetwork, type TestNetwork, until } from '@gridwork/testkit';
import { verifyLedger } from '../src/ledger/ledger.ts';
import type { Db } from '../src/store/database.ts';
import { type Assignment, RawProvider } from './raw-provider.ts';

const here = dirname(fileURLToPath(import.meta.url));
const WAIT_MS = 120_000;
/** Production verification defaults, except a funded verification fund and a shorter window. */
const DEFAULTS = { probationTasks: 10, minAuditRate: 0.01, maxAuditRate: 1, canaryRate: 0, genesisFees: '100' };
const RIGHT = 'task 0 of 1: 0\n';
const WRONG = 'task 0 of 1: 41\n';

function squareSpec(name: string, region: string, extra: Partial<JobSpec> = {}): JobSpec {
  return {
    version: 1,
    name,
    kind: 'batch',
    runtime: { kind: 'bundle', path: './tasks', command: ['node', 'task.mjs', 'square', '50'] },
    resources: { cpu: 1, memoryGiB: 1 },
    price: { maxPerHour: '1', budget: '1' },
    placement: { regions: [region] },
    ...extra,
  };
}

/** The work lease of a job's task 0, and how its verification stands. */
async function workLease(db: Db, jobId: string) {
  return db.selectFrom('leases').selectAll().where('job_id', '=', jobId).orderBy('created_at').executeTakeFirst();
}

/** Every lease of every check of a lease: who ran it. */
async function checkersOf(db: Db, leaseId: string) {
  return db
    .selectFrom('verifications')
    .innerJoin('leases', 'leases.job_id', 'verifications.check_job_id')
    .select(['verifications.kind', 'verifications.state', 'leases.provider_id'])
    .where('verifications.lease_id', '=', leaseId)
    .orderBy('leases.created_at')
    .execute();
}

/** On a timeout: every check, job, lease and task, to say where verification stood. */
async function dumpChecks(db: Db): Promise<void> {
  const v = await db.selectFrom('verifications').selectAll().execute();
  const j = await db.selectFrom('jobs').select(['id', 'state', 'purpose', 'error', 'max_per_hour', 'budget', 'spec']).execute();
  const l = await db.selectFrom('leases').select(['id', 'job_id', 'provider_id', 'state', 'verification', 'error', 'price_per_hour', 'charged']).execute();
  const t = await db.selectFrom('tasks').select(['id', 'job_id', 'state', 'error', 'attempts']).execute();
  console.log(
    JSON.stringify({ v, j: j.map((x) => ({ ...x, spec: x.spec.placement })), l, t }, (_k, val) => (typeof val === 'bigint' ? val.toString() : val), 1),
  );
}

async function balance(db: Db, account: string): Promise<bigint> {
  const row = await db.selectFrom('ledger_balances').select('balance').where('account', '=', account).executeTakeFirst();
  return row ? BigInt(row.balance) : 0n;
}

async function assertLedgerSound(db: Db): Promise<void> {
  const audit = await verifyLedger(db);
  assert.equal(audit.total, 0n, 'money is conserved');
  assert.deepEqual(audit.mismatched, []);
  assert.deepEqual(audit.negative, []);
}

async function stakeRaw(net: TestNetwork, raw: RawProvider, amount: string): Promise<void> {
  const c = new GridworkClient({ url: net.coordinator.url, identity: raw.identity });
  await c.deposit(amount);
  await c.stake(amount);
}

describe('unstaked checkers can neither frame an honest provider nor confirm a wrong answer (pglite)', { timeout: 400_000 }, () => {
  let net: TestNetwork;
  let db: Db;
  const honest: ProviderAgent[] = [];
  const sybils: RawProvider[] = [];
  let cheater: RawProvider;
  let requester: GridworkClient;

  before(async () => {
    net = await startTestNetwork({ store: 'pglite', coordinator: { verification: { ...DEFAULTS, windowMs: 300_000, checkTimeoutMs: 300_000 } } });
    db = internalsOf(net.coordinator).db;
    for (const region of ['h1', 'h2', 'h3']) {
      const p = await net.addProvider({ attributes: { region } });
      await net.stake(p, '10');
      honest.push(p);
    }
    // Three free keys asking almost nothing, each its own operator, that answer every check "41".
    for (let i = 0; i < 3; i++) {
      const s = await RawProvider.connect(net.coordinator.url);
      await s.hello('x', 4, {}, '0.000001');
      s.serve(() => WRONG);
      sybils.push(s);
    }
    cheater = await RawProvider.connect(net.coordinator.url);
    await cheater.hello('c', 2);
    cheater.serve(() => WRONG);
    requester = await net.fundedClient('20', generateIdentity());
  });

  after(async () => {
    for (const r of [...sybils, cheater]) r?.close();
    await net?.close();
  });

  test("an honest provider's right result stands: its mandatory audit runs on a staked checker, never on the sybils", async () => {
    const job = await requester.submit(squareSpec('honest-work', 'h1'), { baseDir: join(here, 'fixtures') });
    const lease = await until(
      () => workLease(db, job.id),
      (l) => l?.verification === 'verified' || l?.verification === 'failed',
      { timeoutMs: WAIT_MS, what: "the honest result's verdict" },
    ).catch(async (e) => {
      await dumpChecks(db);
      throw e;
    });
    assert.equal(lease?.verification, 'verified');
    const checkers = await checkersOf(db, lease?.id as string);
    assert.ok(checkers.length >= 1, 'it was audited (a new provider is on probation)');
    const honestIds = honest.map((p) => net.identityOf(p).publicKey);
    for (const c of checkers) assert.ok(honestIds.includes(c.provider_id), `check ${c.kind} ran on a staked honest provider`);
    const h1 = await new GridworkClient({ url: net.coordinator.url, identity: net.identityOf(honest[0] as ProviderAgent) }).balance();
    assert.equal(h1.stake, '10', 'the honest provider was not slashed');
  });

  test('a made-up answer is refuted by staked checkers, never confirmed by the sybils', async () => {
    const job = await requester.submit(squareSpec('cheated-work', 'c'), { baseDir: join(here, 'fixtures') });
    const lease = await until(
      () => workLease(db, job.id),
      (l) => l?.verification === 'verified' || l?.verification === 'failed',
      { timeoutMs: WAIT_MS, what: "the made-up result's verdict" },
    );
    assert.equal(lease?.provider_id, cheater.id);
    assert.equal(lease?.verification, 'failed');
    const honestIds = honest.map((p) => net.identityOf(p).publicKey);
    for (const c of await checkersOf(db, lease?.id as string)) assert.ok(honestIds.includes(c.provider_id), `check ${c.kind} ran on a staked honest provider`);
  });

  test('the sybils were never assigned anything, and money is conserved', async () => {
    for (const s of sybils)
      assert.deepEqual(
        s.messages.filter((m) => m.type === 'lease.assign'),
        [],
        'no lease for a key without stake at risk',
      );
    await assertLedgerSound(db);
  });
});

describe('an audit whose checker drops it is audited again by others; a made-up result never stands by default (pglite)', { timeout: 600_000 }, () => {
  let net: TestNetwork;
  let db: Db;
  const honest: ProviderAgent[] = [];
  let dropper: RawProvider;
  let cheater: RawProvider;
  const dropped: Assignment[] = [];

  before(async () => {
    net = await startTestNetwork({ store: 'pglite', coordinator: { verification: { ...DEFAULTS, windowMs: 20_000, checkTimeoutMs: 30_000 } } });
    db = internalsOf(net.coordinator).db;
    for (const region of ['h1', 'h2', 'h3']) honest.push(await net.addProvider({ attributes: { region } }));
    // A staked checker that acknowledges every check it gets and never runs it.
    dropper = await RawProvider.connect(net.coordinator.url);
    await dropper.hello('x', 4, {}, '0.000001');
    await stakeRaw(net, dropper, '10');
    dropper.serve((a) => {
      dropped.push(a);
      return null;
    });
    cheater = await RawProvider.connect(net.coordinator.url);
    await cheater.hello('c', 2);
    cheater.serve(() => WRONG);
  });

  after(async () => {
    dropper?.close();
    cheater?.close();
    await net?.close();
  });

  test('the dropped audit ends without a verdict, another checker re-runs it, and the made-up result is refuted', async () => {
    const requester = await net.fundedClient('20', generateIdentity());
    const job = await requester.submit(squareSpec('cheated-work', 'c'), { baseDir: join(here, 'fixtures') });
    // The dropper is the only staked checker: it gets the audit.
    await until(
      async () => dropped.length,
      (n) => n >= 1,
      { timeoutMs: WAIT_MS, what: 'the dropper to be given the audit' },
    );
    // Honest checkers stake only now (a conviction takes an auditor and two referees).
    for (const p of honest) await net.stake(p, '10');
    const lease = await until(
      () => workLease(db, job.id),
      (l) => l?.verification === 'verified' || l?.verification === 'failed',
      // The dropped audit's time runs out first; then an audit and two referees, one after another.
      { timeoutMs: 2 * WAIT_MS, what: "the made-up result's verdict" },
    ).catch(async (e) => {
      await dumpChecks(db);
      throw e;
    });
    assert.equal(lease?.verification, 'failed', 'never verified by an audit that ended without a verdict, nor by its window closing');
    const checks = await checkersOf(db, lease?.id as string);
    const audits = checks.filter((c) => c.kind === 'audit');
    assert.equal(audits[0]?.provider_id, dropper.id);
    assert.equal(audits[0]?.state, 'abandoned');
    assert.ok(
      audits.slice(1).every((a) => a.provider_id !== dropper.id),
      'the dropper never gets this result again',
    );
    assert.ok(
      audits.some((a) => a.state === 'failed'),
      'a later audit refuted it',
    );
    await assertLedgerSound(db);
  });
});

describe('a requester, its own provider and its own auditor cannot drain the verification fund (pglite)', { timeout: 400_000 }, () => {
  let net: TestNetwork;
  let db: Db;
  let provider: RawProvider;
  let auditor: RawProvider;

  before(async () => {
    net = await startTestNetwork({ store: 'pglite', coordinator: { verification: { ...DEFAULTS, windowMs: 300_000, checkTimeoutMs: 300_000 } } });
    db = internalsOf(net.coordinator).db;
    // Honest checkers, staked enough to check results at the attacker's price (its slash is 100× the charge).
    for (const region of ['h1', 'h2', 'h3']) await net.stake(await net.addProvider({ attributes: { region } }), '100');
    // The attacker's provider: no stake, a price 100,000× the market's, and a run time it makes up.
    provider = await RawProvider.connect(net.coordinator.url);
    await provider.hello('p', 2, {}, '2700');
    provider.serve(() => RIGHT, 3_600_000);
    // The attacker's auditor: staked (too little to check this result, as it happens), asking the requester's whole maxPerHour.
    auditor = await RawProvider.connect(net.coordinator.url);
    await auditor.hello('a', 4, {}, '5000');
    await stakeRaw(net, auditor, '10');
    auditor.serve(() => RIGHT, 3_600_000);
  });

  after(async () => {
    provider?.close();
    auditor?.close();
    await net?.close();
  });

  test("the mandatory audit is paid from the provider's own pending earnings, at the market's price, not the requester's", async () => {
    const requester = await net.fundedClient('20', generateIdentity());
    const fees = await balance(db, 'sys:fees');
    const job = await requester.submit(squareSpec('self-dealing', 'p', { price: { maxPerHour: '5400', budget: '10' }, timeoutSeconds: 60 }), {
      baseDir: join(here, 'fixtures'),
    });
    const lease = await until(
      () => workLease(db, job.id),
      (l) => l?.verification === 'pending' || l?.verification === 'verified',
      { timeoutMs: WAIT_MS, what: "the provider's result" },
    );
    const check = await until(
      () =>
        db
          .selectFrom('verifications')
          .innerJoin('jobs', 'jobs.id', 'verifications.check_job_id')
          .select(['jobs.max_per_hour', 'jobs.budget', 'verifications.id'])
          .where('verifications.lease_id', '=', lease?.id as string)
          .executeTakeFirst(),
      (c) => c !== undefined,
      { timeoutMs: WAIT_MS, what: 'the audit to open' },
    );
    // The market asks 0.024/h for this order (the honest agents' asks): a check may pay at most 2×.
    assert.ok((check?.max_per_hour ?? 0n) <= parseCredits('0.048'), `the check's price ${check?.max_per_hour} µc/h is bounded by the market`);
    const postings = await db
      .selectFrom('ledger_postings')
      .innerJoin('ledger_transactions', 'ledger_transactions.id', 'ledger_postings.tx_id')
      .select(['ledger_postings.account', 'ledger_postings.amount'])
      .where('ledger_transactions.idempotency_key', '=', `check:${check?.id}`)
      .execute();
    const from = Object.fromEntries(postings.filter((p) => BigInt(p.amount) < 0n).map((p) => [p.account, -BigInt(p.amount)]));
    assert.ok((from[`lease:${lease?.id}:earned`] ?? 0n) > 0n, "paid from the provider's pending earnings first");
    assert.equal(from['sys:fees'] ?? 0n, 0n, 'its earnings covered it: nothing from the fund');
    // Whatever the verdict, the fund is not poorer for it.
    await until(
      () => workLease(db, job.id),
      (l) => l?.verification === 'verified' || l?.verification === 'failed',
      { timeoutMs: WAIT_MS, what: 'the verdict' },
    );
    assert.ok((await balance(db, 'sys:fees')) >= fees, 'sys:fees did not shrink');
    assert.deepEqual(
      auditor.messages.filter((m) => m.type === 'lease.assign'),
      [],
      "the attacker's auditor, asking the requester's price, was never paid to check",
    );
    await assertLedgerSound(db);
  });
});
