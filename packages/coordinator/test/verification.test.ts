/**
 * Result verification (trust layers L3–L6) on a real coordinator with real, sandboxed agents,
 * on PGlite and PostgreSQL. A staked provider's results stay pending (its job `verifying`, its
 * earnings unpaid) and it cannot unstake below what its open work could cost; a provider that
 * returns wrong results loses a dispute to a referee and is slashed (stake first, then unbonding
 * stake), and its earlier result is re-audited (backtracking): the audit disagrees, a referee
 * sides with the auditor; each refuted task waits to run again on another provider, its charge
 * back in its job's budget (refuted-reruns.test.ts shows the re-run through). A canary catches a lazy provider. Disputes
 * with bad input are refused with stable codes. Money is conserved throughout (ledger audit).
 * Every wait is on a condition read from the coordinator, never on time.
 */
import assert from 'node:assert/strict';
import { writeFile } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { fileURLToPath } from 'node:url';
import { internalsOf } from '@gridwork/coordinator/internal';
import { type JobSpec, type JobView, parseCredits } from '@gridwork/protocol';
import { generateIdentity, type Identity, signRequest } from '@gridwork/protocol/node';
import type { ProviderAgent } from '@gridwork/provider';
import type { GridworkClient } from '@gridwork/sdk';
import { type StoreKind, startTestNetwork, type TestNetwork, until } from '@gridwork/testkit';
import { verifyLedger } from '../src/ledger/ledger.ts';

const here = dirname(fileURLToPath(import.meta.url));
const WAIT_MS = 90_000;
const VERIFICATION = { windowMs: 300_000, probationTasks: 0, minAuditRate: 0, maxAuditRate: 1, canaryRate: 0, genesisFees: '50', minSlash: '5', checkTimeoutMs: 300_000 };

function spec(name: string, region: string): JobSpec {
  return {
    version: 1,
    name,
    kind: 'batch',
    runtime: { kind: 'bundle', path: './tasks', command: ['node', 'task.mjs', 'square', '50'] },
    resources: { cpu: 1, memoryGiB: 1 },
    price: { maxPerHour: '0.50', budget: '1.00' },
    placement: { regions: [region] },
  };
}

/** A provider that makes its results up instead of computing them. */
const madeUp = async (outputsDir: string) => writeFile(join(outputsDir, 'result.txt'), 'a result nobody computed\n');

async function call<T>(url: string, identity: Identity, method: 'GET' | 'POST', path: string): Promise<{ status: number; body: T & { error?: { code: string; message: string } } }> {
  const res = await fetch(new URL(path, url), { method, headers: signRequest(identity, method, path) });
  return { status: res.status, body: (await res.json()) as T & { error?: { code: string; message: string } } };
}

const taskOf = (job: JobView) => job.tasks[0] as JobView['tasks'][number];

for (const store of ['pglite', 'postgres'] as StoreKind[]) {
  describe(`result verification on ${store}`, { timeout: 300_000 }, () => {
    let net: TestNetwork;
    let cheater: ProviderAgent;
    let cheaterClient: GridworkClient;
    const requesters: { identity: Identity; client: GridworkClient }[] = [];
    const jobs: JobView[] = [];

    async function requester(amount = '10') {
      const identity = generateIdentity();
      const client = await net.fundedClient(amount, identity);
      requesters.push({ identity, client });
      return { identity, client };
    }

    async function run(client: GridworkClient, name: string, region: string): Promise<JobView> {
      const submitted = await client.submit(spec(name, region), { baseDir: join(here, 'fixtures') });
      return until(() => client.get(submitted.id), (j) => j.state === 'verifying' || j.state === 'failed' || j.state === 'succeeded', {
        timeoutMs: WAIT_MS,
        what: `${name} to finish`,
      });
    }

    before(async () => {
      net = await startTestNetwork({ store, coordinator: { verification: VERIFICATION } });
      cheater = await net.addProvider({ attributes: { region: 'c' }, resultTamper: madeUp });
      // Three honest providers: a conviction takes an auditor and two referees, all independent,
      // each holding at least the stake a wrong verdict would cost (minSlash).
      for (const region of ['a', 'b', 'd']) await net.stake(await net.addProvider({ attributes: { region } }), '10');
      cheaterClient = await net.fundedClient('30', net.identityOf(cheater));
      // Staked, then half on its way out before any work: unbonding stake is still slashable.
      await cheaterClient.stake('20');
      await cheaterClient.unstake('12');
    });

    after(async () => {
      await net?.close();
    });

    test("a staked provider's result stays pending, its job verifying and its earnings unpaid; it cannot unstake below what its open work could cost", async () => {
      const r1 = await requester();
      const job1 = await run(r1.client, 'job-one', 'c');
      jobs.push(job1);
      assert.equal(job1.state, 'verifying', job1.error ?? '');
      const t = taskOf(job1);
      assert.equal(t.providerId, net.identityOf(cheater).publicKey);
      assert.equal(t.verification?.state, 'pending');
      assert.ok(t.verification?.pendingUntil && Date.parse(t.verification.pendingUntil) > Date.now() + 60_000);
      assert.deepEqual(t.verification?.checks, [], 'a well-staked provider is rarely audited: p = c/(S+R)');
      const b = await cheaterClient.balance();
      assert.deepEqual([b.available, b.stake, b.unbonding], ['10', '8', '12'], 'earnings stay pending while the result can be checked');
      // 5 credits must stay staked behind the one open result (minSlash 5): unstaking 4 of 8 is refused.
      await assert.rejects(cheaterClient.unstake('4'), (e: { code?: string; message: string }) => e.code === 'STAKE_LOCKED' && /5 credits/.test(e.message));
      assert.equal((await cheaterClient.balance()).stake, '8');
    });

    test('a dispute upheld by a referee: bond back, refund, the provider slashed, and its earlier result re-audited, refuted by auditor and referee, refunded; both tasks wait to run again elsewhere', async () => {
      const r2 = await requester();
      const job2 = await run(r2.client, 'job-two', 'c');
      jobs.push(job2);
      assert.equal(job2.state, 'verifying');
      const before2 = await r2.client.balance();
      const opened = await call<{ id: string; bond: string; state: string }>(net.coordinator.url, r2.identity, 'POST', `/v1/jobs/${job2.id}/tasks/0/dispute`);
      assert.equal(opened.status, 201, JSON.stringify(opened.body));
      assert.equal(opened.body.bond, '1', 'the bond: the charge, at least minBond (1 credit)');
      assert.equal((await r2.client.balance()).available, String(Number(before2.available) - 1));
      const again = await call(net.coordinator.url, r2.identity, 'POST', `/v1/jobs/${job2.id}/tasks/0/dispute`);
      assert.equal(again.status, 409);
      assert.equal(again.body.error?.code, 'DISPUTE_EXISTS');

      const { db } = internalsOf(net.coordinator);
      const cheaterId = net.identityOf(cheater).publicKey;
      // (A view reads the job's row before its tasks: wait for one that shows the job after the verdict too.)
      const decided = await until(
        () => r2.client.get(job2.id),
        (j) => (taskOf(j).refuted ?? []).length > 0 && j.state !== 'verifying',
        { timeoutMs: WAIT_MS, what: 'the dispute to be decided' },
      );
      // Refuted with retries left: the task runs again inside the job, never on the cheater. No
      // other provider serves region c, so it waits (matching) for one.
      const t2 = taskOf(decided);
      assert.deepEqual([decided.state, t2.state, t2.attempts, t2.leaseId], ['matching', 'queued', 1, null]);
      assert.match(t2.error ?? '', /refuted/);
      assert.equal(t2.refuted?.[0]?.providerId, cheaterId);
      const dispute = t2.refuted?.[0]?.checks.find((c) => c.kind === 'dispute');
      assert.equal(dispute?.state, 'failed');
      assert.equal(dispute?.outcome, 'dispute-upheld');
      const excluded = await db.selectFrom('jobs').select('exclude_providers').where('id', '=', job2.id).executeTakeFirstOrThrow();
      assert.deepEqual(excluded.exclude_providers, [cheaterId]);
      // The refuted charge went back into the job's budget (for the re-run); bond back, and 20% of
      // the 5-credit slash as the finder's reward.
      const during2 = await r2.client.balance();
      assert.deepEqual([during2.available, during2.held], ['10', '1']);
      // The requester stops waiting: its whole budget comes back — nothing was spent.
      await r2.client.cancel(job2.id);
      const after2 = await r2.client.balance();
      assert.equal(after2.available, '11');
      assert.equal(after2.held, '0');

      // Backtracking: job one's result (never audited) is audited; the auditor disagrees, a referee sides with it.
      const job1 = jobs[0] as JobView;
      const r1 = requesters[0] as { client: GridworkClient };
      const refuted = await until(
        () => r1.client.get(job1.id),
        (j) => (taskOf(j).refuted ?? []).length > 0 && j.state !== 'verifying',
        { timeoutMs: WAIT_MS, what: 'the re-audit of job one' },
      );
      const t1 = taskOf(refuted);
      assert.deepEqual([refuted.state, t1.state], ['matching', 'queued'], 'job one was still verifying: its task runs again too');
      const kinds = Object.fromEntries((t1.refuted?.[0]?.checks ?? []).map((c) => [c.kind, `${c.state}/${c.outcome}`]));
      assert.deepEqual(kinds, { audit: 'failed/original-refuted', referee: 'failed/original-refuted' });
      assert.equal((await r1.client.balance()).held, '1', "the refuted charge is back in job one's budget");
      await r1.client.cancel(job1.id);
      assert.equal((await r1.client.balance()).available, '10', 'requester one gets back all it paid');

      // Two slashes of 5: 8 from stake, then 2 from the unbonding stake. The cheater was never paid.
      const b = await until(
        () => cheaterClient.balance(),
        (x) => x.stake === '0',
        { timeoutMs: WAIT_MS, what: 'the second slash' },
      );
      assert.deepEqual([b.available, b.stake, b.unbonding], ['10', '0', '10']);
      assert.deepEqual(
        b.unbondings.map((u) => u.amount),
        ['10'],
      );
      const p = await db.selectFrom('providers').select(['stake_slashed']).where('id', '=', net.identityOf(cheater).publicKey).executeTakeFirstOrThrow();
      assert.equal(p.stake_slashed, parseCredits('10'));
      await until(
        () => db.selectFrom('providers').select(['faults_proven', 'audits_failed']).where('id', '=', net.identityOf(cheater).publicKey).executeTakeFirstOrThrow(),
        (x) => x.faults_proven === 2 && x.audits_failed === 2,
        { what: 'reputation to count both proven faults and both failed audits' },
      );
      const audit = await verifyLedger(db);
      assert.equal(audit.total, 0n);
      assert.deepEqual(audit.mismatched, []);
      assert.deepEqual(audit.negative, []);
    });

    test('a canary (a known-answer task, paid by the protocol) catches a lazy provider', async () => {
      const honest = net.providers[1] as ProviderAgent;
      // The convicted cheater of the tests above is still online, but its stake was slashed to 0:
      // it can be no referee (its made-up answer is the lazy provider's, and would split them).
      const lazy = await net.addProvider({ attributes: { region: 'l' }, resultTamper: madeUp });
      const lazyClient = await net.fundedClient('10', net.identityOf(lazy));
      await lazyClient.stake('10');
      const r3 = await requester();
      const job3 = await run(r3.client, 'job-three', 'a');
      jobs.push(job3);
      assert.equal(job3.state, 'verifying');
      const t3 = taskOf(job3);
      assert.equal(t3.providerId, net.identityOf(honest).publicKey);
      // The verifier turns an audit-confirmed answer into a canary now and then; aim one at the lazy provider.
      const { units, db, lifecycle } = internalsOf(net.coordinator);
      const checkId = await units.run((uow) =>
        lifecycle.openCheck(uow, { kind: 'canary', leaseId: t3.leaseId as string, expectedDigest: t3.outputDigest as string, only: net.identityOf(lazy).publicKey }),
      );
      const done = await until(
        () => db.selectFrom('verifications').selectAll().where('id', '=', checkId).executeTakeFirstOrThrow(),
        (v) => v.state !== 'open',
        { timeoutMs: WAIT_MS, what: 'the canary' },
      );
      assert.equal(done.state, 'failed');
      assert.equal(done.outcome, 'canary-wrong');
      const lb = await until(
        () => lazyClient.balance(),
        (b) => b.stake !== '10',
        { what: 'the lazy provider to be slashed' },
      );
      assert.equal(lb.stake, '5', 'slashed minSlash (5 credits)');
      // The canary was the protocol's: the honest result it was drawn from is untouched.
      assert.equal(taskOf(await r3.client.get(job3.id)).verification?.state, 'pending');
    });

    test('disputes with bad input get stable codes: not yours, no such task, a bond you cannot pay, after the window', async () => {
      const job3 = jobs[2] as JobView;
      const r1 = requesters[0] as { identity: Identity };
      const stranger = await call(net.coordinator.url, r1.identity, 'POST', `/v1/jobs/${job3.id}/tasks/0/dispute`);
      assert.deepEqual([stranger.status, stranger.body.error?.code], [404, 'JOB_NOT_FOUND']);
      const r3 = requesters[2] as { identity: Identity; client: GridworkClient };
      const noTask = await call(net.coordinator.url, r3.identity, 'POST', `/v1/jobs/${job3.id}/tasks/7/dispute`);
      assert.deepEqual([noTask.status, noTask.body.error?.code], [404, 'TASK_NOT_FOUND']);
      const badIndex = await call(net.coordinator.url, r3.identity, 'POST', `/v1/jobs/${job3.id}/tasks/-1/dispute`);
      assert.equal(badIndex.status, 400);

      // A requester whose whole balance is held by its verifying job cannot post a bond.
      const poor = await requester('1');
      const job4 = await run(poor.client, 'job-four', 'a');
      assert.equal(job4.state, 'verifying');
      const broke = await call(net.coordinator.url, poor.identity, 'POST', `/v1/jobs/${job4.id}/tasks/0/dispute`);
      assert.deepEqual([broke.status, broke.body.error?.code], [402, 'INSUFFICIENT_FUNDS']);

      // The window closes: the result is paid, and a dispute comes too late.
      const { db } = internalsOf(net.coordinator);
      await db.updateTable('leases').set({ settle_at: new Date(Date.now() - 1000) }).where('id', '=', taskOf(job3).leaseId as string).execute();
      const late = await call(net.coordinator.url, r3.identity, 'POST', `/v1/jobs/${job3.id}/tasks/0/dispute`);
      assert.deepEqual([late.status, late.body.error?.code], [409, 'DISPUTE_WINDOW_CLOSED']);
      const settled = await until(() => r3.client.get(job3.id), (j) => j.state === 'succeeded', { what: 'the window to close and pay the result' });
      assert.equal(taskOf(settled).verification?.state, 'verified');
      const audit = await verifyLedger(db);
      assert.equal(audit.total, 0n);
      assert.deepEqual(audit.negative, []);
    });
  });
}
