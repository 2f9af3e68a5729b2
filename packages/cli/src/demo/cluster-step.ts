/**
 * Step 4: data-parallel training on a gang-scheduled cluster (examples/cluster): two members
 * placed together on two providers, each training on half the data and averaging their state
 * every 25 steps through the coordinator's exchange relay; rank 0 exports the model.
 */
import { readFile } from 'node:fs/promises';
import { type DemoRun, tasksByProvider } from './demo-run.ts';
import { clusterWorkload } from './workloads.ts';

export async function clusterStep(run: DemoRun): Promise<void> {
  const workload = await clusterWorkload();
  const record = await run.submit('cluster', workload);
  const size = workload.spec.cluster?.size ?? 0;
  const results = await run.wait(record, { timeoutMs: 120_000 });
  const files = await run.results(record);
  const ended = await run.wait(record, { until: 'end', timeoutMs: 60_000 });
  const members = new Set(ended.tasks.map((t) => t.providerId).filter((p) => p !== null));
  const metricsFile = files.find((f) => f.endsWith('/metrics.json'));
  let accuracy = '';
  if (metricsFile) {
    const m = JSON.parse(await readFile(metricsFile, 'utf8')) as { final?: { testAccuracy?: number } };
    if (typeof m.final?.testAccuracy === 'number') accuracy = `, ${(m.final.testAccuracy * 100).toFixed(1)}% accuracy on the held-out points`;
  }
  const model = files.some((f) => f.endsWith('/model.onnx'));
  run.claim(
    'cluster',
    `the ${size}-member cluster trained together and succeeded`,
    ended.state === 'succeeded' && ended.tasks.length === size && model,
    ended.state === 'succeeded'
      ? `members on ${Object.keys(tasksByProvider(run, ended)).join(' and ')} (${members.size} provider${members.size === 1 ? '' : 's'}), results in ${Math.round(((record.readyAt ?? Date.now()) - record.submittedAt) / 100) / 10} s; rank 0 exported model.onnx${accuracy}`
      : `the cluster is ${ended.state}${ended.error ? `: ${ended.error}` : ''} (${results.state} when its results came in)`,
  );
}
