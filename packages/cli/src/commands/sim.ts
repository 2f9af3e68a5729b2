/**
 * `gridwork sim trust`: the trust layers against cheating providers, measured on the real
 * coordinator in this process (see packages/sim). The simulation, and the coordinator with it,
 * loads only when the command runs.
 *
 * `gridwork sim load`: a fleet of simulated providers against coordinator replicas that this
 * command starts as processes of its own (`gridwork coordinator start`) on PostgreSQL and NATS.
 */
import { type ChildProcess, spawn } from 'node:child_process';
import { once } from 'node:events';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { type Command, InvalidArgumentError } from 'commander';
import { CliExit, EXIT_FAILED, EXIT_USAGE, info, out, printJson } from '../output.ts';
import { intOption, waitForSignal } from './shared.ts';

interface LoadFlags {
  providers: number;
  replicas: number;
  rate: number;
  seconds: number;
  slots: number;
  taskMs: number;
  heartbeatMs: number;
  idleSeconds?: number;
  databaseUrl?: string;
  natsUrl?: string;
  json?: boolean;
  logLevel: string;
}

interface TrustFlags {
  providers: number;
  cheaters: number;
  jobs: number;
  seed: string;
  strategies?: string;
  q: number;
  json?: boolean;
  logLevel: string;
}

function shareOption(value: string): number {
  const x = Number(value);
  if (!/^\d*\.?\d+$/.test(value.trim()) || !(x >= 0 && x < 1)) throw new InvalidArgumentError('must be a share in [0, 1), e.g. 0.25');
  return x;
}

function probabilityOption(value: string): number {
  const x = Number(value);
  if (!/^\d*\.?\d+$/.test(value.trim()) || !(x > 0 && x <= 1)) throw new InvalidArgumentError('must be a probability in (0, 1], e.g. 0.3');
  return x;
}

export function registerSimCommands(program: Command): void {
  const sim = program.command('sim').description('simulations of a whole network on this machine (the real coordinator, simulated providers)');
  sim
    .command('trust')
    .description(
      'honest and cheating providers (always-wrong, wrong-q, lazy, fake-hardware, colluding, whitewashing) against the real coordinator: who is caught, after how many jobs next to 1 − (1 − p)^k, what cheating earns and costs, honest providers punished, verification overhead; exits 1 when a goal is missed',
    )
    .option('--providers <n>', 'simulated providers, honest and cheating', intOption, 20)
    .option('--cheaters <share>', 'share of the providers that cheat, in one group per strategy (7 make one of each)', shareOption, 0.35)
    .option('--jobs <n>', 'one-task jobs to submit, in batches of one per provider', intOption, 300)
    .option('--seed <seed>', 'seed of every choice the simulation makes (keys, roles, job sizes, coin flips)', '1')
    .option('--strategies <list>', 'comma-separated cheating strategies to simulate (default: all)')
    .option('--q <p>', 'chance that a wrong-q, colluding or whitewashing provider makes a result up', probabilityOption, 0.3)
    .option('--json', 'print one JSON document on stdout')
    .option('--log-level <level>', "the embedded coordinator's log level (stderr)", 'silent')
    .action(async (opts: TrustFlags) => {
      const { runTrustSimulation, formatTrustReport, isStrategy, STRATEGIES } = await import('@gridwork/sim');
      let strategies: (typeof STRATEGIES)[number][] | undefined;
      if (opts.strategies !== undefined) {
        const names = opts.strategies
          .split(',')
          .map((s) => s.trim())
          .filter(Boolean);
        const unknown = names.filter((s) => !isStrategy(s));
        if (unknown.length > 0 || names.length === 0) {
          throw new CliExit(EXIT_USAGE, `--strategies: unknown strategy "${unknown[0] ?? ''}": must be some of ${STRATEGIES.join(', ')}`);
        }
        strategies = names.filter(isStrategy);
      }
      const stop = new AbortController();
      void waitForSignal().then(() => {
        info('stopping the simulation (the temporary store is removed)…');
        stop.abort();
      });
      const started = Date.now();
      let report: Awaited<ReturnType<typeof runTrustSimulation>>;
      try {
        report = await runTrustSimulation({
          providers: opts.providers,
          cheaters: opts.cheaters,
          jobs: opts.jobs,
          seed: opts.seed,
          q: opts.q,
          logLevel: opts.logLevel,
          signal: stop.signal,
          ...(strategies ? { strategies } : {}),
          onProgress: (line) => info(`[${((Date.now() - started) / 1000).toFixed(1)} s] ${line}`),
        });
      } catch (err) {
        if (err instanceof RangeError) throw new CliExit(EXIT_USAGE, err.message);
        throw err;
      }
      if (opts.json) printJson(report);
      else for (const line of formatTrustReport(report)) out(line);
      failOnMissedGoals(report.goals.filter((g) => g.exit));
    });

  sim
    .command('load')
    .description(
      'simulated providers on real WebSockets against coordinator replicas started here (PostgreSQL and NATS): memory per provider (G6), heartbeat CPU (G7), placements/s (G3), submit→running (G4), failure detection and leader failover times; exits 1 when a goal is missed',
    )
    .option('--providers <n>', 'simulated providers (light actors speaking the provider protocol)', intOption, 1000)
    .option('--replicas <n>', 'coordinator processes on one PostgreSQL schema', intOption, 3)
    .option('--rate <n>', 'one-task jobs submitted per second during the load phase', intOption, 50)
    .option('--seconds <n>', 'length of the load phase', intOption, 10)
    .option('--slots <n>', 'task slots per simulated provider', intOption, 4)
    .option('--task-ms <ms>', 'how long a simulated task runs', intOption, 200)
    .option('--heartbeat-ms <ms>', "the replicas' provider heartbeat interval", intOption, 5000)
    .option('--idle-seconds <n>', 'length of each idle window CPU is measured over (default: 10, or two heartbeats if longer)', intOption)
    .option('--database-url <url>', 'PostgreSQL to run on (a schema of its own, dropped after) (default: GRIDWORK_DATABASE_URL)')
    .option('--nats-url <url>', 'NATS for the replicas (default: GRIDWORK_NATS_URL; without it replicas poll)')
    .option('--json', 'print one JSON document on stdout')
    .option('--log-level <level>', "the replicas' log level (their stderr is shown)", 'warn')
    .action(async (opts: LoadFlags) => {
      const databaseUrl = opts.databaseUrl ?? process.env.GRIDWORK_DATABASE_URL;
      if (!databaseUrl) throw new CliExit(EXIT_USAGE, 'sim load runs replicas on PostgreSQL: give --database-url or set GRIDWORK_DATABASE_URL');
      const natsUrl = opts.natsUrl ?? (process.env.GRIDWORK_NATS_URL || undefined);
      const { runLoadSimulation, formatLoadReport } = await import('@gridwork/sim');
      const stop = new AbortController();
      void waitForSignal().then(() => {
        info('stopping the simulation (replicas stop, the schema is dropped)…');
        stop.abort();
      });
      const dataRoot = await mkdtemp(join(tmpdir(), 'gridwork-simload-replicas-'));
      const started = Date.now();
      try {
        const report = await runLoadSimulation({
          providers: opts.providers,
          replicas: opts.replicas,
          rate: opts.rate,
          seconds: opts.seconds,
          slots: opts.slots,
          taskMs: opts.taskMs,
          heartbeatMs: opts.heartbeatMs,
          ...(opts.idleSeconds ? { idleMs: opts.idleSeconds * 1000 } : {}),
          databaseUrl,
          ...(natsUrl ? { natsUrl } : {}),
          // Replicas share one data directory: their blobs (as a volume shared by replicas would).
          startReplica: (i, env, heartbeatMs) => startReplicaProcess(i, join(dataRoot, 'coordinator'), env, heartbeatMs, opts.logLevel),
          signal: stop.signal,
          onProgress: (line) => info(`[${((Date.now() - started) / 1000).toFixed(1)} s] ${line}`),
        });
        if (opts.json) printJson(report);
        else for (const line of formatLoadReport(report)) out(line);
        failOnMissedGoals(report.goals);
      } catch (err) {
        if (err instanceof RangeError) throw new CliExit(EXIT_USAGE, err.message);
        throw err;
      } finally {
        await rm(dataRoot, { recursive: true, force: true });
      }
    });
}

/** Exit 1 (GOALS_MISSED, each missed goal named) when any of these goals is missed. */
function failOnMissedGoals(goals: readonly { id: string; met: boolean }[]): void {
  const missed = goals.filter((g) => !g.met).map((g) => g.id);
  if (missed.length > 0) throw new CliExit(EXIT_FAILED, `${missed.length} goal(s) missed: ${missed.join(', ')}`, 'GOALS_MISSED', { missed });
}

/** `gridwork coordinator start` as a child of this process (the same program, the same Node flags); resolves once it listens. */
async function startReplicaProcess(i: number, dataDir: string, env: Record<string, string>, heartbeatMs: number, logLevel: string) {
  const args = [
    ...process.execArgv,
    process.argv[1] as string,
    'coordinator',
    'start',
    '--port',
    '0',
    '--data',
    dataDir,
    '--dev',
    '--no-verification',
    '--heartbeat-ms',
    String(heartbeatMs),
    '--log-level',
    logLevel,
  ];
  const child: ChildProcess = spawn(process.execPath, args, { env: { ...process.env, ...env }, stdio: ['ignore', 'pipe', 'inherit'] });
  const url = await new Promise<string>((resolve, reject) => {
    let pending = '';
    child.stdout?.setEncoding('utf8');
    child.stdout?.on('data', (d: string) => {
      pending += d;
      for (let nl = pending.indexOf('\n'); nl >= 0; nl = pending.indexOf('\n')) {
        const line = pending.slice(0, nl).trim();
        pending = pending.slice(nl + 1);
        if (!line.startsWith('{')) continue;
        try {
          const msg = JSON.parse(line) as { event?: string; url?: string };
          if (msg.event === 'listening' && msg.url) resolve(msg.url);
        } catch {
          // not ours
        }
      }
    });
    child.once('exit', (code) => reject(new Error(`replica ${i} exited (${code}) before listening`)));
  });
  const gone = () => (child.exitCode !== null || child.signalCode !== null ? Promise.resolve() : once(child, 'exit').then(() => undefined));
  return {
    url,
    pid: child.pid as number,
    async kill9() {
      const g = gone();
      child.kill('SIGKILL');
      await g;
    },
    async stop() {
      const g = gone();
      child.kill('SIGTERM');
      const t = setTimeout(() => child.kill('SIGKILL'), 10_000);
      await g;
      clearTimeout(t);
    },
  };
}
