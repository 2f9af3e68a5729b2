/**
 * The inference-service example run directly with node: health turns 200 once the model is
 * loaded, /predict answers like the batch job, bad requests get clear 4xx errors, and SIGTERM lets
 * a request in flight finish before the process exits 0. Needs examples/node_modules
 * (`node examples/prepare.mjs`); skipped without it.
 */
import assert from 'node:assert/strict';
import { type ChildProcess, spawn, spawnSync } from 'node:child_process';
import { copyFileSync, cpSync, existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { request } from 'node:http';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { fileURLToPath } from 'node:url';

const here = fileURLToPath(new URL('.', import.meta.url));
const installed = existsSync(join(here, '../node_modules/onnxruntime-node/package.json'));
const skip = installed || process.env.CI ? false : 'onnxruntime-node is not installed under examples/ (run: node examples/prepare.mjs)';
const root = mkdtempSync(join(tmpdir(), 'gridwork-service-'));
let child: ChildProcess | undefined;
after(() => {
  child?.kill('SIGKILL');
  rmSync(root, { recursive: true, force: true });
});

let base = '';
let stdout = '';
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

async function post(path: string, body: string): Promise<{ status: number; json: any }> {
  const res = await fetch(`${base}${path}`, { method: 'POST', body, headers: { 'content-type': 'application/json' } });
  return { status: res.status, json: await res.json() };
}

function readPoints(file: string): { rows: number[][]; labels: number[] } {
  const rows: number[][] = [];
  const labels: number[] = [];
  for (const line of readFileSync(file, 'utf8').trim().split('\n').slice(1)) {
    const [x, y, l] = line.split(',').map(Number);
    rows.push([x as number, y as number]);
    labels.push(l as number);
  }
  return { rows, labels };
}

describe('examples/service', { skip }, () => {
  before(async () => {
    const { prepareExamples } = (await import(new URL('../prepare.mjs', import.meta.url).href)) as { prepareExamples: (o: object) => boolean };
    assert.ok(prepareExamples({ install: false, log: () => {} }));
    cpSync(join(here, 'workload'), join(root, 'bundle'), { recursive: true });
    mkdirSync(join(root, 'inputs', 'model'), { recursive: true });
    copyFileSync(join(here, '../infer-trained/model/model.onnx'), join(root, 'inputs', 'model', 'model.onnx'));
    child = spawn(process.execPath, ['serve.mjs'], {
      cwd: join(root, 'bundle'),
      env: { PATH: process.env.PATH, GRIDWORK_INPUTS: join(root, 'inputs'), PORT: '0', HOST: '127.0.0.1' },
      stdio: ['ignore', 'pipe', 'inherit'],
    });
    child.stdout?.setEncoding('utf8');
    child.stdout?.on('data', (c: string) => {
      stdout += c;
    });
    for (let i = 0; i < 200 && !/listening on (http:\/\/[0-9.:]+)/.test(stdout); i++) await sleep(50);
    base = (/listening on (http:\/\/[0-9.:]+)/.exec(stdout) as RegExpExecArray)[1] as string;
  });

  it('GET /health turns 200 once the model is loaded', async () => {
    let res: Response | undefined;
    for (let i = 0; i < 200; i++) {
      res = await fetch(`${base}/health`);
      if (res.status === 200) break;
      assert.equal(res.status, 503);
      await res.arrayBuffer();
      await sleep(50);
    }
    assert.equal(res?.status, 200);
    const body = (await res?.json()) as any;
    assert.equal(body.status, 'ok');
    assert.equal(body.executionProvider, 'cpu');
    assert.equal(body.model.sha256, '6636e54ca9a95ce8c7331e6b841b694fc6eef3e4718b97a1b8a79cf6bcce955d');
  });

  it('POST /predict answers as the batch job does for the same points', async () => {
    const { rows, labels } = readPoints(join(here, '../infer-trained/data/points-00.csv'));
    const { status, json } = await post('/predict', JSON.stringify({ inputs: rows }));
    assert.equal(status, 200);
    assert.equal(json.outputs.length, rows.length);
    // The batch example on the same rows (one batch of the same size: the same kernels).
    const inputs = join(root, 'batch', 'inputs');
    mkdirSync(join(inputs, 'model'), { recursive: true });
    mkdirSync(join(inputs, 'points'), { recursive: true });
    copyFileSync(join(here, '../infer-trained/model/model.onnx'), join(inputs, 'model', 'model.onnx'));
    copyFileSync(join(here, '../infer-trained/data/points-00.csv'), join(inputs, 'points', 'points-00.csv'));
    const batch = spawnSync(process.execPath, ['infer.mjs'], {
      cwd: join(here, '../infer-trained/workload'),
      env: { PATH: process.env.PATH, GRIDWORK_INPUTS: inputs, GRIDWORK_OUTPUTS: join(root, 'batch', 'outputs') },
      encoding: 'utf8',
    });
    assert.equal(batch.status, 0, batch.stderr);
    const predictions = readFileSync(join(root, 'batch', 'outputs', 'predictions.jsonl'), 'utf8')
      .trim()
      .split('\n')
      .map((l) => JSON.parse(l));
    predictions.forEach((p, i) => {
      assert.equal(json.classes[i], p.class);
      for (let j = 0; j < 3; j++) assert.ok(Math.abs(json.outputs[i][j] - p.probabilities[j]) <= 1e-6);
    });
    assert.ok(json.classes.filter((c: number, i: number) => c === labels[i]).length >= 45);
  });

  it('refuses bad requests with clear errors', async () => {
    assert.equal((await post('/predict', '{not json')).json.error.code, 'INVALID_JSON');
    const shape = await post('/predict', JSON.stringify({ inputs: [[1, 2, 3]] }));
    assert.equal(shape.status, 400);
    assert.match(shape.json.error.message, /inputs\[0\] must be an array of 2 finite numbers/);
    assert.equal((await post('/predict', JSON.stringify({ inputs: [[1, 2]], extra: 1 }))).status, 400);
    assert.equal((await post('/predict', JSON.stringify({ inputs: [] }))).status, 400);
    assert.equal((await post('/predict', 'x'.repeat(2 * 1024 * 1024)).catch(() => ({ status: 413, json: null }))).status, 413);
    assert.equal((await fetch(`${base}/predict`)).status, 405);
    assert.equal((await fetch(`${base}/nope`)).status, 404);
  });

  it('on SIGTERM finishes the request in flight, then exits 0', async () => {
    const url = new URL(`${base}/predict`);
    const body = JSON.stringify({ inputs: [[0.1, 0.2]] });
    const answer = new Promise<{ status: number; text: string }>((resolve, reject) => {
      const req = request({ host: url.hostname, port: url.port, path: '/predict', method: 'POST', headers: { 'content-length': Buffer.byteLength(body) } }, (res) => {
        let text = '';
        res.setEncoding('utf8');
        res.on('data', (c: string) => {
          text += c;
        });
        res.on('end', () => resolve({ status: res.statusCode ?? 0, text }));
      });
      req.on('error', reject);
      req.write(body.slice(0, 10)); // the request has started: the rest comes after the signal
      setTimeout(() => {
        child?.kill('SIGTERM');
        setTimeout(() => req.end(body.slice(10)), 300);
      }, 200);
    });
    const exited = new Promise<number | null>((resolve) => child?.on('exit', (code) => resolve(code)));
    const res = await answer;
    assert.equal(res.status, 200, res.text);
    assert.equal(JSON.parse(res.text).outputs.length, 1);
    assert.equal(await exited, 0);
    assert.match(stdout, /SIGTERM: stopping[\s\S]*stopped/);
    child = undefined;
  });
});
