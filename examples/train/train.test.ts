/**
 * The training example's side of the checkpoint contract, run directly with node (the platform's
 * resume and segment replay are tested with the coordinator elsewhere): two runs give the same
 * bytes; a run stopped at step 100 (GRIDWORK_STOP_STEP) and resumed from its checkpoint ends with
 * the same later checkpoints and outputs as an uninterrupted run; replaying one segment gives the
 * same checkpoint; SIGTERM checkpoints and stops; the ONNX export matches the JS forward pass.
 */
import assert from 'node:assert/strict';
import { type SpawnSyncReturns, spawn, spawnSync } from 'node:child_process';
import { copyFileSync, existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { fileURLToPath } from 'node:url';

const here = fileURLToPath(new URL('.', import.meta.url));
const script = join(here, 'workload/train.mjs');
const root = mkdtempSync(join(tmpdir(), 'gridwork-train-example-'));
after(() => rmSync(root, { recursive: true, force: true }));

interface Run {
  out: string;
  ck: string;
  result: SpawnSyncReturns<string>;
}

let inputs = '';
function dirs(name: string): { out: string; ck: string } {
  const out = join(root, name, 'outputs');
  const ck = join(root, name, 'checkpoints');
  mkdirSync(out, { recursive: true });
  mkdirSync(ck, { recursive: true });
  return { out, ck };
}
function env(out: string, ck: string, extra: Record<string, string> = {}): NodeJS.ProcessEnv {
  return { PATH: process.env.PATH, GRIDWORK_INPUTS: inputs, GRIDWORK_OUTPUTS: out, GRIDWORK_CHECKPOINTS: ck, ...extra };
}
function train(name: string, extra: Record<string, string> = {}, seed?: { from: string; files: string[] }): Run {
  const { out, ck } = dirs(name);
  for (const f of seed?.files ?? []) copyFileSync(join(seed?.from as string, f), join(ck, f));
  const result = spawnSync(process.execPath, [script], { env: env(out, ck, extra), encoding: 'utf8', timeout: 60_000 });
  return { out, ck, result };
}
/** name → bytes of every file in a directory. */
function snapshot(dir: string): Map<string, Buffer> {
  return new Map(
    readdirSync(dir)
      .sort()
      .map((f) => [f, readFileSync(join(dir, f))]),
  );
}
function assertSameFiles(a: Map<string, Buffer>, b: Map<string, Buffer>, what: string): void {
  assert.deepEqual([...a.keys()], [...b.keys()], `${what}: file names`);
  for (const [f, bytes] of a) assert.ok(bytes.equals(b.get(f) as Buffer), `${what}: ${f} differs`);
}

let full: Run;

describe('examples/train', () => {
  before(() => {
    inputs = join(root, 'inputs');
    mkdirSync(join(inputs, 'data'), { recursive: true });
    for (const f of ['train.csv', 'test.csv']) copyFileSync(join(here, 'data', f), join(inputs, 'data', f));
    full = train('full');
    assert.equal(full.result.status, 0, full.result.stderr);
  });

  it('the committed data sets are what the generator makes (same bytes on this machine)', () => {
    const r = spawnSync(process.execPath, [join(here, 'make-data.mjs'), '--check'], { encoding: 'utf8' });
    assert.equal(r.status, 0, r.stderr);
  });

  it('writes step-<N>.json every 50 steps, model.onnx and metrics.json', () => {
    const cks = readdirSync(full.ck).sort();
    assert.equal(cks.length, 40);
    assert.equal(cks[0], 'step-000050.json');
    assert.equal(cks.at(-1), 'step-002000.json');
    assert.ok(!cks.some((f) => f.includes('.tmp')), 'no temp file left behind');
    const metrics = JSON.parse(readFileSync(join(full.out, 'metrics.json'), 'utf8'));
    assert.equal(metrics.checkpoints.length, 40);
    assert.ok(metrics.checkpoints[39].loss < metrics.checkpoints[0].loss);
    assert.ok(metrics.final.testAccuracy >= 0.95, `test accuracy ${metrics.final.testAccuracy}`);
  });

  it('two uninterrupted runs give identical bytes', () => {
    const again = train('again');
    assert.equal(again.result.status, 0, again.result.stderr);
    assertSameFiles(snapshot(full.ck), snapshot(again.ck), 'checkpoints');
    assertSameFiles(snapshot(full.out), snapshot(again.out), 'outputs');
  });

  it('the committed infer-trained model is this run’s model.onnx, byte for byte', () => {
    assert.ok(readFileSync(join(here, '../infer-trained/model/model.onnx')).equals(readFileSync(join(full.out, 'model.onnx'))));
  });

  it('stop at step 100, resume from that checkpoint elsewhere: same later checkpoints and outputs', () => {
    const first = train('stop-100', { GRIDWORK_STOP_STEP: '100' });
    assert.equal(first.result.status, 0, first.result.stderr);
    assert.deepEqual(readdirSync(first.ck).sort(), ['step-000050.json', 'step-000100.json']);
    assert.deepEqual(readdirSync(first.out), []);
    // The platform places only the checkpoint to resume from, in a fresh directory (another provider).
    const second = train('resume-100', {}, { from: first.ck, files: ['step-000100.json'] });
    assert.equal(second.result.status, 0, second.result.stderr);
    assert.match(second.result.stdout, /resumed from step-000100\.json/);
    const later = new Map([...snapshot(full.ck)].filter(([f]) => f >= 'step-000100.json'));
    assertSameFiles(later, snapshot(second.ck), 'checkpoints from step 100 on');
    assertSameFiles(snapshot(full.out), snapshot(second.out), 'outputs');
  });

  it('replays one segment (100 → 150) to the same checkpoint bytes', () => {
    const replay = train('replay', { GRIDWORK_STOP_STEP: '150' }, { from: full.ck, files: ['step-000100.json'] });
    assert.equal(replay.result.status, 0, replay.result.stderr);
    assert.deepEqual(readdirSync(replay.ck).sort(), ['step-000100.json', 'step-000150.json']);
    assert.ok(readFileSync(join(replay.ck, 'step-000150.json')).equals(readFileSync(join(full.ck, 'step-000150.json'))));
  });

  it('resumes from the highest step when several checkpoints are there', () => {
    const r = train('several', { GRIDWORK_STOP_STEP: '1950' }, { from: full.ck, files: ['step-000050.json', 'step-001900.json', 'step-000200.json'] });
    assert.equal(r.result.status, 0, r.result.stderr);
    assert.match(r.result.stdout, /resumed from step-001900\.json/);
    assert.ok(readFileSync(join(r.ck, 'step-001950.json')).equals(readFileSync(join(full.ck, 'step-001950.json'))));
  });

  it('resumes from the step GRIDWORK_RESUME_STEP names, and refuses when that file is missing', () => {
    const named = train('named', { GRIDWORK_RESUME_STEP: '200', GRIDWORK_STOP_STEP: '250' }, { from: full.ck, files: ['step-000200.json', 'step-001900.json'] });
    assert.equal(named.result.status, 0, named.result.stderr);
    assert.match(named.result.stdout, /resumed from step-000200\.json/);
    assert.ok(readFileSync(join(named.ck, 'step-000250.json')).equals(readFileSync(join(full.ck, 'step-000250.json'))));
    const missing = train('named-missing', { GRIDWORK_RESUME_STEP: '300' }, { from: full.ck, files: ['step-000200.json'] });
    assert.equal(missing.result.status, 1);
    assert.match(missing.result.stderr, /GRIDWORK_RESUME_STEP=300, but .* holds no step-300\.json/);
  });

  it('refuses a checkpoint made with another configuration', () => {
    const r = train('mismatch', { CHECKPOINT_EVERY: '25' }, { from: full.ck, files: ['step-000100.json'] });
    assert.equal(r.result.status, 1);
    assert.match(r.result.stderr, /another configuration/);
  });

  it('on SIGTERM writes a checkpoint where it is and exits 143; resuming from it ends the same', async () => {
    const { out, ck } = dirs('sigterm');
    const child = spawn(process.execPath, [script], { env: env(out, ck), stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    child.stdout.setEncoding('utf8');
    child.stdout.on('data', (chunk: string) => {
      if (!stdout.includes('step 100:') && (stdout + chunk).includes('step 100:')) child.kill('SIGTERM');
      stdout += chunk;
    });
    const code = await new Promise<number | null>((resolve) => child.on('exit', (c) => resolve(c)));
    assert.equal(code, 143, stdout);
    const m = /SIGTERM: checkpoint (step-[0-9]+\.json) written/.exec(stdout);
    assert.ok(m, stdout);
    const resumed = train('sigterm-resume', {}, { from: ck, files: [m[1] as string] });
    assert.equal(resumed.result.status, 0, resumed.result.stderr);
    assertSameFiles(snapshot(full.out), snapshot(resumed.out), 'outputs after SIGTERM + resume');
  });

  const ortInstalled = existsSync(join(here, '../node_modules/onnxruntime-node/package.json'));
  it(
    'onnxruntime-node loads model.onnx and agrees with the JS forward pass within 1e-5',
    { skip: ortInstalled ? false : 'onnxruntime-node is not installed under examples/ (run: node examples/prepare.mjs)' },
    () => {
      const r = spawnSync(process.execPath, [join(here, 'check-onnx.mjs'), full.out, full.ck], { encoding: 'utf8', timeout: 60_000 });
      assert.equal(r.status, 0, r.stdout + r.stderr);
      const report = JSON.parse(r.stdout);
      assert.equal(report.labelsAgree, report.rows);
      assert.ok(report.maxAbsDiff <= 1e-5);
    },
  );
});
