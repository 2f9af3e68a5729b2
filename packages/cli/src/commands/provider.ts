import { join } from 'node:path';
import { ProviderAgent } from '@gridwork/provider';
import { type Command, Option } from 'commander';
import pino from 'pino';
import { coordinatorUrl, gridworkHome } from '../context.ts';
import { CliExit, EXIT_USAGE, info } from '../output.ts';
import { intOption, waitForSignal } from './shared.ts';

export function registerProviderCommands(program: Command): void {
  const provider = program.command('provider').description('sell compute: run the provider agent');
  provider
    .command('start')
    .description('connect to a coordinator and run leased tasks until SIGTERM (which drains gracefully)')
    .option('--coordinator <url>', 'coordinator URL (env GRIDWORK_COORDINATOR)')
    .option('--data <dir>', 'agent data directory (holds its key)', join(gridworkHome(), 'provider'))
    .option('--name <name>', 'name shown to requesters')
    .addOption(new Option('--runtime <kind>', 'sandbox (bubblewrap) or process (unsandboxed, development only)').choices(['sandbox', 'process']).default('sandbox'))
    .addOption(new Option('--gpus <mode>', 'detect GPUs with nvidia-smi, or offer none').choices(['auto', 'none']).default('auto'))
    .option('--slots <n>', 'tasks run at once (default: CPU cores)', intOption)
    .option('--region <region>', 'placement attribute region')
    .option('--drain-timeout-ms <ms>', 'how long SIGTERM waits for running tasks before handing them back', intOption, 60_000)
    .option('--log-level <level>', 'trace|debug|info|warn|error', 'info')
    .action(
      async (opts: {
        coordinator?: string;
        data: string;
        name?: string;
        runtime: 'sandbox' | 'process';
        gpus: 'auto' | 'none';
        slots?: number;
        region?: string;
        drainTimeoutMs: number;
        logLevel: string;
      }) => {
        if (opts.slots === 0) throw new CliExit(EXIT_USAGE, '--slots must be at least 1');
        const agent = await ProviderAgent.create({
          coordinatorUrl: coordinatorUrl(opts.coordinator),
          dataDir: opts.data,
          runtime: opts.runtime,
          gpus: opts.gpus,
          drainTimeoutMs: opts.drainTimeoutMs,
          logger: pino({ level: opts.logLevel }, pino.destination(2)),
          ...(opts.name ? { name: opts.name } : {}),
          ...(opts.slots ? { slots: opts.slots } : {}),
          ...(opts.region ? { attributes: { region: opts.region } } : {}),
        });
        agent.start();
        info(`provider ${agent.name} (${agent.id}) started: ${agent.hardware.cpu.cores} cores, ${agent.hardware.memoryGiB} GiB, ${agent.hardware.gpus.length} GPU(s), runtime ${opts.runtime}`);
        process.stdout.write(`${JSON.stringify({ event: 'started', id: agent.id, name: agent.name })}\n`);
        const signal = await waitForSignal();
        info(`${signal}: draining (a second signal stops at once)`);
        process.once('SIGINT', () => process.exit(1));
        process.once('SIGTERM', () => process.exit(1));
        await agent.drain();
      },
    );
}
