// Gridwork example workload: batch inference with onnxruntime-node using the model trained by
// examples/train (an MLP classifying 2-D points into three spiral arms). The job shards the
// point files across tasks; each task classifies the files it was given.
//
//   GRIDWORK_INPUTS=<dir: model/model.onnx, points/*.csv> GRIDWORK_OUTPUTS=<dir> node infer.mjs
//
// Outputs: predictions.jsonl (one line per point) and summary.json. Which execution provider ran
// (CUDA or CPU) goes to stdout only, so replicas on different hardware produce comparable outputs.
import { createHash } from 'node:crypto';
import { mkdirSync, readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join, relative, sep } from 'node:path';
import { openSession, ort } from './ort-session.mjs';

function fail(message) {
  process.stderr.write(`infer: error: ${message}\n`);
  process.exit(1);
}

const inputsDir = process.env.GRIDWORK_INPUTS;
const outputsDir = process.env.GRIDWORK_OUTPUTS;
if (!inputsDir) fail('GRIDWORK_INPUTS is not set (directory with model/model.onnx and the point files)');
if (!outputsDir) fail('GRIDWORK_OUTPUTS is not set');

function listFiles(dir) {
  const out = [];
  for (const e of readdirSync(dir, { withFileTypes: true })) {
    const p = join(dir, e.name);
    if (e.isDirectory()) out.push(...listFiles(p));
    else if (e.isFile()) out.push(p);
  }
  return out;
}
const files = listFiles(inputsDir)
  .map((path) => ({ path, name: relative(inputsDir, path).split(sep).join('/') }))
  .sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
const models = files.filter((f) => f.name.endsWith('.onnx'));
const pointFiles = files.filter((f) => f.name.endsWith('.csv'));
if (models.length !== 1) fail(`expected exactly one .onnx model under the inputs, found ${models.length}: ${models.map((m) => m.name).join(', ') || 'none'}`);
if (pointFiles.length === 0) fail('no .csv point files under the inputs');

const modelBytes = readFileSync(models[0].path);
let opened;
try {
  opened = await openSession(modelBytes);
} catch (err) {
  fail(`cannot open ${models[0].name}: ${err.message}`);
}
const { session, provider, reason } = opened;
const taskInfo = `task ${process.env.GRIDWORK_TASK_INDEX ?? '0'}/${process.env.GRIDWORK_TASK_COUNT ?? '1'}`;
process.stdout.write(`${taskInfo}: execution provider ${provider} (${reason}); model ${models[0].name}, ${pointFiles.length} file(s)\n`);

/** "x,y[,label]" rows; a header line is skipped. */
function readPoints(file) {
  const rows = [];
  readFileSync(file.path, 'utf8')
    .split('\n')
    .forEach((line, i) => {
      const t = line.trim();
      if (t === '' || (i === 0 && /[a-z]/i.test(t))) return;
      const [a, b, c] = t.split(',');
      const x = Number(a);
      const y = Number(b);
      if (!Number.isFinite(x) || !Number.isFinite(y)) fail(`${file.name}:${i + 1}: expected "x,y[,label]", got ${JSON.stringify(t)}`);
      rows.push({ row: rows.length, x, y, truth: c === undefined || c === '' ? null : Number(c) });
    });
  return rows;
}

const BATCH = 4096;
const lines = [];
let points = 0;
let labelled = 0;
let correct = 0;
const perFile = [];
for (const file of pointFiles) {
  const rows = readPoints(file);
  for (let start = 0; start < rows.length; start += BATCH) {
    const chunk = rows.slice(start, start + BATCH);
    const input = new Float32Array(chunk.length * 2);
    chunk.forEach((r, i) => {
      input[2 * i] = r.x;
      input[2 * i + 1] = r.y;
    });
    const out = await session.run({ input: new ort.Tensor('float32', input, [chunk.length, 2]) });
    const probs = out.probabilities.data;
    const c = out.probabilities.dims[1];
    chunk.forEach((r, i) => {
      const p = Array.from(probs.subarray(i * c, (i + 1) * c));
      let cls = 0;
      for (let j = 1; j < c; j++) if (p[j] > p[cls]) cls = j;
      lines.push(JSON.stringify({ file: file.name, row: r.row, x: r.x, y: r.y, class: cls, probabilities: p, truth: r.truth }));
      if (r.truth !== null) {
        labelled++;
        if (r.truth === cls) correct++;
      }
    });
  }
  points += rows.length;
  perFile.push({ file: file.name, points: rows.length });
  process.stdout.write(`classified ${file.name}: ${rows.length} points\n`);
}

mkdirSync(outputsDir, { recursive: true });
writeFileSync(join(outputsDir, 'predictions.jsonl'), `${lines.join('\n')}\n`);
const summary = {
  model: { file: models[0].name, sha256: createHash('sha256').update(modelBytes).digest('hex') },
  files: perFile,
  points,
  labelled,
  correct,
  accuracy: labelled > 0 ? correct / labelled : null,
};
writeFileSync(join(outputsDir, 'summary.json'), `${JSON.stringify(summary, null, 2)}\n`);
process.stdout.write(`done: ${points} points${labelled > 0 ? `, accuracy ${((100 * correct) / labelled).toFixed(1)}% on ${labelled} labelled` : ''}\n`);
