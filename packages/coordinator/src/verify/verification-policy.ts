/**
 * The rules of result verification (trust layers L0, L3–L6), as numbers and pure functions:
 * how likely a finished task is audited, how long its earnings stay pending, what a proven
 * fault costs, what a dispute bond is. The rest of verify/ and the lifecycle apply them.
 *
 * Audit rate (DESIGN.md, L0): cheating on a task saves the provider at most its cost c and
 * keeps the price R; caught with probability p it loses what it has at stake S and R. Cheating
 * does not pay when p ≥ c/(S + R). We price c and R by what the lease charged, and S is what a
 * proven fault would take (its stake, at most the slash), so
 *     p = max(minAuditRate, charged / (min(stake, slash) + charged)),
 * and a provider is on probation — every completed task audited — until its last
 * `probationTasks` audits in a row passed: a new provider, and one just caught cheating, alike.
 * Its record of consecutive valid audits is what earns it the lower rate.
 *
 * Who pays for checks: the protocol, from `sys:fees` (the 2% fee on every lease is the
 * verification share); a check never draws on a requester's budget. A dev coordinator seeds
 * `sys:fees` with `genesisFees` so audits run from the first task.
 */
import { parseCredits } from '@gridwork/protocol';
import { createHmac } from 'node:crypto';

export interface VerificationConfig {
  /** Verify results at all (audits, canaries, pending earnings). Tests of other things turn it off. @default true */
  enabled: boolean;
  /** How long a finished task's earnings stay pending, open to audits and disputes. @default 10 min */
  windowMs: number;
  /** Least audit probability of any completed task. @default 0.01 */
  minAuditRate: number;
  /** Most audit probability outside probation (an unstaked provider's p is 1); tests of other things set 0. @default 1 */
  maxAuditRate: number;
  /** Every completed task of a provider is audited until N audits in a row have passed (new, or caught). @default 10 */
  probationTasks: number;
  /** Chance that a completed, audit-confirmed task becomes a canary for another provider. @default 0.02 */
  canaryRate: number;
  /** A proven fault costs this multiple of the lease's charge (at least `minSlash`), from stake then unbonding stake. @default 20 */
  slashMultiple: number;
  /** Least slash per proven fault, µc: small leases cannot escape it. @default 1 credit */
  minSlash: bigint;
  /** Share of a slash paid to whoever proved the fault (the auditor, or the disputing requester), basis points. @default 2000 */
  finderRewardBps: number;
  /** Least dispute bond, µc; a bond is at least the disputed lease's charge. @default 1 credit */
  minBond: bigint;
  /** A check (audit, canary, referee) still open after this is abandoned. @default 30 min */
  checkTimeoutMs: number;
  /** A check may pay its provider up to this multiple of the checked lease's price per hour. @default 2 */
  checkPriceMultiple: number;
  /** Audits of one result that may end without a verdict before it is refused as unverifiable (nobody blamed). @default 3 */
  maxAuditRounds: number;
  /** Most earlier results re-audited after a proven fault (backtracking). @default 50 */
  backtrackLimit: number;
  /** Capacity challenges missed in a row that count as proven capacity fraud (slashed). @default 3, the eligibility streak */
  maxConsecutiveChallengeFailures: number;
  /** Credits a dev coordinator puts into `sys:fees` at start, so checks can be paid for at once. @default '100' in dev, '0' otherwise */
  genesisFees: bigint;
}

export type VerificationOptions = Partial<Omit<VerificationConfig, 'minSlash' | 'minBond' | 'genesisFees'>> & {
  minSlash?: string;
  minBond?: string;
  genesisFees?: string;
};

export function resolveVerification(o: VerificationOptions = {}, dev = false): VerificationConfig {
  return {
    enabled: o.enabled ?? true,
    windowMs: o.windowMs ?? 10 * 60_000,
    minAuditRate: o.minAuditRate ?? 0.01,
    maxAuditRate: o.maxAuditRate ?? 1,
    probationTasks: o.probationTasks ?? 10,
    canaryRate: o.canaryRate ?? 0.02,
    slashMultiple: o.slashMultiple ?? 100,
    minSlash: parseCredits(o.minSlash ?? '1'),
    finderRewardBps: o.finderRewardBps ?? 2000,
    minBond: parseCredits(o.minBond ?? '1'),
    checkTimeoutMs: o.checkTimeoutMs ?? 30 * 60_000,
    checkPriceMultiple: o.checkPriceMultiple ?? 2,
    maxAuditRounds: o.maxAuditRounds ?? 3,
    backtrackLimit: o.backtrackLimit ?? 50,
    maxConsecutiveChallengeFailures: o.maxConsecutiveChallengeFailures ?? 3,
    genesisFees: parseCredits(o.genesisFees ?? (dev ? '100' : '0'), { allowZero: true }),
  };
}

/**
 * p = max(floor, c / (S + R)) with c = R = what the lease charged, S what a proven fault would
 * actually cost it (its stake, at most the slash) — at most the cap; 1 on probation.
 */
export function auditRate(charged: bigint, stake: bigint, auditStreak: number, cfg: VerificationConfig): number {
  if (auditStreak < cfg.probationTasks) return 1;
  const slash = slashFor(charged, cfg);
  const total = (stake < slash ? stake : slash) + charged;
  const p = total <= 0n ? 1 : Number(charged) / Number(total);
  return Math.min(cfg.maxAuditRate, Math.max(cfg.minAuditRate, p));
}

/**
 * A uniform draw in [0, 1) from the lease's secret audit seed. The provider received only the
 * seed's hash with its assignment and committed to its result before the seed is revealed, so
 * it cannot know whether it will be audited; afterwards anyone can recompute the draw.
 */
export function drawOf(seed: string, what: 'audit' | 'canary' | 'segment'): number {
  const h = createHmac('sha256', seed).update(what).digest();
  return h.readUIntBE(0, 6) / 2 ** 48;
}

/** What a proven fault costs: a multiple of the lease's charge, at least the floor. */
export function slashFor(charged: bigint, cfg: VerificationConfig): bigint {
  const scaled = charged * BigInt(cfg.slashMultiple);
  return scaled > cfg.minSlash ? scaled : cfg.minSlash;
}

/** The bond a dispute of this lease takes: its charge, at least the floor. */
export function bondFor(charged: bigint, cfg: VerificationConfig): bigint {
  return charged > cfg.minBond ? charged : cfg.minBond;
}
