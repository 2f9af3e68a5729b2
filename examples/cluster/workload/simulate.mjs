// The reference: the cluster's algorithm for WORLD_SIZE ranks in one process, no exchange. It
// writes the same checkpoints as every member (step-<N>.json, when GRIDWORK_CHECKPOINTS is set) and
// the union of all members' outputs (model.onnx, metrics.json, rank-<k>.json) into GRIDWORK_OUTPUTS,
// byte for byte. A checkpoint carries the whole cluster's state, so this also replays a segment of a
// cluster run on one machine (an audit): put step-<N>.json in GRIDWORK_CHECKPOINTS, set
// GRIDWORK_STOP_STEP=M and compare step-<M>.json.
//
//   WORLD_SIZE=2 GRIDWORK_OUTPUTS=<dir> [GRIDWORK_CHECKPOINTS=<dir>] node simulate.mjs
import {
  averageInto,
  checkpointName,
  copyModel,
  createModel,
  ensureDir,
  historyEntry,
  initModel,
  loadData,
  localSteps,
  log,
  makeBatcher,
  rankSummary,
  readConfig,
  readStopStep,
  resume,
  setName,
  shardOf,
  stateOf,
  writeCheckpoint,
  writeJson,
  writeModelOutputs,
  fail,
} from './core.mjs';

setName('simulate');
const started = Date.now();
const env = { ...process.env, WORLD_SIZE: process.env.WORLD_SIZE || '2' };
const config = readConfig(env);
const stopStep = readStopStep(config, env);
const outputsDir = env.GRIDWORK_OUTPUTS;
const checkpointsDir = env.GRIDWORK_CHECKPOINTS || undefined;
if (!outputsDir) fail('GRIDWORK_OUTPUTS is not set');
ensureDir(outputsDir);
if (checkpointsDir) ensureDir(checkpointsDir);

const data = loadData(env.GRIDWORK_INPUTS);
const W = config.worldSize;
const shards = Array.from({ length: W }, (_, k) => shardOf(data.train, k, W));
const batchers = shards.map((s, k) => makeBatcher(config, k, s.y.length));
const model = createModel(config);
let step = 0;
let history = [];
const found = checkpointsDir ? resume(checkpointsDir, { config, dataDigest: data.dataDigest, model }, env) : undefined;
if (found) {
  ({ step, history } = found);
  log(`resumed from ${found.file} (step ${step} of ${config.steps})`);
} else {
  initModel(model, config);
}
if (stopStep !== undefined && stopStep <= step) fail(`GRIDWORK_STOP_STEP=${stopStep} is not after the resumed step ${step}`, 2);

const grad = new Float64Array(model.P);
while (step < config.steps) {
  const target = step + config.averageEvery;
  const states = shards.map((shard, k) => {
    const local = copyModel(model, config);
    localSteps(local, config, shard, batchers[k], step, target, grad);
    return stateOf(local).slice();
  });
  averageInto(model, states);
  step = target;
  const scheduled = step % config.checkpointEvery === 0 || step === config.steps;
  if (scheduled) history.push(historyEntry(step, model, data));
  if (checkpointsDir && (scheduled || step === stopStep)) writeCheckpoint(checkpointsDir, { step, config, dataDigest: data.dataDigest, model, history });
  if (step === stopStep) {
    log(`stopped after checkpoint ${checkpointName(step)} (GRIDWORK_STOP_STEP)`);
    process.exit(0);
  }
}

const metrics = writeModelOutputs(outputsDir, { config, model, data, history });
for (const shard of shards) writeJson(outputsDir, `rank-${shard.rank}.json`, rankSummary({ config, model, shard }));
log(
  `done: ${W} ranks, ${config.steps} steps, ${config.steps / config.averageEvery} rounds, train accuracy ${(metrics.final.trainAccuracy * 100).toFixed(1)}%, test accuracy ${
    metrics.final.testAccuracy === null ? 'n/a' : `${(metrics.final.testAccuracy * 100).toFixed(1)}%`
  }, ${((Date.now() - started) / 1000).toFixed(1)} s`,
);
