// Gridwork example workload: an inference service for the model trained by examples/train.
//
//   POST /predict  {"inputs": [[x, y], ...]}  →  {"outputs": [[p0, p1, p2], ...], "classes": [k, ...]}
//   GET  /health   200 {"status":"ok",...} once the model is loaded; 503 while loading or stopping
//
// Listens on $PORT (default 8080; 0 picks a free port) at $HOST (default 0.0.0.0). The model is
// the one .onnx file under $GRIDWORK_INPUTS (or $MODEL_PATH). SIGTERM/SIGINT: stop accepting,
// answer /health with 503, finish requests in flight (up to STOP_GRACE_MS, default 10 s), exit 0.
import { createHash } from 'node:crypto';
import { readdirSync, readFileSync } from 'node:fs';
import { createServer } from 'node:http';
import { join, relative, sep } from 'node:path';
import { openSession, ort } from './ort-session.mjs';

const MAX_BODY_BYTES = 1024 * 1024;
const MAX_ROWS = 10_000;

function fail(message) {
  process.stderr.write(`serve: error: ${message}\n`);
  process.exit(1);
}

function findModel() {
  if (process.env.MODEL_PATH) return { path: process.env.MODEL_PATH, name: process.env.MODEL_PATH };
  const dir = process.env.GRIDWORK_INPUTS;
  if (!dir) fail('set GRIDWORK_INPUTS (a directory holding one .onnx model) or MODEL_PATH');
  const found = [];
  const walk = (d) => {
    for (const e of readdirSync(d, { withFileTypes: true })) {
      const p = join(d, e.name);
      if (e.isDirectory()) walk(p);
      else if (e.isFile() && e.name.endsWith('.onnx')) found.push({ path: p, name: relative(dir, p).split(sep).join('/') });
    }
  };
  walk(dir);
  if (found.length !== 1) fail(`expected exactly one .onnx model under ${dir}, found ${found.length}`);
  return found[0];
}

const portText = process.env.PORT ?? '8080';
if (!/^[0-9]{1,5}$/.test(portText) || Number(portText) > 65535) fail(`PORT must be a port number, got ${JSON.stringify(portText)}`);
const host = process.env.HOST || '0.0.0.0';
const model = findModel();

let state = 'loading'; // loading → ok → stopping
let session;
let info;

function send(res, status, body) {
  const text = JSON.stringify(body);
  const headers = { 'content-type': 'application/json', 'content-length': Buffer.byteLength(text) };
  // While stopping, no connection is kept alive after its last answer: server.close() can finish.
  if (state === 'stopping') headers.connection = 'close';
  res.writeHead(status, headers);
  res.end(text);
}
const error = (res, status, code, message) => send(res, status, { error: { code, message } });

function readBody(req) {
  return new Promise((resolve, reject) => {
    const chunks = [];
    let size = 0;
    req.on('data', (c) => {
      size += c.length;
      if (size > MAX_BODY_BYTES) {
        reject(Object.assign(new Error(`body larger than ${MAX_BODY_BYTES} bytes`), { status: 413, code: 'PAYLOAD_TOO_LARGE' }));
        req.destroy();
      } else chunks.push(c);
    });
    req.on('end', () => resolve(Buffer.concat(chunks).toString('utf8')));
    req.on('error', reject);
  });
}

/** Checks {"inputs": [[x, y], ...]} and returns the rows as one float32 tensor. */
function parseInputs(text) {
  let body;
  try {
    body = JSON.parse(text);
  } catch {
    throw Object.assign(new Error('body is not valid JSON'), { status: 400, code: 'INVALID_JSON' });
  }
  const bad = (message) => Object.assign(new Error(message), { status: 400, code: 'INVALID_INPUT' });
  if (typeof body !== 'object' || body === null || Array.isArray(body) || !Array.isArray(body.inputs)) throw bad('expected {"inputs": [[x, y], ...]}');
  const extra = Object.keys(body).filter((k) => k !== 'inputs');
  if (extra.length > 0) throw bad(`unknown field ${JSON.stringify(extra[0])}`);
  const rows = body.inputs;
  if (rows.length === 0 || rows.length > MAX_ROWS) throw bad(`inputs must hold 1 to ${MAX_ROWS} rows, got ${rows.length}`);
  const width = info.inputWidth;
  const data = new Float32Array(rows.length * width);
  rows.forEach((row, i) => {
    if (!Array.isArray(row) || row.length !== width || !row.every((v) => typeof v === 'number' && Number.isFinite(v))) {
      throw bad(`inputs[${i}] must be an array of ${width} finite numbers`);
    }
    data.set(row, i * width);
  });
  return new ort.Tensor('float32', data, [rows.length, width]);
}

async function predict(req, res) {
  const tensor = parseInputs(await readBody(req));
  const out = await session.run({ [info.inputName]: tensor });
  const probs = out.probabilities;
  const c = probs.dims[1];
  const outputs = [];
  const classes = [];
  for (let r = 0; r < probs.dims[0]; r++) {
    const p = Array.from(probs.data.subarray(r * c, (r + 1) * c));
    let best = 0;
    for (let j = 1; j < c; j++) if (p[j] > p[best]) best = j;
    outputs.push(p);
    classes.push(best);
  }
  send(res, 200, { outputs, classes });
}

const server = createServer(async (req, res) => {
  const path = (req.url ?? '/').split('?')[0];
  try {
    if (path === '/health') {
      if (req.method !== 'GET' && req.method !== 'HEAD') return error(res, 405, 'METHOD_NOT_ALLOWED', 'use GET /health');
      if (state !== 'ok') return send(res, 503, { status: state });
      return send(res, 200, { status: 'ok', ...info.public });
    }
    if (path === '/predict') {
      if (req.method !== 'POST') return error(res, 405, 'METHOD_NOT_ALLOWED', 'use POST /predict');
      if (state !== 'ok') return error(res, 503, 'UNAVAILABLE', `the service is ${state}`);
      return await predict(req, res);
    }
    return error(res, 404, 'NOT_FOUND', `no route ${req.method} ${path}; try POST /predict or GET /health`);
  } catch (err) {
    if (!res.headersSent) error(res, err.status ?? 500, err.code ?? 'INTERNAL', err.message);
  }
});
server.keepAliveTimeout = 5000;

server.listen(Number(portText), host, async () => {
  const { port } = server.address();
  process.stdout.write(`listening on http://${host}:${port} (model ${model.name} loading)\n`);
  try {
    const bytes = readFileSync(model.path);
    const opened = await openSession(bytes);
    session = opened.session;
    const inputName = session.inputNames[0];
    const meta = session.inputMetadata?.[0];
    const inputWidth = Array.isArray(meta?.shape) && typeof meta.shape[1] === 'number' ? meta.shape[1] : 2;
    if (!session.outputNames.includes('probabilities')) fail(`${model.name} has no "probabilities" output (outputs: ${session.outputNames.join(', ')})`);
    info = {
      inputName,
      inputWidth,
      public: { model: { file: model.name, sha256: createHash('sha256').update(bytes).digest('hex'), inputWidth }, executionProvider: opened.provider },
    };
    state = 'ok';
    process.stdout.write(`ready: execution provider ${opened.provider} (${opened.reason})\n`);
  } catch (err) {
    fail(`cannot load ${model.name}: ${err.message}`);
  }
});
server.on('error', (err) => fail(`cannot listen on ${host}:${portText}: ${err.message}`));

function stop(signal) {
  if (state === 'stopping') return;
  state = 'stopping';
  process.stdout.write(`${signal}: stopping (finishing requests in flight)\n`);
  const grace = Number(process.env.STOP_GRACE_MS ?? 10_000);
  const timer = setTimeout(() => {
    process.stdout.write('grace period over: closing remaining connections\n');
    server.closeAllConnections();
  }, grace);
  timer.unref();
  server.close(async () => {
    await session?.release?.();
    process.stdout.write('stopped\n');
    process.exit(0);
  });
  server.closeIdleConnections();
}
process.on('SIGTERM', () => stop('SIGTERM'));
process.on('SIGINT', () => stop('SIGINT'));
