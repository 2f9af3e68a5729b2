/**
 * The cluster example without the platform: this test plays the platform's relay in-process. It
 * spawns WORLD_SIZE member processes (node workload/member.mjs, each with its own exchange,
 * checkpoint and output directories) and a relay loop that watches every member's out/ and, once
 * every rank has published round r, copies all of them into every member's in/round-<r>/ and then
 * writes `complete`. It shows: every rank ends with the same parameter bits, and the members'
 * checkpoints and outputs equal a single-process run of the same algorithm (workload/simulate.mjs)
 * byte for byte; killing the whole cluster after a checkpoint and restarting it (also with one
 * member a checkpoint ahead of its peer and a fresh exchange) ends with the same bytes; a
 * re-published round has the same bytes as the first publication; the model is accurate.
 */
import assert from 'node:assert/strict';
import { type ChildProcess, spawn, spawnSync } from 'node:child_process';
import { copyFileSync, existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, renameSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { fileURLToPath } from 'node:url';

const here = fileURLToPath(new URL('.', import.meta.url));
const memberScript = join(here, 'workload/member.mjs');
const simulateScript = join(here, 'workload/simulate.mjs');
const root = mkdtempSync(join(tmpdir(), 'gridwork-cluster-example-'));
after(() => rmSync(root, { recursive: true, force: true }));

const ROUND_FILE = /^round-([1-9][0-9]*)\.json$/;

/**
 * The platform's relay, in miniature. It keeps the latest publication per (round, rank) in a store
 * that outlives a cluster restart (a restarted cluster may re-publish rounds; a member ahead of its
 * peers does not), and delivers a round to every member whose in/round-<r>/ is not complete as soon
 * as the store holds every rank's publication of it. Files are written atomically, `complete` last.
 */
class Relay {
  readonly store = new Map<number, Map<number, Buffer>>();
  /** Publications seen again for a round already in the store: identical bytes, or not. */
  readonly republished: string[] = [];
  readonly differing: string[] = [];
  private readonly seen = new Map<string, string>();
  private timer: NodeJS.Timeout | undefined;
  private exchanges: string[] = [];

  constructor(
    readonly worldSize: number,
    seed?: Map<number, Map<number, Buffer>>,
  ) {
    for (const [r, byRank] of seed ?? []) this.store.set(r, new Map(byRank));
  }

  /** Serve these members' exchange directories (rank order), polling every intervalMs. */
  start(exchanges: string[], intervalMs = 10): void {
    this.stop();
    this.exchanges = exchanges;
    this.seen.clear();
    this.timer = setInterval(() => this.tick(), intervalMs);
  }
  stop(): void {
    if (this.timer) clearInterval(this.timer);
    this.timer = undefined;
  }

  tick(): void {
    this.exchanges.forEach((ex, rank) => {
      const out = join(ex, 'out');
      if (!existsSync(out)) return;
      for (const f of readdirSync(out)) {
        const m = ROUND_FILE.exec(f);
        if (!m) continue; // .round-<r>.json.tmp: not published yet
        const st = statSync(join(out, f));
        const tag = `${st.ino}:${st.mtimeMs}:${st.size}`;
        if (this.seen.get(`${rank}/${f}`) === tag) continue;
        this.seen.set(`${rank}/${f}`, tag);
        const round = Number(m[1]);
        const bytes = readFileSync(join(out, f));
        const byRank = this.store.get(round) ?? new Map<number, Buffer>();
        const prev = byRank.get(rank);
        if (prev) (prev.equals(bytes) ? this.republished : this.differing).push(`round ${round} rank ${rank}`);
        byRank.set(rank, bytes);
        this.store.set(round, byRank);
      }
    });
    for (const [round, byRank] of this.store) {
      if (byRank.size !== this.worldSize) continue;
      for (const ex of this.exchanges) {
        const dir = join(ex, 'in', `round-${round}`);
        if (existsSync(join(dir, 'complete'))) continue;
        mkdirSync(dir, { recursive: true });
        for (const [rank, bytes] of byRank) {
          writeFileSync(join(dir, `.rank-${rank}.json.tmp`), bytes);
          renameSync(join(dir, `.rank-${rank}.json.tmp`), join(dir, `rank-${rank}.json`));
        }
        writeFileSync(join(dir, 'complete'), '');
      }
    }
  }
}

interface MemberDirs {
  exchange: string;
  ck: string;
  out: string;
}
interface Exit {
  code: number | null;
  signal: NodeJS.Signals | null;
  stdout: string;
  stderr: string;
}
interface Member {
  child: ChildProcess;
  done: Promise<Exit>;
}

function memberDirs(name: string, worldSize: number): MemberDirs[] {
  return Array.from({ length: worldSize }, (_, k) => {
    const base = join(root, name, `rank-${k}`);
    const d = { exchange: join(base, 'exchange'), ck: join(base, 'checkpoints'), out: join(base, 'outputs') };
    for (const p of Object.values(d)) mkdirSync(p, { recursive: true });
    return d;
  });
}

function startMember(d: MemberDirs, rank: number, worldSize: number, extra: Record<string, string>): Member {
  const peers = Array.from({ length: worldSize }, (_, k) => k).filter((k) => k !== rank);
  const env = {
    PATH: process.env.PATH,
    RANK: String(rank),
    WORLD_SIZE: String(worldSize),
    GRIDWORK_PEERS: peers.join(','),
    GRIDWORK_EXCHANGE: d.exchange,
    GRIDWORK_CHECKPOINTS: d.ck,
    GRIDWORK_OUTPUTS: d.out,
    ...extra,
  };
  const child = spawn(process.execPath, [memberScript], { env, stdio: ['ignore', 'pipe', 'pipe'] });
  let stdout = '';
  let stderr = '';
  child.stdout?.setEncoding('utf8').on('data', (c: string) => {
    stdout += c;
  });
  child.stderr?.setEncoding('utf8').on('data', (c: string) => {
    stderr += c;
  });
  const done = new Promise<Exit>((resolve) => child.on('close', (code, signal) => resolve({ code, signal, stdout, stderr })));
  return { child, done };
}

/** Runs a whole cluster (every rank with the same extra env, or per-rank env) under the relay until every member exits. */
async function runCluster(dirs: MemberDirs[], relay: Relay, extra: Record<string, string> | Record<string, string>[] = {}): Promise<Exit[]> {
  relay.start(dirs.map((d) => d.exchange));
  try {
    const members = dirs.map((d, k) => startMember(d, k, dirs.length, Array.isArray(extra) ? (extra[k] ?? {}) : extra));
    return await Promise.all(members.map((m) => m.done));
  } finally {
    relay.stop();
  }
}

function simulate(name: string, extra: Record<string, string>, seedCheckpoints: string[] = []): { out: string; ck: string; stdout: string } {
  const out = join(root, name, 'outputs');
  const ck = join(root, name, 'checkpoints');
  mkdirSync(out, { recursive: true });
  mkdirSync(ck, { recursive: true });
  for (const f of seedCheckpoints) copyFileSync(f, join(ck, f.split('/').at(-1) as string));
  const r = spawnSync(process.execPath, [simulateScript], {
    env: { PATH: process.env.PATH, GRIDWORK_OUTPUTS: out, GRIDWORK_CHECKPOINTS: ck, ...extra },
    encoding: 'utf8',
    timeout: 120_000,
  });
  assert.equal(r.status, 0, r.stderr);
  return { out, ck, stdout: r.stdout };
}

/** name → bytes of every file in a directory, but dot-files (a temp file a kill left behind is no checkpoint). */
function snapshot(dir: string): Map<string, Buffer> {
  return new Map(
    readdirSync(dir)
      .filter((f) => !f.startsWith('.'))
      .sort()
      .map((f) => [f, readFileSync(join(dir, f))]),
  );
}
function assertSameFiles(actual: Map<string, Buffer>, expected: Map<string, Buffer>, what: string): void {
  assert.deepEqual([...actual.keys()], [...expected.keys()], `${what}: file names`);
  for (const [f, bytes] of actual) assert.ok(bytes.equals(expected.get(f) as Buffer), `${what}: ${f} differs`);
}
/** Every member's checkpoints equal the reference's; the union of the members' outputs equals the reference's outputs. */
function assertMatchesReference(dirs: MemberDirs[], ref: { out: string; ck: string }, what: string): void {
  const refCk = snapshot(ref.ck);
  dirs.forEach((d, k) => assertSameFiles(snapshot(d.ck), refCk, `${what}: rank ${k} checkpoints`));
  const union = new Map<string, Buffer>();
  for (const d of dirs) for (const [f, b] of snapshot(d.out)) union.set(f, b);
  assertSameFiles(new Map([...union].sort(([a], [b]) => (a < b ? -1 : 1))), snapshot(ref.out), `${what}: outputs`);
}
function assertAllExited0(exits: Exit[], what: string): void {
  exits.forEach((e, k) => assert.equal(e.code, 0, `${what}: rank ${k} exited ${e.code} ${e.signal ?? ''}\n${e.stdout}\n${e.stderr}`));
}

const timings: string[] = [];
async function timed<T>(what: string, f: () => Promise<T> | T): Promise<T> {
  const t0 = Date.now();
  try {
    return await f();
  } finally {
    timings.push(`${what}: ${((Date.now() - t0) / 1000).toFixed(1)} s`);
  }
}

let ref: { out: string; ck: string };
let full: [MemberDirs, MemberDirs];
let fullRelay: Relay;
let fullExits: Exit[];

describe('examples/cluster', () => {
  after(() => process.stdout.write(`# cluster example timings: ${timings.join('; ')}\n`));
  before(async () => {
    ref = await timed('reference (simulate.mjs, 2 ranks in one process)', () => simulate('reference', { WORLD_SIZE: '2' }));
    full = memberDirs('full', 2) as [MemberDirs, MemberDirs];
    fullRelay = new Relay(2);
    fullExits = await timed('2-member cluster', () => runCluster(full, fullRelay));
    assertAllExited0(fullExits, 'uninterrupted run');
    fullExits.forEach((e, k) => timings.push(`rank ${k}: ${/done: .*/.exec(e.stdout)?.[0].replace(/.*, ([0-9.]+ s \()/, '$1')}`));
  });

  it('the bundle’s math modules are examples/train’s, byte for byte', () => {
    for (const f of ['detmath.mjs', 'mlp.mjs', 'dataset.mjs', 'onnx.mjs']) {
      assert.ok(
        readFileSync(join(here, 'workload', f)).equals(readFileSync(join(here, '../train/workload', f))),
        `${f} differs from examples/train/workload/${f}`,
      );
    }
  });

  it('2 members: the same final parameters on every rank; checkpoints and outputs equal the single-process reference', () => {
    const s0 = JSON.parse(readFileSync(join(full[0].out, 'rank-0.json'), 'utf8'));
    const s1 = JSON.parse(readFileSync(join(full[1].out, 'rank-1.json'), 'utf8'));
    assert.match(s0.paramsSha256, /^[0-9a-f]{64}$/);
    assert.equal(s0.paramsSha256, s1.paramsSha256);
    // The final checkpoints hold the whole state bit for bit (base64 float64): identical files.
    assert.ok(readFileSync(join(full[0].ck, 'step-001000.json')).equals(readFileSync(join(full[1].ck, 'step-001000.json'))));
    assert.deepEqual(readdirSync(full[0].out).sort(), ['metrics.json', 'model.onnx', 'rank-0.json']);
    assert.deepEqual(readdirSync(full[1].out).sort(), ['rank-1.json']);
    assertMatchesReference(full, ref, 'uninterrupted');
    const cks = readdirSync(full[0].ck).sort();
    assert.equal(cks.length, 10);
    assert.equal(cks[0], 'step-000100.json');
    assert.equal(cks.at(-1), 'step-001000.json');
  });

  it('publishes rounds 1..40 atomically (no temp file left), and every member received every round', () => {
    for (const d of full) {
      const out = readdirSync(join(d.exchange, 'out')).sort((a, b) => a.localeCompare(b, 'en', { numeric: true }));
      assert.deepEqual(
        out,
        Array.from({ length: 40 }, (_, i) => `round-${i + 1}.json`),
      );
      for (let r = 1; r <= 40; r++) assert.ok(existsSync(join(d.exchange, 'in', `round-${r}`, 'complete')));
    }
    assert.deepEqual(fullRelay.differing, []);
    const pub = JSON.parse(readFileSync(join(full[1].exchange, 'out', 'round-3.json'), 'utf8'));
    assert.equal(pub.format, 'gridwork-example-cluster-round/1');
    assert.deepEqual([pub.round, pub.step, pub.rank, pub.worldSize], [3, 75, 1, 2]);
    assert.equal(Buffer.from(pub.state, 'base64').length, (3 * 1251 + 2) * 8);
  });

  it('is accurate: > 90% on the training set and on the held-out spirals', () => {
    const metrics = JSON.parse(readFileSync(join(full[0].out, 'metrics.json'), 'utf8'));
    assert.ok(metrics.final.trainAccuracy > 0.9, `train accuracy ${metrics.final.trainAccuracy}`);
    assert.ok(metrics.final.testAccuracy > 0.9, `test accuracy ${metrics.final.testAccuracy}`);
    assert.equal(metrics.checkpoints.length, 10);
    assert.ok(metrics.checkpoints[9].loss < metrics.checkpoints[0].loss);
    assert.ok(readFileSync(join(full[0].out, 'model.onnx')).length > 5000);
  });

  it('killing every member after checkpoint 200 and restarting the cluster resumes and ends with the same bytes', async () => {
    const dirs = memberDirs('killed', 2);
    const relay = new Relay(2);
    relay.start(dirs.map((d) => d.exchange));
    const members = dirs.map((d, k) => startMember(d, k, 2, {}));
    const deadline = Date.now() + 60_000;
    while (!dirs.every((d) => existsSync(join(d.ck, 'step-000200.json')))) {
      assert.ok(Date.now() < deadline, 'no checkpoint 200 within 60 s');
      await new Promise((r) => setTimeout(r, 5));
    }
    for (const m of members) m.child.kill('SIGKILL');
    const killed = await Promise.all(members.map((m) => m.done));
    relay.stop();
    killed.forEach((e, k) => assert.equal(e.signal, 'SIGKILL', `rank ${k} had already exited: ${e.stdout}`));
    const latest = dirs.map(
      (d) =>
        readdirSync(d.ck)
          .filter((f) => f.startsWith('step-'))
          .sort()
          .at(-1) as string,
    );
    timings.push(`killed with latest checkpoints ${latest.join(' / ')}`);
    const restart = await timed('kill after step 200 + restart', () => runCluster(dirs, relay));
    assertAllExited0(restart, 'restarted run');
    restart.forEach((e, k) => assert.match(e.stdout, new RegExp(`resumed from ${(latest[k] as string).replace('.', '\\.')}`)));
    assertMatchesReference(dirs, ref, 'killed and restarted');
    assert.deepEqual(relay.differing, [], 'a re-published round differs from its first publication');
  });

  it('one member a checkpoint ahead of its peer (the peer died before writing it), fresh exchange directories: the same bytes', async () => {
    // Rank 1 died after round 16 (step 400) but before writing step-000400.json, while rank 0 wrote it
    // and had already published round 17. The relay's store holds what was published before.
    const seed = new Map<number, Map<number, Buffer>>();
    for (const [round, byRank] of fullRelay.store) {
      if (round <= 16) seed.set(round, new Map(byRank));
      else if (round === 17) seed.set(round, new Map([[0, byRank.get(0) as Buffer]]));
    }
    const relay = new Relay(2, seed);
    const dirs = memberDirs('lagging', 2);
    copyFileSync(join(ref.ck, 'step-000400.json'), join(dirs[0]!.ck, 'step-000400.json'));
    copyFileSync(join(ref.ck, 'step-000300.json'), join(dirs[1]!.ck, 'step-000300.json'));
    const exits = await timed('restart with rank 0 at step 400, rank 1 at step 300', () => runCluster(dirs, relay));
    assertAllExited0(exits, 'lagging restart');
    assert.match(exits[0]!.stdout, /resumed from step-000400\.json/);
    assert.match(exits[1]!.stdout, /resumed from step-000300\.json/);
    // Rank 1 re-published rounds 13..16, rank 0 round 17: the same bytes as before.
    for (const r of [13, 14, 15, 16]) assert.ok(relay.republished.includes(`round ${r} rank 1`), `round ${r} rank 1 re-published`);
    assert.ok(relay.republished.includes('round 17 rank 0'));
    assert.deepEqual(relay.differing, []);
    const refCk = snapshot(ref.ck);
    const later = (k: number) => new Map([...refCk].filter(([f]) => f >= (k === 0 ? 'step-000400.json' : 'step-000300.json')));
    dirs.forEach((d, k) => assertSameFiles(snapshot(d.ck), later(k), `rank ${k} checkpoints`));
    const union = new Map([...snapshot(dirs[0]!.out), ...snapshot(dirs[1]!.out)].sort(([a], [b]) => (a < b ? -1 : 1)));
    assertSameFiles(union, snapshot(ref.out), 'outputs');
  });

  it('3 members: GRIDWORK_STOP_STEP=200 on every rank, then a restart, ends equal to the 3-rank reference', async () => {
    const env = { TRAIN_STEPS: '300' };
    const ref3 = await timed('reference, 3 ranks, 300 steps', () => simulate('reference-3', { ...env, WORLD_SIZE: '3' }));
    const dirs = memberDirs('three', 3);
    const relay = new Relay(3);
    const stopped = await timed('3-member cluster to step 200', () => runCluster(dirs, relay, { ...env, GRIDWORK_STOP_STEP: '200' }));
    assertAllExited0(stopped, 'stop at 200');
    for (const d of dirs) {
      assert.deepEqual(readdirSync(d.ck).sort(), ['step-000100.json', 'step-000200.json']);
      assert.deepEqual(readdirSync(d.out), []);
    }
    const resumed = await timed('3-member cluster 200 → 300', () => runCluster(dirs, relay, env));
    assertAllExited0(resumed, 'resume from 200');
    for (const e of resumed) assert.match(e.stdout, /resumed from step-000200\.json/);
    assertMatchesReference(dirs, ref3, '3 members');
    const sums = dirs.map((d, k) => JSON.parse(readFileSync(join(d.out, `rank-${k}.json`), 'utf8')).paramsSha256);
    assert.equal(new Set(sums).size, 1);
  });

  it('a member’s checkpoint holds the whole cluster: the single-process reference replays segment 500 → 600 to the same bytes', async () => {
    const replay = await timed('single-process replay 500 → 600', () =>
      simulate('replay', { WORLD_SIZE: '2', GRIDWORK_STOP_STEP: '600' }, [join(full[1].ck, 'step-000500.json')]),
    );
    assert.match(replay.stdout, /resumed from step-000500\.json/);
    assert.ok(readFileSync(join(replay.ck, 'step-000600.json')).equals(readFileSync(join(full[0].ck, 'step-000600.json'))));
    assert.deepEqual(readdirSync(replay.out), []);
  });

  const ortInstalled = existsSync(join(here, '../node_modules/onnxruntime-node/package.json'));
  it('onnxruntime-node loads rank 0’s model.onnx and agrees with the JS forward pass (examples/train/check-onnx.mjs)', {
    skip: ortInstalled ? false : 'onnxruntime-node is not installed under examples/ (run: node examples/prepare.mjs)',
  }, () => {
    const r = spawnSync(process.execPath, [join(here, '../train/check-onnx.mjs'), full[0].out, full[0].ck], { encoding: 'utf8', timeout: 60_000 });
    assert.equal(r.status, 0, r.stdout + r.stderr);
    const report = JSON.parse(r.stdout);
    assert.equal(report.labelsAgree, report.rows);
    assert.ok(report.maxAbsDiff <= 1e-5);
  });

  it('a member whose round is never completed gives up with exit 1, naming the round', async () => {
    const [d] = memberDirs('alone', 1) as [MemberDirs];
    const m = startMember(d, 0, 2, { TRAIN_STEPS: '50', EXCHANGE_TIMEOUT_S: '1' });
    const e = await m.done;
    assert.equal(e.code, 1, e.stdout + e.stderr);
    assert.match(e.stderr, /member 0: error: round 1 \(step 25\): no in\/round-1\/complete after 1 s/);
    assert.ok(existsSync(join(d.exchange, 'out', 'round-1.json')));
  });

  it('refuses a peer with another configuration', async () => {
    const dirs = memberDirs('mismatch', 2);
    const exits = await runCluster(dirs, new Relay(2), [{ TRAIN_STEPS: '50' }, { TRAIN_STEPS: '50', LEARNING_RATE: '0.02' }]);
    exits.forEach((e, k) => {
      assert.equal(e.code, 1, `rank ${k}: ${e.stdout}${e.stderr}`);
      assert.match(e.stderr, /round 1: rank-[01]\.json: another configuration/);
    });
  });
});
