/**
 * Conservation of money, as a property: random sequences of deposits, submissions (budget
 * holds), lease starts (escrow), metering ticks, completions, failures, provider losses,
 * cancellations, job ends and withdrawals, applied through the real ledger and lease economics
 * on a real database. After every sequence: the sum of all accounts is zero (ext:world is the
 * only account that goes negative), every cached balance equals the sum of its postings, and no
 * job spent more than its budget.
 */
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { after, before, describe, test } from 'node:test';
import { GridworkError, newId } from '@gridwork/protocol';
import fc from 'fast-check';
import {
  available,
  type BatchResult,
  balanceOf,
  earnedOf,
  escrowOf,
  holdOf,
  type LedgerTx,
  post,
  postMany,
  type Trx,
  verifyLedger,
  WORLD,
} from '../src/ledger/ledger.ts';
import { chargeUsage, fundLease, holdBudget, type LeaseMoney, releaseJob, resolveEconomics, settleLease } from '../src/ledger/lease-economics.ts';
import { type Db, openDatabase } from '../src/store/database.ts';
import { postgresUrl, uniqueSchema } from '@gridwork/testkit';

const economics = resolveEconomics({ meteringIntervalMs: 1000, feeBps: 200, reserveBps: 25 });
const accountId = () => randomBytes(32).toString('base64url');
/** Credits `amount` to `who` from outside (a deposit), under `key`. */
const depositTx = (who: string, amount: bigint, key = newId('req'), requestDigest?: string): LedgerTx => ({
  kind: 'deposit',
  key,
  ...(requestDigest === undefined ? {} : { requestDigest }),
  postings: [
    { account: WORLD, amount: -amount },
    { account: available(who), amount },
  ],
});

type Cmd =
  | { op: 'deposit'; who: number; amount: bigint }
  | { op: 'withdraw'; who: number; amount: bigint }
  | { op: 'submit'; who: number; budget: bigint }
  | { op: 'start'; job: number; provider: number; price: bigint }
  | { op: 'meter'; lease: number; ms: number }
  | { op: 'complete'; lease: number; ms: number }
  | { op: 'lose'; lease: number }
  | { op: 'cancel'; job: number }
  | { op: 'end'; job: number };

const amount = fc.bigInt({ min: 1n, max: 50_000_000n });
const cmd: fc.Arbitrary<Cmd> = fc.oneof(
  fc.record({ op: fc.constant('deposit' as const), who: fc.nat(2), amount }),
  fc.record({ op: fc.constant('withdraw' as const), who: fc.nat(4), amount }),
  fc.record({ op: fc.constant('submit' as const), who: fc.nat(2), budget: amount }),
  fc.record({ op: fc.constant('start' as const), job: fc.nat(7), provider: fc.nat(1), price: fc.bigInt({ min: 1n, max: 90_000_000n }) }),
  fc.record({ op: fc.constant('meter' as const), lease: fc.nat(9), ms: fc.integer({ min: 1, max: 5000 }) }),
  fc.record({ op: fc.constant('complete' as const), lease: fc.nat(9), ms: fc.integer({ min: 0, max: 5000 }) }),
  fc.record({ op: fc.constant('lose' as const), lease: fc.nat(9) }),
  fc.record({ op: fc.constant('cancel' as const), job: fc.nat(7) }),
  fc.record({ op: fc.constant('end' as const), job: fc.nat(7) }),
);

interface JobModel {
  id: string;
  owner: string;
  budget: bigint;
  open: boolean;
  leases: LeaseModel[];
}
interface LeaseModel {
  money: LeaseMoney;
  provider: string;
  active: boolean;
}

async function seedRows(db: Db, requesters: string[], providers: string[]): Promise<void> {
  await db
    .insertInto('accounts')
    .values([...requesters, ...providers].map((id) => ({ id })))
    .execute();
  const hardware = JSON.stringify({ cpu: { model: 'x', cores: 4 }, memoryGiB: 8, diskGiB: 10, gpus: [] });
  await db
    .insertInto('providers')
    .values(
      providers.map((id, i) => ({
        id,
        name: `p${i}`,
        state: 'online' as const,
        runtime: 'process',
        slots: 4,
        hardware,
        attributes: '{}',
        instance: 'i',
        last_seen_at: new Date(),
        in_seq: 0n,
        out_seq: 0n,
      })),
    )
    .execute();
}

async function runSequence(db: Db, cmds: Cmd[]): Promise<void> {
  const requesters = [accountId(), accountId(), accountId()];
  const providers = [accountId(), accountId()];
  const everyone = [...requesters, ...providers];
  await seedRows(db, requesters, providers);
  const jobs: JobModel[] = [];
  const leases: LeaseModel[] = [];
  const tx = <T>(fn: (trx: Trx) => Promise<T>) => db.transaction().execute(fn);

  for (const c of cmds) {
    switch (c.op) {
      case 'deposit':
        await tx((trx) => post(trx, depositTx(requesters[c.who] as string, c.amount)));
        break;
      case 'withdraw': {
        const who = everyone[c.who] as string;
        const before = await balanceOf(db, available(who));
        try {
          await tx((trx) =>
            post(trx, {
              kind: 'withdraw',
              key: newId('req'),
              postings: [
                { account: available(who), amount: -c.amount },
                { account: WORLD, amount: c.amount },
              ],
            }),
          );
          assert.ok(before >= c.amount, 'a withdrawal beyond the balance was accepted');
        } catch (err) {
          assert.ok(err instanceof GridworkError && err.code === 'INSUFFICIENT_FUNDS', String(err));
          assert.ok(before < c.amount, 'an affordable withdrawal was refused');
        }
        break;
      }
      case 'submit': {
        const owner = requesters[c.who] as string;
        const id = newId('job');
        const before = await balanceOf(db, available(owner));
        try {
          await tx(async (trx) => {
            await trx
              .insertInto('jobs')
              .values({
                id,
                owner,
                name: 'p',
                kind: 'batch',
                state: 'running',
                spec: '{}',
                bundle_manifest: null,
                error: null,
                created_at: new Date(),
                updated_at: new Date(),
                budget: c.budget,
                max_per_hour: 1n,
              })
              .execute();
            await holdBudget(trx, owner, id, c.budget);
          });
          assert.ok(before >= c.budget, 'a job beyond the balance was accepted');
          jobs.push({ id, owner, budget: c.budget, open: true, leases: [] });
        } catch (err) {
          assert.ok(err instanceof GridworkError && err.code === 'INSUFFICIENT_FUNDS', String(err));
          assert.ok(before < c.budget, 'an affordable job was refused');
        }
        break;
      }
      case 'start': {
        const job = jobs[c.job % Math.max(jobs.length, 1)];
        if (!job?.open) break;
        const provider = providers[c.provider] as string;
        const leaseId = newId('lease');
        const taskId = newId('task');
        const money: LeaseMoney = { id: leaseId, job_id: job.id, price_per_hour: c.price, usage_ms: 0n, charged: 0n };
        await tx(async (trx) => {
          await trx
            .insertInto('tasks')
            .values({ id: taskId, job_id: job.id, idx: job.leases.length, state: 'assigned', attempts: 0, inputs: '[]', outputs: '[]', queued_at: new Date() })
            .execute();
          await trx
            .insertInto('leases')
            .values({ id: leaseId, task_id: taskId, job_id: job.id, provider_id: provider, state: 'running', created_at: new Date(), price_per_hour: c.price })
            .execute();
          await fundLease(trx, money, 0n, economics);
        });
        const lease = { money, provider, active: true };
        job.leases.push(lease);
        leases.push(lease);
        break;
      }
      case 'meter': {
        const lease = leases[c.lease % Math.max(leases.length, 1)];
        if (!lease?.active) break;
        const usage = lease.money.usage_ms + BigInt(c.ms);
        await tx(async (trx) => {
          await chargeUsage(trx, lease.money, usage);
          await fundLease(trx, lease.money, usage, economics);
        });
        break;
      }
      case 'complete':
      case 'lose': {
        const lease = leases[c.lease % Math.max(leases.length, 1)];
        if (!lease?.active) break;
        await tx(async (trx) => {
          if (c.op === 'complete') await chargeUsage(trx, lease.money, lease.money.usage_ms + BigInt(c.ms));
          await settleLease(trx, lease.money, lease.provider, economics);
        });
        lease.active = false;
        break;
      }
      case 'cancel':
      case 'end': {
        const job = jobs[c.job % Math.max(jobs.length, 1)];
        if (!job?.open) break;
        if (c.op === 'end' && job.leases.some((l) => l.active)) break; // a job ends only when its leases have
        await tx(async (trx) => {
          for (const l of job.leases.filter((x) => x.active)) {
            await chargeUsage(trx, l.money, l.money.usage_ms + 250n);
            await settleLease(trx, l.money, l.provider, economics);
            l.active = false;
          }
          await releaseJob(trx, job.owner, job.id);
        });
        job.open = false;
        break;
      }
    }
  }

  const audit = await verifyLedger(db);
  assert.equal(audit.total, 0n, 'the sum of all accounts must stay zero');
  assert.deepEqual(audit.mismatched, [], 'cached balances must equal the sum of their postings');
  assert.deepEqual(audit.negative, [], 'only ext:world may be negative');
  for (const job of jobs) {
    const spent = job.leases.reduce((a, l) => a + l.money.charged, 0n);
    assert.ok(spent <= job.budget, `job ${job.id} spent ${spent} of a ${job.budget} budget`);
    const held = await balanceOf(db, holdOf(job.id));
    if (!job.open) assert.equal(held, 0n, 'a finished job keeps nothing on hold');
    for (const l of job.leases) {
      if (l.active) continue;
      assert.equal(await balanceOf(db, escrowOf(l.money.id)), 0n, 'a settled lease keeps no escrow');
      assert.equal(await balanceOf(db, earnedOf(l.money.id)), 0n, 'a settled lease has paid out what it earned');
    }
  }
}

for (const store of ['pglite', 'postgres'] as const) {
  describe(`ledger properties (${store})`, () => {
    let db: Db;
    before(async () => {
      db = store === 'pglite' ? await openDatabase({ dataDir: 'memory://' }) : await openDatabase({ url: postgresUrl(), schema: uniqueSchema('gw_ledger') });
    });
    after(async () => {
      await db?.destroy();
    });

    test('money is conserved, never negative, never beyond a budget', { timeout: 240_000 }, async () => {
      await fc.assert(
        fc.asyncProperty(fc.array(cmd, { minLength: 5, maxLength: 40 }), (cmds) => runSequence(db, cmds)),
        { numRuns: store === 'pglite' ? 60 : 40 },
      );
    });

    test('a batch (postMany) has exactly the outcome of posting its transactions one by one', { timeout: 120_000 }, async () => {
      const transfer = fc.record({ from: fc.nat(4), to: fc.nat(4), amount: fc.bigInt({ min: 1n, max: 2_000n }), key: fc.nat(30) });
      await fc.assert(
        fc.asyncProperty(fc.array(transfer, { minLength: 1, maxLength: 40 }), async (transfers) => {
          const sets = [0, 1].map(() => Array.from({ length: 4 }, () => accountId()));
          const run = newId('req');
          // Index 4 is the outside world, so deposits and withdrawals are in the mix.
          const txsFor = (set: string[], tag: string): LedgerTx[] =>
            transfers.map((t) => ({
              kind: 'transfer',
              key: `${run}:${tag}:${t.key}`,
              postings: [
                { account: t.from === 4 ? WORLD : available(set[t.from] as string), amount: -t.amount },
                { account: t.to === 4 ? WORLD : available(set[t.to] as string), amount: t.amount },
              ],
            }));
          const batched = await db.transaction().execute((trx) => postMany(trx, txsFor(sets[0] as string[], 'a')));
          const single: BatchResult[] = [];
          for (const t of txsFor(sets[1] as string[], 'b')) {
            try {
              single.push(await db.transaction().execute((trx) => post(trx, t)));
            } catch (err) {
              assert.ok(err instanceof GridworkError && err.code === 'INSUFFICIENT_FUNDS', String(err));
              single.push('refused');
            }
          }
          assert.deepEqual(batched, single);
          for (let i = 0; i < 4; i++) {
            assert.equal(
              await balanceOf(db, available((sets[0] as string[])[i] as string)),
              await balanceOf(db, available((sets[1] as string[])[i] as string)),
            );
          }
        }),
        { numRuns: 40 },
      );
      const audit = await verifyLedger(db);
      assert.equal(audit.total, 0n);
      assert.deepEqual(audit.mismatched, []);
      assert.deepEqual(audit.negative, []);
    });

    test('posting the same idempotency key twice moves money once', async () => {
      const who = accountId();
      const key = newId('req');
      const t = depositTx(who, 5n, key);
      assert.equal(await db.transaction().execute((trx) => post(trx, t)), 'posted');
      assert.equal(await db.transaction().execute((trx) => post(trx, t)), 'duplicate');
      assert.equal(await balanceOf(db, available(who)), 5n);
    });

    test('the same key with another request is refused', async () => {
      const who = accountId();
      const key = newId('req');
      await db.transaction().execute((trx) => post(trx, depositTx(who, 5n, key, 'a')));
      await assert.rejects(
        db.transaction().execute((trx) => post(trx, depositTx(who, 7n, key, 'b'))),
        (err: unknown) => err instanceof GridworkError && err.code === 'IDEMPOTENCY_CONFLICT',
      );
      assert.equal(await balanceOf(db, available(who)), 5n);
    });

    test('a refused transfer writes nothing: its transaction goes on, and its key stays free', async () => {
      const who = accountId();
      const key = newId('req');
      const transfer = (amount: bigint) => ({
        kind: 'withdraw',
        key,
        postings: [
          { account: available(who), amount: -amount },
          { account: WORLD, amount },
        ],
      });
      await db.transaction().execute((trx) => post(trx, depositTx(who, 10n)));
      const outcome = await db.transaction().execute(async (trx) => {
        await assert.rejects(post(trx, transfer(11n)), (err: unknown) => err instanceof GridworkError && err.code === 'INSUFFICIENT_FUNDS');
        // The same transaction goes on; the key was not used up by the refusal.
        return post(trx, transfer(4n));
      });
      assert.equal(outcome, 'posted');
      assert.equal(await balanceOf(db, available(who)), 6n);
      const rows = await db.selectFrom('ledger_transactions').select('id').where('idempotency_key', '=', key).execute();
      assert.equal(rows.length, 1);
    });

    test('twins racing with one key in concurrent transactions move money once', async () => {
      const who = accountId();
      const key = newId('req');
      const t = depositTx(who, 3n, key);
      const results = await Promise.all(Array.from({ length: 8 }, () => db.transaction().execute((trx) => post(trx, t))));
      assert.equal(results.filter((r) => r === 'posted').length, 1);
      assert.equal(results.filter((r) => r === 'duplicate').length, 7);
      assert.equal(await balanceOf(db, available(who)), 3n);
      const audit = await verifyLedger(db);
      assert.deepEqual(audit.mismatched, []);
    });

    test('an unbalanced transaction is refused before anything is written', async () => {
      const who = accountId();
      const key = newId('req');
      await assert.rejects(
        db.transaction().execute((trx) => post(trx, { kind: 'bad', key, postings: [{ account: available(who), amount: 5n }] })),
        /unbalanced/,
      );
      const row = await db.selectFrom('ledger_transactions').select('id').where('idempotency_key', '=', key).executeTakeFirst();
      assert.equal(row, undefined);
    });
  });
}
