/**
 * Start fast, stay small (issue 9, item 6): wall time and peak memory of short `gridwork`
 * commands against a bare `node -e 0`, and the resident memory of an idle coordinator (PGlite)
 * and an idle provider agent. Runs the compiled CLI (`npm run build` first; the binary says
 * so when it falls back to sources).
 *
 * Goals (issue 9, item 6; DESIGN.md numbers no G-goal for them — its G6, ≤ 256 MiB per 10k
 * connected providers, is about load): `--version` and `job status` within 3× a bare Node start
 * and ≤ 80 MiB peak RSS; idle provider agent ≤ 80 MiB; idle PGlite coordinator ≤ 250 MiB, on a
 * new store (its first start) and on a reopened one (every later start). Resident memory varies
 * by ±20 MiB from start to start with what V8's background compilers did, so the coordinator is
 * started --coordinator-runs times for each (default 3) and the median counts. bench/pglite-memory.ts
 * shows where its memory goes.
 *
 * Prints a table, then one JSON line.   node --import tsx bench/startup.ts [--runs 7] [--coordinator-runs 3]
 */
import { spawn } from 'node:child_process';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { cpus, loadavg, tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { GridworkClient, generateIdentity } from '@gridwork/sdk';

const BIN = fileURLToPath(new URL('../packages/cli/bin/gridwork.js', import.meta.url));
const argValue = (name: string) => (process.argv.includes(name) ? Number(process.argv[process.argv.indexOf(name) + 1]) : undefined);
const runs = argValue('--runs') || 7;
const coordinatorRuns = argValue('--coordinator-runs') || 3;
/** Issue 9, item 6: an idle coordinator on its embedded PGlite store. */
const COORDINATOR_GOAL_MIB = 250;
// Peak RSS reported by the child itself on exit, through fd 3: the same probe for every command.
const PROBE = `data:text/javascript,${encodeURIComponent("import fs from 'node:fs'; process.on('exit', () => { try { fs.writeSync(3, String(process.resourceUsage().maxRSS)); } catch {} });")}`;

interface Sample {
  ms: number;
  rssKiB: number;
  code: number | null;
}

function runOnce(args: string[], env: Record<string, string>): Promise<Sample> {
  return new Promise((resolve, reject) => {
    const start = process.hrtime.bigint();
    const child = spawn(process.execPath, ['--import', PROBE, ...args], { env: { ...process.env, ...env }, stdio: ['ignore', 'ignore', 'ignore', 'pipe'] });
    let rss = '';
    child.stdio[3]?.on('data', (d: Buffer) => {
      rss += d.toString();
    });
    child.on('error', reject);
    child.on('close', (code) => resolve({ ms: Number(process.hrtime.bigint() - start) / 1e6, rssKiB: Number(rss) || 0, code }));
  });
}

const median = (xs: number[]) => {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.floor(s.length / 2)] as number;
};

async function measure(args: string[], env: Record<string, string> = {}): Promise<{ ms: number; rssMiB: number; code: number | null }> {
  await runOnce(args, env); // warm the file cache
  const samples: Sample[] = [];
  for (let i = 0; i < runs; i++) samples.push(await runOnce(args, env));
  return { ms: Math.round(median(samples.map((s) => s.ms))), rssMiB: Math.round(median(samples.map((s) => s.rssKiB)) / 1024), code: samples[0]?.code ?? null };
}

/** Starts a long-running `gridwork …`, waits for its ready JSON line, lets it idle, reads its RSS. */
async function idleRss(
  args: string[],
  readyEvent: string,
  idleMs: number,
  env: Record<string, string> = {},
): Promise<{ rssMiB: number; ready: Record<string, unknown>; stop: () => Promise<void> }> {
  const child = spawn(process.execPath, [BIN, ...args], { env: { ...process.env, ...env }, stdio: ['ignore', 'pipe', 'inherit'] });
  const ready = await new Promise<Record<string, unknown>>((resolve, reject) => {
    let buf = '';
    child.stdout.setEncoding('utf8').on('data', (d: string) => {
      buf += d;
      for (const line of buf.split('\n')) {
        try {
          const j = JSON.parse(line) as Record<string, unknown>;
          if (j.event === readyEvent) resolve(j);
        } catch {}
      }
    });
    child.once('exit', (code) => reject(new Error(`${args.join(' ')} exited (${code}) before "${readyEvent}"`)));
  });
  await new Promise((r) => setTimeout(r, idleMs));
  const status = await readFile(`/proc/${child.pid}/status`, 'utf8');
  const kib = Number(/VmRSS:\s+(\d+)/.exec(status)?.[1] ?? 0);
  return {
    rssMiB: Math.round(kib / 1024),
    ready,
    stop: () =>
      new Promise<void>((r) => {
        child.once('exit', () => r());
        child.kill('SIGTERM');
      }),
  };
}

const dir = await mkdtemp(join(tmpdir(), 'gridwork-bench-startup-'));
// The compiled CLI even where sources changed since the build (it would otherwise run them through tsx).
const env = { GRIDWORK_HOME: dir, NO_COLOR: '1', GRIDWORK_FROM_SOURCE: '0' };
try {
  const bare = await measure(['-e', '0']);
  const version = await measure([BIN, '--version'], env);
  const help = await measure([BIN, '--help'], env);

  const port = 20_000 + Math.floor(Math.random() * 10_000);
  const coordinatorArgs = (data: string, p = 0) => ['coordinator', 'start', '--port', String(p), '--data', join(dir, data), '--dev', '--log-level', 'warn'];
  // The first start creates the store; this coordinator serves the provider and `job status` below.
  const coordinator = await idleRss(coordinatorArgs('coordinator', port), 'listening', 3000, env);
  const url = String(coordinator.ready.url);
  const provider = await idleRss(
    ['provider', 'start', '--coordinator', url, '--data', join(dir, 'provider'), '--runtime', 'process', '--gpus', 'none', '--log-level', 'warn'],
    'started',
    3000,
    env,
  );
  // A real job id for `job status`: a job that cannot match (it asks for a GPU) stays put.
  const identity = generateIdentity();
  const { writeFile } = await import('node:fs/promises');
  await writeFile(join(dir, 'requester-key.json'), JSON.stringify(identity));
  const client = new GridworkClient({ url, identity });
  await client.deposit('10');
  const { mkdir } = await import('node:fs/promises');
  await mkdir(join(dir, 'job', 'work'), { recursive: true });
  await writeFile(join(dir, 'job', 'work', 'main.mjs'), '\n');
  await writeFile(
    join(dir, 'job', 'job.yaml'),
    'version: 1\nname: bench\nkind: batch\nruntime: { kind: bundle, path: ./work, command: [node, main.mjs] }\nresources: { gpu: { count: 1 }, cpu: 1, memoryGiB: 1 }\nprice: { maxPerHour: "1", budget: "1" }\n',
  );
  const job = await client.submitFile(join(dir, 'job', 'job.yaml'));
  const status = await measure([BIN, 'job', 'status', job.id], { ...env, GRIDWORK_COORDINATOR: url });
  const statusJson = await measure([BIN, 'job', 'status', job.id, '--json'], { ...env, GRIDWORK_COORDINATOR: url });
  await provider.stop();
  await coordinator.stop();
  // More samples: new stores (each its own directory), then restarts on the first one's store.
  const newStore = [coordinator.rssMiB];
  for (let i = 1; i < coordinatorRuns; i++) {
    const c = await idleRss(coordinatorArgs(`coordinator-${i}`), 'listening', 3000, env);
    newStore.push(c.rssMiB);
    await c.stop();
  }
  const reopened: number[] = [];
  for (let i = 0; i < coordinatorRuns; i++) {
    const c = await idleRss(coordinatorArgs('coordinator'), 'listening', 3000, env);
    reopened.push(c.rssMiB);
    await c.stop();
  }
  const coordinatorNew = median(newStore);
  const coordinatorReopened = median(reopened);
  const range = (xs: number[]) => `${Math.min(...xs)}–${Math.max(...xs)}`;

  const rows: [string, string, string, string, string, string][] = [];
  const ratio = (ms: number) => Math.round((ms / bare.ms) * 10) / 10;
  const verdict = (ok: boolean) => (ok ? 'ok' : 'MISSED');
  const cliGoal = '≤ 3× node, ≤ 80 MiB';
  rows.push(['node -e 0', `${bare.ms} ms`, `${bare.rssMiB} MiB`, '1.0×', '', 'baseline']);
  for (const [name, m] of [
    ['gridwork --version', version],
    ['gridwork --help', help],
    ['gridwork job status', status],
    ['gridwork job status --json', statusJson],
  ] as const) {
    rows.push([name, `${m.ms} ms`, `${m.rssMiB} MiB`, `${ratio(m.ms)}×`, cliGoal, verdict(ratio(m.ms) <= 3 && m.rssMiB <= 80 && m.code === 0)]);
  }
  const coordinatorGoal = `≤ ${COORDINATOR_GOAL_MIB} MiB (issue 9 #6)`;
  rows.push([
    `idle coordinator (PGlite), new store, median of ${newStore.length}`,
    '-',
    `${coordinatorNew} MiB (${range(newStore)})`,
    '-',
    coordinatorGoal,
    verdict(coordinatorNew <= COORDINATOR_GOAL_MIB),
  ]);
  rows.push([
    `idle coordinator (PGlite), reopened store, median of ${reopened.length}`,
    '-',
    `${coordinatorReopened} MiB (${range(reopened)})`,
    '-',
    coordinatorGoal,
    verdict(coordinatorReopened <= COORDINATOR_GOAL_MIB),
  ]);
  rows.push(['idle provider agent', '-', `${provider.rssMiB} MiB`, '-', '≤ 80 MiB', verdict(provider.rssMiB <= 80)]);
  const head = ['command', 'wall (median)', 'RSS (peak; idle)', 'vs node', 'goal', ''];
  const widths = head.map((h, i) => Math.max(h.length, ...rows.map((r) => r[i]?.length ?? 0)));
  const line = (cells: string[]) => cells.map((c, i) => c.padEnd(widths[i] ?? 0)).join('  ');
  console.log(line(head));
  for (const r of rows) console.log(line(r));
  console.log(
    `load average ${loadavg()
      .map((x) => x.toFixed(2))
      .join(' ')} on ${cpus().length} cores (memory figures vary more on a busy machine)`,
  );
  console.log(
    JSON.stringify({
      bench: 'startup',
      runs,
      nodeMs: bare.ms,
      nodeRssMiB: bare.rssMiB,
      versionMs: version.ms,
      versionRssMiB: version.rssMiB,
      versionRatio: ratio(version.ms),
      helpMs: help.ms,
      statusMs: status.ms,
      statusRssMiB: status.rssMiB,
      statusRatio: ratio(status.ms),
      statusJsonMs: statusJson.ms,
      coordinatorIdleRssMiB: coordinatorNew,
      coordinatorIdleRssSamplesMiB: newStore,
      coordinatorReopenedIdleRssMiB: coordinatorReopened,
      coordinatorReopenedIdleRssSamplesMiB: reopened,
      coordinatorGoalMet: coordinatorNew <= COORDINATOR_GOAL_MIB && coordinatorReopened <= COORDINATOR_GOAL_MIB,
      providerIdleRssMiB: provider.rssMiB,
      goals: {
        ratio: 3,
        cliRssMiB: 80,
        coordinatorRssMiB: COORDINATOR_GOAL_MIB,
        coordinatorGoal: 'issue 9 item 6 (no G-number in DESIGN.md)',
        providerRssMiB: 80,
      },
      loadavg: loadavg().map((x) => Math.round(x * 100) / 100),
    }),
  );
} finally {
  await rm(dir, { recursive: true, force: true });
}
