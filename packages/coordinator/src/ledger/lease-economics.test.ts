import assert from 'node:assert/strict';
import { test } from 'node:test';
import fc from 'fast-check';
import { costOf, minimumBudget, plausibleUsage, resolveEconomics, splitEarnings } from './lease-economics.ts';

const cfg = resolveEconomics({ meteringIntervalMs: 10_000 });

test('a provider cannot bill more run time than has passed since its lease started (plus one period)', () => {
  const started = new Date(1_000_000);
  const now = 1_000_000 + 60_000;
  assert.equal(plausibleUsage(30_000, started, cfg, Number.POSITIVE_INFINITY, now), 30_000n, 'honest reports are billed as reported');
  assert.equal(plausibleUsage(65_000, started, cfg, Number.POSITIVE_INFINITY, now), 65_000n, 'within one period of slack');
  assert.equal(plausibleUsage(10_000_000_000, started, cfg, Number.POSITIVE_INFINITY, now), 70_000n, 'an over-report is cut to elapsed + one period');
  assert.equal(plausibleUsage(10_000_000_000, started, cfg, 45_000, now), 45_000n, 'and never beyond the time limit');
  assert.equal(plausibleUsage(5_000, new Date(now + 5_000), cfg, Number.POSITIVE_INFINITY, now), 5_000n, 'a start in the future (clock skew) still allows one period');
  assert.equal(plausibleUsage(-5, started, cfg, Number.POSITIVE_INFINITY, now), 0n);
});

test('metered cost rounds down and never exceeds price × time', () => {
  fc.assert(
    fc.property(fc.bigInt({ min: 0n, max: 10n ** 12n }), fc.bigInt({ min: 0n, max: 10n ** 10n }), (price, ms) => {
      const c = costOf(price, ms);
      assert.ok(c * 3_600_000n <= price * ms);
      assert.ok((c + 1n) * 3_600_000n > price * ms);
    }),
  );
});

test('earnings split: fee and reserve round up (small leases cannot escape them), the provider gets the rest, nothing is lost', () => {
  fc.assert(
    fc.property(fc.bigInt({ min: 0n, max: 10n ** 15n }), fc.integer({ min: 0, max: 5000 }), fc.integer({ min: 0, max: 5000 }), (earned, feeBps, reserveBps) => {
      const s = splitEarnings(earned, feeBps, reserveBps);
      assert.equal(s.provider + s.fee + s.reserve, earned);
      const exactFee = earned * BigInt(feeBps);
      assert.ok(s.fee * 10_000n >= exactFee || s.fee === earned, 'the fee is never rounded below its share');
      assert.ok((s.fee - 1n) * 10_000n < exactFee, 'nor above it by a whole micro-credit');
      if (earned > 0n && feeBps > 0) assert.ok(s.fee > 0n, 'a lease that earned anything pays a fee');
      assert.ok(s.provider >= 0n && s.reserve >= 0n);
    }),
  );
  assert.deepEqual(splitEarnings(49n, 200, 25), { provider: 47n, fee: 1n, reserve: 1n });
  assert.deepEqual(splitEarnings(1n, 200, 25), { provider: 0n, fee: 1n, reserve: 0n });
  assert.deepEqual(splitEarnings(1_000_000n, 200, 25), { provider: 977_500n, fee: 20_000n, reserve: 2_500n });
});

test('the minimum budget is one metering period at the max price (at least one micro-credit)', () => {
  assert.equal(minimumBudget(36_000_000n, cfg), 100_000n);
  assert.equal(minimumBudget(1n, cfg), 1n);
});
