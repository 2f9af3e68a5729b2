/**
 * Uploads of many small input files (issue 15, item 4): a job with --files (2,000) input files
 * of --bytes (1 KiB) each, submitted through the SDK (`GridworkClient.submit`: hash the files,
 * ask which the coordinator lacks, upload those, submit), on PGlite and PostgreSQL, two ways:
 *
 *   per-file  `batchUploads: false` — the SDK before batch uploads: one signed PUT per file,
 *             8 in flight (each: a nonce row, a lookup, a `blobs` row and a `blob_owners` row)
 *   batch     the default — small files packed into POST /v1/blobs/batch requests, each one
 *             signed request and one transaction for all its rows
 *
 * Each run uses a fresh account, so every file is uploaded. The upload itself is the submit
 * time minus that of a second submit of the same files by the same account, which hashes, asks
 * and submits alike but uploads nothing. Requests and database writes (COMMITs plus
 * autocommitted writes, counted at the drivers: bench/lib/txn-counter.ts) are those of the
 * first submit. The baseline: 15–23 s to upload 2,000 small input files.
 *
 * The coordinator runs in this process (it shares the 2 cores with the client and PostgreSQL).
 *
 *   node --import tsx bench/uploads.ts [--files 2000] [--bytes 1024] [--runs 3] [--stores pglite,postgres]
 */
import { randomBytes } from 'node:crypto';
import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { createServer, request } from 'node:http';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { type Coordinator, startCoordinator } from '@gridwork/coordinator';
import { generateIdentity, GridworkClient, type JobSpec } from '@gridwork/sdk';
import pg from 'pg';
import pino from 'pino';
import { loadNote, machineInfo, printTable, progress, round } from './lib/common.ts';
import { installTxCounter, txDelta, txIgnore, txSnapshot } from './lib/txn-counter.ts';

const args = new Map<string, string>();
for (let i = 2; i < process.argv.length; i += 2) args.set(String(process.argv[i]).replace(/^--/, ''), String(process.argv[i + 1]));
const FILES = Number(args.get('files') ?? 2000);
const BYTES = Number(args.get('bytes') ?? 1024);
const RUNS = Number(args.get('runs') ?? 3);
const STORES = (args.get('stores') ?? 'pglite,postgres').split(',');
const PG_URL = process.env.GRIDWORK_TEST_DATABASE_URL ?? 'postgres://postgres@127.0.0.1:5432/test';
/** Issue 15, item 4: "Uploading 2,000 small input files takes 15–23 s". */
const BASELINE = '15–23 s';
const MODES = ['per-file', 'batch'] as const;
type Mode = (typeof MODES)[number];

const watchdog = setTimeout(() => {
  progress('watchdog: still running after 10 minutes; giving up');
  process.exit(2);
}, 600_000);
watchdog.unref();

installTxCounter();

interface Run {
  submitMs: number;
  resubmitMs: number;
  uploadMs: number;
  requests: number;
  writes: number;
  statements: number;
}

interface Result {
  store: string;
  mode: Mode;
  runs: Run[];
  median: Run;
}

/** Forwards to the coordinator and counts requests (the SDK speaks node:http; this sees every one). */
async function countingProxy(target: string): Promise<{ url: string; count: () => number; close: () => Promise<void> }> {
  const t = new URL(target);
  let n = 0;
  const server = createServer((req, res) => {
    n++;
    const up = request({ host: t.hostname, port: t.port, method: req.method, path: req.url, headers: req.headers }, (r) => {
      res.writeHead(r.statusCode ?? 502, r.headers);
      r.pipe(res);
    });
    up.on('error', (err) => res.destroy(err));
    req.pipe(up);
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  return {
    url: `http://127.0.0.1:${(server.address() as AddressInfo).port}`,
    count: () => n,
    close: () => {
      server.closeAllConnections();
      return new Promise((resolve) => server.close(() => resolve()));
    },
  };
}

async function writeFiles(dir: string): Promise<void> {
  await mkdir(join(dir, 'data'), { recursive: true });
  await mkdir(join(dir, 'work'), { recursive: true });
  await writeFile(join(dir, 'work', 'main.mjs'), 'process.exit(0);\n');
  for (let i = 0; i < FILES; i += 100) {
    await Promise.all(
      Array.from({ length: Math.min(100, FILES - i) }, (_, j) =>
        writeFile(join(dir, 'data', `part-${String(i + j).padStart(5, '0')}.jsonl`), randomBytes(BYTES)),
      ),
    );
  }
}

/** Nothing can run it (64 cores, no provider): the submit is what is measured. */
const SPEC: JobSpec = {
  version: 1,
  name: 'bench-uploads',
  kind: 'batch',
  runtime: { kind: 'bundle', path: './work', command: ['node', 'main.mjs'] },
  inputs: [{ name: 'data', path: 'data/*.jsonl' }],
  resources: { cpu: 64, memoryGiB: 1 },
  price: { maxPerHour: '1.00', budget: '1.00' },
};

const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)] as number;

async function dropSchema(schema: string): Promise<void> {
  const c = new pg.Client({ connectionString: PG_URL });
  txIgnore(c);
  await c.connect();
  try {
    await c.query(`drop schema if exists ${schema} cascade`);
  } finally {
    await c.end();
  }
}

async function runStore(store: string, filesDir: string): Promise<Result[]> {
  const dir = await mkdtemp(join(tmpdir(), 'gridwork-bench-uploads-'));
  const schema = `bench_uploads_${process.pid}_${randomBytes(4).toString('hex')}`;
  const coordinator: Coordinator = await startCoordinator({
    dataDir: join(dir, 'coordinator'),
    port: 0,
    dev: true,
    logger: pino({ level: process.env.BENCH_UPLOADS_LOG ?? 'silent' }, pino.destination(2)),
    ...(store === 'postgres' ? { databaseUrl: PG_URL, databaseSchema: schema } : { databaseUrl: '' }),
  });
  const proxy = await countingProxy(coordinator.url);
  const results: Result[] = [];
  try {
    for (const mode of MODES) {
      const runs: Run[] = [];
      for (let r = 0; r < RUNS; r++) {
        const identity = generateIdentity();
        await new GridworkClient({ url: coordinator.url, identity }).deposit('10');
        const client = new GridworkClient({ url: proxy.url, identity });
        const options = { baseDir: filesDir, batchUploads: mode === 'batch' };
        const n0 = proxy.count();
        const tx0 = txSnapshot();
        const t0 = performance.now();
        await client.submit(SPEC, options);
        const submitMs = performance.now() - t0;
        const tx = txDelta(tx0, txSnapshot());
        const requests = proxy.count() - n0;
        const t1 = performance.now();
        await client.submit(SPEC, options);
        const resubmitMs = performance.now() - t1;
        const run = {
          submitMs,
          resubmitMs,
          uploadMs: Math.max(0, submitMs - resubmitMs),
          requests,
          writes: tx.commits + tx.implicit - tx.implicitReads,
          statements: tx.statements,
        };
        runs.push(run);
        progress(
          `${store} ${mode} run ${r + 1}: upload ${Math.round(run.uploadMs)} ms (submit ${Math.round(submitMs)} ms), ${requests} requests, ${run.writes} writes`,
        );
      }
      const pick = (k: keyof Run) => median(runs.map((x) => x[k]));
      results.push({
        store,
        mode,
        runs,
        median: {
          submitMs: pick('submitMs'),
          resubmitMs: pick('resubmitMs'),
          uploadMs: pick('uploadMs'),
          requests: pick('requests'),
          writes: pick('writes'),
          statements: pick('statements'),
        },
      });
    }
  } finally {
    await proxy.close();
    await coordinator.close();
    await rm(dir, { recursive: true, force: true });
    if (store === 'postgres') await dropSchema(schema).catch((err) => progress(`could not drop schema ${schema}: ${(err as Error).message}`));
  }
  return results;
}

const filesDir = await mkdtemp(join(tmpdir(), 'gridwork-bench-upload-files-'));
const results: Result[] = [];
try {
  await writeFiles(filesDir);
  for (const store of STORES) {
    progress(`${store}: ${FILES} files of ${BYTES} bytes, ${RUNS} runs per mode`);
    results.push(...(await runStore(store, filesDir)));
  }
} finally {
  await rm(filesDir, { recursive: true, force: true });
}

const s = (ms: number) => round(ms / 1000, 2);
const speedup = (store: string) => {
  const per = results.find((r) => r.store === store && r.mode === 'per-file')?.median.uploadMs;
  const bat = results.find((r) => r.store === store && r.mode === 'batch')?.median.uploadMs;
  return per !== undefined && bat !== undefined && bat > 0 ? round(per / bat, 1) : null;
};
printTable(`Uploading ${FILES} input files of ${BYTES} bytes through the SDK (median of ${RUNS}; issue baseline ${BASELINE})`, [
  ['store', 'path', 'upload s', 'submit s (hash+ask+upload+submit)', 'requests', 'DB writes', 'statements', 'vs per-file', 'issue baseline'],
  ...results.map((r) => [
    r.store,
    r.mode,
    s(r.median.uploadMs),
    s(r.median.submitMs),
    r.median.requests,
    r.median.writes,
    r.median.statements,
    r.mode === 'batch' ? `${speedup(r.store) ?? '-'}× faster` : '1×',
    BASELINE,
  ]),
]);
console.log('upload s: first submit minus a second submit of the same files (which uploads nothing). requests: every HTTP request of the first submit.');
console.log("DB writes: COMMITs plus autocommitted writes during the first submit (the job submit and the coordinator's background sweeps included).");
console.log(loadNote());
console.log('');
console.log(
  JSON.stringify({
    bench: 'uploads',
    machine: machineInfo(),
    config: { files: FILES, bytes: BYTES, runs: RUNS, baseline: BASELINE },
    results: results.map((r) => ({
      store: r.store,
      mode: r.mode,
      uploadMs: Math.round(r.median.uploadMs),
      submitMs: Math.round(r.median.submitMs),
      requests: r.median.requests,
      dbWrites: r.median.writes,
      statements: r.median.statements,
      speedup: r.mode === 'batch' ? speedup(r.store) : null,
      runs: r.runs.map((x) => ({ uploadMs: Math.round(x.uploadMs), submitMs: Math.round(x.submitMs), requests: x.requests, dbWrites: x.writes })),
    })),
  }),
);
process.exit(0);
