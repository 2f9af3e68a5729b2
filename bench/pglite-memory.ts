/**
 * Where an idle coordinator's memory goes on its embedded PGlite store (issue 9, item 6: idle
 * PGlite coordinator ≤ 250 MiB resident; bench/startup.ts checks the goal itself). Each scenario
 * runs in a fresh process, idles, and reports its resident set (VmRSS) with a breakdown:
 *
 *   file       resident pages mapped from files (mostly the node binary itself)
 *   v8 heap    committed V8 heap (heapTotal) and the part of it in use (heapUsed)
 *   buffers    ArrayBuffers (PGlite's in-memory file system bundle lives here)
 *   wasm mem   touched pages of PGlite's WebAssembly memory (PGlite scenarios only; PostgreSQL
 *              zeroes its shared memory at start, so shared_buffers counts in full)
 *   arenas     resident native heap outside the main one: glibc's per-thread malloc arenas, where
 *              V8's background compilers leave their freed scratch memory
 *
 * Scenarios: a bare `node`; PGlite alone (in memory; on a new directory, as PGlite.create()
 * builds it in-process; on an existing directory); openDatabase() on a new directory (builds the
 * store in a child process); the coordinator library (startCoordinator, no V8 setting) and the
 * `gridwork coordinator start` process, each on a new and on a reopened store. Every scenario
 * runs --runs times (default 3); the table shows medians, the JSON line every sample.
 *
 *   npm run build && node --import tsx bench/pglite-memory.ts [--runs 3] [--idle-ms 3000]
 */
import { spawn } from 'node:child_process';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import type { Readable } from 'node:stream';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { loadNote, machineInfo, printTable, progress } from './lib/common.ts';

const args = new Map<string, string>();
for (let i = 2; i < process.argv.length; i += 2) args.set(String(process.argv[i]).replace(/^--/, ''), String(process.argv[i + 1]));
const RUNS = Number(args.get('runs') ?? 3);
const IDLE_MS = Number(args.get('idle-ms') ?? 3000);
const GOAL_MIB = 250;

const root = (p: string) => fileURLToPath(new URL(`../${p}`, import.meta.url));
const PGLITE = import.meta.resolve('@electric-sql/pglite');
const DATABASE = new URL('../packages/coordinator/dist/store/database.js', import.meta.url).href;
const COORDINATOR = new URL('../packages/coordinator/dist/index.js', import.meta.url).href;
const BIN = root('packages/cli/bin/gridwork.js');

/** Read inside the measured process: its own /proc figures and V8's. `wasm` is its PGlite's WebAssembly.Memory, if any. */
const MEASURE = `
import { readFileSync } from 'node:fs';
globalThis.__measure = (wasm) => {
  const status = readFileSync('/proc/self/status', 'utf8');
  const kib = (k) => Number(new RegExp(k + ':\\\\s+(\\\\d+)').exec(status)?.[1] ?? 0);
  let wasmKiB = 0, arenaKiB = 0, heapKiB = 0, prev;
  const maps = [];
  for (const line of readFileSync('/proc/self/smaps', 'utf8').split('\\n')) {
    const m = /^([0-9a-f]+)-([0-9a-f]+) (\\S+) \\S+ \\S+ \\S+\\s*(.*)$/.exec(line);
    if (m) { prev = { start: parseInt(m[1], 16), end: parseInt(m[2], 16), perm: m[3], name: m[4], rss: 0 }; maps.push(prev); }
    else if (line.startsWith('Rss:') && prev) prev.rss = Number(line.split(/\\s+/)[1]);
  }
  for (const [i, m] of maps.entries()) {
    // PGlite's WebAssembly memory: its accessible part is one anonymous mapping of the memory's size
    // (128 MiB at least); where the measured process does not hand it over, the only such mapping.
    if (m.name === '' && m.perm === 'rw-p' && (wasm ? m.end - m.start === wasm.buffer.byteLength : m.end - m.start >= 128 * 1024 * 1024)) wasmKiB += m.rss;
    if (m.name === '[heap]') heapKiB += m.rss;
    // A glibc arena: an anonymous read-write mapping followed by its inaccessible rest, 64 MiB in all.
    const next = maps[i + 1];
    if (m.name === '' && m.perm === 'rw-p' && next && next.perm === '---p' && next.start === m.end && next.end - m.start === 64 * 1024 * 1024) arenaKiB += m.rss;
  }
  const mu = process.memoryUsage();
  const mib = (b) => Math.round(b / 1048576);
  return { rss: Math.round(kib('VmRSS') / 1024), file: Math.round(kib('RssFile') / 1024), heapTotal: mib(mu.heapTotal), heapUsed: mib(mu.heapUsed), buffers: mib(mu.arrayBuffers),
    wasm: wasmKiB ? Math.round(wasmKiB / 1024) : null, mainHeap: Math.round(heapKiB / 1024), arenas: Math.round(arenaKiB / 1024) };
};
`;
const PROBE = `data:text/javascript,${encodeURIComponent(`${MEASURE}
import { writeSync } from 'node:fs';
process.on('SIGUSR2', () => { try { writeSync(3, JSON.stringify(globalThis.__measure()) + '\\n'); } catch {} });`)}`;

const PGLITE_CONF = `['shared_buffers = 16MB', 'max_connections = 5', 'wal_buffers = 1MB']`;
const idle = `await new Promise((r) => setTimeout(r, ${IDLE_MS}));`;
const report = (wasm: string) => `process.stdout.write(JSON.stringify(globalThis.__measure(${wasm})) + '\\n');`;

interface Figures {
  rss: number;
  file: number;
  heapTotal: number;
  heapUsed: number;
  buffers: number;
  wasm: number | null;
  mainHeap: number;
  arenas: number;
}

interface Scenario {
  name: string;
  /** Runs once before the samples (e.g. creates the directory a reopen scenario opens). */
  prepare?: (dir: string) => Promise<void>;
  sample: (dir: string, i: number) => Promise<Figures>;
}

/** Runs an ES module script in a new node process; its last stdout line is the figures. */
function script(code: string, argv: string[] = []): Promise<Figures> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, ['--input-type=module', '-e', `${MEASURE}\n${code}`, ...argv], { stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    let err = '';
    child.stdout.setEncoding('utf8').on('data', (d: string) => (out += d));
    child.stderr.setEncoding('utf8').on('data', (d: string) => (err += d));
    child.once('error', reject);
    child.once('close', (code) => {
      const last = out.trim().split('\n').pop() ?? '';
      try {
        resolve(JSON.parse(last) as Figures);
      } catch {
        reject(new Error(`scenario exited ${code}: ${err.slice(-2000)}`));
      }
    });
  });
}

/** `gridwork coordinator start` on dataDir: waits for its ready line, idles, asks its probe for figures. */
function cli(dataDir: string, home: string): Promise<Figures> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, ['--import', PROBE, BIN, 'coordinator', 'start', '--port', '0', '--data', dataDir, '--dev', '--log-level', 'warn'], {
      env: { ...process.env, GRIDWORK_HOME: home, NO_COLOR: '1', GRIDWORK_FROM_SOURCE: '0' },
      stdio: ['ignore', 'pipe', 'ignore', 'pipe'],
    });
    let buf = '';
    let probed = false;
    child.stdout?.setEncoding('utf8').on('data', (d: string) => {
      buf += d;
      if (probed || !buf.includes('"listening"')) return;
      probed = true;
      setTimeout(() => child.kill('SIGUSR2'), IDLE_MS);
    });
    (child.stdio[3] as Readable | null)?.on('data', (d: Buffer) => {
      child.kill('SIGTERM');
      resolve(JSON.parse(d.toString().trim()) as Figures);
    });
    child.once('error', reject);
    child.once('exit', (code) => {
      if (!probed) reject(new Error(`gridwork coordinator start exited (${code}) before listening`));
    });
  });
}

const openPglite = (dir: string) => `const { PGlite } = await import(${JSON.stringify(PGLITE)});
const db = await PGlite.create(${JSON.stringify(dir)}, { postgresqlconf: ${PGLITE_CONF} });
await db.query('select 1');
${idle}
${report('db.mod.wasmMemory ?? { buffer: db.mod.HEAPU8.buffer }')}
await db.close();`;

const library = (dir: string) => `const { startCoordinator } = await import(${JSON.stringify(COORDINATOR)});
const c = await startCoordinator({ dataDir: ${JSON.stringify(dir)}, port: 0, dev: true, logLevel: 'warn' });
${idle}
${report('')}
await c.close();
process.exit(0);`;

const scenarios: Scenario[] = [
  { name: 'node (bare)', sample: () => script(`${idle}\n${report('')}`) },
  { name: 'PGlite memory://', sample: () => script(openPglite('memory://')) },
  { name: 'PGlite, new directory (initdb in-process)', sample: (dir, i) => script(openPglite(join(dir, `new-${i}`))) },
  {
    name: 'PGlite, existing directory',
    prepare: (dir) => script(openPglite(join(dir, 'pglite'))).then(() => {}),
    sample: (dir) => script(openPglite(join(dir, 'pglite'))),
  },
  {
    name: 'openDatabase(), new directory (store built in a child)',
    sample: (dir, i) =>
      script(`const { openDatabase } = await import(${JSON.stringify(DATABASE)});
const db = await openDatabase({ dataDir: ${JSON.stringify(join(dir, `open-${i}`))} });
${idle}
${report('')}
await db.destroy();`),
  },
  { name: 'startCoordinator(), new store (library, no V8 setting)', sample: (dir, i) => script(library(join(dir, `lib-${i}`))) },
  {
    name: 'startCoordinator(), reopened store',
    prepare: (dir) => script(library(join(dir, 'lib'))).then(() => {}),
    sample: (dir) => script(library(join(dir, 'lib'))),
  },
  { name: 'gridwork coordinator start, new store', sample: (dir, i) => cli(join(dir, `cli-${i}`), dir) },
  {
    name: 'gridwork coordinator start, reopened store',
    prepare: (dir) => cli(join(dir, 'cli'), dir).then(() => {}),
    sample: (dir) => cli(join(dir, 'cli'), dir),
  },
];

const dir = await mkdtemp(join(tmpdir(), 'gridwork-bench-pglite-memory-'));
const results: { name: string; samples: Figures[]; median: Figures }[] = [];
try {
  for (const s of scenarios) {
    progress(`${s.name}…`);
    await s.prepare?.(dir);
    const samples: Figures[] = [];
    for (let i = 0; i < RUNS; i++) samples.push(await s.sample(dir, i));
    // The median sample by RSS, so its breakdown adds up.
    const byRss = [...samples].sort((a, b) => a.rss - b.rss);
    results.push({ name: s.name, samples, median: byRss[Math.floor(byRss.length / 2)] as Figures });
  }
} finally {
  await rm(dir, { recursive: true, force: true });
}

const cell = (x: number | null) => (x === null ? '-' : String(x));
printTable(`Idle resident memory, MiB (median of ${RUNS} by RSS, after ${IDLE_MS} ms idle; goal for an idle PGlite coordinator: ≤ ${GOAL_MIB} MiB)`, [
  ['scenario', 'RSS', 'RSS range', 'file', 'v8 heap', 'v8 used', 'buffers', 'wasm mem', 'main heap', 'arenas'],
  ...results.map((r) => {
    const m = r.median;
    const rss = r.samples.map((s) => s.rss);
    return [r.name, m.rss, `${Math.min(...rss)}–${Math.max(...rss)}`, m.file, m.heapTotal, m.heapUsed, m.buffers, cell(m.wasm), m.mainHeap, m.arenas];
  }),
]);
console.log(loadNote());
console.log(
  JSON.stringify({
    bench: 'pglite-memory',
    runs: RUNS,
    idleMs: IDLE_MS,
    goalMiB: GOAL_MIB,
    machine: machineInfo(),
    scenarios: Object.fromEntries(results.map((r) => [r.name, { rssMiB: r.median.rss, median: r.median, rssSamples: r.samples.map((s) => s.rss) }])),
  }),
);
