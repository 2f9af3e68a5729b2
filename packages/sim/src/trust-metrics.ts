/**
 * Reads what happened out of the coordinator's own database (providers, leases, checks, events,
 * capacity challenges, the ledger) and turns it into the trust report: per strategy who was
 * caught and after how many jobs next to the detection formula, what cheating earned and cost,
 * honest providers punished, verification overhead, and the ledger audit. The simulated
 * providers' own records add the one thing the coordinator cannot know: which results were
 * made up.
 */
import type { Coordinator } from '@gridwork/coordinator';
import { type Db, verifyLedger } from '@gridwork/coordinator/internal';
import { formatCredits, parseCredits } from '@gridwork/protocol';
import type { LeaseRecord } from './sim-provider.ts';
import type { Role, Strategy } from './strategies.ts';
import type { Goal, Overhead, StrategyResult, TrustReport } from './trust-report.ts';

/** One provider identity of the simulation. */
export interface SimKey {
  id: string;
  name: string;
  role: Role;
  operator: string;
  joinedAt: Date;
  /** When a whitewasher walked away from it; null while it stayed. */
  leftAt: Date | null;
}

export interface MeasureInput {
  db: Db;
  coordinator: Coordinator;
  keys: SimKey[];
  records: ReadonlyMap<string, LeaseRecord>;
  errors: string[];
  started: number;
  params: TrustReport['params'];
}

/** A lease a provider completed: a work result, or a check it ran for another provider's result. */
interface Result {
  leaseId: string;
  work: boolean;
  endedAt: number;
  usageMs: number;
  /** The chance that a wrong answer here is caught: the audit rate of a work result, 1 for a check. */
  p: number;
  probation: boolean;
  cheated: boolean;
}

interface KeyStats {
  key: SimKey;
  results: Result[];
  caughtAt: number | null;
  punished: boolean;
  predictedCaught: number;
  /** E[jobs until caught | caught] × P(caught), to average over keys. */
  predictedJobsWeighted: number;
  jobsUntilCaught: number | null;
  earned: bigint;
  withheld: bigint;
  slashed: bigint;
  abandoned: bigint;
  challengeFailures: number;
}

const round = (x: number, digits = 4) => Math.round(x * 10 ** digits) / 10 ** digits;
const share = (a: number, b: number) => (b > 0 ? round(a / b) : null);
const mean = (xs: number[]) => (xs.length > 0 ? xs.reduce((a, b) => a + b, 0) / xs.length : null);
const sum = (xs: bigint[]) => xs.reduce((a, b) => a + b, 0n);

export async function measure(input: MeasureInput): Promise<TrustReport> {
  const { db, keys, records, params } = input;
  const ids = keys.map((k) => k.id);
  const end = Date.now();
  const minAuditRate = params.verification.minAuditRate;
  const initialStake = parseCredits(params.stake);

  const providers = await db.selectFrom('providers').select(['id', 'faults_proven', 'stake_slashed', 'challenges_failed']).where('id', 'in', ids).execute();
  const providerRow = new Map(providers.map((p) => [p.id, p]));
  const leases = await db
    .selectFrom('leases')
    .innerJoin('jobs', 'jobs.id', 'leases.job_id')
    .select(['leases.id', 'leases.provider_id', 'leases.job_id', 'leases.state', 'leases.usage_ms', 'leases.charged', 'leases.ended_at', 'jobs.purpose'])
    .execute();
  const checks = await db.selectFrom('verifications').select(['id', 'kind', 'lease_id', 'provider_id', 'state', 'check_job_id', 'ended_at']).execute();
  const events = await db
    .selectFrom('events')
    .select(['type', 'provider_id', 'at', 'data'])
    .where('type', 'in', ['provider.fault', 'provider.slashed'])
    .orderBy('position')
    .execute();
  const verificationEvents = await db.selectFrom('events').select(['data']).where('type', '=', 'lease.verification').execute();
  const challengeFailures = await db
    .selectFrom('capacity_challenges')
    .select(['provider_id', 'ended_at'])
    .where('state', '=', 'failed')
    .orderBy('ended_at')
    .execute();
  const money = await db
    .selectFrom('ledger_postings')
    .innerJoin('ledger_transactions', 'ledger_transactions.id', 'ledger_postings.tx_id')
    .select(['ledger_transactions.kind', 'ledger_transactions.memo', 'ledger_transactions.created_at', 'ledger_postings.account', 'ledger_postings.amount'])
    .where('ledger_transactions.kind', 'in', ['lease.settle', 'slash', 'lease.refund'])
    .execute();
  const balances = await db.selectFrom('ledger_balances').select(['account', 'balance']).execute();
  const balance = new Map(balances.map((b) => [b.account, b.balance]));

  const slashedBefore = new Map<string, { at: number; amount: bigint }[]>();
  for (const m of money) {
    const provider = (m.memo as { provider?: string }).provider;
    if (m.kind !== 'slash' || !provider || m.account !== `acct:${provider}:stake`) continue;
    const list = slashedBefore.get(provider) ?? [];
    list.push({ at: m.created_at.getTime(), amount: -m.amount });
    slashedBefore.set(provider, list);
  }
  const stakeAt = (id: string, at: number) => {
    let s = initialStake;
    for (const x of slashedBefore.get(id) ?? []) if (x.at < at) s -= x.amount;
    return s > 0n ? s : 0n;
  };

  // The audit rate the lifecycle drew each result's audit with: it says so when the draw audits
  // it ("audited (p = …)"); a result it did not audit had p < 1, recomputed here from its charge
  // and its provider's stake then (p = max(floor, c/(S + c))).
  const drawn = new Map<string, number>();
  for (const e of verificationEvents) {
    const d = e.data as { leaseId?: string; state?: string; detail?: string | null };
    const m = d.state === 'pending' && d.leaseId ? /audited \(p = ([0-9.]+)\)/.exec(d.detail ?? '') : null;
    if (m && d.leaseId) drawn.set(d.leaseId, Number(m[1]));
  }
  // Every lease a provider completed, in order — work and checks alike, since a provider cannot
  // tell them apart. A work result carries its audit rate and phase; a wrong answer to a check is
  // always examined (a disagreeing audit goes to a referee, a canary's answer is known): p = 1.
  const phase = new Map<string, Result>();
  const resultsOf = new Map<string, Result[]>();
  for (const l of leases) {
    if (l.state !== 'completed' || !l.ended_at) continue;
    const endedAt = l.ended_at.getTime();
    const work = l.purpose === 'work';
    let p = 1;
    if (work) {
      const stake = stakeAt(l.provider_id, endedAt);
      const c = Number(l.charged);
      const priced = Math.min(1, Math.max(minAuditRate, c + Number(stake) > 0 ? c / (c + Number(stake)) : 1));
      p = drawn.get(l.id) ?? Math.min(priced, 0.9999);
    }
    // Probation, or no stake left: every result audited. Past it, p is priced by stake.
    const r: Result = { leaseId: l.id, work, endedAt, usageMs: Number(l.usage_ms), p, probation: p >= 1, cheated: records.get(l.id)?.cheated ?? false };
    if (work) phase.set(l.id, r);
    const list = resultsOf.get(l.provider_id) ?? [];
    list.push(r);
    resultsOf.set(l.provider_id, list);
  }
  for (const list of resultsOf.values()) list.sort((a, b) => a.endedAt - b.endedAt);

  const leaseOwner = new Map(leases.map((l) => [l.id, l.provider_id]));
  const stats: KeyStats[] = keys.map((key) => {
    const results = resultsOf.get(key.id) ?? [];
    const row = providerRow.get(key.id);
    // A proven fault or a slash (a canary's failure is recorded against the result it replayed, whose provider is not at fault).
    const faultTimes = events.filter((e) => e.provider_id === key.id).map((e) => e.at.getTime());
    const punished = faultTimes.length > 0 || (row?.faults_proven ?? 0) > 0 || (row?.stake_slashed ?? 0n) > 0n;
    const failedChallenges = challengeFailures.filter((c) => c.provider_id === key.id && c.ended_at).map((c) => (c.ended_at as Date).getTime());
    const caughtTimes = key.role === 'fake-hardware' ? [...faultTimes, ...failedChallenges] : faultTimes;
    const caughtAt = caughtTimes.length > 0 ? Math.min(...caughtTimes) : punished ? end : null;
    // Caught at the job whose answer the first proven fault names; by time where it names none
    // of them (a failed capacity challenge, a fault on a lease that never completed).
    const firstFault = events.find((e) => e.provider_id === key.id && e.type === 'provider.fault');
    const faultLease = (firstFault?.data as { leaseId?: string } | undefined)?.leaseId;
    const faultIndex = faultLease ? results.findIndex((r) => r.leaseId === faultLease) : -1;
    const byTime = (at: number) => results.filter((r) => r.endedAt <= at).length;
    let jobsUntilCaught: number | null = null;
    if (caughtAt !== null) {
      const challengeFirst =
        key.role === 'fake-hardware' && failedChallenges.length > 0 && (failedChallenges[0] as number) <= (firstFault?.at.getTime() ?? end);
      jobsUntilCaught = !challengeFirst && faultIndex >= 0 ? faultIndex + 1 : byTime(caughtAt);
    }
    let predictedCaught = 0;
    let predictedJobsWeighted = 0;
    if (key.role === 'fake-hardware') {
      const online = ((key.leftAt?.getTime() ?? end) - key.joinedAt.getTime()) / params.challenges.meanIntervalMs;
      predictedCaught = 1 - Math.exp(-online);
    } else {
      let notYet = 1;
      results.forEach((r, j) => {
        if (!r.cheated) return;
        predictedJobsWeighted += (j + 1) * notYet * r.p;
        notYet *= 1 - r.p;
      });
      predictedCaught = 1 - notYet;
    }
    let earned = 0n;
    let withheld = 0n;
    for (const m of money) {
      if (m.kind === 'lease.refund') {
        const leaseId = (m.memo as { leaseId?: string }).leaseId;
        if (leaseId && leaseOwner.get(leaseId) === key.id && m.amount > 0n) withheld += m.amount;
      } else if (m.account === `acct:${key.id}:available` && m.amount > 0n) earned += m.amount;
    }
    const abandoned = key.leftAt ? (balance.get(`acct:${key.id}:stake`) ?? 0n) + (balance.get(`acct:${key.id}:unbonding`) ?? 0n) : 0n;
    return {
      key,
      results,
      caughtAt,
      punished,
      predictedCaught,
      predictedJobsWeighted,
      jobsUntilCaught,
      earned,
      withheld,
      slashed: row?.stake_slashed ?? 0n,
      abandoned,
      challengeFailures: row?.challenges_failed ?? 0,
    };
  });

  const strategies: StrategyResult[] = params.strategies.map((strategy: Strategy) => {
    const group = stats.filter((s) => s.key.role === strategy);
    const caught = group.filter((s) => s.caughtAt !== null);
    const predictedCaught = group.reduce((a, s) => a + s.predictedCaught, 0);
    const earned = sum(group.map((s) => s.earned));
    const slashed = sum(group.map((s) => s.slashed));
    const net = earned - slashed;
    const results = group.flatMap((s) => s.results);
    return {
      strategy,
      keys: group.length,
      operators: new Set(group.map((s) => s.key.operator)).size,
      caught: caught.length,
      shareCaught: share(caught.length, group.length) ?? 0,
      predictedShareCaught: share(predictedCaught, group.length) ?? 0,
      meanJobsUntilCaught: roundOrNull(mean(caught.map((s) => s.jobsUntilCaught ?? 0))),
      predictedJobsUntilCaught:
        strategy === 'fake-hardware' || predictedCaught === 0 ? null : round(group.reduce((a, s) => a + s.predictedJobsWeighted, 0) / predictedCaught, 2),
      meanAuditRate: roundOrNull(mean(results.filter((r) => r.work).map((r) => r.p))),
      jobs: results.length,
      cheatedJobs: results.filter((r) => r.cheated).length,
      earned: formatCredits(earned),
      withheld: formatCredits(sum(group.map((s) => s.withheld))),
      slashed: formatCredits(slashed),
      stakeAbandoned: formatCredits(sum(group.map((s) => s.abandoned))),
      net: formatCredits(net),
      profitable: net >= 0n,
    };
  });

  const honest = stats.filter((s) => s.key.role === 'honest');
  const punished = honest.filter((s) => s.punished);
  const punishments = events
    .filter((e) => e.type === 'provider.fault' && punished.some((s) => s.key.id === e.provider_id))
    .map((e) => {
      const d = e.data as { fault?: string; detail?: string };
      return { id: e.provider_id as string, fault: d.fault ?? 'unknown', detail: d.detail ?? '' };
    });
  const cheaters = stats.filter((s) => s.key.role !== 'honest');
  const cheatersCaught = cheaters.filter((s) => s.caughtAt !== null).length;

  // Verification overhead: the compute of every check, charged to the result it checked. Steady
  // state is what verifying staked honest providers past probation costs; the same over every
  // provider past probation adds what catching cheaters there costs (referees, re-audits).
  const overhead: Overhead = {
    steadyState: null,
    steadyStateExpected: null,
    steadyStateStdError: null,
    steadyStateAll: null,
    probation: null,
    total: null,
    workMs: 0,
    checkMs: 0,
    checkMsByKind: { audit: 0, referee: 0, canary: 0, dispute: 0 },
    steadyStateResults: 0,
    steadyStateChecks: 0,
  };
  const honestIds = new Set(keys.filter((k) => k.role === 'honest').map((k) => k.id));
  const steadyHonest = (r: Result | undefined) => r !== undefined && !r.probation && honestIds.has(leaseOwner.get(r.leaseId) ?? '');
  const checkByJob = new Map(checks.filter((c) => c.check_job_id).map((c) => [c.check_job_id as string, c]));
  let workSteady = 0;
  let workSteadyAll = 0;
  let workProbation = 0;
  let checkSteady = 0;
  let checkSteadyAll = 0;
  let checkProbation = 0;
  for (const l of leases) {
    const ms = Number(l.usage_ms);
    if (l.purpose === 'work') {
      overhead.workMs += ms;
      const r = phase.get(l.id);
      if (r?.probation === false) workSteadyAll += ms;
      else workProbation += ms;
      if (steadyHonest(r)) {
        workSteady += ms;
        overhead.steadyStateResults++;
      }
      continue;
    }
    overhead.checkMs += ms;
    const c = checkByJob.get(l.job_id);
    if (c) overhead.checkMsByKind[c.kind] += ms;
    const checked = c ? phase.get(c.lease_id) : undefined;
    if (checked?.probation === false) checkSteadyAll += ms;
    else checkProbation += ms;
    if (steadyHonest(checked)) checkSteady += ms;
  }
  overhead.steadyStateChecks = checks.filter((c) => steadyHonest(phase.get(c.lease_id))).length;
  overhead.steadyState = share(checkSteady, workSteady + checkSteady);
  overhead.steadyStateAll = share(checkSteadyAll, workSteadyAll + checkSteadyAll);
  // What the audit rates in force predict (each result audited with its p at about its own
  // compute), and the sampling noise of so few draws: a handful of audits at p ≈ 1% decide the
  // measured figure, one large task more or less moves it by a point.
  let expectedChecks = 0;
  let variance = 0;
  for (const r of phase.values()) {
    if (!steadyHonest(r)) continue;
    expectedChecks += r.p * r.usageMs;
    variance += r.p * (1 - r.p) * r.usageMs ** 2;
  }
  if (workSteady > 0) {
    overhead.steadyStateExpected = round(expectedChecks / (workSteady + expectedChecks));
    overhead.steadyStateStdError = round(Math.sqrt(variance) / (workSteady + expectedChecks));
  }
  overhead.probation = share(checkProbation, workProbation + checkProbation);
  overhead.total = share(overhead.checkMs, overhead.workMs + overhead.checkMs);

  const audit = await verifyLedger(db);
  const protocol = await input.coordinator.protocolBalances();
  const ledger = {
    balanced: audit.total === 0n && audit.negative.length === 0 && audit.mismatched.length === 0,
    total: formatCredits(audit.total),
    negative: audit.negative,
    mismatched: audit.mismatched,
    transactions: audit.transactions,
    fees: protocol.fees,
    reserve: protocol.reserve,
  };
  const jobStates = await db.selectFrom('jobs').select(['state', 'purpose']).execute();
  const workJobs = jobStates.filter((j) => j.purpose === 'work');
  const work = {
    jobs: workJobs.length,
    succeeded: workJobs.filter((j) => j.state === 'succeeded').length,
    failed: workJobs.filter((j) => j.state === 'failed').length,
    other: workJobs.filter((j) => j.state !== 'succeeded' && j.state !== 'failed').length,
    leases: leases.filter((l) => l.purpose === 'work').length,
    checks: leases.filter((l) => l.purpose !== 'work').length,
  };

  const goals: Goal[] = [
    { id: 'honest-unpunished', goal: 'honest providers wrongly punished = 0 (exact mode)', value: punished.length, met: punished.length === 0, exit: true },
    ...strategies.map((s) => ({
      id: `unprofitable:${s.strategy}`,
      goal: `${s.strategy}: net profit < 0`,
      value: s.net,
      met: !s.profitable,
      exit: true,
    })),
    {
      id: 'steady-state-overhead',
      goal: 'verification overhead at steady state (staked honest providers past probation) ≤ 2%, beyond 2 standard errors of sampling noise',
      value:
        overhead.steadyState === null
          ? null
          : `${(overhead.steadyState * 100).toFixed(2)}% (expected ${((overhead.steadyStateExpected ?? 0) * 100).toFixed(2)}% ± ${((overhead.steadyStateStdError ?? 0) * 100).toFixed(2)}%)`,
      // Missed when above 2% beyond two standard errors of its sampling noise.
      met: overhead.steadyState === null || overhead.steadyState - 2 * (overhead.steadyStateStdError ?? 0) <= 0.02,
      exit: true,
    },
    {
      id: 'ledger-balanced',
      goal: 'ledger audit: postings sum to 0, no negative or mismatched account',
      value: ledger.balanced ? 'balanced' : 'not balanced',
      met: ledger.balanced,
      exit: true,
    },
    {
      id: 'cheaters-caught',
      goal: 'cheaters caught ≥ 99% (G9)',
      value: cheaters.length === 0 ? null : `${((cheatersCaught / cheaters.length) * 100).toFixed(1)}%`,
      met: cheaters.length === 0 || cheatersCaught / cheaters.length >= 0.99,
      exit: false,
    },
    {
      id: 'new-provider-overhead',
      goal: 'verification overhead for new providers (the whole run: every provider starts new) ≤ 10%',
      value: overhead.total === null ? null : `${(overhead.total * 100).toFixed(2)}%`,
      met: overhead.total === null || overhead.total <= 0.1,
      exit: false,
    },
  ];

  const notes = [
    'Task run times are claimed, not waited: each task takes a few ms of wall time and bills the run time its work would take (20–60 s small, 120–300 s large); compute is billed run time (leases.usage_ms).',
    "Not seeded (the coordinator offers no injection point yet): the lifecycle's audit seeds (node:crypto randomBytes), so which results past probation are audited; the verifier's canary draws (Math.random); capacity challenge times (Math.random) and seeds; ids (job, lease, check). Batches wait for a quiet coordinator, so runs with one seed differ only by these draws.",
    'A check is not chosen at random: the scheduler gives it to the best-scored free provider other than the checked one (ties by provider id), so who audits whom follows prices, reputation and timing.',
    'The formula assumes honest checkers: where cheaters check each other (a referee that agrees with neither side ends inconclusive; a colluder confirms its partner), fewer are caught than it predicts.',
    'fake-hardware: 3 capacity challenges failed in a row take a provider out of matching and slash it as capacity fraud: 100 × what it billed since its last passed challenge (at least the minimum slash), from its stake.',
    `Money: earned = lease earnings paid plus finder rewards; net = earned − slashed. Stake left on keys a whitewasher walked away from is reported (stakeAbandoned), not counted.`,
  ];
  if (overhead.steadyState === null)
    notes.push('No honest provider gave a result after probation in this run: the steady-state overhead is not measured (run more jobs per provider).');
  const faults = new Set(punishments.map((f) => f.fault));
  if (faults.has('failed-audit') || faults.has('lost-dispute')) {
    notes.push(
      'An honest result was convicted: the auditor and the referee both gave the same other answer. Colluders of one hidden operator in both roles win the single-referee majority (the coordinator excludes only declared operators from a check).',
    );
  }
  if (faults.has('false-audit'))
    notes.push('An honest auditor was overruled: a referee sided with the provider it had refuted (a colluder refereeing its partner).');
  if (faults.has('failed-canary')) notes.push("An honest provider failed a canary: the canary's known answer came from a result that colluders had confirmed.");
  if (params.notSimulated.length > 0) notes.push(`Too few cheaters for a group of: ${params.notSimulated.join(', ')}.`);

  return {
    simulation: 'trust',
    version: 1,
    params,
    elapsedMs: Date.now() - input.started,
    strategies,
    honest: {
      keys: honest.length,
      wronglyPunished: punished.length,
      punishedIds: punished.map((s) => s.key.id),
      punishments,
      challengeFailures: honest.reduce((a, s) => a + s.challengeFailures, 0),
      earned: formatCredits(sum(honest.map((s) => s.earned))),
      slashed: formatCredits(sum(honest.map((s) => s.slashed))),
      meanAuditRate: roundOrNull(mean(honest.flatMap((s) => s.results.filter((r) => r.work).map((r) => r.p)))),
    },
    cheatersOverall: { keys: cheaters.length, caught: cheatersCaught, shareCaught: share(cheatersCaught, cheaters.length) ?? 0 },
    overhead: { ...overhead, checkMsByKind: { ...overhead.checkMsByKind } },
    ledger,
    work,
    errors: input.errors,
    goals,
    ok: goals.every((g) => g.met || !g.exit),
    notes,
  };
}

function roundOrNull(x: number | null, digits = 4): number | null {
  return x === null ? null : round(x, digits);
}
