// Checks an exported model.onnx against the JavaScript forward pass: loads it with
// onnxruntime-node (installed under examples/node_modules: `node examples/prepare.mjs`), runs it
// on the test split, and compares with forward() on the float64 parameters of the final
// checkpoint. Prints one JSON line; exits 1 when a probability differs by more than 1e-5 or a
// predicted class differs.
//
//   node examples/train/check-onnx.mjs <outputs dir> <checkpoints dir>
import { readdirSync, readFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { join } from 'node:path';
import { CLASSES, fromCsv } from './workload/dataset.mjs';
import { forward, layout } from './workload/mlp.mjs';

const [outputsDir, checkpointsDir] = process.argv.slice(2);
if (!outputsDir || !checkpointsDir) {
  process.stderr.write('usage: node check-onnx.mjs <outputs dir> <checkpoints dir>\n');
  process.exit(2);
}
const ort = createRequire(new URL('../package.json', import.meta.url))('onnxruntime-node');

const last = readdirSync(checkpointsDir)
  .filter((f) => /^step-[0-9]+\.json$/.test(f))
  .sort()
  .pop();
const ck = JSON.parse(readFileSync(join(checkpointsDir, last), 'utf8'));
const lay = layout([2, ...ck.config.hidden, CLASSES]);
const raw = Buffer.from(ck.state, 'base64');
const params = new Float64Array(lay.count);
for (let i = 0; i < lay.count; i++) params[i] = raw.readDoubleLE(i * 8);

const test = fromCsv(readFileSync(new URL('./data/test.csv', import.meta.url), 'utf8'));
const n = test.y.length;
const js = forward(lay, params, test.x, null).probs;

const session = await ort.InferenceSession.create(join(outputsDir, 'model.onnx'));
const result = await session.run({ input: new ort.Tensor('float32', Float32Array.from(test.x), [n, 2]) });
const probs = result.probabilities.data;
let maxAbsDiff = 0;
let labelsAgree = 0;
for (let r = 0; r < n; r++) {
  let a = 0;
  let b = 0;
  for (let j = 0; j < CLASSES; j++) {
    maxAbsDiff = Math.max(maxAbsDiff, Math.abs(probs[r * CLASSES + j] - js[r * CLASSES + j]));
    if (probs[r * CLASSES + j] > probs[r * CLASSES + a]) a = j;
    if (js[r * CLASSES + j] > js[r * CLASSES + b]) b = j;
  }
  if (a === b) labelsAgree++;
}
const ok = maxAbsDiff <= 1e-5 && labelsAgree === n;
process.stdout.write(`${JSON.stringify({ ok, checkpoint: last, rows: n, maxAbsDiff, labelsAgree, outputs: session.outputNames })}\n`);
process.exit(ok ? 0 : 1);
