// The algorithm shared by a cluster member (member.mjs) and the single-process reference
// (simulate.mjs): data-parallel "local Adam" on the spirals of ../train, with the cluster's state
// averaged every AVERAGE_EVERY steps. All arithmetic is float64 with + - * / and Math.sqrt only
// (detmath.mjs, mlp.mjs: copies of examples/train/workload's modules), and every sum has a fixed
// order, so every member and the reference compute the same bits on any machine.
//
// State: one Float64Array `params | adam m | adam v | beta1^t, beta2^t` (as in examples/train).
// Right after an averaging round every member holds the same state, so checkpoints carry no rank
// and are byte-identical on every member.
import { createHash } from 'node:crypto';
import { closeSync, fsyncSync, mkdirSync, openSync, readdirSync, readFileSync, renameSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { CLASS_NAMES, CLASSES, fromCsv, makeSpirals, toCsv } from './dataset.mjs';
import { deriveSeed, mulberry32 } from './detmath.mjs';
import { adamStep, backward, forward, initParams, layout, lossAndAccuracy } from './mlp.mjs';
import { mlpToOnnx } from './onnx.mjs';

export const CHECKPOINT_FORMAT = 'gridwork-example-cluster/1';
export const ROUND_FORMAT = 'gridwork-example-cluster-round/1';

let who = 'cluster';
/** Prefix of error messages ("member 1", "simulate"). */
export function setName(name) {
  who = name;
}
export function fail(message, code = 1) {
  process.stderr.write(`${who}: error: ${message}\n`);
  process.exit(code);
}
export function log(message) {
  process.stdout.write(`${who}: ${message}\n`);
}

// ---- configuration ----------------------------------------------------------------------------
const posInt = (s) => (/^[1-9][0-9]{0,8}$/.test(s) ? Number(s) : undefined);
const nonNegInt = (s) => (/^[0-9]{1,9}$/.test(s) ? Number(s) : undefined);

function setting(env, name, def, parse) {
  const raw = env[name];
  if (raw === undefined || raw === '') return def;
  const v = parse(raw);
  if (v === undefined) fail(`invalid ${name}: ${JSON.stringify(raw)}`);
  return v;
}

/**
 * The run's configuration from the environment. Every field is recorded in each checkpoint and
 * each round publication; members (and checkpoints) with another configuration are refused.
 */
export function readConfig(env = process.env) {
  const config = {
    worldSize: setting(env, 'WORLD_SIZE', undefined, (s) => {
      const v = posInt(s);
      return v !== undefined && v <= 64 ? v : undefined;
    }),
    steps: setting(env, 'TRAIN_STEPS', 1000, posInt),
    averageEvery: setting(env, 'AVERAGE_EVERY', 25, posInt),
    checkpointEvery: setting(env, 'CHECKPOINT_EVERY', 100, posInt),
    seed: setting(env, 'TRAIN_SEED', 7, nonNegInt),
    batchSize: setting(env, 'BATCH_SIZE', 32, posInt),
    hidden: setting(env, 'HIDDEN', [32, 32], (s) => {
      const v = s.split(',').map(posInt);
      return v.length >= 1 && v.length <= 4 && v.every((n) => n !== undefined && n <= 256) ? v : undefined;
    }),
    learningRate: setting(env, 'LEARNING_RATE', 0.01, (s) => {
      const v = Number(s);
      return Number.isFinite(v) && v > 0 && v < 1 ? v : undefined;
    }),
  };
  if (config.worldSize === undefined) fail('WORLD_SIZE is not set (the number of cluster members, 1..64)');
  if (config.steps % config.averageEvery !== 0) fail(`TRAIN_STEPS=${config.steps} is not a multiple of AVERAGE_EVERY=${config.averageEvery}`);
  if (config.checkpointEvery % config.averageEvery !== 0) {
    fail(
      `CHECKPOINT_EVERY=${config.checkpointEvery} is not a multiple of AVERAGE_EVERY=${config.averageEvery} (checkpoints are taken right after an averaging round)`,
    );
  }
  return config;
}

/** GRIDWORK_STOP_STEP, checked against the schedule: a step right after an averaging round. */
export function readStopStep(config, env = process.env) {
  const stop = setting(env, 'GRIDWORK_STOP_STEP', undefined, nonNegInt);
  if (stop === undefined) return undefined;
  if (stop % config.averageEvery !== 0 || stop > config.steps || stop === 0) {
    fail(`GRIDWORK_STOP_STEP=${stop} is not an averaging step (a positive multiple of AVERAGE_EVERY=${config.averageEvery}, at most ${config.steps})`, 2);
  }
  return stop;
}

// ---- data: the full spirals data set on every member; rank k trains on rows k, k+W, k+2W, ... ---
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
function loadSplit(inputsDir, name, generate) {
  const path = findFile(inputsDir, name);
  if (!path) return { ...generate(), source: 'generated' };
  try {
    return { ...fromCsv(readFileSync(path, 'utf8'), name), source: name };
  } catch (err) {
    return fail(`cannot read ${path}: ${err.message}`);
  }
}

/** train.csv / test.csv from the inputs (whole files, not sharded), else the same points generated. */
export function loadData(inputsDir) {
  const train = loadSplit(inputsDir, 'train.csv', () => makeSpirals({ perClass: 200, seed: 1 }));
  const test = loadSplit(inputsDir, 'test.csv', () => makeSpirals({ perClass: 100, seed: 2 }));
  if (train.y.length === 0) fail('train.csv holds no rows');
  if (train.y.some((l) => l < 0)) fail('every train.csv row needs a label');
  const dataDigest = createHash('sha256').update(toCsv(train)).update(toCsv(test)).digest('hex');
  return { train, test, dataDigest };
}

/** Rank k's share of the training set: rows k, k+W, k+2W, ... (the arms interleave, so every share holds every class). */
export function shardOf(train, rank, worldSize) {
  const rows = [];
  for (let i = rank; i < train.y.length; i += worldSize) rows.push(i);
  const x = new Float64Array(2 * rows.length);
  const y = new Int32Array(rows.length);
  rows.forEach((r, i) => {
    x[2 * i] = train.x[2 * r];
    x[2 * i + 1] = train.x[2 * r + 1];
    y[i] = train.y[r];
  });
  if (y.length === 0) fail(`rank ${rank} of ${worldSize} gets no training rows (${train.y.length} rows in all)`);
  return { x, y, rank, worldSize };
}

// ---- model state ------------------------------------------------------------------------------
export function createModel(config) {
  const lay = layout([2, ...config.hidden, CLASSES]);
  const P = lay.count;
  const state = new Float64Array(3 * P + 2);
  return {
    lay,
    P,
    state,
    params: state.subarray(0, P),
    opt: { m: state.subarray(P, 2 * P), v: state.subarray(2 * P, 3 * P), beta1Pow: 1, beta2Pow: 1 },
  };
}
/** The identical starting point of every rank. */
export function initModel(model, config) {
  model.state.fill(0);
  model.params.set(initParams(model.lay, deriveSeed(config.seed, 1)));
  model.opt.beta1Pow = 1;
  model.opt.beta2Pow = 1;
}
function syncOut(model) {
  model.state[3 * model.P] = model.opt.beta1Pow;
  model.state[3 * model.P + 1] = model.opt.beta2Pow;
}
function syncIn(model) {
  model.opt.beta1Pow = model.state[3 * model.P];
  model.opt.beta2Pow = model.state[3 * model.P + 1];
}
/** The state as base64 of little-endian float64 (every bit, the sign of zero included). */
export function encodeState(model) {
  syncOut(model);
  const buf = Buffer.alloc(model.state.length * 8);
  for (let i = 0; i < model.state.length; i++) buf.writeDoubleLE(model.state[i], i * 8);
  return buf.toString('base64');
}
/** base64 → Float64Array of the model's state length, or a string saying what is wrong. */
export function decodeState(model, text) {
  if (typeof text !== 'string') return 'state is not a string';
  const raw = Buffer.from(text, 'base64');
  if (raw.length !== model.state.length * 8) return `state holds ${raw.length} bytes, expected ${model.state.length * 8}`;
  const out = new Float64Array(model.state.length);
  for (let i = 0; i < out.length; i++) out[i] = raw.readDoubleLE(i * 8);
  return out;
}
/** The state array with beta^t written into its last two slots (read it before the next step). */
export function stateOf(model) {
  syncOut(model);
  return model.state;
}
export function loadState(model, values) {
  model.state.set(values);
  syncIn(model);
}
export function copyModel(model, config) {
  const c = createModel(config);
  syncOut(model);
  c.state.set(model.state);
  syncIn(c);
  return c;
}

/**
 * The average of the states of every rank, in rank order: ((s_0 + s_1) + s_2 + ...) / W per
 * element, starting from s_0 itself (so a lone -0 stays -0). Parameters and both Adam moments
 * are averaged; beta^t must be the same on every rank (same step). Every member computes this from
 * the same bytes in the same order, so every member gets the same bits.
 */
export function averageInto(model, states) {
  const W = states.length;
  const n = 3 * model.P;
  for (let k = 1; k < W; k++) {
    for (const j of [n, n + 1]) {
      if (!Object.is(states[k][j], states[0][j])) fail(`rank ${k} is at another Adam step than rank 0 (beta^t ${states[k][j]} vs ${states[0][j]})`);
    }
  }
  const out = model.state;
  for (let i = 0; i < n; i++) {
    let s = states[0][i];
    for (let k = 1; k < W; k++) s += states[k][i];
    out[i] = s / W;
  }
  out[n] = states[0][n];
  out[n + 1] = states[0][n + 1];
  syncIn(model);
}

// ---- local training ---------------------------------------------------------------------------
/** Rank k's batches: epoch e of its share in a permutation seeded by (seed, rank, e) alone (nothing to save on resume). */
export function makeBatcher(config, rank, n) {
  const stepsPerEpoch = Math.ceil(n / config.batchSize);
  let permEpoch = -1;
  let perm = new Int32Array(n);
  return (s) => {
    const epoch = Math.floor(s / stepsPerEpoch);
    if (epoch !== permEpoch) {
      const rng = mulberry32(deriveSeed(deriveSeed(config.seed, 1000 + epoch), 0x7a11 + rank));
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
  };
}

/** Adam steps from..to-1 on this rank's share; the learning rate decays linearly to 10% over the whole run. */
export function localSteps(model, config, shard, batchAt, from, to, grad = new Float64Array(model.P)) {
  for (let s = from; s < to; s++) {
    const idx = batchAt(s);
    const fw = forward(model.lay, model.params, shard.x, idx);
    backward(model.lay, model.params, fw, shard.y, idx, grad);
    const lr = config.learningRate * (1 - (0.9 * s) / config.steps);
    adamStep(model.params, grad, model.opt, { lr });
  }
}

/** Loss and accuracy of the current parameters on a split ({ loss: null, accuracy: null } without labels). */
export function evaluate(model, split) {
  if (split.y.length === 0 || split.y.some((l) => l < 0)) return { loss: null, accuracy: null };
  return lossAndAccuracy(forward(model.lay, model.params, split.x, null).probs, split.y, null, CLASSES);
}

// ---- checkpoints (examples/train's contract; no rank in them: every member writes the same bytes)
export const checkpointName = (n) => `step-${String(n).padStart(6, '0')}.json`;

export function writeCheckpoint(dir, { step, config, dataDigest, model, history }) {
  const body = `${JSON.stringify({ format: CHECKPOINT_FORMAT, step, config, dataDigest, state: encodeState(model), history })}\n`;
  const file = join(dir, checkpointName(step));
  const tmp = join(dir, `.${checkpointName(step)}.tmp`);
  writeFileSync(tmp, body);
  const fd = openSync(tmp, 'r');
  fsyncSync(fd);
  closeSync(fd);
  renameSync(tmp, file);
  return file;
}

/**
 * Loads the checkpoint GRIDWORK_RESUME_STEP names (exit 1 when it is missing), else the one with
 * the highest step. Returns { step, history } or undefined when there is none.
 */
export function resume(dir, { config, dataDigest, model }, env = process.env) {
  let files;
  try {
    files = readdirSync(dir);
  } catch (err) {
    return fail(`cannot read ${dir}: ${err.message}`);
  }
  let steps = files.flatMap((f) => {
    const m = /^step-([0-9]+)\.json$/.exec(f);
    return m ? [{ file: f, step: Number(m[1]) }] : [];
  });
  const wanted = env.GRIDWORK_RESUME_STEP;
  if (wanted !== undefined && wanted !== '') {
    const n = /^[0-9]{1,9}$/.test(wanted) ? Number(wanted) : Number.NaN;
    const match = steps.find((s) => s.step === n);
    if (!match) fail(`GRIDWORK_RESUME_STEP=${wanted}, but ${dir} holds no step-${wanted}.json (found: ${files.join(', ') || 'nothing'})`);
    steps = [match];
  }
  if (steps.length === 0) return undefined;
  steps.sort((a, b) => b.step - a.step);
  const { file } = steps[0];
  let ck;
  try {
    ck = JSON.parse(readFileSync(join(dir, file), 'utf8'));
  } catch (err) {
    return fail(`checkpoint ${file} is unreadable: ${err.message}`);
  }
  if (ck.format !== CHECKPOINT_FORMAT) fail(`checkpoint ${file}: format ${JSON.stringify(ck.format)}, expected ${CHECKPOINT_FORMAT}`);
  if (JSON.stringify(ck.config) !== JSON.stringify(config)) {
    fail(`checkpoint ${file} was made with another configuration: ${JSON.stringify(ck.config)}; this run has ${JSON.stringify(config)}`);
  }
  if (ck.dataDigest !== dataDigest) fail(`checkpoint ${file} was made with other training data (digest ${ck.dataDigest}, now ${dataDigest})`);
  if (!Number.isInteger(ck.step) || ck.step % config.averageEvery !== 0 || ck.step > config.steps)
    fail(`checkpoint ${file}: step ${ck.step} is not an averaging step`);
  const values = decodeState(model, ck.state);
  if (typeof values === 'string') fail(`checkpoint ${file}: ${values}`);
  loadState(model, values);
  return { step: ck.step, history: ck.history, file };
}

// ---- outputs (no timestamps: the bytes depend only on the configuration and the data) ---------
export function paramsSha256(model) {
  const buf = Buffer.alloc(model.P * 8);
  for (let i = 0; i < model.P; i++) buf.writeDoubleLE(model.params[i], i * 8);
  return createHash('sha256').update(buf).digest('hex');
}

/** rank-<k>.json: what one member did and the parameters it ended with (their sha256). */
export function rankSummary({ config, model, shard }) {
  const local = evaluate(model, shard);
  return {
    rank: shard.rank,
    worldSize: config.worldSize,
    steps: config.steps,
    rounds: config.steps / config.averageEvery,
    shard: { rows: shard.y.length, rule: `rows ${shard.rank}, ${shard.rank + config.worldSize}, ${shard.rank + 2 * config.worldSize}, ... of train` },
    final: { shardLoss: local.loss, shardAccuracy: local.accuracy },
    paramsSha256: paramsSha256(model),
  };
}

/** Rank 0's outputs: model.onnx and metrics.json. Returns the metrics. */
export function writeModelOutputs(dir, { config, model, data, history }) {
  const finalTrain = evaluate(model, data.train);
  const finalTest = evaluate(model, data.test);
  const onnx = mlpToOnnx(model.lay, model.params, {
    graphName: 'spiral_mlp',
    metadata: {
      class_names: CLASS_NAMES.join(','),
      steps: config.steps,
      seed: config.seed,
      world_size: config.worldSize,
      average_every: config.averageEvery,
      data_sha256: data.dataDigest,
    },
  });
  writeFileSync(join(dir, 'model.onnx'), onnx);
  const metrics = {
    model: 'spiral-mlp',
    training: 'data-parallel local Adam, state averaged every averageEvery steps',
    layers: model.lay.sizes,
    parameters: model.P,
    classes: CLASS_NAMES,
    config,
    data: { train: data.train.y.length, test: data.test.y.length, trainSource: data.train.source, testSource: data.test.source, sha256: data.dataDigest },
    checkpoints: history,
    final: { trainLoss: finalTrain.loss, trainAccuracy: finalTrain.accuracy, testLoss: finalTest.loss, testAccuracy: finalTest.accuracy },
    paramsSha256: paramsSha256(model),
    onnx: {
      file: 'model.onnx',
      bytes: onnx.length,
      sha256: createHash('sha256').update(onnx).digest('hex'),
      inputs: ['input [N,2] float'],
      outputs: ['probabilities [N,3]', 'logits [N,3]'],
    },
  };
  writeFileSync(join(dir, 'metrics.json'), `${JSON.stringify(metrics, null, 2)}\n`);
  return metrics;
}

export function writeJson(dir, name, value) {
  writeFileSync(join(dir, name), `${JSON.stringify(value, null, 2)}\n`);
}

/** Training-set loss and accuracy after an averaging round, for the history kept in checkpoints. */
export function historyEntry(step, model, data) {
  const { loss, accuracy } = evaluate(model, data.train);
  return { step, loss, accuracy };
}

export function ensureDir(dir) {
  mkdirSync(dir, { recursive: true });
}
