/**
 * Step 5: the cheater caught. Every new provider is on probation, so another provider re-ran
 * each of the cheater's batch tasks; the re-run disagreed, two referees sided with it, and the
 * cheater's fault was proven: it is slashed, the requester refunded, the job marked failed with
 * the reason. The requester then re-runs just the refuted shards on providers above a reputation
 * floor (a proven fault sinks the cheater far below it), and the demo checks that the verified
 * results now cover every input — and that the service of step 3 agreed with them.
 */
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { formatCredits, parseCredits } from '@gridwork/protocol/money';
import type { JobView } from '@gridwork/protocol';
import { type DemoRun, type JobRecord, until } from './demo-run.ts';
import { type InferenceOutcome, ocrLinesOf, predictionsOf } from './inference-step.ts';
import type { ServiceOutcome } from './service-step.ts';
import { shardRerunWorkload } from './workloads.ts';

/** Re-runs go to providers at least this reputable: a new honest provider has 0.5, one proven fault costs as much as ten lost leases. */
const MIN_REPUTATION = 0.5;

export interface Faked {
  jobId: string;
  taskIndex: number;
}

type Task = JobView['tasks'][number];

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
  if (faked.length > 0) progress.note(`fault proven: ${name}'s stake ${cheater.start.stake} → ${first.stake}; waiting for the verdicts on all its results`);
  const ended = await Promise.all(jobs.map((j) => run.wait(j, { until: 'end', timeoutMs: 90_000 })));
  const record = await cheater.account.providerStatus();
  const refuted: { record: JobRecord; task: Task }[] = [];
  jobs.forEach((j, i) => {
    for (const t of ended[i]?.tasks ?? []) if (t.verification?.state === 'failed') refuted.push({ record: j, task: t });
  });
  for (const { record: j, task } of refuted) {
    const checks = task.verification?.checks ?? [];
    const audit = checks.find((c) => c.kind === 'audit');
    const referees = checks.filter((c) => c.kind === 'referee').length;
    progress.note(
      `${j.workload.spec.name} task ${task.index}, by ${run.providerName(task.providerId)}: ${audit ? `audit ${audit.outcome ?? audit.state}` : 'no audit'}, ${referees} referee${referees === 1 ? '' : 's'}${audit?.detail ? ` — ${run.named(audit.detail)}` : ''}`,
    );
  }
  const stakeAfter = parseCredits(record.stake);
  const stakeBefore = parseCredits(cheater.start.stake);
  run.claim(
    'audit',
    `${name} was caught by audit and slashed`,
    faked.length > 0 && record.audits.failed >= 1 && stakeAfter < stakeBefore,
    `${record.audits.failed} audit${record.audits.failed === 1 ? '' : 's'} of its results failed; stake ${cheater.start.stake} → ${record.stake} (slashed ${record.slashed}); reputation now ${record.reputation.toFixed(2)}, back on probation`,
  );

  // Refunds: what the requester paid for a refuted result comes back (ledger entries `lease.refund`).
  const history = await run.requester.history({ limit: 200 });
  const refundOf = (jobId: string) =>
    history.filter((h) => h.kind === 'lease.refund' && h.memo.jobId === jobId).reduce((s, h) => s + parseCredits(h.change, { allowNegative: true }), 0n);
  const fakedRefuted = faked.every((f) => refuted.some((r) => r.record.id === f.jobId && r.task.index === f.taskIndex));
  const honestRefuted = refuted.filter((r) => !faked.some((f) => f.jobId === r.record.id && f.taskIndex === r.task.index));
  const refunded = jobs.reduce((s, j) => s + refundOf(j.id), 0n);
  for (const j of jobs) {
    const r = refundOf(j.id);
    if (r > 0n) j.notes.push(`refunded ${formatCredits(r)} for refuted results`);
  }
  run.claim(
    'audit',
    'every faked result was refuted and refunded; no honest result was',
    faked.length > 0 && fakedRefuted && honestRefuted.length === 0 && refunded > 0n,
    `${refuted.length} result${refuted.length === 1 ? '' : 's'} refuted, ${formatCredits(refunded)} credits back to the requester; ${ended.map((j, i) => `${jobs[i]?.workload.spec.name} ${j.state}`).join(', ')}`,
  );

  // The requester runs the refuted shards again, on providers that have proven no fault.
  const reruns: { of: JobRecord; record: JobRecord }[] = [];
  for (const { record: j, task } of refuted) {
    const w = await shardRerunWorkload(j.workload, task.index, join(run.dataDir, 'reruns', `${j.workload.spec.name}-${task.index}`), MIN_REPUTATION);
    const rec = await run.submit('audit', w);
    rec.notes.push(`re-run of ${j.workload.spec.name} task ${task.index} (placement.minReputation ${MIN_REPUTATION})`);
    reruns.push({ of: j, record: rec });
  }
  const rerunViews = await Promise.all(reruns.map((r) => run.wait(r.record, { until: 'end', timeoutMs: 90_000 })));
  for (const r of reruns) await run.results(r.record);
  const onCheater = rerunViews.some((v) => v.tasks.some((t) => t.providerId === cheater.agent.id));
  if (reruns.length > 0) {
    run.claim(
      'audit',
      'the refuted shards were re-run on other providers and succeeded',
      rerunViews.every((v) => v.state === 'succeeded') && !onCheater,
      reruns
        .map(
          (r, i) => `${r.record.workload.spec.name} ${rerunViews[i]?.state} on ${rerunViews[i]?.tasks.map((t) => run.providerName(t.providerId)).join(', ')}`,
        )
        .join('; '),
    );
  }

  // Every input is now covered by a verified result: the original job's verified tasks plus the re-runs.
  const verified = (t: Task) => t.verification?.state === 'verified';
  const rerunsOf = (j: JobRecord) => reruns.flatMap((r, i) => (r.of === j && rerunViews[i] ? [{ record: r.record, view: rerunViews[i] }] : []));
  const classifierJob = ended[0] as JobView;
  const predictions = await predictionsOf(run, inference.classifier, classifierJob, verified);
  for (const { record: r, view } of rerunsOf(inference.classifier)) predictions.push(...(await predictionsOf(run, r, view, verified)));
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
  for (const { record: r, view } of rerunsOf(inference.ocr)) lines.push(...(await ocrLinesOf(run, r, view, verified)));
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
