/**
 * The batch-inference example run directly with node, as three shard tasks would run it: each
 * task classifies its files with onnxruntime-node on the CPU (no GPU here) and says so. Needs
 * onnxruntime-node under examples/node_modules (`node examples/prepare.mjs`); skipped without it.
 */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { copyFileSync, cpSync, existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { fileURLToPath } from 'node:url';

const here = fileURLToPath(new URL('.', import.meta.url));
const ortInstalled = existsSync(join(here, '../node_modules/onnxruntime-node/package.json'));
const skip = ortInstalled || process.env.CI ? false : 'onnxruntime-node is not installed under examples/ (run: node examples/prepare.mjs)';
const root = mkdtempSync(join(tmpdir(), 'gridwork-infer-trained-'));
after(() => rmSync(root, { recursive: true, force: true }));

/** Lays out one task's inputs as the provider does (one folder per input set) and runs it. */
function runTask(name: string, points: string[], extra: Record<string, string> = {}, models = ['model.onnx']) {
  const inputs = join(root, name, 'inputs');
  const outputs = join(root, name, 'outputs');
  mkdirSync(join(inputs, 'model'), { recursive: true });
  mkdirSync(join(inputs, 'points'), { recursive: true });
  for (const m of models) copyFileSync(join(here, 'model/model.onnx'), join(inputs, 'model', m));
  for (const p of points) copyFileSync(join(here, 'data', p), join(inputs, 'points', p));
  const result = spawnSync(process.execPath, ['infer.mjs'], {
    cwd: join(root, 'bundle'),
    env: { PATH: process.env.PATH, GRIDWORK_INPUTS: inputs, GRIDWORK_OUTPUTS: outputs, ...extra },
    encoding: 'utf8',
    timeout: 60_000,
  });
  return { result, outputs };
}

describe('examples/infer-trained', { skip }, () => {
  before(async () => {
    const { prepareExamples } = (await import(new URL('../prepare.mjs', import.meta.url).href)) as { prepareExamples: (o: object) => boolean };
    assert.ok(prepareExamples({ install: false, log: () => {} }));
    // A copy outside the repository: the bundle must bring everything it loads.
    cpSync(join(here, 'workload'), join(root, 'bundle'), { recursive: true });
  });

  it('three shard tasks classify their files on the CPU and say which provider ran', () => {
    const shards = [
      ['points-00.csv', 'points-01.csv'],
      ['points-02.csv', 'points-03.csv'],
      ['points-04.csv', 'points-05.csv'],
    ];
    let correct = 0;
    shards.forEach((files, i) => {
      const { result, outputs } = runTask(`task-${i}`, files, { GRIDWORK_TASK_INDEX: String(i), GRIDWORK_TASK_COUNT: '3', CUDA_VISIBLE_DEVICES: '' });
      assert.equal(result.status, 0, result.stderr);
      assert.match(result.stdout, new RegExp(`task ${i}/3: execution provider cpu \\(no GPU given to this task`));
      const lines = readFileSync(join(outputs, 'predictions.jsonl'), 'utf8').trim().split('\n').map((l) => JSON.parse(l));
      assert.equal(lines.length, 100);
      for (const l of lines) {
        assert.equal(l.probabilities.length, 3);
        assert.ok(Math.abs(l.probabilities.reduce((a: number, b: number) => a + b, 0) - 1) < 1e-5);
      }
      const summary = JSON.parse(readFileSync(join(outputs, 'summary.json'), 'utf8'));
      assert.equal(summary.points, 100);
      assert.deepEqual(
        summary.files.map((f: { file: string }) => f.file),
        files.map((f) => `points/${f}`),
      );
      correct += summary.correct;
    });
    assert.ok(correct / 300 >= 0.95, `accuracy ${correct / 300}`);
  });

  it('with a GPU named but no CUDA provider in the bundle, falls back to the CPU and says why', () => {
    const { result } = runTask('gpu-fallback', ['points-00.csv'], { CUDA_VISIBLE_DEVICES: '0' });
    assert.equal(result.status, 0, result.stderr);
    assert.match(result.stdout, /execution provider cpu \(GPU 0 visible, but/);
    const forced = runTask('gpu-forced', ['points-00.csv'], { CUDA_VISIBLE_DEVICES: '0', EXECUTION_PROVIDER: 'cuda' });
    assert.equal(forced.result.status, 1);
    assert.match(forced.result.stderr, /EXECUTION_PROVIDER=cuda, but GPU 0 visible/);
  });

  it('refuses inputs without exactly one model', () => {
    const none = runTask('no-model', ['points-00.csv'], {}, []);
    assert.equal(none.result.status, 1);
    assert.match(none.result.stderr, /exactly one \.onnx model/);
    const two = runTask('two-models', ['points-00.csv'], {}, ['a.onnx', 'b.onnx']);
    assert.equal(two.result.status, 1);
  });
});
