/**
 * `gridwork demo --quick`: the single-job demo — an embedded coordinator (PGlite), N provider
 * agents running tasks in bubblewrap sandboxes, and a requester submitting one job (the sharded
 * embed-corpus example, or `--spec FILE`) — then a summary of who ran what. The whole demo is
 * full-demo.ts.
 */
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import type { Coordinator } from '@gridwork/coordinator';
import type { ProviderAgent } from '@gridwork/provider';
import type pino from 'pino';
import { printExplanation } from '../commands/job.ts';
import { waitForSignal } from '../commands/shared.ts';
import { CliExit, color, EXIT_FAILED, EXIT_USAGE, formatDuration, info, printJson } from '../output.ts';
import { Progress } from '../progress.ts';

export const QUICK_EXAMPLE = fileURLToPath(new URL('../../../../examples/embed-corpus/job.yaml', import.meta.url));

export interface QuickDemoOptions {
  providers: number;
  json?: boolean;
  data?: string;
  spec: string;
  runtime?: 'sandbox' | 'process';
  keep?: boolean;
}

/** Demo providers ask different prices, so the market has something to choose between. */
/** Credits each quick-demo provider stakes (checks ask at least the 1-credit minimum slash). */
const PROVIDER_STAKE = '2';

async function createProvider(coordinator: Coordinator, dataDir: string, i: number, runtime: 'sandbox' | 'process', logger: pino.Logger) {
  const { formatCredits } = await import('@gridwork/protocol');
  const { fixedPricing, ProviderAgent } = await import('@gridwork/provider');
  const cpuCoreHour = formatCredits(BigInt(2_500_000 + 500_000 * i)); // 3.00, 3.50, 4.00 … per core-hour
  return ProviderAgent.create({
    coordinatorUrl: coordinator.url,
    dataDir,
    name: `provider-${i}`,
    runtime,
    gpus: 'auto',
    slots: 2,
    logger,
    pricing: fixedPricing({ cpuCoreHour, memoryGiBHour: '0.01' }),
  });
}

export async function runQuickDemo(opts: QuickDemoOptions): Promise<void> {
  if (opts.providers < 1 || opts.providers > 32) throw new CliExit(EXIT_USAGE, '--providers must be between 1 and 32');
  const started = Date.now();
  const { startCoordinator } = await import('@gridwork/coordinator');
  const { GridworkError } = await import('@gridwork/protocol');
  const { GridworkClient, loadOrCreateIdentity, readSpecFile } = await import('@gridwork/sdk');
  const { default: pino } = await import('pino');
  const dataDir = opts.data ? resolve(opts.data) : await mkdtemp(join(tmpdir(), 'gridwork-demo-'));
  const logger = pino({ level: process.env.GRIDWORK_LOG_LEVEL ?? 'error' }, pino.destination(2));
  const spec = await readSpecFile(opts.spec);
  const step = (s: string) => !opts.json && info(`${color.cyan('›')} ${s}`);

  step(`starting coordinator (PGlite in ${join(dataDir, 'coordinator')})`);
  const coordinator = await startCoordinator({
    dataDir: join(dataDir, 'coordinator'),
    port: 0,
    logger,
    heartbeatIntervalMs: 1000,
    dev: true,
    economics: { meteringIntervalMs: 1000 },
    // An audit re-runs a task on another provider: with one provider none could run, and
    // its results would stay pending until the checks time out.
    ...(opts.providers < 2 ? { verification: { enabled: false } } : {}),
  });
  step(`web console: ${color.bold(`${coordinator.url}/`)} (import ${join(dataDir, 'requester-key.json')} on its Key page to see the demo's job and money)`);
  const providers: ProviderAgent[] = [];
  try {
    let runtime = opts.runtime ?? 'sandbox';
    for (let i = 1; i <= opts.providers; i++) {
      const args = [coordinator, join(dataDir, `provider-${i}`), i, runtime, logger] as const;
      let agent: ProviderAgent;
      try {
        agent = await createProvider(...args);
      } catch (err) {
        if (!(err instanceof GridworkError && err.code === 'SANDBOX_UNAVAILABLE') || opts.runtime) throw err;
        info(color.yellow(`! bubblewrap sandbox unavailable (${err.message}); the demo falls back to the UNSANDBOXED process runtime`));
        runtime = 'process';
        agent = await createProvider(coordinator, join(dataDir, `provider-${i}`), i, runtime, logger);
      }
      // Staked from the dev faucet: only a provider with stake at risk may audit the others.
      const account = new GridworkClient({ url: coordinator.url, identity: await loadOrCreateIdentity(join(dataDir, `provider-${i}`, 'provider-key.json')) });
      await account.deposit(PROVIDER_STAKE, { idempotencyKey: `demo-faucet-provider-${i}` });
      await account.stake(PROVIDER_STAKE, { idempotencyKey: `demo-stake-provider-${i}` });
      agent.start();
      providers.push(agent);
    }
    step(
      `started ${providers.length} providers (${runtime} runtime, 2 slots each) at ${coordinator.url}: ${providers.map((p) => `${p.name} asks ${p.asks.cpuCoreHour}/core-h`).join(', ')}`,
    );
    if (providers.length < 2) step('one provider: results are not audited (an audit re-runs a task on another provider)');

    const client = new GridworkClient({ url: coordinator.url, identity: await loadOrCreateIdentity(join(dataDir, 'requester-key.json')) });
    const funded = await client.deposit('10', { idempotencyKey: 'demo-faucet' });
    step(`requester funded from the dev faucet: ${funded.available} credits`);
    // Say so at once when the demo's providers cannot run the spec (a max price below their
    // asks, more cores than they have) instead of waiting for capacity that never comes.
    const fit = await client.explain(spec);
    if (!fit.matchable) {
      if (!opts.json) printExplanation(fit, info);
      const priceOnly = fit.excluded.price > 0 && fit.lowestAsk !== null;
      throw new CliExit(
        EXIT_FAILED,
        priceOnly
          ? `the demo providers ask more than the spec's max price: the lowest ask for this order is ${fit.lowestAsk}/h, the spec allows ${fit.maxPerHour}/h (raise price.maxPerHour in ${opts.spec})`
          : `the demo providers cannot run ${opts.spec}: ${fit.reasons.join('; ')}`,
        'NO_MATCH',
        fit,
      );
    }
    const submitted = await client.submit(spec, { baseDir: dirname(opts.spec) });
    step(`submitted ${spec.name} as ${submitted.id}: ${submitted.tasks.length} tasks`);
    const progress = opts.json ? undefined : new Progress();
    let job = await client.wait(submitted.id, { onUpdate: (j) => progress?.update(j) });
    if (job.state === 'verifying') {
      // New providers are on probation: another provider re-runs each of their tasks, and
      // earnings are paid once the audit agrees. The demo shows that through to the end.
      step('every result is in; other providers are auditing them (new providers are on probation) before the earnings are paid');
      job = await client.wait(submitted.id, { until: 'end', onUpdate: (j) => progress?.update(j) });
    }
    const resultsDir = join(dataDir, 'results');
    const files = job.state === 'succeeded' ? await client.results(job.id, resultsDir) : [];

    // The example writes summary.json per task; add them up when present.
    const totals = { docs: 0, positive: 0, negative: 0 };
    for (const f of files.filter((p) => p.endsWith('summary.json'))) {
      const s = JSON.parse(await readFile(f, 'utf8')) as Partial<typeof totals>;
      totals.docs += s.docs ?? 0;
      totals.positive += s.positive ?? 0;
      totals.negative += s.negative ?? 0;
    }
    const earnings = await Promise.all(
      providers.map(async (p) => ({
        name: p.name,
        id: p.id,
        earned: (await p.balance()).available,
      })),
    );
    const after = await client.balance();
    const fees = await coordinator.protocolBalances();
    const summary = {
      ok: job.state === 'succeeded',
      job: { id: job.id, name: job.name, state: job.state, error: job.error },
      coordinator: coordinator.url,
      runtime,
      providers: earnings,
      money: { budget: job.money.budget, spent: job.money.spent, requesterBalance: after.available, protocolFees: fees.fees, reserve: fees.reserve },
      tasks: job.tasks.map((t) => ({
        index: t.index,
        state: t.state,
        provider: t.providerName,
        durationMs: t.durationMs,
        exitCode: t.exitCode,
        attempts: t.attempts,
        pricePerHour: t.pricePerHour,
        cost: t.cost,
        outputDigest: t.outputDigest,
        verification: t.verification?.state ?? null,
        audits: t.verification?.checks.filter((c) => c.kind === 'audit').length ?? 0,
      })),
      results: { files: files.length, dir: opts.data ? resultsDir : null, ...totals },
      elapsedMs: Date.now() - started,
    };
    if (opts.json) printJson(summary);
    else {
      info('');
      info(color.bold(`job ${job.id} ${job.state === 'succeeded' ? color.green(job.state) : color.red(job.state)}${job.error ? `: ${job.error}` : ''}`));
      info(`  ${'task'.padEnd(5)} ${'provider'.padEnd(12)} ${'duration'.padStart(9)}  exit  ${'price/h'.padStart(7)}  ${'cost'.padStart(9)}  output digest`);
      for (const t of summary.tasks) {
        info(
          `  ${String(t.index).padEnd(5)} ${(t.provider ?? '-').padEnd(12)} ${formatDuration(t.durationMs).padStart(9)}  ${String(t.exitCode ?? '-').padStart(4)}  ${(t.pricePerHour ?? '-').padStart(7)}  ${t.cost.padStart(9)}  ${t.outputDigest?.slice(0, 16) ?? '-'}`,
        );
      }
      info(`  job cost ${job.money.spent} of a ${job.money.budget} budget; requester balance now ${after.available} (the unspent budget came back)`);
      info(
        `  provider earnings (after the 2% fee and 0.25% reserve): ${earnings.map((e) => `${e.name} ${e.earned}`).join(', ')}; protocol fees ${fees.fees}, reserve ${fees.reserve}`,
      );
      if (totals.docs > 0) info(`  embedded ${totals.docs} documents: ${totals.positive} positive, ${totals.negative} negative sentiment`);
      info(
        `  ${files.length} output files${opts.data ? ` in ${resultsDir}` : ' (temporary; use --data DIR to keep them)'}; ${formatDuration(summary.elapsedMs)} in all`,
      );
    }
    if (opts.keep) {
      info(`the network keeps running; web console at ${coordinator.url}/ — press Ctrl-C to stop`);
      await waitForSignal();
    }
    if (!summary.ok) throw new CliExit(EXIT_FAILED, `demo job ${job.state}${job.error ? `: ${job.error}` : ''}`);
  } finally {
    await Promise.all(providers.map((p) => p.close()));
    await coordinator.close();
    if (!opts.data) await rm(dataDir, { recursive: true, force: true });
  }
}
