/**
 * Step 1: train the spiral classifier (examples/train), kill its provider once its first
 * checkpoints are up, let a replacement join, and show the task resume elsewhere from the last
 * checkpoint the coordinator holds — then wait for its audit, so the next steps start on a calm
 * network. Returns the trained model.onnx.
 */
import { stat } from 'node:fs/promises';
import type { JobView } from '@gridwork/protocol';
import { type DemoProvider, REPLACEMENT } from './demo-network.ts';
import { type DemoRun, until } from './demo-run.ts';
import { DEMO_TRAIN_STEPS, trainWorkload } from './workloads.ts';

/** Less than the agent's interval between two scans of a task's checkpoint directory (one second, provider/src/checkpoints.ts). */
const LATER_SCAN_MS = 600;

interface Seen {
  provider: string;
  leaseId: string;
  firstAt: number;
  /** Steps handed over for upload so far, in order. */
  steps: number[];
}

export interface UploadedCheckpoints {
  provider: string;
  leaseId: string;
  /** The coordinator has every checkpoint up to this step. */
  uploaded: number;
  /** The task has written at least this far. */
  latest: number;
}

/**
 * Hears of every checkpoint the agents are about to upload. An agent uploads a task's new
 * checkpoints one after the other, reporting each before it hands over the next (and one scan
 * after the other), so when it hands over a checkpoint, every earlier one has been uploaded and
 * reported. The watch answers once the agent has caught up with what the task wrote before its
 * latest scan (a checkpoint handed over by a later scan), so the task can resume from close to
 * where it died — or, on a machine fast enough to finish the training before that, as soon as
 * two checkpoints are up and the task is past `hurryAt`.
 */
export class CheckpointWatch {
  private readonly byJob = new Map<string, Seen>();
  private readonly waiters = new Map<string, { hurryAt: number; resolve: (u: UploadedCheckpoints) => void }>();

  seen(provider: string, jobId: string, leaseId: string, step: number): void {
    const now = Date.now();
    let s = this.byJob.get(jobId);
    if (!s || s.leaseId !== leaseId) {
      s = { provider, leaseId, firstAt: now, steps: [] };
      this.byJob.set(jobId, s);
    }
    const prior = s.steps.length;
    s.steps.push(step);
    const waiter = this.waiters.get(jobId);
    if (!waiter) return;
    const caughtUp = prior >= 1 && now - s.firstAt >= LATER_SCAN_MS;
    const hurry = prior >= 2 && step >= waiter.hurryAt;
    if (caughtUp || hurry) {
      waiter.resolve({ provider: s.provider, leaseId: s.leaseId, uploaded: Math.max(...s.steps.slice(0, prior)), latest: Math.max(...s.steps) });
    }
  }

  /** Resolves once the job's running lease has checkpoints at the coordinator. */
  uploaded(jobId: string, hurryAt: number, timeoutMs: number): Promise<UploadedCheckpoints> {
    return new Promise((resolve, reject) => {
      const t = setTimeout(() => {
        this.waiters.delete(jobId);
        reject(new Error(`no checkpoint of the training reached the coordinator within ${Math.round(timeoutMs / 1000)} s`));
      }, timeoutMs);
      this.waiters.set(jobId, {
        hurryAt,
        resolve: (u) => {
          clearTimeout(t);
          this.waiters.delete(jobId);
          resolve(u);
        },
      });
    });
  }
}

export interface TrainOutcome {
  modelFile: string;
}

export async function trainStep(run: DemoRun, watch: CheckpointWatch): Promise<TrainOutcome> {
  const { progress, requester } = run;
  const workload = await trainWorkload();
  const job = await run.submit('train', workload);
  progress.note(`${DEMO_TRAIN_STEPS} Adam steps (the example's 2,000 can end before its provider can be killed), a checkpoint every 50`);

  // Training progress from the task's own log ("step N: loss …"), followed in the background.
  let step = 0;
  const stopFollowing = new AbortController();
  const follow = (async () => {
    for await (const line of requester.logLines(job.id, { follow: true, signal: stopFollowing.signal })) {
      const m = /^step (\d+): loss/.exec(line.line);
      if (m) {
        step = Number(m[1]);
        const where = run.providerName(job.view.tasks[0]?.providerId);
        // Off a terminal: a line per tenth of the run (and per provider), not per checkpoint.
        progress.bar(
          `${job.id}:steps`,
          workload.spec.name,
          step,
          DEMO_TRAIN_STEPS,
          `step ${step}/${DEMO_TRAIN_STEPS} on ${where}`,
          `${where}:${Math.floor((10 * step) / DEMO_TRAIN_STEPS)}`,
        );
      }
    }
  })().catch(() => {});

  // The replacement stands by (key, stake, agent made). Once the training runs, it joins and
  // proves its hardware (a benchmark counts for placement only once proven), while it waits idle.
  const standby = (async () => {
    const p = await run.net.prepareProvider(REPLACEMENT);
    await until(() => requester.get(job.id), (j) => j.tasks[0]?.state === 'running', 'the training to run');
    await run.net.start(p);
    return p;
  })();
  standby.catch(() => {});
  let victim: DemoProvider;
  let killedAt: { provider: string; step: number };
  let done: JobView;
  try {
    const up = await watch.uploaded(job.id, DEMO_TRAIN_STEPS / 2, 90_000);
    victim = run.net.byName(up.provider);
    await standby;
    progress.note(`${REPLACEMENT.name} has joined the network (asks ${REPLACEMENT.cpuCoreHour}/core-h) and proved its benchmark of ${REPLACEMENT.cpuMopsPerCore} with a capacity challenge`);
    await run.net.kill(victim);
    killedAt = { provider: victim.profile.name, step: Math.max(up.latest, step) };
    progress.warn(
      `killed ${victim.profile.name}, which was running the training, at about step ${killedAt.step}, once the coordinator held its checkpoints up to step ${up.uploaded}; no goodbye: its task died with it`,
    );
    progress.note(`the coordinator declares ${victim.profile.name} lost after 3 missed heartbeats`);
    done = await run.wait(job, { timeoutMs: 120_000 });
  } finally {
    stopFollowing.abort();
    await follow;
    progress.done(`${job.id}:steps`);
  }
  const task = done.tasks[0];
  const victimId = victim.agent.id;
  let resumedStep: number | null = null;
  if (task?.leaseId) {
    for await (const line of requester.logLines(job.id)) {
      const m = /^resumed from step-\d+\.json \(step (\d+) of \d+\)/.exec(line.line);
      if (m && line.leaseId === task.leaseId) resumedStep = Number(m[1]);
    }
  }
  const where = run.providerName(task?.providerId);
  run.claim(
    'train',
    'training resumed on another provider from a checkpoint',
    task?.state === 'succeeded' && task.providerId !== victimId && resumedStep !== null && resumedStep > 0,
    task?.state === 'succeeded'
      ? `${killedAt.provider} was killed at about step ${killedAt.step}; ${where} ${resumedStep ? `resumed from its checkpoint at step ${resumedStep}` : 'did not resume from a checkpoint'} and ran to step ${DEMO_TRAIN_STEPS}`
      : `the training task is ${task?.state ?? 'missing'}${task?.error ? `: ${task.error}` : ''}`,
  );
  job.notes.push(`${killedAt.provider} killed at about step ${killedAt.step}; resumed on ${where} from the checkpoint at step ${resumedStep ?? '-'}`);

  const files = await run.results(job);
  const modelFile = files.find((f) => f.endsWith('/model.onnx'));
  const metricsFile = files.find((f) => f.endsWith('/metrics.json'));
  let accuracy = '';
  if (metricsFile) {
    const { readFile } = await import('node:fs/promises');
    const m = JSON.parse(await readFile(metricsFile, 'utf8')) as { final?: { testAccuracy?: number; trainAccuracy?: number } };
    if (typeof m.final?.testAccuracy === 'number') accuracy = `, ${(m.final.testAccuracy * 100).toFixed(1)}% accuracy on the held-out points`;
  }
  const size = modelFile ? (await stat(modelFile)).size : 0;
  run.claim(
    'train',
    'the trained model was exported to ONNX',
    size > 0,
    modelFile ? `model.onnx, ${(size / 1024).toFixed(1)} KiB${accuracy}` : 'no model.onnx among the outputs',
  );
  if (!modelFile) throw new Error('the training produced no model.onnx: the inference steps need it');

  // New providers are on probation: one checkpoint segment of the resumed run is re-run on another provider.
  progress.note(`results are in; ${where} is new, so another provider re-runs one checkpoint segment of its run before it is paid`);
  const ended = await run.wait(job, { until: 'end', timeoutMs: 90_000 });
  const audit = ended.tasks[0]?.verification?.checks.find((c) => c.kind === 'audit');
  run.claim(
    'train',
    'the training job succeeded and its result was verified',
    ended.state === 'succeeded',
    `${ended.state}${ended.error ? `: ${ended.error}` : ''}; ${audit ? `the audit of ${where}'s run ${audit.state}${audit.detail ? ` (${audit.detail})` : ''}` : 'not audited'}`,
  );
  return { modelFile };
}
