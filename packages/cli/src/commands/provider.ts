/** `gridwork provider …`: run the agent; stake, unstake and balance of a provider's account; its trust record (status). */
import { access } from 'node:fs/promises';
import { join, resolve } from 'node:path';
import type { BalanceView } from '@gridwork/protocol';
import type { GridworkClient, Identity, ProviderStatus } from '@gridwork/sdk';
import type { FixedRates } from '@gridwork/provider';
import { type Command, Option } from 'commander';
import { COORDINATOR_HELP, coordinatorUrls, gridworkHome } from '../context.ts';
import { CliExit, color, EXIT_USAGE, formatDuration, info, isTty, out, outColor, printJson, relativeTime, table } from '../output.ts';
import { printBalance } from './account.ts';
import { intOption, waitForSignal } from './shared.ts';

/** The provider's key, which must already exist: reading a balance must not invent a new provider. */
async function existingProviderIdentity(dataDir: string, dataFlagGiven: boolean): Promise<Identity> {
  const file = join(dataDir, 'provider-key.json');
  try {
    await access(file);
  } catch {
    throw new CliExit(
      EXIT_USAGE,
      `no provider key at ${file} (looked in ${dataFlagGiven ? 'the --data directory' : `the default data directory ${dataDir}; pass --data DIR for another`}). A provider's key is created by \`gridwork provider start\`.`,
      'NO_PROVIDER_KEY',
    );
  }
  const { loadOrCreateIdentity } = await import('@gridwork/sdk');
  return loadOrCreateIdentity(file);
}

/**
 * Says at once when the coordinator cannot be reached, instead of "started" and silence.
 * node:http, not fetch: fetch would load undici's WebAssembly parser into a daemon for one probe.
 */
async function probeCoordinator(url: string): Promise<void> {
  const { get } = (url.startsWith('https:') ? await import('node:https') : await import('node:http')) as typeof import('node:http');
  const answer = await new Promise<{ status: number; body: string } | { error: unknown }>((resolve) => {
    const req = get(new URL('/healthz', `${url}/`), { timeout: 5000 }, (res) => {
      let body = '';
      res.setEncoding('utf8');
      res.on('data', (d: string) => {
        body += d;
      });
      res.on('end', () => resolve({ status: res.statusCode ?? 0, body }));
    });
    req.on('timeout', () => req.destroy(Object.assign(new Error('timed out'), { code: 'ETIMEDOUT' })));
    req.on('error', (error) => resolve({ error }));
  });
  if ('error' in answer) {
    const { CoordinatorUnreachableError, unreachableReason } = await import('@gridwork/sdk');
    const e = new CoordinatorUnreachableError(url, unreachableReason(answer.error), { cause: answer.error });
    info(color.yellow(`! ${e.message}; the agent keeps retrying in the background`));
    return;
  }
  let ok = false;
  try {
    const body = JSON.parse(answer.body) as { ok?: unknown; version?: unknown };
    ok = answer.status === 200 && body.ok === true && typeof body.version === 'string';
  } catch {}
  if (!ok) info(color.yellow(`! ${url} does not answer as a Gridwork coordinator (GET /healthz: HTTP ${answer.status}); the agent keeps trying`));
}

const defaultData = () => join(gridworkHome(), 'provider');

/** 1 → "100%", 0.0123 → "1.23%", 0.5 → "50%". */
export function percent(share: number): string {
  return `${Number((share * 100).toFixed(2))}%`;
}

export function printProviderStatus(s: ProviderStatus): void {
  const state = s.state === 'online' ? outColor.green(s.state) : s.state === 'offline' ? outColor.dim(s.state) : outColor.yellow(s.state);
  out(`${outColor.bold(s.name)} ${s.id}: ${state}`);
  const eligibility = s.eligible
    ? 'eligible for work'
    : outColor.red(`NOT eligible for work: ${s.challenges.failedInARow} capacity challenges failed in a row; it gets work again once it passes one`);
  const challenges = s.challenges.passed + s.challenges.failed;
  const rows: [string, string][] = [
    ['stake', `${s.stake} credits bonded, ${s.unbonding} unbonding, ${s.slashed} slashed`],
    ['reputation', `${s.reputation.toFixed(3)}, ${eligibility}`],
    [
      'audits',
      `${s.audits.passed} passed, ${s.audits.failed} failed, ${s.audits.streak} in a row${s.audits.lastPassedAt ? `, last passed ${relativeTime(s.audits.lastPassedAt)}` : ''}`,
    ],
    ['leases', `${s.leases.completed} completed, ${s.leases.faulted} faulted, ${s.faultsProven} proven faults`],
    [
      'challenges',
      challenges === 0
        ? `none yet (one every ${formatDuration(s.challenges.meanIntervalMs)} on average)`
        : `${s.challenges.passed} passed, ${s.challenges.failed} failed (${s.challenges.failedInARow} in a row), ${percent(s.challenges.share)} of its time (${formatDuration(s.challenges.busyMs)} so far)`,
    ],
  ];
  const width = Math.max(...rows.map(([k]) => k.length));
  for (const [k, v] of rows) out(`  ${k.padEnd(width)}  ${v}`);
  out();
  if (s.recentChecks.length === 0) {
    out('recent checks: none yet');
    return;
  }
  out('recent checks:');
  const checkRows = s.recentChecks.map((c) => [c.id, c.kind, c.role, c.state, c.outcome ?? '-', relativeTime(c.createdAt), c.detail ?? '']);
  for (const l of table(['id', 'kind', 'role', 'state', 'outcome', 'created', 'detail'], checkRows)) out(`  ${l}`);
}

export function registerProviderCommands(program: Command): void {
  const provider = program.command('provider').description('sell compute: run the provider agent; its stake, balance and trust record');
  provider
    .command('start')
    .description('connect to a coordinator and run leased tasks until SIGTERM (which drains gracefully)')
    .option('--coordinator <urls>', COORDINATOR_HELP)
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
    .option('--max-log-mib <n>', "task output logged per lease (MiB); beyond it the log ends with a truncation line (default 8)", intOption)
    .option('--log-level <level>', 'trace|debug|info|warn|error', 'info')
    .action(
      async (opts: {
        coordinator?: string;
        profile?: string;
        data: string;
        name?: string;
        runtime: 'sandbox' | 'process';
        gpus: 'auto' | 'none';
        slots?: number;
        region?: string;
        drainTimeoutMs: number;
        maxLogMib?: number;
        logLevel: string;
        priceCpu: string;
        priceMemory: string;
        priceGpu?: string[];
        pricingConfig?: string;
        pricingScript?: string;
      }) => {
        const { fixedPricing, loadRates, ProviderAgent, scriptPricing } = await import('@gridwork/provider');
        const { default: pino } = await import('pino');
        const urls = await coordinatorUrls(opts);
        let rates: FixedRates = { cpuCoreHour: opts.priceCpu, memoryGiBHour: opts.priceMemory, gpuHour: {} };
        for (const pair of opts.priceGpu ?? []) {
          const [model, price] = pair.split('=');
          if (!model || !price) throw new CliExit(EXIT_USAGE, `--price-gpu expects model=credits, got "${pair}"`);
          (rates.gpuHour as Record<string, string>)[model] = price;
        }
        if (opts.pricingConfig) rates = await loadRates(opts.pricingConfig);
        const pricing = opts.pricingScript ? scriptPricing({ script: resolve(opts.pricingScript), rates }) : fixedPricing(rates);
        if (opts.slots === 0) throw new CliExit(EXIT_USAGE, '--slots must be at least 1');
        if (opts.maxLogMib === 0) throw new CliExit(EXIT_USAGE, '--max-log-mib must be at least 1');
        const agent = await ProviderAgent.create({
          coordinatorUrl: urls,
          dataDir: opts.data,
          runtime: opts.runtime,
          gpus: opts.gpus,
          drainTimeoutMs: opts.drainTimeoutMs,
          pricing,
          logger: pino({ level: opts.logLevel }, isTty ? (await import('../log-format.ts')).prettyStderr : pino.destination(2)),
          ...(opts.name ? { name: opts.name } : {}),
          ...(opts.slots ? { slots: opts.slots } : {}),
          ...(opts.maxLogMib ? { maxLogBytes: opts.maxLogMib * 1024 * 1024 } : {}),
          ...(opts.region ? { attributes: { region: opts.region } } : {}),
        });
        await Promise.all(urls.map(probeCoordinator));
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

  /** A client acting as this provider's account (its existing key: never a new one). */
  const providerClient = async (opts: { coordinator?: string; profile?: string; data?: string }): Promise<GridworkClient> => {
    const identity = await existingProviderIdentity(opts.data ?? defaultData(), opts.data !== undefined);
    const { GridworkClient } = await import('@gridwork/sdk');
    return new GridworkClient({ url: await coordinatorUrls(opts), identity });
  };
  const stakeCommand = (name: string, description: string, call: (c: GridworkClient, amount: string, key?: string) => Promise<BalanceView>) =>
    provider
      .command(`${name} <amount>`)
      .description(description)
      .option('--coordinator <urls>', COORDINATOR_HELP)
      .option('--data <dir>', 'agent data directory (holds its key; default $GRIDWORK_HOME/provider)')
      .option('--idempotency-key <key>', 'retry-safe key: the same key moves money once (default: random)')
      .option('--json', 'print JSON on stdout')
      .action(async (amount: string, opts: { coordinator?: string; profile?: string; data?: string; idempotencyKey?: string; json?: boolean }) => {
        const b = await call(await providerClient(opts), amount, opts.idempotencyKey);
        if (opts.json) printJson(b);
        else printBalance(b);
      });
  stakeCommand('stake', "lock credits from this provider's available balance as stake", (c, a, key) => c.stake(a, key ? { idempotencyKey: key } : {}));
  stakeCommand('unstake', 'start unbonding stake (available again after the unbonding delay)', (c, a, key) => c.unstake(a, key ? { idempotencyKey: key } : {}));
  provider
    .command('balance')
    .description("this provider's earnings and stake")
    .option('--coordinator <urls>', COORDINATOR_HELP)
    .option('--data <dir>', 'agent data directory (holds its key; default $GRIDWORK_HOME/provider)')
    .option('--json', 'print JSON on stdout')
    .action(async (opts: { coordinator?: string; profile?: string; data?: string; json?: boolean }) => {
      const b = await (await providerClient(opts)).balance();
      if (opts.json) printJson(b);
      else printBalance(b);
    });
  provider
    .command('status')
    .description('this provider as the coordinator sees it: stake, unbonding, slashed, reputation, eligibility, past audits, challenges, recent checks')
    .option('--coordinator <urls>', COORDINATOR_HELP)
    .option('--data <dir>', 'agent data directory (holds its key; default $GRIDWORK_HOME/provider)')
    .option('--json', 'print JSON on stdout')
    .action(async (opts: { coordinator?: string; profile?: string; data?: string; json?: boolean }) => {
      const s = await (await providerClient(opts)).providerStatus();
      if (opts.json) printJson(s);
      else printProviderStatus(s);
    });
}
