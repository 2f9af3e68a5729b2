/**
 * The money side of jobs and leases, always inside the caller's database transaction so the
 * money moves exactly when the state changes, once.
 *
 * Rounding rules (all integer micro-credits):
 *  - metered cost of `ms` at `pricePerHour` µc/h is floor(pricePerHour × ms / 3_600_000); it is
 *    computed from the cumulative usage each time, so rounding never accumulates;
 *  - protocol fee = ceil(earned × feeBps / 10_000), reserve = ceil(earned × reserveBps / 10_000)
 *    (each at most what is left), the provider gets the rest: rounding never lets a small lease
 *    escape the fee (a lease that earned 1 µc pays it all as fee);
 *  - escrow is topped up to cover the metered usage plus `escrowPeriods` metering periods, from
 *    the job's hold, never beyond it: a job never spends more than its budget.
 */
import { GridworkError } from '@gridwork/protocol';
import { available, earnedOf, escrowOf, FEES, holdOf, post, RESERVE, type Trx, balanceOf } from './ledger.ts';

export interface EconomicsConfig {
  /** Protocol fee in basis points of what a provider earns. @default 200 (2%) */
  feeBps: number;
  /** Reserve share in basis points. @default 25 (0.25%) */
  reserveBps: number;
  /** How often providers report usage. @default 10_000 */
  meteringIntervalMs: number;
  /** Metering periods of escrow kept ahead of usage. @default 2 */
  escrowPeriods: number;
  /** How long a job whose budget cannot fund its leases keeps running before they stop. @default 2 metering periods */
  lowBalanceGraceMs: number;
}

export function resolveEconomics(o: Partial<EconomicsConfig> = {}): EconomicsConfig {
  const meteringIntervalMs = o.meteringIntervalMs ?? 10_000;
  return {
    feeBps: o.feeBps ?? 200,
    reserveBps: o.reserveBps ?? 25,
    meteringIntervalMs,
    escrowPeriods: o.escrowPeriods ?? 2,
    lowBalanceGraceMs: o.lowBalanceGraceMs ?? 2 * meteringIntervalMs,
  };
}

const MS_PER_HOUR = 3_600_000n;

export function costOf(pricePerHour: bigint, ms: bigint): bigint {
  return (pricePerHour * ms) / MS_PER_HOUR;
}

/** Rounded up, never beyond what is left: a lease too small for a whole micro-credit of fee still pays one. */
export function splitEarnings(earned: bigint, feeBps: number, reserveBps: number): { provider: bigint; fee: bigint; reserve: bigint } {
  const share = (bps: number, cap: bigint) => {
    const x = (earned * BigInt(bps) + 9_999n) / 10_000n;
    return x < cap ? x : cap;
  };
  const fee = share(feeBps, earned);
  const reserve = share(reserveBps, earned - fee);
  return { provider: earned - fee - reserve, fee, reserve };
}

/**
 * Run time a provider may bill: what it reports, but never more than has passed on this
 * coordinator's clock since the lease started, plus one metering period of slack for clock
 * skew and report delay, and never more than the task's time limit (`limitMs`). A provider
 * cannot drain a budget by over-reporting.
 */
export function plausibleUsage(reportedMs: number, startedAt: Date, cfg: EconomicsConfig, limitMs = Number.POSITIVE_INFINITY, now = Date.now()): bigint {
  // Nor more than the task's time limit: a provider that does not stop a task at its limit
  // is not paid for the overrun.
  const ceiling = Math.min(Math.max(0, now - startedAt.getTime()) + cfg.meteringIntervalMs, limitMs);
  return BigInt(Math.max(0, Math.min(reportedMs, ceiling)));
}

/** The balance of an account, locked for the rest of the transaction (so amounts computed from it stay true). */
export async function lockedBalance(trx: Trx, account: string): Promise<bigint> {
  // One statement: creates the row at zero where missing, else locks it as it is.
  const row = await trx
    .insertInto('ledger_balances')
    .values({ account, balance: 0n })
    .onConflict((oc) => oc.column('account').doUpdateSet((eb) => ({ balance: eb.ref('ledger_balances.balance') })))
    .returning('balance')
    .executeTakeFirstOrThrow();
  return row.balance;
}

/** The least budget a job may have: one metering period of one task at its max price. */
export function minimumBudget(maxPerHour: bigint, cfg: EconomicsConfig): bigint {
  return costOf(maxPerHour, BigInt(cfg.meteringIntervalMs)) || 1n;
}

/** Holds a job's whole budget from the owner's available balance (refused if it cannot be covered). */
export async function holdBudget(trx: Trx, owner: string, jobId: string, budget: bigint): Promise<void> {
  await post(trx, {
    kind: 'job.hold',
    key: `hold:${jobId}`,
    postings: [
      { account: available(owner), amount: -budget },
      { account: holdOf(jobId), amount: budget },
    ],
    memo: { jobId },
  });
}

/** Adds to a running job's budget. */
export async function addBudget(trx: Trx, owner: string, jobId: string, amount: bigint, key: string, requestDigest: string): Promise<boolean> {
  const r = await post(trx, {
    kind: 'job.topup',
    key,
    requestDigest,
    postings: [
      { account: available(owner), amount: -amount },
      { account: holdOf(jobId), amount },
    ],
    memo: { jobId },
  });
  return r === 'posted';
}

export interface LeaseMoney {
  id: string;
  job_id: string;
  price_per_hour: bigint;
  usage_ms: bigint;
  charged: bigint;
}

/**
 * Tops the lease's escrow up to cover `usageMs` plus the periods ahead, from the job's hold.
 * Returns false when the hold could not cover the full target (low balance). A caller that knows
 * the escrow's balance, or holds the hold's row locked (`lockedBalance`), passes them in `known`.
 */
export async function fundLease(
  trx: Trx,
  lease: LeaseMoney,
  usageMs: bigint,
  cfg: EconomicsConfig,
  known: { escrow?: bigint; lockedHold?: bigint } = {},
): Promise<boolean> {
  const target = costOf(lease.price_per_hour, usageMs + BigInt(cfg.meteringIntervalMs * cfg.escrowPeriods)) - lease.charged;
  const escrow = known.escrow ?? (await balanceOf(trx, escrowOf(lease.id)));
  const need = target - escrow;
  if (need <= 0n) return true;
  const hold = known.lockedHold ?? (await lockedBalance(trx, holdOf(lease.job_id)));
  const amount = need < hold ? need : hold;
  if (amount > 0n) {
    await post(trx, {
      kind: 'lease.escrow',
      // (usage, charged, escrow) never repeats for a lease once escrow has moved, so neither does the key.
      key: `escrow:${lease.id}:${usageMs}:${lease.charged}:${escrow}`,
      postings: [
        { account: holdOf(lease.job_id), amount: -amount },
        { account: escrowOf(lease.id), amount },
      ],
      memo: { leaseId: lease.id, jobId: lease.job_id },
    });
  }
  return amount === need;
}

/**
 * Charges metered usage from the lease's escrow (never beyond what the escrow holds). Updates
 * `lease.usage_ms` and `lease.charged` in memory and returns the new charged total; the
 * lifecycle records them on the lease row.
 */
export async function chargeUsage(trx: Trx, lease: LeaseMoney, usageMs: bigint): Promise<bigint> {
  if (usageMs <= lease.usage_ms) return lease.charged;
  const due = costOf(lease.price_per_hour, usageMs) - lease.charged;
  const escrow = await balanceOf(trx, escrowOf(lease.id));
  const amount = due < escrow ? due : escrow;
  if (amount > 0n) {
    await post(trx, {
      kind: 'lease.charge',
      key: `charge:${lease.id}:${usageMs}`,
      postings: [
        { account: escrowOf(lease.id), amount: -amount },
        { account: earnedOf(lease.id), amount },
      ],
      memo: { leaseId: lease.id, usageMs: usageMs.toString() },
    });
  }
  const charged = lease.charged + (amount > 0n ? amount : 0n);
  lease.usage_ms = usageMs;
  lease.charged = charged;
  return charged;
}

/**
 * Lowers what a lease has charged to the cost of `usageMs` (a lost training lease is paid only up
 * to its last checkpoint: the work after it is lost). The difference goes from its earnings back
 * to its escrow (and with the escrow to the job's hold when the lease settles).
 */
export async function capCharge(trx: Trx, lease: LeaseMoney, usageMs: bigint): Promise<void> {
  const target = costOf(lease.price_per_hour, usageMs);
  if (lease.charged <= target) {
    // Metered a little past the checkpoint at the same cost (rounding): the usage is still capped.
    if (lease.usage_ms > usageMs) lease.usage_ms = usageMs;
    return;
  }
  const back = lease.charged - target;
  await post(trx, {
    kind: 'lease.uncharge',
    key: `uncharge:${lease.id}`,
    postings: [
      { account: earnedOf(lease.id), amount: -back },
      { account: escrowOf(lease.id), amount: back },
    ],
    memo: { leaseId: lease.id, usageMs: usageMs.toString(), why: 'paid only up to the last checkpoint' },
  });
  lease.charged = target;
  lease.usage_ms = usageMs;
}

/** Returns a lease's unused escrow to its job's hold (the lease has ended). */
export async function returnEscrow(trx: Trx, lease: Pick<LeaseMoney, 'id' | 'job_id'>): Promise<void> {
  const escrow = await balanceOf(trx, escrowOf(lease.id));
  if (escrow === 0n) return;
  await post(trx, {
    kind: 'lease.escrow-return',
    key: `escrow-return:${lease.id}`,
    postings: [
      { account: escrowOf(lease.id), amount: -escrow },
      { account: holdOf(lease.job_id), amount: escrow },
    ],
    memo: { leaseId: lease.id, jobId: lease.job_id },
  });
}

/** Pays the provider what the lease earned, minus the protocol fee and the reserve share. */
export async function payEarnings(
  trx: Trx,
  lease: Pick<LeaseMoney, 'id' | 'job_id'>,
  providerId: string,
  cfg: EconomicsConfig,
): Promise<{ earned: bigint; provider: bigint; fee: bigint; reserve: bigint }> {
  const earned = await balanceOf(trx, earnedOf(lease.id));
  const split = splitEarnings(earned, cfg.feeBps, cfg.reserveBps);
  await post(trx, {
    kind: 'lease.settle',
    key: `settle:${lease.id}`,
    postings: [
      { account: earnedOf(lease.id), amount: -earned },
      { account: available(providerId), amount: split.provider },
      { account: FEES, amount: split.fee },
      { account: RESERVE, amount: split.reserve },
    ],
    memo: { leaseId: lease.id, jobId: lease.job_id, providerId, earned: earned.toString() },
  });
  return { earned, ...split };
}

/**
 * A result that failed verification: what the lease earned, still pending, is not its provider's.
 * It goes back where it came from (`to: 'hold'`) — the job's hold, while the job is open and the
 * refuted task runs again, so the re-run is paid from it and the job's end returns what is left —
 * or (`to: 'requester'`) straight to the requester's available balance, when the job has ended or
 * the task will not run again. One refund per lease (the key), whichever way it went; the memo says
 * which and why.
 */
export async function refundEarnings(
  trx: Trx,
  lease: Pick<LeaseMoney, 'id' | 'job_id'>,
  requester: string,
  reason: string,
  to: 'requester' | 'hold' = 'requester',
): Promise<bigint> {
  const earned = await balanceOf(trx, earnedOf(lease.id));
  if (earned === 0n) return 0n;
  await post(trx, {
    kind: 'lease.refund',
    key: `refund:${lease.id}`,
    postings: [
      { account: earnedOf(lease.id), amount: -earned },
      { account: to === 'hold' ? holdOf(lease.job_id) : available(requester), amount: earned },
    ],
    memo: {
      leaseId: lease.id,
      jobId: lease.job_id,
      to,
      reason,
      why: to === 'hold' ? 'refuted result: back to the job budget, which pays its re-run' : 'refuted result: back to the requester',
    },
  });
  return earned;
}

/** Pays the provider what the lease earned (minus fee and reserve) and returns unused escrow to the hold. */
export async function settleLease(
  trx: Trx,
  lease: LeaseMoney,
  providerId: string,
  cfg: EconomicsConfig,
): Promise<{ earned: bigint; provider: bigint; fee: bigint; reserve: bigint }> {
  await returnEscrow(trx, lease);
  return payEarnings(trx, lease, providerId, cfg);
}

/**
 * Returns what is left of a finished job's budget to its owner, or (`null`: a protocol check job)
 * to whoever funded the check: `sys:fees` or the reserve first, then the checked result's pending
 * earnings (a mandatory audit is paid from those first, so what it spent comes from them first).
 */
export async function releaseJob(trx: Trx, owner: string | null, jobId: string): Promise<bigint> {
  const hold = await lockedBalance(trx, holdOf(jobId));
  if (hold < 0n) throw new GridworkError('INTERNAL', `job ${jobId} hold is negative`);
  const back: { account: string; amount: bigint }[] = [];
  if (owner !== null) back.push({ account: available(owner), amount: hold });
  else {
    const to = new Map<string, bigint>();
    let left = hold;
    for (const f of await checkFunding(trx, jobId)) {
      const give = f.amount < left ? f.amount : left;
      to.set(f.account, (to.get(f.account) ?? 0n) + give);
      left -= give;
    }
    to.set(FEES, (to.get(FEES) ?? 0n) + left);
    for (const [account, amount] of to) if (amount > 0n) back.push({ account, amount });
    if (back.length === 0) back.push({ account: FEES, amount: 0n });
  }
  await post(trx, {
    kind: 'job.release',
    key: `release:${jobId}`,
    postings: [{ account: holdOf(jobId), amount: -hold }, ...back],
    memo: { jobId },
  });
  return hold;
}

/** Who paid for a check job (its `check.fund` postings), pending earnings last. */
async function checkFunding(trx: Trx, jobId: string): Promise<{ account: string; amount: bigint }[]> {
  const rows = await trx
    .selectFrom('ledger_postings as hold')
    .innerJoin('ledger_transactions as t', 't.id', 'hold.tx_id')
    .innerJoin('ledger_postings as src', 'src.tx_id', 'hold.tx_id')
    .select(['src.account', 'src.amount'])
    .where('hold.account', '=', holdOf(jobId))
    .where('t.kind', '=', 'check.fund')
    .where('src.amount', '<', 0n)
    .execute();
  const funding: { account: string; amount: bigint }[] = [];
  for (const r of rows) {
    let account = r.account;
    const leaseId = /^lease:(.+):earned$/.exec(account)?.[1];
    if (leaseId) {
      // The result was settled while its audit ran (paid, or refuted and refunded): what comes back
      // now belongs to neither side any more, and goes to the verification fund.
      const lease = await trx.selectFrom('leases').select('verification').where('id', '=', leaseId).executeTakeFirst();
      if (lease?.verification !== 'pending' && lease?.verification !== 'disputed') account = FEES;
    }
    funding.push({ account, amount: -BigInt(r.amount) });
  }
  return funding.sort((a, b) => Number(a.account.endsWith(':earned')) - Number(b.account.endsWith(':earned')));
}
