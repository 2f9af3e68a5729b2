/**
 * Money over the real HTTP API, on PGlite and PostgreSQL: bad amounts, idempotency, the dev
 * faucet, operator credits, withdrawals, and many submissions racing for one balance.
 */
import { internalsOf } from '@gridwork/coordinator/internal';
import assert from 'node:assert/strict';
import { mkdir, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { formatCredits, type JobSpec } from '@gridwork/protocol';
import { generateIdentity, signRequest } from '@gridwork/protocol/node';
import { GridworkClient, GridworkError } from '@gridwork/sdk';
import { startTestNetwork, type TestNetwork, until } from '@gridwork/testkit';
import { verifyLedger } from '../src/ledger/ledger.ts';

const spec = (price: JobSpec['price']): JobSpec => ({
  version: 1,
  name: 'money',
  kind: 'batch',
  runtime: { kind: 'bundle', path: '.', command: ['node', 'x.mjs'] },
  resources: { cpu: 1, memoryGiB: 1 },
  ...(price ? { price } : {}),
});

async function rejects(p: Promise<unknown>, code: string, message?: RegExp): Promise<void> {
  await assert.rejects(p, (err: unknown) => {
    assert.ok(err instanceof GridworkError, `expected a GridworkError, got ${err}`);
    assert.equal(err.code, code, err.message);
    if (message) assert.match(err.message, message);
    return true;
  });
}

for (const store of ['pglite', 'postgres'] as const) {
  describe(`money API (${store})`, () => {
    let net: TestNetwork;
    let bundleDir: string;
    before(async () => {
      net = await startTestNetwork({ store, coordinator: { economics: { meteringIntervalMs: 10_000 } } });
      bundleDir = join(net.dir, 'bundle');
      await mkdir(bundleDir, { recursive: true });
      await writeFile(join(bundleDir, 'x.mjs'), 'console.log(1)\n');
    });
    after(async () => {
      await net?.close();
    });

    test('deposits: bad amounts are refused with INVALID_AMOUNT and change nothing', async () => {
      const c = net.client();
      for (const amount of ['-1', 'abc', '1.0000001', '9223372036854.775808', '1e3', '', ' 1', '0x10', '0']) {
        await rejects(c.deposit(amount), 'INVALID_AMOUNT');
      }
      assert.equal((await c.balance()).available, '0');
      // A number instead of a decimal string is refused by the schema (no coercion).
      const id = generateIdentity();
      const body = JSON.stringify({ amount: 5, idempotencyKey: 'k-12345678' });
      const res = await fetch(`${net.coordinator.url}/v1/account/deposit`, {
        method: 'POST',
        headers: { 'content-type': 'application/json', ...signRequest(id, 'POST', '/v1/account/deposit', body) },
        body,
      });
      assert.equal(res.status, 400);
      assert.equal(((await res.json()) as { error: { code: string } }).error.code, 'VALIDATION_FAILED');
    });

    test('the largest amount that fits is accepted by the parser but not by the faucet limit', async () => {
      await rejects(net.client().deposit('9223372036854.775807'), 'INVALID_AMOUNT', /at most 1000/);
    });

    test('a deposit retried with the same idempotency key counts once; another amount under it is refused', async () => {
      const c = net.client();
      await c.deposit('3', { idempotencyKey: 'deposit-once-1' });
      await c.deposit('3', { idempotencyKey: 'deposit-once-1' });
      assert.equal((await c.balance()).available, '3');
      await rejects(c.deposit('4', { idempotencyKey: 'deposit-once-1' }), 'IDEMPOTENCY_CONFLICT');
      assert.equal((await c.balance()).available, '3');
      const history = await c.history();
      assert.equal(history.filter((h) => h.kind === 'deposit').length, 1);
      assert.equal(history[0]?.change, '3');
    });

    test('withdrawals cannot overdraw', async () => {
      const c = await net.fundedClient('2');
      await rejects(c.withdraw('2.000001'), 'INSUFFICIENT_FUNDS', /2 available/);
      assert.equal((await c.withdraw('1.5')).available, '0.5');
    });

    test('submissions: no price, zero max price, budget under one metering period, unaffordable budget', async () => {
      const c = await net.fundedClient('5');
      await rejects(c.submit(spec(undefined), { baseDir: bundleDir }), 'INVALID_SPEC', /price/);
      await rejects(c.submit(spec({ maxPerHour: '0', budget: '1' }), { baseDir: bundleDir }), 'INVALID_SPEC', /maxPerHour/);
      await rejects(c.submit(spec({ maxPerHour: '-1', budget: '1' }), { baseDir: bundleDir }), 'INVALID_SPEC', /maxPerHour/);
      await rejects(c.submit(spec({ maxPerHour: '1', budget: '1.0000001' }), { baseDir: bundleDir }), 'INVALID_SPEC', /budget/);
      // One 10 s metering period at 36 credits/h costs 0.1 credits.
      await rejects(c.submit(spec({ maxPerHour: '36', budget: '0.099999' }), { baseDir: bundleDir }), 'BUDGET_TOO_LOW', /at least 0.1/);
      await rejects(c.submit(spec({ maxPerHour: '36', budget: '5.000001' }), { baseDir: bundleDir }), 'INSUFFICIENT_FUNDS');
      assert.equal((await c.list()).length, 0, 'no refused submission created a job');
      const ok = await c.submit(spec({ maxPerHour: '36', budget: '0.1' }), { baseDir: bundleDir });
      assert.equal(ok.money.budget, '0.1');
      const b = await c.balance();
      assert.equal(b.available, '4.9');
      assert.equal(b.held, '0.1');
      await c.cancel(ok.id);
      assert.equal((await c.balance()).available, '5', 'a cancelled job that ran nothing returns its whole budget');
    });

    test('many submissions racing for one balance: exactly the affordable ones are accepted', async () => {
      const c = await net.fundedClient('5');
      const attempts = 12;
      const results = await Promise.allSettled(
        Array.from({ length: attempts }, () => c.submit(spec({ maxPerHour: '1', budget: '1' }), { baseDir: bundleDir })),
      );
      const accepted = results.filter((r) => r.status === 'fulfilled');
      const refused = results.filter((r): r is PromiseRejectedResult => r.status === 'rejected');
      assert.equal(accepted.length, 5);
      for (const r of refused) assert.equal((r.reason as GridworkError).code, 'INSUFFICIENT_FUNDS');
      const b = await c.balance();
      assert.equal(b.available, '0');
      assert.equal(b.held, '5');
      assert.equal((await c.list()).length, 5);
    });

    test('the faucet is development-only; operators credit accounts; nobody else can', async () => {
      const operator = generateIdentity();
      const prod = await startTestNetwork({ store, coordinator: { dev: false, operators: [operator.publicKey] } });
      try {
        const user = prod.client();
        await rejects(user.deposit('1'), 'DEV_ONLY', /--dev/);
        await rejects(user.credit(user.accountId, '1'), 'FORBIDDEN');
        const asOperator = new GridworkClient({ url: prod.coordinator.url, identity: operator });
        assert.equal((await asOperator.credit(user.accountId, '7.25')).available, '7.25');
        assert.equal((await user.balance()).available, '7.25');
        await rejects(asOperator.credit(user.accountId, '-1'), 'INVALID_AMOUNT');
      } finally {
        await prod.close();
      }
    });

    test('stake and unstake: unbonding holds credits until the delay has passed', async () => {
      const quick = await startTestNetwork({ store, coordinator: { unbondingDelayMs: 300, economics: { meteringIntervalMs: 100 } } });
      try {
        const p = await quick.fundedClient('10');
        await rejects(p.stake('10.5'), 'INSUFFICIENT_FUNDS');
        let b = await p.stake('4');
        assert.deepEqual([b.available, b.stake], ['6', '4']);
        await rejects(p.unstake('5'), 'INSUFFICIENT_FUNDS');
        b = await p.unstake('1.5');
        assert.deepEqual([b.available, b.stake, b.unbonding], ['6', '2.5', '1.5']);
        assert.equal(b.unbondings.length, 1);
        const released = await until(
          () => p.balance(),
          (x) => x.unbonding === '0',
          { timeoutMs: 10_000, what: 'unbonding release' },
        );
        assert.deepEqual([released.available, released.stake], ['7.5', '2.5']);
      } finally {
        await quick.close();
      }
    });

    test('the ledger balances after all of the above', async () => {
      const audit = await verifyLedger(internalsOf(net.coordinator).db);
      assert.equal(audit.total, 0n);
      assert.deepEqual(audit.mismatched, []);
      assert.deepEqual(audit.negative, []);
      assert.ok(audit.transactions > 10, formatCredits(BigInt(audit.transactions)));
    });
  });
}
