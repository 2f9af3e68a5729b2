/**
 * What a trivial task costs its slot (issue 15, item 4: "well under 100 ms of overhead; say where
 * the time goes"). Two layers, each timed on a task that does nothing (`/bin/true`):
 *
 *  runtime  SandboxRuntime.run() alone, one run at a time, against a bare spawn of the same
 *           program: what the launcher chain (setpriv, prlimit, bwrap), the task's cgroup and,
 *           with `network: true`, its network namespace (slirp4netns) add.
 *  agent    a real coordinator (PGlite, in this process) and one real provider agent with one
 *           slot, running a job of --tasks such tasks end to end: per task the slot also pays for
 *           the assignment, the task's directories, the lease.started / lease.finished reports
 *           and their acks, and the coordinator's work in between. Slot time per task = the
 *           job's wall time / tasks (one slot, so tasks run one after another); with the process
 *           runtime next to it, the sandbox's share is the difference.
 *
 * Verification is off here (as in the tests): probation audits would double the tasks.
 *
 *   node --import tsx bench/task-overhead.ts [--runs 30] [--tasks 60]
 * Prints tables, then one JSON line.
 */
import { spawn } from 'node:child_process';
import { chmod, mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { startCoordinator } from '@gridwork/coordinator';
import type { JobSpec } from '@gridwork/protocol';
import { loadOrCreateIdentity } from '@gridwork/protocol/node';
import { createSandboxRuntime, ProviderAgent } from '@gridwork/provider';
import { generateIdentity, GridworkClient } from '@gridwork/sdk';
import pino from 'pino';
import { loadNote, machineInfo, printTable, progress, round, summarize } from './lib/common.ts';

const arg = (name: string, dflt: number) => (process.argv.includes(`--${name}`) ? Number(process.argv[process.argv.indexOf(`--${name}`) + 1]) : dflt);
const RUNS = arg('runs', 30);
const TASKS = arg('tasks', 60);
/** Issue 15, item 4. */
const GOAL_MS = 100;

type Stats = ReturnType<typeof summarize>;

function bare(): Promise<number> {
  return new Promise((resolve, reject) => {
    const t0 = performance.now();
    const child = spawn('/bin/true', { stdio: 'ignore' });
    child.on('error', reject);
    child.on('exit', () => resolve(performance.now() - t0));
  });
}

/** The runtime layer: RUNS runs of `true` per configuration, one at a time. */
async function runtimeLayer(root: string): Promise<Record<string, Stats>> {
  const out: Record<string, Stats> = {};
  const times: number[] = [];
  for (let i = 0; i < RUNS; i++) times.push(await bare());
  out['bare spawn'] = summarize(times);
  const configs: [string, ReturnType<typeof createSandboxRuntime>, boolean][] = [
    ['sandbox, no cgroup (fallback)', createSandboxRuntime({ cgroups: 'off', warn: () => {} }), false],
    ['sandbox + cgroup', createSandboxRuntime({ warn: () => {} }), false],
    ['sandbox + cgroup + network namespace', createSandboxRuntime({ warn: () => {} }), true],
  ];
  for (const [name, runtime, network] of configs) {
    const samples: number[] = [];
    for (let i = 0; i < RUNS + 1; i++) {
      const dir = join(root, `rt-${samples.length}-${i}`);
      const dirs = {
        bundleDir: join(dir, 'bundle'),
        inputsDir: join(dir, 'inputs'),
        outputsDir: join(dir, 'outputs'),
        checkpointsDir: join(dir, 'checkpoints'),
      };
      for (const d of Object.values(dirs)) await mkdir(d, { recursive: true });
      const t0 = performance.now();
      try {
        const r = await runtime.run({
          ...dirs,
          command: ['true'],
          env: {},
          network,
          timeoutMs: 30_000,
          memoryBytes: 256 * 2 ** 20,
          cpu: 1,
          diskBytes: 2 ** 30,
          onOutput: () => {},
        });
        if (r.exitCode !== 0) throw new Error(`exit ${r.exitCode}`);
      } catch (err) {
        progress(`${name}: not measured (${(err as Error).message})`);
        break;
      }
      if (i > 0) samples.push(performance.now() - t0); // the first run warms caches (cgroup controllers, binaries)
      await rm(dir, { recursive: true, force: true });
    }
    if (samples.length > 0) out[name] = summarize(samples);
  }
  return out;
}

interface AgentFigures {
  wallMs: number;
  perTaskMs: number;
  firstStartMs: number;
  /** The agent's own time per task (the task's durationMs: from taking the lease to reporting it finished: directories, bundle download, the run, uploads). */
  agentMs: Stats;
  /** From one task's finish applied to the next one's start applied (coordinator clock): the report, the scheduler's pass, the placement, the assignment on the wire, the agent taking it. */
  turnaroundMs: Stats;
}

/** The agent layer: one coordinator, one agent with one slot, a job of TASKS trivial tasks. */
async function agentLayer(root: string, runtime: 'sandbox' | 'process'): Promise<AgentFigures> {
  const dir = join(root, `agent-${runtime}`);
  const logger = pino({ level: 'silent' });
  const coordinator = await startCoordinator({
    dataDir: join(dir, 'coordinator'),
    port: 0,
    logger,
    dev: true,
    databaseUrl: '',
    challenges: { meanIntervalMs: 365 * 24 * 3600_000 },
    verification: { windowMs: 0, probationTasks: 0, minAuditRate: 0, maxAuditRate: 0, canaryRate: 0, genesisFees: '0' },
  });
  const providerDir = join(dir, 'provider');
  await mkdir(providerDir, { recursive: true, mode: 0o700 });
  await loadOrCreateIdentity(join(providerDir, 'provider-key.json'));
  const agent = await ProviderAgent.create({ coordinatorUrl: coordinator.url, dataDir: providerDir, name: 'bench', gpus: 'none', slots: 1, runtime, logger });
  agent.start();
  try {
    const client = new GridworkClient({ url: coordinator.url, identity: generateIdentity() });
    await client.deposit('100');
    const jobDir = join(dir, 'job');
    await mkdir(join(jobDir, 'bundle'), { recursive: true });
    await writeFile(join(jobDir, 'bundle', 'README'), 'a task that does nothing\n');
    await chmod(dir, 0o755);
    const spec = {
      version: 1,
      name: `overhead-${runtime}`,
      kind: 'batch',
      runtime: { kind: 'bundle', path: './bundle', command: ['true'] },
      resources: { cpu: 1, memoryGiB: 0.25 },
      shards: TASKS,
      price: { maxPerHour: '1', budget: '10' },
    } satisfies JobSpec;
    // One task first: the agent fetches the bundle once, and the provider is surely connected.
    const warm = await client.submit({ ...spec, name: `${spec.name}-warm`, shards: 1 }, { baseDir: jobDir });
    const t0 = performance.now();
    const w = await client.wait(warm.id);
    const firstStartMs = performance.now() - t0;
    if (w.state !== 'succeeded') throw new Error(`warm-up job ${w.state}: ${w.error ?? ''}`);
    const submitted = await client.submit(spec, { baseDir: jobDir });
    const t1 = performance.now();
    const job = await client.wait(submitted.id);
    const wallMs = performance.now() - t1;
    if (job.state !== 'succeeded') throw new Error(`job ${job.state}: ${job.error ?? ''}`);
    const tasks = [...job.tasks].sort((a, b) => Date.parse(a.startedAt ?? '') - Date.parse(b.startedAt ?? ''));
    const gaps = tasks.slice(1).map((t, i) => Date.parse(t.startedAt ?? '') - Date.parse(tasks[i]?.finishedAt ?? ''));
    return {
      wallMs,
      perTaskMs: wallMs / TASKS,
      firstStartMs,
      agentMs: summarize(tasks.map((t) => t.durationMs ?? 0)),
      turnaroundMs: summarize(gaps),
    };
  } finally {
    await agent.close();
    await coordinator.close();
  }
}

const root = await mkdtemp(join(tmpdir(), 'gw-overhead-'));
await chmod(root, 0o755);
try {
  progress(`runtime layer: ${RUNS} runs of /bin/true per configuration`);
  const rt = await runtimeLayer(root);
  const fmt = (s: Stats | undefined) => (s ? [round(s.p50), round(s.p90), round(s.max)] : ['-', '-', '-']);
  const base = rt['bare spawn']?.p50 ?? 0;
  printTable(`Runtime layer: one run of /bin/true (ms), ${RUNS} runs each`, [
    ['configuration', 'p50', 'p90', 'max', 'p50 above bare spawn'],
    ...Object.entries(rt).map(([name, s]) => [name, ...fmt(s), round(s.p50 - base)]),
  ]);
  progress(`agent layer: a job of ${TASKS} trivial tasks on one agent with one slot`);
  const agents: Record<string, AgentFigures> = {};
  for (const runtime of ['process', 'sandbox'] as const) {
    try {
      agents[runtime] = await agentLayer(root, runtime);
    } catch (err) {
      progress(`agent layer, ${runtime} runtime: not measured (${(err as Error).message})`);
    }
  }
  const sandboxRun = rt['sandbox + cgroup']?.p50;
  printTable(`Agent layer: slot time per trivial task, one agent with one slot, ${TASKS} tasks (ms; goal: overhead well under ${GOAL_MS} ms)`, [
    [
      'runtime',
      'per task',
      'agent: take → finish p50',
      'of it: the run (runtime layer p50)',
      'of it: dirs, bundle, uploads',
      'coordinator turnaround p50 (p90)',
      'first task of a new job',
    ],
    ...Object.entries(agents).map(([name, a]) => {
      const run = name === 'sandbox' ? (sandboxRun ?? 0) : base;
      return [
        name,
        round(a.perTaskMs),
        round(a.agentMs.p50),
        round(run),
        round(a.agentMs.p50 - run),
        `${round(a.turnaroundMs.p50)} (${round(a.turnaroundMs.p90)})`,
        round(a.firstStartMs),
      ];
    }),
  ]);
  console.log("turnaround: from a task's lease.finished applied to the next task's lease.started applied (coordinator clock, ms resolution):");
  console.log("the report's commit, the scheduler's pass and placement, the assignment on the wire, and the agent taking it.");
  const sandboxTask = agents.sandbox?.perTaskMs;
  console.log(loadNote());
  console.log(
    JSON.stringify({
      bench: 'task-overhead',
      machine: machineInfo(),
      config: { runs: RUNS, tasks: TASKS },
      runtime: Object.fromEntries(Object.entries(rt).map(([k, s]) => [k, { p50: round(s.p50), p90: round(s.p90), max: round(s.max) }])),
      agent: Object.fromEntries(
        Object.entries(agents).map(([k, a]) => [
          k,
          {
            wallMs: round(a.wallMs),
            perTaskMs: round(a.perTaskMs),
            firstTaskMs: round(a.firstStartMs),
            agentP50: round(a.agentMs.p50),
            turnaroundP50: round(a.turnaroundMs.p50),
            turnaroundP90: round(a.turnaroundMs.p90),
          },
        ]),
      ),
      goals: {
        trivialTaskOverhead: {
          goal: `a trivial sandboxed task costs its slot < ${GOAL_MS} ms`,
          value: sandboxTask === undefined ? null : round(sandboxTask),
          met: sandboxTask !== undefined && sandboxTask < GOAL_MS,
        },
      },
    }),
  );
} finally {
  await rm(root, { recursive: true, force: true });
}
