/**
 * Step 3: the trained model as a long-running HTTP service (examples/service: two replicas),
 * reached only through the coordinator's ingress with the owner's signed requests. The demo
 * waits until it is healthy, asks it to classify a few points, checks the answer's shape (and,
 * once inference results are verified, that it agrees with them), then stops it.
 */
import { readFile } from 'node:fs/promises';
import { type DemoRun, type JobRecord, until } from './demo-run.ts';
import { exampleDir, serviceWorkload } from './workloads.ts';

export interface ServicePoint {
  file: string;
  row: number;
  x: number;
  y: number;
  label: number;
}

export interface ServiceOutcome {
  record: JobRecord;
  points: ServicePoint[];
  /** The service's answer per point (classes and probabilities), or null when it gave none. */
  answer: { classes: number[]; outputs: number[][] } | null;
}

/** The first point of each data file of examples/infer-trained (the points the batch job classifies too). */
async function samplePoints(): Promise<ServicePoint[]> {
  const points: ServicePoint[] = [];
  for (let i = 0; i < 6; i++) {
    const name = `points-${String(i).padStart(2, '0')}.csv`;
    const rows = (await readFile(`${exampleDir('infer-trained')}/data/${name}`, 'utf8')).trim().split('\n').slice(1);
    const [x, y, label] = (rows[0] ?? '').split(',').map(Number);
    if (x === undefined || y === undefined || label === undefined) continue;
    points.push({ file: `points/${name}`, row: 0, x, y, label });
  }
  return points;
}

function isAnswer(body: unknown, n: number): body is { classes: number[]; outputs: number[][] } {
  const b = body as { classes?: unknown; outputs?: unknown } | null;
  return (
    Array.isArray(b?.classes) &&
    Array.isArray(b?.outputs) &&
    b.classes.length === n &&
    b.outputs.length === n &&
    b.outputs.every((row) => Array.isArray(row) && row.length === 3 && Math.abs(row.reduce((s: number, v: unknown) => s + Number(v), 0) - 1) < 1e-3)
  );
}

export async function serviceStep(run: DemoRun, modelFile: string): Promise<ServiceOutcome> {
  const { progress } = run;
  const workload = await serviceWorkload(modelFile);
  const record = await run.submit('service', workload);
  const replicas = workload.spec.service?.replicas ?? 1;
  const points = await samplePoints();

  // Healthy once every replica has answered its health check through the ingress (which hands requests to healthy replicas in turn).
  const healthy = new Set<string>();
  await until(
    async () => {
      const job = await run.refresh(record);
      const r = await run.ingress(record.id, 'GET', '/health');
      if (r.status === 200 && r.replica) healthy.add(r.replica);
      const running = job.tasks.filter((t) => t.state === 'running').length;
      progress.bar(
        record.id,
        workload.spec.name,
        healthy.size,
        replicas,
        `${running}/${replicas} replicas running${running > 0 ? ` on ${job.tasks.map((t) => run.providerName(t.providerId)).join(', ')}` : ''}, ${healthy.size} healthy`,
      );
      return healthy.size;
    },
    (n) => n >= replicas,
    `all ${replicas} replicas of the service to answer their health check through the ingress`,
    90_000,
    300,
  ).finally(() => progress.done(record.id));
  const up = await run.refresh(record);
  progress.note(`healthy behind ${run.net.url}/services/${record.id}/ — replicas on ${up.tasks.map((t) => run.providerName(t.providerId)).join(' and ')}`);

  // One request per replica (they take requests in turn): every replica must give the same answer.
  const inputs = points.map((p) => [p.x, p.y]);
  const answers = [];
  for (let i = 0; i < replicas; i++) answers.push(await run.ingress(record.id, 'POST', '/predict', { inputs }));
  const first = answers[0];
  const good = answers.every((a) => a.status === 200 && isAnswer(a.body, points.length));
  const same = good && answers.every((a) => JSON.stringify(a.body) === JSON.stringify(first?.body));
  const served = new Set(answers.map((a) => a.replica).filter((r): r is string => r !== null));
  const answer = good && first ? (first.body as { classes: number[]; outputs: number[][] }) : null;
  const right = answer ? points.filter((p, i) => answer.classes[i] === p.label).length : 0;
  run.claim(
    'service',
    'the service answered through the coordinator ingress',
    good && same,
    good
      ? `POST /services/${record.id}/predict with ${points.length} points: classes [${answer?.classes.join(', ')}] (${right} of ${points.length} as labelled), the same answer from ${served.size} replica${served.size === 1 ? '' : 's'}`
      : `status ${answers.map((a) => a.status).join(', ')}: ${JSON.stringify(first?.body).slice(0, 200)}`,
  );
  record.readyAt = Date.now();

  await run.requester.cancel(record.id);
  const stopped = await run.wait(record, { until: 'end', timeoutMs: 30_000 });
  run.claim(
    'service',
    'the service was stopped and its unspent budget returned',
    stopped.state === 'cancelled' && stopped.money.held === '0',
    `${stopped.state}; it cost ${stopped.money.spent} of its ${stopped.money.budget} budget, metered per second while it ran`,
  );
  return { record, points, answer };
}
