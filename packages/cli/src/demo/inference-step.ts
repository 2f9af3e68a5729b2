/**
 * Step 2: both batch inference jobs at once — the spiral classifier trained in step 1 over six
 * files of points (examples/infer-trained, model swapped for the new one), and OCR of text-line
 * images with a pretrained PaddleOCR model from npm (examples/infer-pretrained) — each sharded
 * into three tasks across the providers. Results come back at once, pending verification: the
 * requester cannot tell yet which of them a cheater made up.
 */
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import type { JobView } from '@gridwork/protocol';
import { type DemoRun, type JobRecord, tasksByProvider } from './demo-run.ts';
import { inferPretrainedWorkload, inferTrainedWorkload } from './workloads.ts';

export interface InferenceOutcome {
  classifier: JobRecord;
  ocr: JobRecord;
}

/** One prediction of the spiral classifier, keyed by "file:row". */
export interface Prediction {
  file: string;
  row: number;
  x: number;
  y: number;
  class: number;
  probabilities: number[];
  truth: number | null;
}

export async function inferenceStep(run: DemoRun, modelFile: string, cheatOn: (jobId: string) => void): Promise<InferenceOutcome> {
  const classifier = await run.submit('inference', await inferTrainedWorkload(modelFile));
  cheatOn(classifier.id);
  const ocr = await run.submit('inference', await inferPretrainedWorkload());
  cheatOn(ocr.id);
  const [a, b] = await Promise.all([run.wait(classifier), run.wait(ocr)]);
  for (const [record, job] of [
    [classifier, a],
    [ocr, b],
  ] as const) {
    const files = await run.results(record);
    const complete = (job.state === 'verifying' || job.state === 'succeeded') && job.tasks.every((t) => t.state === 'succeeded' && t.outputs.length > 0);
    run.claim(
      'inference',
      `${record.workload.spec.name}: every shard returned outputs`,
      complete,
      complete
        ? `${job.tasks.length} tasks, ${files.length} files in ${Math.round(((record.readyAt ?? Date.now()) - record.submittedAt) / 100) / 10} s; ${describeShards(run, job)}`
        : `the job is ${job.state}${job.error ? `: ${job.error}` : ''}`,
    );
  }
  const shown = await summarize(run, classifier, a, ocr, b);
  run.progress.note(`as delivered, still pending verification: ${shown}`);
  return { classifier, ocr };
}

function describeShards(run: DemoRun, job: JobView): string {
  return Object.entries(tasksByProvider(run, job))
    .map(([p, n]) => `${p} ×${n}`)
    .join(', ');
}

async function summarize(run: DemoRun, classifier: JobRecord, a: JobView, ocr: JobRecord, b: JobView): Promise<string> {
  const predictions = await predictionsOf(run, classifier, a, () => true);
  const labelled = predictions.filter((p) => p.truth !== null);
  const right = labelled.filter((p) => p.truth === p.class).length;
  const lines = await ocrLinesOf(run, ocr, b, () => true);
  const read = lines.filter((l) => l.expected !== undefined && l.text === l.expected).length;
  return `${labelled.length > 0 ? ((100 * right) / labelled.length).toFixed(1) : '-'}% of ${labelled.length} points classified right; ${read} of ${lines.length} text lines read exactly`;
}

/** Where a job's downloaded outputs are (run.results' default directory). */
export function resultsDir(run: DemoRun, record: JobRecord): string {
  return join(run.dataDir, 'results', record.workload.spec.name);
}

async function jsonLines<T>(file: string): Promise<T[]> {
  const text = await readFile(file, 'utf8').catch(() => '');
  return text
    .split('\n')
    .filter((l) => l.trim() !== '')
    .map((l) => JSON.parse(l) as T);
}

/** The classifier's predictions of the tasks `keep` admits, from the downloaded outputs. */
export async function predictionsOf(run: DemoRun, record: JobRecord, job: JobView, keep: (task: JobView['tasks'][number]) => boolean): Promise<Prediction[]> {
  const out: Prediction[] = [];
  for (const t of job.tasks.filter(keep)) {
    for (const o of t.outputs.filter((x) => x.path === 'predictions.jsonl')) {
      out.push(...(await jsonLines<Prediction>(join(resultsDir(run, record), `task-${t.index}`, o.path))));
    }
  }
  return out;
}

export interface OcrLine {
  image: string;
  text: string;
  confidence: number;
  expected?: string;
}

export async function ocrLinesOf(run: DemoRun, record: JobRecord, job: JobView, keep: (task: JobView['tasks'][number]) => boolean): Promise<OcrLine[]> {
  const out: OcrLine[] = [];
  for (const t of job.tasks.filter(keep)) {
    for (const o of t.outputs.filter((x) => x.path === 'results.jsonl')) {
      out.push(...(await jsonLines<OcrLine>(join(resultsDir(run, record), `task-${t.index}`, o.path))));
    }
  }
  return out;
}
