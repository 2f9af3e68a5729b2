/**
 * Step 5: the cheater caught. Every new provider is on probation, so another provider re-ran
 * each of the cheater's batch tasks; the re-run disagreed, two referees sided with it, and the
 * cheater's fault was proven: it is slashed, and each refuted shard runs again inside its job on
 * a provider of another operator — the network does it, as it retries a lost lease; what the
 * refuted attempt charged went back into the job's budget and paid for the re-run. The demo waits
 * for both inference jobs to end and checks that they succeeded with every result verified, that
 * the requester paid only for verified results, that the verified results cover every input —
 * and that the service of step 3 agreed with them.
 */
import { readFile } from 'node:fs/promises';
import { formatCredits, parseCredits } from '@gridwork/protocol/money';
import type { JobView } from '@gridwork/protocol';
import { type DemoRun, type JobRecord, until } from './demo-run.ts';
import { type InferenceOutcome, ocrLinesOf, predictionsOf } from './inference-step.ts';
import type { ServiceOutcome } from './service-step.ts';

export interface Faked {
  jobId: string;
  taskIndex: number;
}

type Task = JobView['tasks'][number];
type Refuted = NonNullable<Task['refuted']>[number];

export async function auditStep(run: DemoRun, inference: InferenceOutcome, faked: readonly Faked[], service: ServiceOutcome | null): Promise<void> {
  const { progress } = run;
  const cheater = run.net.providers.find((p) => p.profile.cheats);
  if (!cheater) throw new Error('the demo has no cheating provider');
  const name = cheater.profile.name;
  const jobs = [inference.classifier, inference.ocr];
  const label = (f: Faked) => `${jobs.find((j) => j.id === f.jobId)?.workload.spec.name ?? f.jobId} task ${f.taskIndex}`;
  if (faked.length === 0) {
    run.claim('audit', `${name} faked results`, false, `it got no batch task to fake (the market gave them all to other providers)`);
  } else {
    progress.note(`${name} made up the results of ${faked.map(label).join(' and ')}: it never ran the model`);
  }

  // The audit, its referees and the verdict run in the background; the provider's record says when its fault is proven.
  const first = await until(
    () => cheater.account.providerStatus(),
    (s) => faked.length === 0 || (s.audits.failed >= 1 && parseCredits(s.slashed) > 0n),
    `an audit to prove ${name}'s fault`,
    120_000,
    500,
  );
  if (faked.length > 0) progress.note(`fault proven: ${name}'s stake ${cheater.start.stake} → ${first.stake}; the network re-runs each refuted shard elsewhere`);
  // The refuted shards run again inside their jobs (then are audited or wait out their window): wait for both jobs to end.
  const ended = await Promise.all(jobs.map((j) => run.wait(j, { until: 'end', timeoutMs: 180_000 })));
  const record = await cheater.account.providerStatus();
  const refuted: { record: JobRecord; task: Task; attempt: Refuted }[] = [];
  jobs.forEach((j, i) => {
    for (const t of ended[i]?.tasks ?? []) for (const attempt of t.refuted ?? []) refuted.push({ record: j, task: t, attempt });
  });
  for (const { record: j, task, attempt } of refuted) {
    const audit = attempt.checks.find((c) => c.kind === 'audit' && c.state === 'failed') ?? attempt.checks.find((c) => c.kind === 'audit');
    const referees = attempt.checks.filter((c) => c.kind === 'referee').length;
    const note = `task ${task.index}: ${run.providerName(attempt.providerId)}'s result refuted (${audit ? `audit ${audit.outcome ?? audit.state}` : 'no audit'}, ${referees} referee${referees === 1 ? '' : 's'}), re-run by ${run.providerName(task.providerId)}: ${task.verification?.state ?? 'unverified'}`;
    j.notes.push(note);
    progress.note(`${j.workload.spec.name} ${note}${audit?.detail ? ` — ${run.named(audit.detail)}` : ''}`);
  }
  const stakeAfter = parseCredits(record.stake);
  const stakeBefore = parseCredits(cheater.start.stake);
  run.claim(
    'audit',
    `${name} was caught by audit and slashed`,
    faked.length > 0 && record.audits.failed >= 1 && stakeAfter < stakeBefore,
    `${record.audits.failed} audit${record.audits.failed === 1 ? '' : 's'} of its results failed; stake ${cheater.start.stake} → ${record.stake} (slashed ${record.slashed}); reputation now ${record.reputation.toFixed(2)}, back on probation`,
  );

  // Every faked result, and no honest one, was refuted; the requester paid for none of them. What
  // it paid for the two jobs, read from its own ledger history (their holds less what came back,
  // less any refund from the cheater's slash), is exactly what the jobs spent on everything but
  // the refuted results (each job view's `money.spent` leaves them out).
  const isFaked = (r: { record: JobRecord; task: Task }) => faked.some((f) => f.jobId === r.record.id && f.taskIndex === r.task.index);
  const fakedRefuted = faked.every((f) => refuted.some((r) => r.record.id === f.jobId && r.task.index === f.taskIndex && r.attempt.providerId === cheater.agent.id));
  const honestRefuted = refuted.filter((r) => !isFaked(r) || r.attempt.providerId !== cheater.agent.id);
  const returned = refuted.reduce((s, r) => s + parseCredits(r.attempt.charged, { allowZero: true }), 0n);
  const history = await run.requester.history({ limit: 500 });
  const jobIds = new Set(jobs.map((j) => j.id));
  const refutedLeases = new Set(refuted.map((r) => r.attempt.leaseId));
  const paid = -history
    .filter((h) => jobIds.has(String(h.memo.jobId)) || (h.kind === 'slash' && refutedLeases.has(String(h.memo.leaseId))))
    .reduce((s, h) => s + parseCredits(h.change, { allowNegative: true, allowZero: true }), 0n);
  const spent = ended.reduce((s, j) => s + parseCredits(j.money.spent, { allowZero: true }), 0n);
  run.claim(
    'audit',
    'every faked result was refuted and cost the requester nothing; no honest result was refuted',
    faked.length > 0 && fakedRefuted && honestRefuted.length === 0 && returned > 0n && paid === spent,
    `${refuted.length} result${refuted.length === 1 ? '' : 's'} refuted; the ${formatCredits(returned)} credits they had charged went back into their jobs' budgets and paid for the re-runs; the requester paid ${formatCredits(paid)} for the two jobs: what the jobs spent without them (${formatCredits(spent)})`,
  );

  // The network re-ran each refuted shard itself, never on the cheater: both jobs succeeded with every result verified.
  const verified = (t: Task) => t.verification?.state === 'verified';
  const rerunOnCheater = refuted.some((r) => r.task.providerId === cheater.agent.id);
  run.claim(
    'audit',
    "the network re-ran the refuted shards on other providers; both jobs succeeded with every result verified",
    refuted.length > 0 && !rerunOnCheater && ended.every((j) => j.state === 'succeeded' && j.tasks.every(verified)),
    `${ended.map((j, i) => `${jobs[i]?.workload.spec.name} ${j.state}, ${j.tasks.filter(verified).length}/${j.tasks.length} verified`).join('; ')}; re-runs on ${[...new Set(refuted.map((r) => run.providerName(r.task.providerId)))].join(', ') || '-'}`,
  );

  // Every input is covered by a verified result (the outputs downloaded again: the re-runs' replace the refuted ones).
  for (const j of jobs) await run.results(j);
  const classifierJob = ended[0] as JobView;
  const predictions = await predictionsOf(run, inference.classifier, classifierJob, verified);
  const expectedPoints = await countPoints(inference.classifier);
  const byKey = new Map(predictions.map((p) => [`${p.file}:${p.row}`, p]));
  const labelled = predictions.filter((p) => p.truth !== null);
  const right = labelled.filter((p) => p.truth === p.class).length;
  run.claim(
    'inference',
    `${inference.classifier.workload.spec.name}: verified predictions for every point`,
    byKey.size === expectedPoints && predictions.length === expectedPoints,
    `${byKey.size} of ${expectedPoints} points, ${labelled.length > 0 ? ((100 * right) / labelled.length).toFixed(1) : '-'}% classified as labelled`,
  );
  const ocrJob = ended[1] as JobView;
  const lines = await ocrLinesOf(run, inference.ocr, ocrJob, verified);
  const images = (await countFiles(inference.ocr, 'images')) ?? 0;
  const exact = lines.filter((l) => l.expected !== undefined && l.text === l.expected).length;
  run.claim(
    'inference',
    `${inference.ocr.workload.spec.name}: verified text for every image`,
    new Set(lines.map((l) => l.image)).size === images && lines.length === images,
    `${lines.length} of ${images} text-line images, ${exact} read exactly as labelled`,
  );

  // The service (same model, same runtime) must have said what the verified batch inference says.
  if (service?.answer) {
    const answer = service.answer;
    const agree = service.points.every((p, i) => {
      const batch = byKey.get(`${p.file}:${p.row}`);
      const got = answer.outputs[i];
      return (
        batch !== undefined &&
        got !== undefined &&
        answer.classes[i] === batch.class &&
        got.every((v, k) => Math.abs(v - (batch.probabilities[k] ?? Number.NaN)) <= 1e-4 * Math.max(1, Math.abs(v)))
      );
    });
    run.claim(
      'service',
      "the service's answers agree with the verified batch inference",
      agree,
      `${service.points.length} points: the same classes and probabilities (within 1e-4) as the batch job's verified results`,
    );
  }
}

async function countPoints(record: JobRecord): Promise<number> {
  const { expandGlob } = await import('@gridwork/sdk');
  const input = record.workload.spec.inputs?.find((i) => i.shard);
  if (!input) return 0;
  let n = 0;
  for (const f of await expandGlob(record.workload.baseDir, input.path)) {
    n += (await readFile(f.absPath, 'utf8'))
      .split('\n')
      .slice(1)
      .filter((l) => l.trim() !== '').length;
  }
  return n;
}

async function countFiles(record: JobRecord, inputName: string): Promise<number | null> {
  const { expandGlob } = await import('@gridwork/sdk');
  const input = record.workload.spec.inputs?.find((i) => i.name === inputName);
  return input ? (await expandGlob(record.workload.baseDir, input.path)).length : null;
}
