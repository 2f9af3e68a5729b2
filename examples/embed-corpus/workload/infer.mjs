// Gridwork example workload: embed and classify the sentiment of JSONL documents with a tiny
// int8 model. Plain Node 20, no dependencies, no network. Inference uses integer arithmetic
// only, so every replica of a task produces byte-identical outputs (verification: exact).
//
//   GRIDWORK_INPUTS=<dir> GRIDWORK_OUTPUTS=<dir> node infer.mjs
import { mkdirSync, readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join, relative, sep } from 'node:path';

function fail(message) {
  process.stderr.write(`infer: error: ${message}\n`);
  process.exit(1);
}

const inputsDir = process.env.GRIDWORK_INPUTS;
const outputsDir = process.env.GRIDWORK_OUTPUTS;
if (!inputsDir) fail('GRIDWORK_INPUTS is not set (directory holding the input .jsonl files)');
if (!outputsDir) fail('GRIDWORK_OUTPUTS is not set (writable directory for the results)');

// ---- model -------------------------------------------------------------------------------
const model = JSON.parse(readFileSync(new URL('./model.json', import.meta.url), 'utf8'));
const { buckets } = model.features;
const { dim, shift } = model.embedding;
const raw = Buffer.from(model.embedding.weights, 'base64');
const W = new Int8Array(raw.buffer, raw.byteOffset, raw.length);
if (W.length !== buckets * dim) fail(`model.json: expected ${buckets * dim} weights, got ${W.length}`);
const { multipliers: M, bias: B } = model.embedding;
const head = model.sentiment; // { weights: int8[dim], multiplier, shift, bias, scale }

// ---- features: lowercase, split on non-letters, unigrams + bigrams, FNV-1a -> bucket -----
const encoder = new TextEncoder();
function fnv1a(text) {
  let h = 0x811c9dc5;
  for (const byte of encoder.encode(text)) h = Math.imul(h ^ byte, 0x01000193);
  return h >>> 0;
}

function features(text) {
  const tokens = text.toLowerCase().split(/[^\p{L}]+/u).filter(Boolean);
  const grams = tokens.slice();
  for (let i = 1; i < tokens.length; i++) grams.push(`${tokens[i - 1]} ${tokens[i]}`);
  return grams.map((g) => fnv1a(g) % buckets);
}

// ---- integer forward pass -----------------------------------------------------------------
// emb[j] = floor(sum_b W[b][j] * M[j] / (n * 2^shift)) + B[j]    (real value = emb / scale)
// logit  = floor(sum_j w[j] * emb[j] * multiplier / 2^shift) + bias (real value = logit / scale)
// Every intermediate is an exact integer far below 2^53, so results are bitwise reproducible.
function embed(text) {
  const ids = features(text);
  const n = Math.max(ids.length, 1);
  const acc = new Array(dim).fill(0);
  for (const b of ids) for (let j = 0; j < dim; j++) acc[j] += W[b * dim + j];
  const emb = acc.map((a, j) => Math.floor((a * M[j]) / (n * 2 ** shift)) + B[j]);
  let dot = 0;
  for (let j = 0; j < dim; j++) dot += head.weights[j] * emb[j];
  const logit = Math.floor((dot * head.multiplier) / 2 ** head.shift) + head.bias;
  return { emb, logit };
}

// ---- inputs: every .jsonl file under GRIDWORK_INPUTS, in a stable (sorted) order ---------
function listFiles(dir) {
  let entries;
  try {
    entries = readdirSync(dir, { withFileTypes: true });
  } catch (err) {
    fail(`cannot read input directory ${dir}: ${err.message}`);
  }
  const files = [];
  for (const e of entries) {
    const path = join(dir, e.name);
    if (e.isDirectory()) files.push(...listFiles(path));
    else if (e.isFile() && e.name.endsWith('.jsonl')) files.push(path);
  }
  return files;
}
const files = listFiles(inputsDir)
  .map((path) => ({ path, name: relative(inputsDir, path).split(sep).join('/') }))
  .sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
if (files.length === 0) fail(`no .jsonl files found under ${inputsDir}`);

const task = process.env.GRIDWORK_TASK_INDEX ?? '?';
const taskCount = process.env.GRIDWORK_TASK_COUNT ?? '?';
console.log(`${model.name}@${model.version}: task ${task}/${taskCount}, ${files.length} input file(s)`);

const lines = [];
let positive = 0;
for (const file of files) {
  const rows = readFileSync(file.path, 'utf8').split('\n');
  let count = 0;
  rows.forEach((line, i) => {
    if (line.trim() === '') return;
    let doc;
    try {
      doc = JSON.parse(line);
    } catch (err) {
      fail(`${file.name} line ${i + 1}: bad JSON (${err.message})`);
    }
    if (typeof doc?.text !== 'string' || (typeof doc.id !== 'string' && typeof doc.id !== 'number')) {
      fail(`${file.name} line ${i + 1}: expected {"id": string, "text": string}`);
    }
    const { emb, logit } = embed(doc.text);
    const label = logit >= 0 ? 'positive' : 'negative';
    if (logit >= 0) positive++;
    lines.push(JSON.stringify({ id: doc.id, file: file.name, label, logit, embedding: emb }));
    count++;
  });
  console.log(`processed ${file.name}: ${count} docs`);
}

// ---- outputs -------------------------------------------------------------------------------
const summary = {
  model: model.name,
  version: model.version,
  files: files.map((f) => f.name),
  filesProcessed: files.length,
  docs: lines.length,
  positive,
  negative: lines.length - positive,
  embeddingDim: dim,
  embeddingScale: model.embedding.scale,
  logitScale: head.scale,
};
try {
  mkdirSync(outputsDir, { recursive: true });
  writeFileSync(join(outputsDir, 'embeddings.jsonl'), lines.map((l) => `${l}\n`).join(''));
  writeFileSync(join(outputsDir, 'summary.json'), `${JSON.stringify(summary, null, 2)}\n`);
} catch (err) {
  fail(`cannot write outputs to ${outputsDir}: ${err.message}`);
}
console.log(
  `done: ${lines.length} docs (${positive} positive, ${lines.length - positive} negative) from ${files.length} file(s) -> embeddings.jsonl, summary.json`,
);
