// Gridwork example workload, kind: cluster: one member of a data-parallel training of the spirals
// MLP of examples/train. Every member trains the same model on its share of the data (rows k, k+W,
// ... for rank k) with local Adam steps, and every AVERAGE_EVERY steps the members average their
// state (parameters and Adam moments) through files the platform relays. Plain Node 20, no
// dependencies, no network; bitwise reproducible (core.mjs).
//
//   RANK=<k> WORLD_SIZE=<W> GRIDWORK_EXCHANGE=<dir> GRIDWORK_CHECKPOINTS=<dir> GRIDWORK_OUTPUTS=<dir> node member.mjs
//
// Exchange contract (README.md):
//   - round r (= step / AVERAGE_EVERY, from 1) is published as $GRIDWORK_EXCHANGE/out/round-<r>.json,
//     written to .round-<r>.json.tmp in the same directory and renamed;
//   - the member then waits (polling every 5, 10, 20, 40, then 50 ms; at most 300 s) for
//     $GRIDWORK_EXCHANGE/in/round-<r>/complete and reads in/round-<r>/rank-<k>.json for every k;
//   - a publication depends only on the round (no time, no attempt number): a restarted cluster
//     re-publishes the same bytes for a round it published before.
// Checkpoints follow examples/train's contract, taken right after an averaging round; they carry no
// rank, so every member writes the same bytes for the same step.
import { existsSync, mkdirSync, readdirSync, readFileSync, renameSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import {
  averageInto,
  checkpointName,
  createModel,
  decodeState,
  encodeState,
  ensureDir,
  fail,
  historyEntry,
  initModel,
  loadData,
  localSteps,
  log,
  makeBatcher,
  ROUND_FORMAT,
  rankSummary,
  readConfig,
  readStopStep,
  resume,
  setName,
  shardOf,
  writeCheckpoint,
  writeJson,
  writeModelOutputs,
} from './core.mjs';

const started = Date.now();
const env = process.env;
const config = readConfig(env);
const W = config.worldSize;
const rankText = env.RANK ?? '';
if (!/^[0-9]{1,2}$/.test(rankText) || Number(rankText) >= W) fail(`RANK=${JSON.stringify(rankText)}: expected an integer 0..${W - 1} (WORLD_SIZE=${W})`);
const rank = Number(rankText);
setName(`member ${rank}`);
const stopStep = readStopStep(config, env);

const outputsDir = env.GRIDWORK_OUTPUTS;
const checkpointsDir = env.GRIDWORK_CHECKPOINTS;
const exchangeDir = env.GRIDWORK_EXCHANGE;
if (!outputsDir) fail('GRIDWORK_OUTPUTS is not set (writable directory for the outputs)');
if (!checkpointsDir) fail('GRIDWORK_CHECKPOINTS is not set (writable directory for step-<N>.json checkpoints)');
if (W > 1 && !exchangeDir) fail('GRIDWORK_EXCHANGE is not set (the directory the platform relays rounds through)');
const pollMs = Number(env.EXCHANGE_POLL_MS || 50);
const timeoutS = Number(env.EXCHANGE_TIMEOUT_S || 300);
if (!(pollMs >= 1 && pollMs <= 10_000)) fail(`invalid EXCHANGE_POLL_MS: ${env.EXCHANGE_POLL_MS}`);
if (!(timeoutS > 0)) fail(`invalid EXCHANGE_TIMEOUT_S: ${env.EXCHANGE_TIMEOUT_S}`);
ensureDir(outputsDir);
ensureDir(checkpointsDir);

const expectedPeers = Array.from({ length: W }, (_, k) => k).filter((k) => k !== rank);
if (env.GRIDWORK_PEERS !== undefined && env.GRIDWORK_PEERS !== expectedPeers.join(',')) {
  log(
    `warning: GRIDWORK_PEERS=${JSON.stringify(env.GRIDWORK_PEERS)}, expected ${JSON.stringify(expectedPeers.join(','))} (informational; the exchange uses ranks 0..${W - 1})`,
  );
}

// ---- data, model, resume --------------------------------------------------------------------
const data = loadData(env.GRIDWORK_INPUTS);
const shard = shardOf(data.train, rank, W);
const batchAt = makeBatcher(config, rank, shard.y.length);
const model = createModel(config);
let step = 0;
let history = [];
const found = resume(checkpointsDir, { config, dataDigest: data.dataDigest, model }, env);
if (found) {
  ({ step, history } = found);
  log(`resumed from ${found.file} (step ${step} of ${config.steps}, round ${step / config.averageEvery})`);
} else {
  initModel(model, config);
  log(`training from scratch: rank ${rank} of ${W}, ${shard.y.length} of ${data.train.y.length} training rows (${data.train.source}), ${model.P} parameters`);
}
if (stopStep !== undefined && stopStep <= step) fail(`GRIDWORK_STOP_STEP=${stopStep} is not after the resumed step ${step}`, 2);

// SIGTERM: stop at once. No off-schedule checkpoint (the ranks may be at different steps); the
// cluster resumes from the last checkpoint every member wrote after an averaging round.
process.on('SIGTERM', () => {
  log(`SIGTERM at step ${step}: stopping (resume from the last checkpoint)`);
  process.exit(143);
});

// ---- the exchange ---------------------------------------------------------------------------
const outDir = exchangeDir ? join(exchangeDir, 'out') : '';
const inDir = exchangeDir ? join(exchangeDir, 'in') : '';
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));
let waitedMs = 0;

function publish(round) {
  mkdirSync(outDir, { recursive: true });
  const body = `${JSON.stringify({ format: ROUND_FORMAT, round, step, rank, worldSize: W, config, dataDigest: data.dataDigest, state: encodeState(model) })}\n`;
  const tmp = join(outDir, `.round-${round}.json.tmp`);
  writeFileSync(tmp, body);
  renameSync(tmp, join(outDir, `round-${round}.json`));
  return body;
}

/** Waits for in/round-<r>/complete, then returns every rank's state in rank order (checked). */
async function collect(round, published) {
  const dir = join(inDir, `round-${round}`);
  const t0 = Date.now();
  const deadline = t0 + timeoutS * 1000;
  // Polls quickly at first (a peer is often only a few milliseconds behind), then every pollMs.
  let delay = Math.min(5, pollMs);
  while (!existsSync(join(dir, 'complete'))) {
    if (Date.now() >= deadline) {
      let seen = [];
      try {
        seen = readdirSync(dir).filter((f) => /^rank-[0-9]+\.json$/.test(f));
      } catch {}
      fail(
        `round ${round} (step ${step}): no ${join('in', `round-${round}`, 'complete')} after ${timeoutS} s; relayed so far: ${seen.join(', ') || 'nothing'} (every member must publish out/round-${round}.json)`,
      );
    }
    await sleep(delay);
    delay = Math.min(2 * delay, pollMs);
  }
  waitedMs += Date.now() - t0;
  const states = [];
  for (let k = 0; k < W; k++) {
    const file = join(dir, `rank-${k}.json`);
    let text;
    try {
      text = readFileSync(file, 'utf8');
    } catch (err) {
      return fail(`round ${round}: complete, but rank-${k}.json cannot be read: ${err.message}`);
    }
    if (k === rank && text !== published) {
      fail(
        `round ${round}: the relayed copy of this member's own publication differs from what it published (stale round from another run, or non-deterministic training?)`,
      );
    }
    let pub;
    try {
      pub = JSON.parse(text);
    } catch (err) {
      return fail(`round ${round}: rank-${k}.json is not JSON: ${err.message}`);
    }
    const wrong =
      pub.format !== ROUND_FORMAT
        ? `format ${JSON.stringify(pub.format)}, expected ${ROUND_FORMAT}`
        : pub.round !== round || pub.step !== step
          ? `it is round ${pub.round} (step ${pub.step}), expected round ${round} (step ${step})`
          : pub.rank !== k
            ? `it says rank ${pub.rank}`
            : pub.worldSize !== W
              ? `world size ${pub.worldSize}, this member has ${W}`
              : JSON.stringify(pub.config) !== JSON.stringify(config)
                ? `another configuration: ${JSON.stringify(pub.config)}; this member has ${JSON.stringify(config)}`
                : pub.dataDigest !== data.dataDigest
                  ? `other training data (digest ${pub.dataDigest}, this member has ${data.dataDigest})`
                  : undefined;
    if (wrong) fail(`round ${round}: rank-${k}.json: ${wrong}`);
    const values = decodeState(model, pub.state);
    if (typeof values === 'string') fail(`round ${round}: rank-${k}.json: ${values}`);
    states.push(values);
  }
  return states;
}

// ---- training: local steps, then an averaging round, every AVERAGE_EVERY steps --------------
const grad = new Float64Array(model.P);
while (step < config.steps) {
  const target = step + config.averageEvery;
  localSteps(model, config, shard, batchAt, step, target, grad);
  step = target;
  const round = step / config.averageEvery;
  if (W > 1) {
    const published = publish(round);
    averageInto(model, await collect(round, published));
  }
  const scheduled = step % config.checkpointEvery === 0 || step === config.steps;
  if (scheduled) {
    const h = historyEntry(step, model, data);
    history.push(h);
    log(`step ${step} (round ${round}): loss ${h.loss.toFixed(4)}, train accuracy ${(h.accuracy * 100).toFixed(1)}%`);
  }
  if (scheduled || step === stopStep) writeCheckpoint(checkpointsDir, { step, config, dataDigest: data.dataDigest, model, history });
  if (step === stopStep) {
    log(`stopped after checkpoint ${checkpointName(step)} (GRIDWORK_STOP_STEP)`);
    process.exit(0);
  }
}

// ---- outputs: rank 0 writes model.onnx and metrics.json; every rank writes rank-<k>.json -------
const summary = rankSummary({ config, model, shard });
writeJson(outputsDir, `rank-${rank}.json`, summary);
let line = `done: ${config.steps} steps, ${config.steps / config.averageEvery} rounds, params sha256 ${summary.paramsSha256.slice(0, 16)}…`;
if (rank === 0) {
  const metrics = writeModelOutputs(outputsDir, { config, model, data, history });
  line += `, train accuracy ${(metrics.final.trainAccuracy * 100).toFixed(1)}%, test accuracy ${
    metrics.final.testAccuracy === null ? 'n/a' : `${(metrics.final.testAccuracy * 100).toFixed(1)}%`
  }, model.onnx ${metrics.onnx.bytes} bytes`;
}
log(`${line}, ${((Date.now() - started) / 1000).toFixed(1)} s (${(waitedMs / 1000).toFixed(1)} s waiting for rounds)`);
