import { join, resolve } from 'node:path';
import type { BalanceView } from '@gridwork/protocol';
import { GridworkClient, loadOrCreateIdentity } from '@gridwork/sdk';
import { type FixedRates, fixedPricing, loadRates, ProviderAgent, scriptPricing } from '@gridwork/provider';
import { type Command, Option } from 'commander';
import pino from 'pino';
import { coordinatorUrl, gridworkHome } from '../context.ts';
import { CliExit, EXIT_USAGE, info, printJson } from '../output.ts';
import { printBalance } from './account.ts';
import { intOption, waitForSignal } from './shared.ts';

export function registerProviderCommands(program: Command): void {
  const provider = program.command('provider').description('sell compute: run the provider agent');
  provider
    .command('start')
    .description('connect to a coordinator and run leased tasks until SIGTERM (which drains gracefully)')
    .option('--coordinator <url>', 'coordinator URL (env GRIDWORK_COORDINATOR)')
    .option('--data <dir>', 'agent data directory (holds its key)', join(gridworkHome(), 'provider'))
    .option('--name <name>', 'name shown to requesters')
    .addOption(
      new Option('--runtime <kind>', 'sandbox (bubblewrap) or process (unsandboxed, development only)').choices(['sandbox', 'process']).default('sandbox'),
    )
    .addOption(new Option('--gpus <mode>', 'detect GPUs with nvidia-smi, or offer none').choices(['auto', 'none']).default('auto'))
    .option('--slots <n>', 'tasks run at once (default: CPU cores)', intOption)
    .option('--region <region>', 'placement attribute region')
    .option('--price-cpu <credits>', 'ask per CPU core-hour', '0.02')
    .option('--price-memory <credits>', 'ask per GiB-hour of memory', '0.004')
    .option('--price-gpu <model=credits...>', 'ask per GPU-hour of a model (repeatable), e.g. rtx-4090=0.80')
    .option('--pricing-config <file>', 'JSON file with cpuCoreHour, memoryGiBHour, gpuHour {model: price}, gpuDefault (instead of the --price flags)')
    .option('--pricing-script <file>', 'executable that bids in auctions: reads the order as JSON on stdin, prints a price or "no bid"')
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
        priceCpu: string;
        priceMemory: string;
        priceGpu?: string[];
        pricingConfig?: string;
        pricingScript?: string;
      }) => {
        let rates: FixedRates = { cpuCoreHour: opts.priceCpu, memoryGiBHour: opts.priceMemory, gpuHour: {} };
        for (const pair of opts.priceGpu ?? []) {
          const [model, price] = pair.split('=');
          if (!model || !price) throw new CliExit(EXIT_USAGE, `--price-gpu expects model=credits, got "${pair}"`);
          (rates.gpuHour as Record<string, string>)[model] = price;
        }
        if (opts.pricingConfig) rates = await loadRates(opts.pricingConfig);
        const pricing = opts.pricingScript ? scriptPricing({ script: resolve(opts.pricingScript), rates }) : fixedPricing(rates);
        if (opts.slots === 0) throw new CliExit(EXIT_USAGE, '--slots must be at least 1');
        const agent = await ProviderAgent.create({
          coordinatorUrl: coordinatorUrl(opts.coordinator),
          dataDir: opts.data,
          runtime: opts.runtime,
          gpus: opts.gpus,
          drainTimeoutMs: opts.drainTimeoutMs,
          pricing,
          logger: pino({ level: opts.logLevel }, pino.destination(2)),
          ...(opts.name ? { name: opts.name } : {}),
          ...(opts.slots ? { slots: opts.slots } : {}),
          ...(opts.region ? { attributes: { region: opts.region } } : {}),
        });
        agent.start();
        info(
          `provider ${agent.name} (${agent.id}) started: ${agent.hardware.cpu.cores} cores, ${agent.hardware.memoryGiB} GiB, ${agent.hardware.gpus.length} GPU(s), runtime ${opts.runtime}`,
        );
        process.stdout.write(`${JSON.stringify({ event: 'started', id: agent.id, name: agent.name })}\n`);
        const signal = await waitForSignal();
        info(`${signal}: draining (a second signal stops at once)`);
        process.once('SIGINT', () => process.exit(1));
        process.once('SIGTERM', () => process.exit(1));
        await agent.drain();
      },
    );

  const stakeCommand = (name: string, description: string, call: (c: GridworkClient, amount: string, key?: string) => Promise<BalanceView>) =>
    provider
      .command(`${name} <amount>`)
      .description(description)
      .option('--coordinator <url>', 'coordinator URL (env GRIDWORK_COORDINATOR)')
      .option('--data <dir>', 'agent data directory (holds its key)', join(gridworkHome(), 'provider'))
      .option('--idempotency-key <key>', 'retry-safe key: the same key moves money once (default: random)')
      .option('--json', 'print JSON on stdout')
      .action(async (amount: string, opts: { coordinator?: string; data: string; idempotencyKey?: string; json?: boolean }) => {
        const identity = await loadOrCreateIdentity(join(opts.data, 'provider-key.json'));
        const b = await call(new GridworkClient({ url: coordinatorUrl(opts.coordinator), identity }), amount, opts.idempotencyKey);
        if (opts.json) printJson(b);
        else printBalance(b);
      });
  stakeCommand('stake', "lock credits from this provider's available balance as stake", (c, a, key) => c.stake(a, key ? { idempotencyKey: key } : {}));
  stakeCommand('unstake', 'start unbonding stake (available again after the unbonding delay)', (c, a, key) => c.unstake(a, key ? { idempotencyKey: key } : {}));
  provider
    .command('balance')
    .description("this provider's earnings and stake")
    .option('--coordinator <url>', 'coordinator URL (env GRIDWORK_COORDINATOR)')
    .option('--data <dir>', 'agent data directory (holds its key)', join(gridworkHome(), 'provider'))
    .option('--json', 'print JSON on stdout')
    .action(async (opts: { coordinator?: string; data: string; json?: boolean }) => {
      const identity = await loadOrCreateIdentity(join(opts.data, 'provider-key.json'));
      const b = await new GridworkClient({ url: coordinatorUrl(opts.coordinator), identity }).balance();
      if (opts.json) printJson(b);
      else printBalance(b);
    });
}
