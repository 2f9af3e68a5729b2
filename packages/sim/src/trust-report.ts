/**
 * What `gridwork sim trust` reports: the JSON document (one per run, on stdout with --json) and
 * the table for people. Money is in credits as decimal strings, shares in [0, 1].
 */
import type { Strategy } from './strategies.ts';

export interface StrategyResult {
  strategy: Strategy;
  /** Keys (provider identities) that played it; a whitewashing operator uses several. */
  keys: number;
  operators: number;
  /** Keys caught: a proven fault, a failed check, a slash — or, for fake-hardware, a failed capacity challenge. */
  caught: number;
  shareCaught: number;
  /**
   * What the detection formula predicts for these keys: 1 − ∏(1 − p) over their wrong answers, p
   * being the audit rate a work result had, and 1 for a check they ran (a wrong check answer is
   * always examined) — 1 − (1 − p)^k at one rate (fake-hardware: 1 − e^(−T/mean challenge
   * interval) over its time online T).
   */
  predictedShareCaught: number;
  /** Jobs (leases: work, or checks it could not tell from work) each caught key completed up to the moment it was caught. */
  meanJobsUntilCaught: number | null;
  /** The formula's expectation of the same (given caught within the run); null where jobs do not drive detection (fake-hardware). */
  predictedJobsUntilCaught: number | null;
  /** Mean audit rate p over the keys' work results (1 while on probation or without stake). */
  meanAuditRate: number | null;
  /** Jobs (leases) the keys completed, and how many answers were not the faithful output. */
  jobs: number;
  cheatedJobs: number;
  /** Earnings paid (after fees) for leases, plus finder rewards. */
  earned: string;
  /** Earnings of refuted results sent back to requesters instead (never paid). */
  withheld: string;
  /** Stake (and unbonding stake) taken by slashing. */
  slashed: string;
  /** Stake still bonded or unbonding on keys a whitewasher walked away from (at risk, not counted in net). */
  stakeAbandoned: string;
  /** earned − slashed: negative when cheating cost the keys more than it brought them. */
  net: string;
  /** net ≥ 0: cheating did not cost them (the goal is net < 0). */
  profitable: boolean;
}

export interface Overhead {
  /** Check compute ÷ all compute, for the results staked honest providers gave after probation (audit rate priced by stake). */
  steadyState: number | null;
  /** What the audit rates in force predict for it: Σ p·c ÷ (Σ c + Σ p·c) over those results. */
  steadyStateExpected: number | null;
  /** The sampling noise of the measured figure (one standard error): a few audits at p ≈ 1% decide it. */
  steadyStateStdError: number | null;
  /** The same over every provider's results after probation: adds what catching cheaters there costs (referees, re-audits). */
  steadyStateAll: number | null;
  /** The same for results given on probation or without stake (every one of them audited). */
  probation: number | null;
  /** The same over the whole run: every provider in it is new. */
  total: number | null;
  /** Billed run time, ms. */
  workMs: number;
  checkMs: number;
  checkMsByKind: Record<'audit' | 'referee' | 'canary' | 'dispute', number>;
  /** Results staked honest providers gave after probation, and checks opened on them. */
  steadyStateResults: number;
  steadyStateChecks: number;
}

export interface Goal {
  id: string;
  goal: string;
  value: number | string | null;
  met: boolean;
  /** A missed goal of this kind makes the command exit non-zero. */
  exit: boolean;
}

export interface TrustReport {
  simulation: 'trust';
  version: 1;
  params: {
    providers: number;
    cheaterShare: number;
    cheaters: number;
    honest: number;
    jobs: number;
    seed: string;
    q: number;
    batchSize: number;
    strategies: Strategy[];
    notSimulated: Strategy[];
    stake: string;
    minStake: string;
    verification: { windowMs: number; probationTasks: number; minAuditRate: number; canaryRate: number; minSlash: string; slashMultiple: number };
    challenges: { meanIntervalMs: number; maxConsecutiveFailures: number };
  };
  elapsedMs: number;
  strategies: StrategyResult[];
  honest: {
    keys: number;
    wronglyPunished: number;
    punishedIds: string[];
    /** The proven faults held against them: which layer was fooled, and how. */
    punishments: { id: string; fault: string; detail: string }[];
    challengeFailures: number;
    earned: string;
    slashed: string;
    meanAuditRate: number | null;
  };
  cheatersOverall: { keys: number; caught: number; shareCaught: number };
  overhead: Overhead;
  ledger: { balanced: boolean; total: string; negative: string[]; mismatched: string[]; transactions: number; fees: string; reserve: string };
  work: { jobs: number; succeeded: number; failed: number; other: number; leases: number; checks: number };
  errors: string[];
  goals: Goal[];
  ok: boolean;
  notes: string[];
}

const pct = (x: number | null, digits = 1) => (x === null ? '-' : `${(x * 100).toFixed(digits)}%`);
const num = (x: number | null, digits = 1) => (x === null ? '-' : x.toFixed(digits));

function table(headers: string[], rows: string[][], right: ReadonlySet<number>): string[] {
  const widths = headers.map((h, i) => Math.max(h.length, ...rows.map((r) => (r[i] ?? '').length)));
  const line = (cells: string[]) =>
    cells
      .map((c, i) => {
        const pad = ' '.repeat(Math.max(0, (widths[i] ?? 0) - c.length));
        return right.has(i) ? pad + c : c + pad;
      })
      .join('  ')
      .trimEnd();
  return [line(headers), ...rows.map(line)];
}

/** The report for people: parameters, one row per strategy, honest providers, overhead, ledger, goals. */
export function formatTrustReport(r: TrustReport): string[] {
  const p = r.params;
  const out: string[] = [];
  out.push(
    `trust simulation: ${p.providers} providers (${p.honest} honest, ${p.cheaters} cheating), ${p.jobs} jobs in batches of ${p.batchSize}, seed ${p.seed}, ${(r.elapsedMs / 1000).toFixed(1)} s`,
  );
  out.push(
    `  stake ${p.stake} (jobs ask for at least ${p.minStake}), audit rate p = max(${p.verification.minAuditRate}, c/(min(S, slash)+c)), every result audited until ${p.verification.probationTasks} audits in a row pass, canaries ${pct(p.verification.canaryRate)}, slash max(${p.verification.slashMultiple}×charge, ${p.verification.minSlash})`,
  );
  out.push('');
  const rows = r.strategies.map((s) => [
    s.strategy,
    String(s.keys),
    `${s.caught}/${s.keys}`,
    pct(s.shareCaught),
    pct(s.predictedShareCaught),
    num(s.meanJobsUntilCaught),
    num(s.predictedJobsUntilCaught),
    num(s.meanAuditRate, 3),
    `${s.cheatedJobs}/${s.jobs}`,
    s.earned,
    s.slashed,
    s.net,
  ]);
  const headers = ['strategy', 'keys', 'caught', 'share', 'formula', 'jobs→caught', 'formula', 'mean p', 'cheated/jobs', 'earned', 'slashed', 'net'];
  out.push(...table(headers, rows, new Set([1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11])));
  out.push(
    '  jobs: leases a key completed, work and checks alike (a provider cannot tell them apart); formula: share caught 1 − ∏(1 − p) over its wrong answers,',
  );
  out.push(
    '  p the audit rate of a work result (1 − (1 − p)^k at one rate), 1 for a check; fake-hardware 1 − e^(−T/mean challenge interval); jobs→caught its expectation given caught',
  );
  out.push('');
  const h = r.honest;
  out.push(
    `honest providers: ${h.keys}, wrongly punished ${h.wronglyPunished}${h.punishedIds.length ? ` (${h.punishedIds.map((id) => id.slice(0, 8)).join(', ')})` : ''}, failed capacity challenges ${h.challengeFailures}, earned ${h.earned}, slashed ${h.slashed}, mean p ${num(h.meanAuditRate, 3)}`,
  );
  for (const f of h.punishments) out.push(`  ${f.id.slice(0, 8)}: ${f.fault}: ${f.detail}`);
  out.push(`cheaters caught: ${r.cheatersOverall.caught}/${r.cheatersOverall.keys} keys (${pct(r.cheatersOverall.shareCaught)})`);
  const o = r.overhead;
  out.push(
    `verification overhead (check compute ÷ all compute): steady state ${pct(o.steadyState)} (honest staked providers past probation: ${o.steadyStateChecks} checks over ${o.steadyStateResults} results; expected ${pct(o.steadyStateExpected)} ± ${pct(o.steadyStateStdError)}),`,
    `  every provider past probation ${pct(o.steadyStateAll)}, on probation ${pct(o.probation)}, whole run ${pct(o.total)}`,
  );
  out.push(
    `  check compute by kind: audit ${Math.round(o.checkMsByKind.audit / 1000)} s, referee ${Math.round(o.checkMsByKind.referee / 1000)} s, canary ${Math.round(o.checkMsByKind.canary / 1000)} s; work ${Math.round(o.workMs / 1000)} s (billed run time)`,
  );
  const l = r.ledger;
  out.push(
    `ledger: ${l.balanced ? 'balanced' : 'NOT BALANCED'} (sum ${l.total}, ${l.negative.length} negative, ${l.mismatched.length} mismatched, ${l.transactions} transactions); fees ${l.fees}, reserve ${l.reserve}`,
  );
  out.push(
    `jobs: ${r.work.succeeded} succeeded, ${r.work.failed} failed (most by a refuted result), ${r.work.other} other; ${r.work.leases} work leases, ${r.work.checks} check leases`,
  );
  if (r.errors.length > 0) out.push(`errors: ${r.errors.length} (first: ${r.errors[0]})`);
  out.push('');
  out.push('goals:');
  for (const g of r.goals) out.push(`  ${g.met ? 'met   ' : 'MISSED'} ${g.goal}: ${g.value ?? '-'}${g.exit ? '' : ' (reported)'}`);
  if (r.notes.length > 0) {
    out.push('');
    out.push('notes:');
    for (const n of r.notes) out.push(`  - ${n}`);
  }
  return out;
}
