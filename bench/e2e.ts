/**
 * End to end, G3 and G4: one-task jobs submitted through the signed HTTP API (the SDK's
 * GridworkClient), placed by the real coordinator (authentication, validation, budget hold,
 * scheduler, outbox), delivered over the real provider WebSocket protocol to light simulated
 * providers (packages/sim/src/wire-provider.ts) that report `lease.started` at once and
 * `lease.finished` right after, applied by the coordinator (ack = committed). On PGlite (temp
 * dir) and PostgreSQL (a unique schema, dropped at the end).
 *
 *  G3: ≥ 2,000 committed placements/s end to end with 1,000 simulated providers. 1,000 sockets
 *      plus their heartbeats do not fit next to the coordinator on 2 cores: this runs
 *      --providers (100) × --slots (8); the figure is stated with the fleet it was measured on.
 *  G4: submit → running p50 ≤ 5 ms, p99 ≤ 50 ms: from the start of the submit request until the
 *      coordinator has applied the provider's `lease.started` (its ack arrives: the task is
 *      running in the database). Measured one job at a time (nothing else queued), and also
 *      under the concurrent load of the throughput phase.
 *
 * Phases per store: warm-up; sequential (latency); concurrent (--concurrency submitters, one
 * account each, --jobs jobs: throughput); fairness (account A submits one job of --shards
 * shards over --shards tiny uploaded files, two providers with 16 slots whose tasks take 50 ms,
 * then account B submits a one-task job: B's wait next to A's run time).
 *
 * Where the time goes: per-stage timestamps, all on this process's clock (the coordinator runs
 * in this process): submit HTTP round trip; lease row stamped (server clock, ms resolution);
 * lease.assign reaching the provider; lease.started applied; lease.finished applied. And
 * transactions per job: COMMITs of explicit transactions plus autocommitted statements,
 * counted at the drivers (bench/lib/txn-counter.ts), and for PostgreSQL pg_stat_database
 * xact_commit of the whole database (other sessions on it count too).
 *
 * The load generator (requesters, simulated providers: bench/lib/e2e-load.ts) runs in a worker
 * thread of this process, so it neither takes the coordinator's event loop nor waits on it to
 * read its sockets; on 2 cores it still competes for CPU with the coordinator (and PostgreSQL).
 * Only the coordinator's public surface is used (url, close, HTTP API), so the benchmark keeps
 * working while the coordinator's internals change; the one exception, lease row stamps, is
 * read from the database where it can be reached and left out where not.
 *
 *   node --import tsx bench/e2e.ts [--jobs 200] [--latency-jobs 60] [--providers 100] [--slots 8]
 *        [--concurrency 24] [--shards 2000] [--stores pglite,postgres] [--cap-s 20]
 *        [--scenarios sequential,concurrent,fairness]
 *   (or BENCH_E2E_JOBS, BENCH_E2E_STORES, …; BENCH_E2E_LOG=warn shows the coordinator's log)
 */
import { randomBytes } from 'node:crypto';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Worker } from 'node:worker_threads';
import { type Coordinator, startCoordinator } from '@gridwork/coordinator';
import { generateIdentity, GridworkClient } from '@gridwork/sdk';
import pg from 'pg';
import pino from 'pino';
import { loadNote, machineInfo, printTable, progress, round, summarize, yesNo } from './lib/common.ts';
import type { FairnessReply, FairnessRequest, PhaseReply, PhaseRequest, Sample, SetupRequest } from './lib/e2e-load.ts';
import { installTxCounter, type TxCounts, txDelta, txIgnore, txSnapshot } from './lib/txn-counter.ts';

const args = new Map<string, string>();
for (let i = 2; i < process.argv.length; i += 2) args.set(String(process.argv[i]).replace(/^--/, ''), String(process.argv[i + 1]));
const num = (name: string, env: string, dflt: number) => Number(args.get(name) ?? process.env[env] ?? dflt);
const JOBS = num('jobs', 'BENCH_E2E_JOBS', 200);
const LATENCY_JOBS = num('latency-jobs', 'BENCH_E2E_LATENCY_JOBS', 60);
const WARMUP = 20;
const PROVIDERS = num('providers', 'BENCH_E2E_PROVIDERS', 100);
const SLOTS = num('slots', 'BENCH_E2E_SLOTS', 8);
const CONCURRENCY = num('concurrency', 'BENCH_E2E_CONCURRENCY', 24);
const SHARDS = num('shards', 'BENCH_E2E_SHARDS', 2000);
const FAIR_SLOTS = 16;
const FAIR_TASK_MS = 50;
/** Cap on each waiting phase per store (throughput drain, fairness run). */
const CAP_MS = num('cap-s', 'BENCH_E2E_CAP_S', 20) * 1000;
/** Which scenarios run: sequential (G4), concurrent (G3), fairness. */
const SCENARIOS = new Set((args.get('scenarios') ?? process.env.BENCH_E2E_SCENARIOS ?? 'sequential,concurrent,fairness').split(','));
const STORES = (args.get('stores') ?? process.env.BENCH_E2E_STORES ?? 'pglite,postgres').split(',');
const PG_URL = process.env.GRIDWORK_TEST_DATABASE_URL ?? 'postgres://postgres@127.0.0.1:5432/test';
const G3_GOAL = 2000;
const G4_P50 = 5;
const G4_P99 = 50;
/** Whole-run watchdog: the benchmark stops by itself even if something hangs. */
const WATCHDOG_MS = num('watchdog-s', 'BENCH_E2E_WATCHDOG_S', 420) * 1000;

const watchdog = setTimeout(() => {
  progress(`watchdog: still running after ${WATCHDOG_MS / 1000} s; giving up`);
  process.exit(2);
}, WATCHDOG_MS);
watchdog.unref();

installTxCounter();

interface StageStats {
  submitRtt: ReturnType<typeof summarize>;
  leaseStamp: ReturnType<typeof summarize>;
  assign: ReturnType<typeof summarize>;
  running: ReturnType<typeof summarize>;
  finished: ReturnType<typeof summarize>;
  /** Deltas between consecutive stages (p50 / p99). */
  placementToAssign: ReturnType<typeof summarize>;
  assignToRunning: ReturnType<typeof summarize>;
  runningToFinished: ReturnType<typeof summarize>;
}

interface PhaseResult {
  phase: 'sequential' | 'concurrent';
  jobs: number;
  done: number;
  wallMs: number;
  placementsPerS: number;
  completedPerS: number;
  placedInReply: number;
  stages: StageStats;
  tx: TxCounts;
  /** pg_stat_database xact_commit delta (PostgreSQL only; whole database). */
  pgXactCommit: number | null;
}

type FairnessResult = FairnessReply;

interface StoreResult {
  store: string;
  setupMs: number;
  connectMs: number;
  errors: string[];
  phases: PhaseResult[];
  fairness: FairnessResult | null;
}

function stageStats(samples: Sample[]): StageStats {
  const rel = (f: (s: Sample) => number | undefined) => summarize(samples.flatMap((s) => (f(s) === undefined ? [] : [f(s) as number])));
  const d = (a: number | undefined, b: number | undefined) => (a === undefined || b === undefined ? undefined : b - a);
  return {
    submitRtt: rel((s) => d(s.t0, s.resp)),
    leaseStamp: rel((s) => d(s.t0, s.leaseAt)),
    assign: rel((s) => d(s.t0, s.assign)),
    running: rel((s) => d(s.t0, s.running)),
    finished: rel((s) => d(s.t0, s.finished)),
    placementToAssign: rel((s) => d(s.leaseAt, s.assign)),
    assignToRunning: rel((s) => d(s.assign, s.running)),
    runningToFinished: rel((s) => d(s.running, s.finished)),
  };
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

async function pgXactCommit(): Promise<number | null> {
  const c = new pg.Client({ connectionString: PG_URL });
  txIgnore(c);
  await c.connect();
  try {
    // Statistics are flushed by backends at most once a second-ish: force a fresh snapshot.
    await c.query('select pg_stat_clear_snapshot()');
    const r = await c.query('select xact_commit::text as n from pg_stat_database where datname = current_database()');
    return Number(r.rows[0]?.n ?? Number.NaN);
  } finally {
    await c.end();
  }
}

async function dropSchema(schema: string): Promise<void> {
  const c = new pg.Client({ connectionString: PG_URL });
  await c.connect();
  try {
    await c.query(`drop schema if exists ${schema} cascade`);
  } finally {
    await c.end();
  }
}

/**
 * When each job's lease row was stamped (server clock, ms): read from the leases table, with a
 * connection of our own on PostgreSQL, and on PGlite through the coordinator's handle where it
 * still exposes one (a second PGlite may not open the same directory). Null when neither works.
 */
async function leaseStamps(coordinator: Coordinator, store: string, schema: string, jobIds: string[]): Promise<Map<string, number> | null> {
  const byJob = new Map<string, number>();
  try {
    if (store === 'postgres') {
      const c = new pg.Client({ connectionString: PG_URL });
      txIgnore(c);
      await c.connect();
      try {
        const r = await c.query<{ job_id: string; created_at: Date }>(`select job_id, created_at from ${schema}.leases where job_id = any($1)`, [jobIds]);
        for (const row of r.rows) byJob.set(row.job_id, row.created_at.getTime());
      } finally {
        await c.end();
      }
      return byJob;
    }
    type Rows = { execute(): Promise<{ job_id: string; created_at: Date }[]> };
    type Handle = { selectFrom(t: string): { select(c: string[]): { where(c: string, op: string, v: string[]): Rows } } };
    const db = (coordinator as unknown as { db?: Handle }).db;
    if (!db) return null;
    for (let i = 0; i < jobIds.length; i += 1000) {
      for (const r of await db
        .selectFrom('leases')
        .select(['job_id', 'created_at'])
        .where('job_id', 'in', jobIds.slice(i, i + 1000))
        .execute()) {
        byJob.set(r.job_id, r.created_at.getTime());
      }
    }
    return byJob;
  } catch (err) {
    progress(`lease stamps unavailable: ${(err as Error).message}`);
    return null;
  }
}

/** The load generator's worker thread, called command by command. */
class LoadWorker {
  private readonly worker: Worker;
  private nextId = 1;
  private readonly pending = new Map<number, { resolve: (v: unknown) => void; reject: (e: Error) => void }>();

  constructor() {
    this.worker = new Worker(new URL('./lib/worker-boot.mjs', import.meta.url), { workerData: { entry: new URL('./lib/e2e-load.ts', import.meta.url).href } });
    this.worker.on('message', (m: { id: number; result?: unknown; error?: string }) => {
      const p = this.pending.get(m.id);
      this.pending.delete(m.id);
      if (m.error !== undefined) p?.reject(new Error(`load worker: ${m.error}`));
      else p?.resolve(m.result);
    });
    this.worker.on('error', (err) => {
      for (const p of this.pending.values()) p.reject(err);
      this.pending.clear();
    });
  }

  call<T>(cmd: string, payload?: unknown): Promise<T> {
    const id = this.nextId++;
    return new Promise<T>((resolve, reject) => {
      this.pending.set(id, { resolve: resolve as (v: unknown) => void, reject });
      this.worker.postMessage({ id, cmd, payload });
    });
  }

  async close(): Promise<void> {
    await this.worker.terminate();
  }
}

async function runStore(store: string): Promise<StoreResult> {
  const dir = await mkdtemp(join(tmpdir(), 'gridwork-bench-e2e-'));
  const schema = `bench_e2e_${process.pid}_${randomBytes(4).toString('hex')}`;
  const t0 = performance.now();
  const coordinator: Coordinator = await startCoordinator({
    dataDir: join(dir, 'coordinator'),
    port: 0,
    dev: true,
    // BENCH_E2E_LOG=warn shows the coordinator's own complaints (on stderr).
    logger: pino({ level: process.env.BENCH_E2E_LOG ?? 'silent' }, pino.destination(2)),
    ...(store === 'postgres' ? { databaseUrl: PG_URL, databaseSchema: schema } : { databaseUrl: '' }),
  });
  const setupMs = performance.now() - t0;
  progress(`${store}: coordinator up in ${Math.round(setupMs)} ms`);
  const load = new LoadWorker();
  const result: StoreResult = { store, setupMs, connectMs: 0, errors: [], phases: [], fairness: null };
  try {
    // Public API only (the coordinator's internals are being reshaped): GET /v1/market.
    const observer = new GridworkClient({ url: coordinator.url, identity: generateIdentity() });
    const listed = async () => (await observer.market()).find((c) => c.resourceClass === 'cpu')?.providers ?? 0;
    const { connectMs } = await load.call<{ connectMs: number }>('setup', {
      url: coordinator.url,
      dir,
      providers: PROVIDERS,
      slots: SLOTS,
      submitters: CONCURRENCY,
    } satisfies SetupRequest);
    // The market learns of a connection just after the welcome: wait until it lists every provider.
    for (let k = 0; k < 200 && (await listed()) < PROVIDERS; k++) await sleep(25);
    result.connectMs = connectMs;
    progress(`${store}: ${PROVIDERS} simulated providers × ${SLOTS} slots connected in ${Math.round(connectMs)} ms (${await listed()} listed)`);

    const counters = async () => ({ tx: txSnapshot(), pg: store === 'postgres' ? await pgXactCommit() : null });
    const stampLeases = async (list: Sample[]) => {
      const byJob = await leaseStamps(
        coordinator,
        store,
        schema,
        list.flatMap((s) => (s.jobId ? [s.jobId] : [])),
      );
      for (const s of list) if (s.jobId) s.leaseAt = byJob?.get(s.jobId);
    };
    const runPhase = async (req: PhaseRequest) => {
      const before = await counters();
      const reply = await load.call<PhaseReply>('phase', req);
      const after = await counters();
      await stampLeases(reply.samples);
      return phaseResult(req.kind === 'concurrent' ? 'concurrent' : 'sequential', reply.samples, reply.start, reply.end, before, after);
    };

    await runPhase({ kind: 'warmup', jobs: WARMUP, capMs: 20_000 });
    if (SCENARIOS.has('sequential')) {
      const seq = await runPhase({ kind: 'sequential', jobs: LATENCY_JOBS, capMs: CAP_MS });
      result.phases.push(seq);
      progress(`${store}: sequential ${seq.jobs} jobs: submit→running p50 ${round(seq.stages.running.p50)} ms, p99 ${round(seq.stages.running.p99)} ms`);
    }
    if (SCENARIOS.has('concurrent')) {
      const con = await runPhase({ kind: 'concurrent', jobs: JOBS, capMs: CAP_MS });
      result.phases.push(con);
      progress(`${store}: concurrent ${con.jobs} jobs: ${round(con.placementsPerS, 0)} placements/s, ${round(con.completedPerS, 0)} completed/s`);
    }
    if (!SCENARIOS.has('fairness')) return result;

    // Fairness: the fleet leaves; two 16-slot providers with 50 ms tasks remain.
    await load.call('closeFleet');
    for (let k = 0; k < 200 && (await listed()) > 0; k++) await sleep(25);
    const f = await load.call<FairnessReply>('fairness', {
      url: coordinator.url,
      dir,
      shards: SHARDS,
      slots: FAIR_SLOTS,
      taskMs: FAIR_TASK_MS,
      capMs: CAP_MS,
    } satisfies FairnessRequest);
    result.fairness = f;
    progress(
      `${store}: fairness: A's ${f.shards}-shard job: upload ${Math.round(f.uploadMs)} ms, submit call ${Math.round(f.submitMs)} ms, ${f.aDone}/${f.shards} done${f.aCapped ? ' (capped)' : ` in ${Math.round(f.aRunMs ?? 0)} ms`}; B waited ${f.bWaitMs === null ? '(never started)' : `${Math.round(f.bWaitMs)} ms`}`,
    );
  } finally {
    result.errors.push(...(await load.call<string[]>('errors').catch(() => [])));
    await load.call('closeFleet').catch(() => undefined);
    await load.close();
    await coordinator.close();
    if (store === 'postgres') await dropSchema(schema).catch((err) => progress(`could not drop schema ${schema}: ${(err as Error).message}`));
    await rm(dir, { recursive: true, force: true });
  }
  return result;
}

function phaseResult(
  phase: PhaseResult['phase'],
  list: Sample[],
  start: number,
  end: number,
  before: { tx: TxCounts; pg: number | null },
  after: { tx: TxCounts; pg: number | null },
): PhaseResult {
  const done = list.filter((s) => s.finished !== undefined);
  const lastAssign = Math.max(...list.map((s) => s.assign ?? Number.NEGATIVE_INFINITY));
  const lastFinish = Math.max(...done.map((s) => s.finished as number));
  const placed = list.filter((s) => s.assign !== undefined).length;
  return {
    phase,
    jobs: list.length,
    done: done.length,
    wallMs: end - start,
    placementsPerS: placed > 0 ? placed / ((lastAssign - start) / 1000) : 0,
    completedPerS: done.length > 0 ? done.length / ((lastFinish - start) / 1000) : 0,
    placedInReply: list.filter((s) => s.placedInReply).length / Math.max(1, list.length),
    stages: stageStats(list),
    tx: txDelta(before.tx, after.tx),
    pgXactCommit: before.pg !== null && after.pg !== null ? after.pg - before.pg : null,
  };
}

// ── run ────────────────────────────────────────────────────────────────────────────────
const results: StoreResult[] = [];
for (const store of STORES) {
  try {
    results.push(await runStore(store));
  } catch (err) {
    progress(`${store}: failed: ${(err as Error).stack ?? err}`);
    results.push({ store, setupMs: 0, connectMs: 0, errors: [`run failed: ${(err as Error).message}`], phases: [], fairness: null });
  }
}

const ms = (x: number) => (Number.isFinite(x) ? round(x) : '-');
const phaseOf = (r: StoreResult, p: PhaseResult['phase']) => r.phases.find((x) => x.phase === p);
const g3Met = (r: StoreResult) => (phaseOf(r, 'concurrent')?.placementsPerS ?? 0) >= G3_GOAL;
const g4Met = (r: StoreResult) => {
  const s = phaseOf(r, 'sequential');
  return !!s && s.done === s.jobs && s.stages.running.p50 <= G4_P50 && s.stages.running.p99 <= G4_P99;
};
const fleetNote = `${PROVIDERS} simulated providers × ${SLOTS} slots (goal is stated at 1,000 providers)`;

printTable(`End to end: one-task jobs through the signed API to simulated providers — ${fleetNote}`, [
  [
    'store',
    'phase',
    'jobs',
    'done',
    'placements/s',
    'G3 (≥ 2,000/s)',
    'completed/s',
    'submit→running p50',
    'p90',
    'p99',
    'max',
    'G4 (p50 ≤ 5, p99 ≤ 50 ms)',
    'placed in POST reply',
  ],
  ...results.flatMap((r) =>
    r.phases.map((p) => [
      r.store,
      p.phase === 'concurrent' ? `concurrent ×${CONCURRENCY}` : 'sequential',
      p.jobs,
      p.done,
      round(p.placementsPerS, 0),
      p.phase === 'concurrent' ? yesNo(g3Met(r)) : '(latency run)',
      round(p.completedPerS, 0),
      ms(p.stages.running.p50),
      ms(p.stages.running.p90),
      ms(p.stages.running.p99),
      ms(p.stages.running.max),
      p.phase === 'sequential' ? yesNo(g4Met(r)) : '(under load)',
      `${round(p.placedInReply * 100, 1)}%`,
    ]),
  ),
]);

printTable('Where the time goes: ms after the submit request started (p50 / p99), and between stages', [
  [
    'store',
    'phase',
    'submit HTTP RTT',
    'lease row stamped*',
    'assign at provider',
    'started applied',
    'finished applied',
    'stamp→assign',
    'assign→started',
    'started→finished',
  ],
  ...results.flatMap((r) =>
    r.phases.map((p) => {
      const f = (s: ReturnType<typeof summarize>) => `${ms(s.p50)} / ${ms(s.p99)}`;
      const st = p.stages;
      return [
        r.store,
        p.phase,
        f(st.submitRtt),
        f(st.leaseStamp),
        f(st.assign),
        f(st.running),
        f(st.finished),
        f(st.placementToAssign),
        f(st.assignToRunning),
        f(st.runningToFinished),
      ];
    }),
  ),
]);
console.log('* server clock, ms resolution: the placement transaction stamps the lease before it commits.');

printTable('Database transactions per job (counted at the drivers; PostgreSQL also pg_stat_database, whole database)', [
  ['store', 'phase', 'COMMITs/job', 'autocommit writes/job', 'autocommit reads/job', 'statements/job', 'rollbacks', 'pg xact_commit/job'],
  ...results.flatMap((r) =>
    r.phases.map((p) => {
      const per = (x: number) => round(x / Math.max(1, p.jobs), 2);
      return [
        r.store,
        p.phase,
        per(p.tx.commits),
        per(p.tx.implicit - p.tx.implicitReads),
        per(p.tx.implicitReads),
        per(p.tx.statements),
        p.tx.rollbacks,
        p.pgXactCommit === null ? '-' : per(p.pgXactCommit),
      ];
    }),
  ),
]);

printTable(
  `Fairness: A submits one ${SHARDS}-shard job (${SHARDS} files), 2 providers × ${FAIR_SLOTS} slots, ${FAIR_TASK_MS} ms tasks; then B submits one task (ms)`,
  [
    [
      'store',
      'A hash files',
      'A missing?',
      `A upload ${SHARDS} blobs`,
      'A submit call',
      'A run (submit→last task)',
      'A tasks/s',
      'A ideal',
      'B submit call',
      'B wait (submit→running)',
      'A tasks done when B ran',
    ],
    ...results.map((r) => {
      const f = r.fairness;
      if (!f) return [r.store, '-', '-', '-', '-', '-', '-', '-', '-', '-', '-'];
      return [
        r.store,
        ms(f.prepareMs),
        ms(f.missingMs),
        ms(f.uploadMs),
        ms(f.submitMs),
        f.aRunMs === null ? `capped at ${CAP_MS / 1000} s: ${f.aDone}/${f.shards} done` : ms(f.aRunMs),
        round(f.aTasksPerS, 1),
        round((SHARDS * FAIR_TASK_MS) / (2 * FAIR_SLOTS), 0),
        f.bSubmitMs === null ? 'no reply by the cap' : ms(f.bSubmitMs),
        f.bWaitMs !== null ? ms(f.bWaitMs) : `not started: > ${ms(f.bWaitedAtLeastMs ?? Number.NaN)}`,
        f.aDoneWhenBRan ?? '-',
      ];
    }),
  ],
);
console.log('A ideal: shards × task time / slots. Today the scheduler takes queued tasks oldest first (FIFO), so B waits behind A.');
for (const r of results) {
  if (r.errors.length > 0) console.log(`${r.store}: ${r.errors.length} error(s), first: ${r.errors.slice(0, 3).join(' | ')}`);
  console.log(`${r.store}: coordinator start ${Math.round(r.setupMs)} ms, ${PROVIDERS} providers connected in ${Math.round(r.connectMs)} ms`);
}
console.log(`load generator (requesters + simulated providers) runs in a worker thread of the coordinator's process; ${loadNote()}`);
console.log('');

const stagesJson = (s: StageStats) =>
  Object.fromEntries(Object.entries(s).map(([k, v]) => [k, { p50: round(v.p50), p90: round(v.p90), p99: round(v.p99), max: round(v.max), n: v.n }]));
console.log(
  JSON.stringify({
    bench: 'e2e',
    machine: machineInfo(),
    config: {
      providers: PROVIDERS,
      slots: SLOTS,
      concurrency: CONCURRENCY,
      jobs: JOBS,
      latencyJobs: LATENCY_JOBS,
      shards: SHARDS,
      fairSlots: FAIR_SLOTS,
      fairTaskMs: FAIR_TASK_MS,
    },
    results: results.map((r) => ({
      store: r.store,
      setupMs: Math.round(r.setupMs),
      connectMs: Math.round(r.connectMs),
      errors: r.errors.length,
      phases: r.phases.map((p) => ({
        phase: p.phase,
        jobs: p.jobs,
        done: p.done,
        wallMs: Math.round(p.wallMs),
        placementsPerS: round(p.placementsPerS, 1),
        completedPerS: round(p.completedPerS, 1),
        placedInPostReply: round(p.placedInReply, 3),
        stagesMs: stagesJson(p.stages),
        txPerJob: {
          commits: round(p.tx.commits / Math.max(1, p.jobs), 2),
          autocommitWrites: round((p.tx.implicit - p.tx.implicitReads) / Math.max(1, p.jobs), 2),
          autocommitReads: round(p.tx.implicitReads / Math.max(1, p.jobs), 2),
          statements: round(p.tx.statements / Math.max(1, p.jobs), 2),
          rollbacks: p.tx.rollbacks,
          pgXactCommit: p.pgXactCommit === null ? null : round(p.pgXactCommit / Math.max(1, p.jobs), 2),
        },
      })),
      fairness: r.fairness
        ? {
            ...Object.fromEntries(Object.entries(r.fairness).map(([k, v]) => [k, typeof v === 'number' ? round(v) : v])),
            idealRunMs: round((SHARDS * FAIR_TASK_MS) / (2 * FAIR_SLOTS), 0),
          }
        : null,
    })),
    goals: {
      G3: {
        goal: `>= ${G3_GOAL} committed placements/s end to end, 1,000 simulated providers`,
        measuredWith: `${PROVIDERS} providers x ${SLOTS} slots, ${CONCURRENCY} concurrent submitters`,
        value: Object.fromEntries(results.map((r) => [r.store, round(phaseOf(r, 'concurrent')?.placementsPerS ?? 0, 1)])),
        met: results.length > 0 && results.every(g3Met),
      },
      G4: {
        goal: `submit->running p50 <= ${G4_P50} ms, p99 <= ${G4_P99} ms`,
        value: Object.fromEntries(
          results.map((r) => {
            const s = phaseOf(r, 'sequential')?.stages.running;
            return [r.store, s ? { p50: round(s.p50), p99: round(s.p99) } : null];
          }),
        ),
        underLoad: Object.fromEntries(
          results.map((r) => {
            const s = phaseOf(r, 'concurrent')?.stages.running;
            return [r.store, s ? { p50: round(s.p50), p99: round(s.p99) } : null];
          }),
        ),
        met: results.length > 0 && results.every(g4Met),
      },
    },
  }),
);
process.exit(0);
