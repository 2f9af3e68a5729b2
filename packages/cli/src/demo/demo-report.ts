/**
 * The full demo's report: per job — kind (as its spec spells it), state, tasks per provider,
 * wall time, cost; per provider — earnings, audits passed and failed, stake change; the money;
 * and every claim the demo made with whether it held. One JSON document with --json, tables on
 * stdout otherwise. `ok` is true only when every claim held.
 */
import type { JobSpec, JobState } from '@gridwork/protocol';
import { formatCredits, parseCredits } from '@gridwork/protocol/money';
import type { ProviderStatus } from '@gridwork/sdk';
import { formatDuration, out, outColor, table } from '../output.ts';
import type { DemoNetwork } from './demo-network.ts';
import { type Claim, type DemoRun, type StepId, tasksByProvider } from './demo-run.ts';

export interface JobRow {
  step: StepId;
  id: string;
  name: string;
  kind: JobSpec['kind'];
  state: JobState;
  error: string | null;
  tasks: number;
  tasksByProvider: Record<string, number>;
  /** Submit to results in (a service: to when it was stopped). */
  wallMs: number | null;
  /** Paid to providers (credits), refuted results not counted. */
  cost: string;
  budget: string;
  notes: string[];
}

export interface ProviderRow {
  name: string;
  id: string;
  role: 'honest' | 'cheater';
  story: string;
  state: 'online' | 'killed' | 'offline' | 'draining';
  ask: { cpuCoreHour: string };
  benchmark: { cpuMopsPerCore: number };
  /** Tasks of the requester's jobs it holds the final result of. */
  tasks: number;
  /** Checks (audits, referees) it ran for the protocol. */
  checksRun: number;
  /** Change of its available balance: pay for work and checks, and finder's rewards (credits). */
  earned: string;
  /** Of that, its share of slashes it proved as auditor or referee. */
  rewards: string;
  audits: { passed: number; failed: number };
  stake: { before: string; after: string; change: string };
  slashed: string;
  faultsProven: number;
  reputation: number;
}

export interface DemoReport {
  ok: boolean;
  elapsedMs: number;
  coordinator: string;
  runtime: 'sandbox' | 'process';
  dataDir: string | null;
  /** Wall time of each step. */
  steps: { step: StepId; title: string; elapsedMs: number }[];
  jobs: JobRow[];
  providers: ProviderRow[];
  /** `refunded`: what refuted results had charged, which the requester did not pay (it went back into their jobs' budgets). */
  money: { requester: { funded: string; spent: string; refunded: string; balance: string }; protocolFees: string; reserve: string };
  claims: Claim[];
}

const signed = (micros: bigint) => (micros > 0n ? `+${formatCredits(micros)}` : formatCredits(micros));
const credits = (s: string) => parseCredits(s, { allowNegative: true });

export async function buildReport(run: DemoRun, net: DemoNetwork, o: { started: number; funded: string; dataDir: string | null }): Promise<DemoReport> {
  // Providers that joined the network (one made ready as a replacement may never have).
  const records = new Map<string, ProviderStatus>();
  for (const p of net.providers) {
    const r = await p.account.providerStatus().catch(() => null);
    if (r) records.set(p.agent.id, r);
  }
  const joined = net.providers.filter((p) => records.has(p.agent.id));
  const balances = new Map<string, { available: string; stake: string }>();
  const rewards = new Map<string, bigint>();
  for (const p of joined) {
    balances.set(p.agent.id, await p.account.balance());
    const h = await p.account.history({ limit: 500 });
    rewards.set(
      p.agent.id,
      h.filter((e) => e.kind === 'slash').reduce((s, e) => s + (credits(e.change) > 0n ? credits(e.change) : 0n), 0n),
    );
  }

  const providers: ProviderRow[] = joined.map((p) => {
    const r = records.get(p.agent.id) as ProviderStatus;
    const b = balances.get(p.agent.id) as { available: string; stake: string };
    const tasks = run.jobs.reduce((n, j) => n + j.view.tasks.filter((t) => t.providerId === p.agent.id).length, 0);
    return {
      name: p.profile.name,
      id: p.agent.id,
      role: p.profile.cheats ? 'cheater' : 'honest',
      story: p.profile.story,
      state: p.killed ? 'killed' : r.state,
      ask: { cpuCoreHour: p.profile.cpuCoreHour },
      benchmark: { cpuMopsPerCore: p.profile.cpuMopsPerCore },
      tasks,
      checksRun: r.recentChecks.filter((c) => c.role === 'checker').length,
      earned: signed(credits(b.available) - credits(p.start.available)),
      rewards: formatCredits(rewards.get(p.agent.id) ?? 0n),
      audits: { passed: r.audits.passed, failed: r.audits.failed },
      stake: { before: p.start.stake, after: b.stake, change: signed(credits(b.stake) - credits(p.start.stake)) },
      slashed: r.slashed,
      faultsProven: r.faultsProven,
      reputation: Math.round(r.reputation * 1000) / 1000,
    };
  });
  const honest = providers.filter((p) => p.role === 'honest');
  const punished = honest.filter((p) => credits(p.slashed) > 0n || p.faultsProven > 0 || credits(p.stake.change) < 0n);
  run.claim(
    'audit',
    'no honest provider was slashed',
    punished.length === 0,
    punished.length === 0
      ? `${honest.map((p) => `${p.name} stake ${p.stake.after}`).join(', ')}`
      : punished.map((p) => `${p.name} lost ${p.slashed}`).join(', '),
  );

  // What refuted results had charged: not the requester's to pay (back into their jobs' budgets, or to the requester).
  const refunded = run.jobs.reduce((s, j) => s + j.view.tasks.reduce((t, task) => t + (task.refuted ?? []).reduce((r, a) => r + credits(a.charged), 0n), 0n), 0n);
  const jobs: JobRow[] = run.jobs.map((j) => ({
    step: j.step,
    id: j.id,
    name: j.workload.spec.name,
    kind: j.workload.spec.kind,
    state: j.view.state,
    error: j.view.error === null ? null : run.named(j.view.error),
    tasks: j.view.tasks.length,
    tasksByProvider: tasksByProvider(run, j.view),
    wallMs: j.readyAt === null ? null : j.readyAt - j.submittedAt,
    cost: j.view.money.spent,
    budget: j.view.money.budget,
    notes: j.notes,
  }));
  const spent = jobs.reduce((s, j) => s + credits(j.cost), 0n);
  const balance = await run.requester.balance();
  const fees = await net.coordinator.protocolBalances();
  return {
    ok: run.claims.every((c) => c.ok),
    elapsedMs: Date.now() - o.started,
    coordinator: net.url,
    runtime: net.runtime,
    dataDir: o.dataDir,
    steps: run.steps,
    jobs,
    providers,
    money: {
      requester: { funded: o.funded, spent: formatCredits(spent), refunded: formatCredits(refunded), balance: balance.available },
      protocolFees: fees.fees,
      reserve: fees.reserve,
    },
    claims: run.claims,
  };
}

const STEP_TITLES: Record<StepId, string> = { train: 'train', inference: 'inference', service: 'service', cluster: 'cluster', audit: 'audit' };

/** The report as tables for people, on stdout. */
export function printReport(r: DemoReport): void {
  const stateColor = (s: string) => (s === 'succeeded' ? outColor.green(s) : s === 'failed' ? outColor.red(s) : s === 'cancelled' ? outColor.yellow(s) : s);
  out(outColor.bold(`Gridwork demo report: ${formatDuration(r.elapsedMs)} on this machine, ${r.runtime} runtime, coordinator ${r.coordinator}`));
  out(`  steps: ${r.steps.map((s) => `${s.step} ${formatDuration(s.elapsedMs)}`).join(', ')}`);
  out();
  out(outColor.bold('Jobs'));
  for (const line of table(
    ['step', 'job', 'kind', 'state', 'tasks per provider', 'wall', 'cost'],
    r.jobs.map((j) => [
      STEP_TITLES[j.step],
      j.name,
      j.kind,
      stateColor(j.state),
      Object.entries(j.tasksByProvider)
        .map(([p, n]) => `${p} ×${n}`)
        .join(', ') || '-',
      formatDuration(j.wallMs),
      j.cost,
    ]),
    { right: ['wall', 'cost'] },
  ))
    out(`  ${line}`);
  const notes = r.jobs.filter((j) => j.notes.length > 0 || (j.error && j.state === 'failed'));
  for (const j of notes) out(outColor.dim(`  ${j.name}: ${[...j.notes, ...(j.state === 'failed' && j.error ? [j.error] : [])].join('; ')}`));
  out();
  out(outColor.bold('Providers'));
  for (const line of table(
    ['provider', 'role', 'ask/core-h', 'bench', 'tasks', 'checks', 'earned', 'rewards', 'audits ok/failed', 'stake', 'reputation'],
    r.providers.map((p) => [
      p.name,
      `${p.role === 'cheater' ? outColor.red('cheater') : 'honest'}${p.state === 'killed' ? ', killed' : ''}`,
      p.ask.cpuCoreHour,
      String(p.benchmark.cpuMopsPerCore),
      String(p.tasks),
      String(p.checksRun),
      p.earned,
      p.rewards,
      `${p.audits.passed}/${p.audits.failed}`,
      `${p.stake.before} → ${p.stake.after}${p.stake.change === '0' ? '' : ` (${p.stake.change})`}`,
      p.reputation.toFixed(2),
    ]),
    { right: ['ask/core-h', 'bench', 'tasks', 'checks', 'earned', 'rewards', 'reputation'] },
  ))
    out(`  ${line}`);
  out();
  const m = r.money;
  out(
    `  requester: funded ${m.requester.funded}, paid ${m.requester.spent} for ${r.jobs.length} jobs (not the ${m.requester.refunded} that refuted results had charged), balance now ${m.requester.balance}; protocol fees ${m.protocolFees}, reserve ${m.reserve}`,
  );
  out();
  out(outColor.bold('What the demo showed'));
  for (const c of r.claims) out(`  ${c.ok ? outColor.green('✓') : outColor.red('✗')} ${c.claim} ${outColor.dim(`— ${c.detail}`)}`);
  out();
  const failed = r.claims.filter((c) => !c.ok).length;
  out(failed === 0 ? outColor.green(`all ${r.claims.length} claims held`) : outColor.red(`${failed} of ${r.claims.length} claims did not hold`));
}
