/**
 * `gridwork demo`: a whole Gridwork network on this machine doing real AI work, start to end.
 * An embedded coordinator and four staked providers with different prices and benchmarks — one
 * of them a cheater — and a funded requester that:
 *   1. trains a model (examples/train); its provider is killed midway and the training resumes
 *      on another provider from its last checkpoint;
 *   2. runs batch inference with that model (examples/infer-trained) and with a pretrained OCR
 *      model (examples/infer-pretrained), sharded across providers;
 *   3. serves the model (examples/service) and queries it through the coordinator's ingress;
 *   4. trains on a gang-scheduled two-member cluster (examples/cluster);
 *   5. sees the cheater's made-up results refuted by audit, the cheater slashed, and the refuted
 *      shards re-run by the network inside their jobs on other providers (the requester paying
 *      nothing for the refuted attempts): both jobs succeed with every result verified;
 * then reports per job and per provider. Every claim is checked; any that does not hold fails
 * the command (exit 1), after the report.
 */
import { existsSync, readdirSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { waitForSignal } from '../commands/shared.ts';
import { CliExit, color, EXIT_FAILED, EXIT_USAGE, formatDuration, info, isTty, printJson } from '../output.ts';
import { type Faked, auditStep } from './audit-step.ts';
import { madeUpResults } from './cheater.ts';
import { clusterStep } from './cluster-step.ts';
import { DemoNetwork, PROVIDER_STAKE, ROSTER } from './demo-network.ts';
import { DemoProgress } from './demo-progress.ts';
import { buildReport, printReport } from './demo-report.ts';
import { DemoRun, type StepId } from './demo-run.ts';
import { type InferenceOutcome, inferenceStep } from './inference-step.ts';
import { type ServiceOutcome, serviceStep } from './service-step.ts';
import { CheckpointWatch, type TrainOutcome, trainStep } from './train-step.ts';
import { prepareExamples } from './workloads.ts';

export interface FullDemoOptions {
  data?: string;
  runtime?: 'sandbox' | 'process';
  json?: boolean;
  keep?: boolean;
}

/** What the requester gets from the faucet: enough for every job's budget at once. */
const REQUESTER_FUNDS = '20';
const STEPS = 5;

export async function runFullDemo(opts: FullDemoOptions): Promise<void> {
  const started = Date.now();
  const progress = new DemoProgress(isTty && !opts.json);
  if (opts.data && existsSync(opts.data) && readdirSync(opts.data).length > 0) {
    throw new CliExit(EXIT_USAGE, `--data ${opts.data} is not empty: the full demo starts a new network there (give a new or empty directory)`);
  }
  info(color.bold('Gridwork demo: a coordinator, 4 providers (one of them cheats) and a requester, on this machine'));
  await prepareExamples((line) => progress.note(line));
  const { default: pino } = await import('pino');
  const { GridworkClient, loadOrCreateIdentity } = await import('@gridwork/sdk');
  const dataDir = opts.data ? resolve(opts.data) : await mkdtemp(join(tmpdir(), 'gridwork-demo-'));
  const logger = pino({ level: process.env.GRIDWORK_LOG_LEVEL ?? 'error' }, pino.destination(2));

  const watch = new CheckpointWatch();
  const cheatOn = new Set<string>();
  const faked: Faked[] = [];
  const net = await DemoNetwork.start({
    dataDir,
    logger,
    ...(opts.runtime ? { runtime: opts.runtime } : {}),
    warn: (line) => progress.warn(line),
    resultTamperFor: (p) =>
      p.cheats
        ? madeUpResults(
            () => cheatOn,
            (jobId, taskIndex) => faked.push({ jobId, taskIndex }),
          )
        : undefined,
    onCheckpoint: (provider, jobId, leaseId, step) => watch.seen(provider, jobId, leaseId, step),
  });
  // Ctrl-C stops the network and removes its temporary directory instead of leaving them behind.
  const interrupted = () => {
    info(color.yellow('interrupted: stopping the demo network'));
    const stop = async () => {
      await Promise.race([net.close(), new Promise((r) => setTimeout(r, 10_000))]);
      if (!opts.data) await rm(dataDir, { recursive: true, force: true });
    };
    void stop().finally(() => process.exit(130));
  };
  process.once('SIGINT', interrupted);
  try {
    progress.note(`coordinator at ${net.url} (PGlite in ${join(dataDir, 'coordinator')}); web console ${net.url}/`);
    for (const profile of ROSTER) await net.addProvider(profile);
    for (const p of net.providers) {
      progress.note(
        `${p.profile.name}: asks ${p.profile.cpuCoreHour}/core-h, benchmark ${p.profile.cpuMopsPerCore} Mops/core, staked ${PROVIDER_STAKE} credits${p.profile.cheats ? color.red(' — cheats: makes up the results of batch jobs') : ''}`,
      );
    }
    const identity = await loadOrCreateIdentity(join(dataDir, 'requester-key.json'));
    const requester = new GridworkClient({ url: net.url, identity });
    await requester.deposit(REQUESTER_FUNDS, { idempotencyKey: 'demo-faucet-requester' });
    progress.note(
      `requester funded with ${REQUESTER_FUNDS} credits from the dev faucet (key ${join(dataDir, 'requester-key.json')}: import it on the console's Key page to follow along)`,
    );
    progress.note(
      `runtime: ${net.runtime === 'sandbox' ? 'bubblewrap sandboxes' : color.yellow('process (UNSANDBOXED)')}; every new provider is audited until one audit of its results passes`,
    );

    const run = new DemoRun(net, requester, identity, progress, dataDir);
    const step = async <T>(n: number, id: StepId, title: string, body: () => Promise<T>): Promise<T | null> => {
      progress.heading(n, STEPS, title);
      const t0 = Date.now();
      try {
        return await body();
      } catch (err) {
        run.claim(id, title, false, (err as Error).message);
        return null;
      } finally {
        run.steps.push({ step: id, title, elapsedMs: Date.now() - t0 });
        progress.note(color.dim(`(${formatDuration(Date.now() - t0)})`));
      }
    };
    const skipped = (n: number, id: StepId, title: string, why: string) => {
      progress.heading(n, STEPS, title);
      run.claim(id, title, false, `skipped: ${why}`);
    };

    const train: TrainOutcome | null = await step(1, 'train', 'Train a model, and kill its provider midway', () => trainStep(run, watch));
    let inference: InferenceOutcome | null = null;
    let service: ServiceOutcome | null = null;
    if (train) {
      const model = train.modelFile;
      inference = await step(2, 'inference', 'Batch inference: the trained model, and a pretrained OCR model', () =>
        inferenceStep(run, model, (id) => cheatOn.add(id)),
      );
      service = await step(3, 'service', 'Serve the trained model behind the coordinator ingress', () => serviceStep(run, model));
    } else {
      skipped(2, 'inference', 'Batch inference', 'it needs the model of step 1');
      skipped(3, 'service', 'Serve the trained model', 'it needs the model of step 1');
    }
    await step(4, 'cluster', 'Data-parallel training on a gang-scheduled cluster', () => clusterStep(run));
    if (inference) {
      const inf = inference;
      await step(5, 'audit', 'The cheater caught by audit and slashed', () => auditStep(run, inf, faked, service));
    } else skipped(5, 'audit', 'The cheater caught by audit', 'it needs the inference jobs of step 2');

    info('');
    const report = await buildReport(run, net, { started, funded: REQUESTER_FUNDS, dataDir: opts.data ? dataDir : null });
    if (opts.json) printJson(report);
    else printReport(report);
    if (!opts.data) info(color.dim('(the results were in a temporary directory, removed now: use --data DIR to keep them)'));
    process.off('SIGINT', interrupted);
    if (opts.keep) {
      info(`the network keeps running; web console at ${net.url}/ — press Ctrl-C to stop`);
      await waitForSignal();
    }
    if (!report.ok) {
      const failed = report.claims.filter((c) => !c.ok);
      throw new CliExit(EXIT_FAILED, `the demo did not do all it claims: ${failed.map((c) => `${c.claim} (${c.detail})`).join('; ')}`, 'DEMO_FAILED');
    }
  } finally {
    process.off('SIGINT', interrupted);
    await net.close();
    if (!opts.data) await rm(dataDir, { recursive: true, force: true });
  }
}
