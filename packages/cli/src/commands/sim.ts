/**
 * `gridwork sim trust`: the trust layers against cheating providers, measured on the real
 * coordinator in this process (see packages/sim). The simulation, and the coordinator with it,
 * loads only when the command runs.
 */
import { type Command, InvalidArgumentError } from 'commander';
import { CliExit, EXIT_FAILED, EXIT_USAGE, info, out, printJson } from '../output.ts';
import { intOption, waitForSignal } from './shared.ts';

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
      const missed = report.goals.filter((g) => g.exit && !g.met);
      if (missed.length > 0) {
        throw new CliExit(EXIT_FAILED, `${missed.length} goal(s) missed: ${missed.map((g) => g.id).join(', ')}`, 'GOALS_MISSED', {
          missed: missed.map((g) => g.id),
        });
      }
    });
}
