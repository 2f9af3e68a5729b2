// Gridwork example workload: train a small MLP on 2-D spirals with bitwise-reproducible float64
// arithmetic (detmath.mjs), checkpoint every k steps, resume from the newest checkpoint found in
// $GRIDWORK_CHECKPOINTS, and export the trained model to ONNX. Plain Node 20, no dependencies.
//
//   GRIDWORK_INPUTS=<dir with train.csv, test.csv> GRIDWORK_OUTPUTS=<dir> GRIDWORK_CHECKPOINTS=<dir> node train.mjs
//
// Contract with the platform (see README.md):
//   - checkpoints: $GRIDWORK_CHECKPOINTS/step-<N>.json (N zero-padded to 6 digits), written
//     atomically (temp file ".step-<N>.json.tmp" in the same directory, then rename), every
//     CHECKPOINT_EVERY steps and at the last step;
//   - resume: the checkpoint named by GRIDWORK_RESUME_STEP, else the one with the highest step
//     found there at start; the rest of the run is bitwise identical to an uninterrupted one
//     (same later checkpoints, same outputs);
//   - GRIDWORK_STOP_STEP=M: exit 0 right after writing checkpoint M (segment replay for audits);
//   - SIGTERM: write a checkpoint at the current step, then exit 143.
import { createHash } from 'node:crypto';
import { mkdirSync, readdirSync, readFileSync, renameSync, writeFileSync, openSync, fsyncSync, closeSync } from 'node:fs';
import { join } from 'node:path';
import { CLASS_NAMES, CLASSES, fromCsv, makeSpirals, toCsv } from './dataset.mjs';
import { deriveSeed, mulberry32 } from './detmath.mjs';
import { adamStep, backward, forward, initParams, layout, lossAndAccuracy } from './mlp.mjs';
import { mlpToOnnx } from './onnx.mjs';

const FORMAT = 'gridwork-example-train/1';
const started = Date.now();

function fail(message, code = 1) {
  process.stderr.write(`train: error: ${message}\n`);
  process.exit(code);
}

// ---- configuration: env vars, overridden by --name=value flags ------------------------------
const flags = Object.fromEntries(
  process.argv.slice(2).map((a) => {
    const m = /^--([a-z-]+)=(.*)$/.exec(a);
    if (!m) fail(`unknown argument ${JSON.stringify(a)} (flags are --steps=N --checkpoint-every=K --seed=S --batch-size=B --hidden=32,32 --lr=X)`);
    return [m[1], m[2]];
  }),
);
function setting(flag, env, def, parse) {
  const raw = flags[flag] ?? process.env[env];
  if (raw === undefined || raw === '') return def;
  const v = parse(raw);
  if (v === undefined) fail(`invalid ${env} / --${flag}: ${JSON.stringify(raw)}`);
  return v;
}
const posInt = (s) => (/^[1-9][0-9]{0,8}$/.test(s) ? Number(s) : undefined);
const config = {
  steps: setting('steps', 'TRAIN_STEPS', 2000, posInt),
  checkpointEvery: setting('checkpoint-every', 'CHECKPOINT_EVERY', 50, posInt),
  seed: setting('seed', 'TRAIN_SEED', 7, (s) => (/^[0-9]{1,9}$/.test(s) ? Number(s) : undefined)),
  batchSize: setting('batch-size', 'BATCH_SIZE', 32, posInt),
  hidden: setting('hidden', 'HIDDEN', [32, 32], (s) => {
    const v = s.split(',').map(posInt);
    return v.length >= 1 && v.length <= 4 && v.every((n) => n !== undefined && n <= 256) ? v : undefined;
  }),
  learningRate: setting('lr', 'LEARNING_RATE', 0.01, (s) => {
    const v = Number(s);
    return Number.isFinite(v) && v > 0 && v < 1 ? v : undefined;
  }),
};
const stopStep = setting('stop-step', 'GRIDWORK_STOP_STEP', undefined, (s) => (/^[0-9]{1,9}$/.test(s) ? Number(s) : undefined));

const outputsDir = process.env.GRIDWORK_OUTPUTS;
const checkpointsDir = process.env.GRIDWORK_CHECKPOINTS;
if (!outputsDir) fail('GRIDWORK_OUTPUTS is not set (writable directory for model.onnx and metrics.json)');
if (!checkpointsDir) fail('GRIDWORK_CHECKPOINTS is not set (writable directory for step-<N>.json checkpoints)');
mkdirSync(outputsDir, { recursive: true });
mkdirSync(checkpointsDir, { recursive: true });

// ---- data: train.csv / test.csv from the inputs, or the built-in generator ------------------
function findFile(dir, name) {
  if (!dir) return undefined;
  let entries;
  try {
    entries = readdirSync(dir, { withFileTypes: true });
  } catch {
    return undefined;
  }
  const found = [];
  for (const e of entries.sort((a, b) => (a.name < b.name ? -1 : 1))) {
    if (e.isFile() && e.name === name) found.push(join(dir, e.name));
    else if (e.isDirectory()) {
      const sub = findFile(join(dir, e.name), name);
      if (sub) found.push(sub);
    }
  }
  if (found.length > 1) fail(`several ${name} files under the inputs: ${found.join(', ')}`);
  return found[0];
}
function loadSplit(name, generate) {
  const path = findFile(process.env.GRIDWORK_INPUTS, name);
  if (!path) return { ...generate(), source: 'generated' };
  try {
    return { ...fromCsv(readFileSync(path, 'utf8'), name), source: name };
  } catch (err) {
    return fail(`cannot read ${path}: ${err.message}`);
  }
}
const train = loadSplit('train.csv', () => makeSpirals({ perClass: 200, seed: 1 }));
const test = loadSplit('test.csv', () => makeSpirals({ perClass: 100, seed: 2 }));
if (train.y.length === 0) fail('train.csv holds no rows');
if (train.y.some((l) => l < 0)) fail('every train.csv row needs a label');
const dataDigest = createHash('sha256').update(toCsv(train)).update(toCsv(test)).digest('hex');

// ---- model and optimizer state (one Float64Array: params | adam m | adam v | beta1^t, beta2^t) --
const lay = layout([2, ...config.hidden, CLASSES]);
const P = lay.count;
const state = new Float64Array(3 * P + 2);
const params = state.subarray(0, P);
const opt = { m: state.subarray(P, 2 * P), v: state.subarray(2 * P, 3 * P), beta1Pow: 1, beta2Pow: 1 };
let step = 0;
let history = []; // one entry per scheduled checkpoint: { step, loss, accuracy } on the whole training set

const name = (n) => `step-${String(n).padStart(6, '0')}.json`;

function encodeState() {
  state[3 * P] = opt.beta1Pow;
  state[3 * P + 1] = opt.beta2Pow;
  const buf = Buffer.alloc(state.length * 8);
  for (let i = 0; i < state.length; i++) buf.writeDoubleLE(state[i], i * 8);
  return buf.toString('base64');
}

function writeCheckpoint() {
  const body = `${JSON.stringify({ format: FORMAT, step, config, dataDigest, state: encodeState(), history })}\n`;
  const file = join(checkpointsDir, name(step));
  const tmp = join(checkpointsDir, `.${name(step)}.tmp`);
  writeFileSync(tmp, body);
  const fd = openSync(tmp, 'r');
  fsyncSync(fd);
  closeSync(fd);
  renameSync(tmp, file);
  return file;
}

function resume() {
  let files;
  try {
    files = readdirSync(checkpointsDir);
  } catch (err) {
    fail(`cannot read ${checkpointsDir}: ${err.message}`);
  }
  const steps = files.flatMap((f) => {
    const m = /^step-([0-9]+)\.json$/.exec(f);
    return m ? [{ file: f, step: Number(m[1]) }] : [];
  });
  // The platform names the step it placed (GRIDWORK_RESUME_STEP); without it, the newest one found.
  const wanted = process.env.GRIDWORK_RESUME_STEP;
  if (wanted !== undefined && wanted !== '') {
    const n = /^[0-9]{1,9}$/.test(wanted) ? Number(wanted) : Number.NaN;
    const match = steps.find((s) => s.step === n);
    if (!match) fail(`GRIDWORK_RESUME_STEP=${wanted}, but ${checkpointsDir} holds no step-${wanted}.json (found: ${files.join(', ') || 'nothing'})`);
    steps.splice(0, steps.length, match);
  }
  if (steps.length === 0) return false;
  steps.sort((a, b) => b.step - a.step);
  const { file } = steps[0];
  let ck;
  try {
    ck = JSON.parse(readFileSync(join(checkpointsDir, file), 'utf8'));
  } catch (err) {
    fail(`checkpoint ${file} is unreadable: ${err.message}`);
  }
  if (ck.format !== FORMAT) fail(`checkpoint ${file}: format ${JSON.stringify(ck.format)}, expected ${FORMAT}`);
  if (JSON.stringify(ck.config) !== JSON.stringify(config)) {
    fail(`checkpoint ${file} was made with another configuration: ${JSON.stringify(ck.config)}; this run has ${JSON.stringify(config)}`);
  }
  if (ck.dataDigest !== dataDigest) fail(`checkpoint ${file} was made with other training data (digest ${ck.dataDigest}, now ${dataDigest})`);
  const raw = Buffer.from(ck.state, 'base64');
  if (raw.length !== state.length * 8) fail(`checkpoint ${file}: state holds ${raw.length} bytes, expected ${state.length * 8}`);
  for (let i = 0; i < state.length; i++) state[i] = raw.readDoubleLE(i * 8);
  opt.beta1Pow = state[3 * P];
  opt.beta2Pow = state[3 * P + 1];
  step = ck.step;
  history = ck.history;
  process.stdout.write(`resumed from ${file} (step ${step} of ${config.steps})\n`);
  return true;
}

if (!resume()) {
  params.set(initParams(lay, deriveSeed(config.seed, 1)));
  process.stdout.write(`training from scratch: ${lay.sizes.join('-')} MLP, ${P} parameters, ${train.y.length} training points (${train.source})\n`);
}
if (stopStep !== undefined && stopStep <= step) fail(`GRIDWORK_STOP_STEP=${stopStep} is not after the resumed step ${step}`, 2);

// ---- batches: epoch e visits the training set in a permutation seeded by (seed, e) -----------
const n = train.y.length;
const stepsPerEpoch = Math.ceil(n / config.batchSize);
let permEpoch = -1;
let perm = new Int32Array(n);
function batchAt(s) {
  const epoch = Math.floor(s / stepsPerEpoch);
  if (epoch !== permEpoch) {
    const rng = mulberry32(deriveSeed(config.seed, 1000 + epoch));
    perm = Int32Array.from({ length: n }, (_, i) => i);
    for (let i = n - 1; i > 0; i--) {
      const j = Math.floor(rng.next() * (i + 1));
      const t = perm[i];
      perm[i] = perm[j];
      perm[j] = t;
    }
    permEpoch = epoch;
  }
  const start = (s % stepsPerEpoch) * config.batchSize;
  return perm.subarray(start, Math.min(start + config.batchSize, n));
}

// ---- SIGTERM: checkpoint where we are and stop (the loop yields to the event loop to notice) ---
let terminate = false;
process.on('SIGTERM', () => {
  terminate = true;
});
const tick = () => new Promise((resolve) => setImmediate(resolve));

const grad = new Float64Array(P);
while (step < config.steps) {
  const idx = batchAt(step);
  const fw = forward(lay, params, train.x, idx);
  backward(lay, params, fw, train.y, idx, grad);
  const lr = config.learningRate * (1 - (0.9 * step) / config.steps); // linear decay to 10%
  adamStep(params, grad, opt, { lr });
  step++;
  const scheduled = step % config.checkpointEvery === 0 || step === config.steps;
  if (scheduled) {
    const all = forward(lay, params, train.x, null);
    const { loss, accuracy } = lossAndAccuracy(all.probs, train.y, null, CLASSES);
    history.push({ step, loss, accuracy });
    process.stdout.write(`step ${step}: loss ${loss.toFixed(4)}, train accuracy ${(accuracy * 100).toFixed(1)}%\n`);
  }
  if (scheduled || step === stopStep) writeCheckpoint();
  if (step === stopStep) {
    process.stdout.write(`stopped after checkpoint ${name(step)} (GRIDWORK_STOP_STEP)\n`);
    process.exit(0);
  }
  if (step % 10 === 0) {
    await tick();
    if (terminate) {
      if (!scheduled) writeCheckpoint();
      process.stdout.write(`SIGTERM: checkpoint ${name(step)} written, stopping\n`);
      process.exit(143);
    }
  }
}

// ---- outputs: model.onnx and metrics.json (no timestamps: the bytes depend only on the inputs) --
const evalSplit = (split) => {
  if (split.y.length === 0 || split.y.some((l) => l < 0)) return { loss: null, accuracy: null };
  return lossAndAccuracy(forward(lay, params, split.x, null).probs, split.y, null, CLASSES);
};
const finalTrain = evalSplit(train);
const finalTest = evalSplit(test);
const onnx = mlpToOnnx(lay, params, {
  graphName: 'spiral_mlp',
  metadata: { class_names: CLASS_NAMES.join(','), steps: config.steps, seed: config.seed, data_sha256: dataDigest },
});
writeFileSync(join(outputsDir, 'model.onnx'), onnx);
const metrics = {
  model: 'spiral-mlp',
  layers: lay.sizes,
  parameters: P,
  classes: CLASS_NAMES,
  config,
  data: { train: train.y.length, test: test.y.length, trainSource: train.source, testSource: test.source, sha256: dataDigest },
  checkpoints: history,
  final: { trainLoss: finalTrain.loss, trainAccuracy: finalTrain.accuracy, testLoss: finalTest.loss, testAccuracy: finalTest.accuracy },
  onnx: {
    file: 'model.onnx',
    bytes: onnx.length,
    sha256: createHash('sha256').update(onnx).digest('hex'),
    inputs: ['input [N,2] float'],
    outputs: ['probabilities [N,3]', 'logits [N,3]'],
  },
};
writeFileSync(join(outputsDir, 'metrics.json'), `${JSON.stringify(metrics, null, 2)}\n`);
process.stdout.write(
  `done: ${config.steps} steps, train accuracy ${(finalTrain.accuracy * 100).toFixed(1)}%, test accuracy ${
    finalTest.accuracy === null ? 'n/a' : `${(finalTest.accuracy * 100).toFixed(1)}%`
  }, model.onnx ${onnx.length} bytes, ${((Date.now() - started) / 1000).toFixed(1)} s\n`,
);
