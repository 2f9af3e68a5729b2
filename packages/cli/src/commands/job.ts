import { dirname, resolve } from 'node:path';
import type { JobView } from '@gridwork/protocol';
import { readSpecFile } from '@gridwork/sdk';
import type { Command } from 'commander';
import { requesterClient } from '../context.ts';
import { CliExit, color, EXIT_FAILED, formatDuration, info, isTty, printJson } from '../output.ts';
import { Progress } from '../progress.ts';
import { registerExplainCommand } from './market.ts';

interface CommonOpts {
  coordinator?: string;
  json?: boolean;
}

export function printJobHuman(job: JobView): void {
  const paint = job.state === 'succeeded' ? color.green : job.state === 'failed' ? color.red : (s: string) => s;
  info(`${color.bold(job.name)} ${job.id}: ${paint(job.state)}${job.error ? ` — ${job.error}` : ''}`);
  info(
    `  cost ${job.money.spent} of ${job.money.budget} budget (max ${job.money.maxPerHour}/task-hour), ${job.money.held} held${job.money.lowBalanceSince ? color.yellow(`  LOW BALANCE since ${job.money.lowBalanceSince}: add budget with the SDK or leases stop`) : ''}`,
  );
  if (job.explain && !job.explain.matchable) {
    info(color.yellow('  waiting for capacity:'));
    for (const r of job.explain.reasons) info(`    - ${r}`);
  }
  for (const t of job.tasks) {
    info(
      `  task ${String(t.index).padStart(3)}  ${t.state.padEnd(9)}  ${(t.providerName ?? '-').padEnd(16)} ${formatDuration(t.durationMs).padStart(8)}  exit ${t.exitCode ?? '-'}  ${t.cost.padStart(9)}  ${t.outputDigest ? t.outputDigest.slice(0, 16) : ''}${t.error && t.state !== 'succeeded' ? `  ${color.dim(t.error)}` : ''}`,
    );
  }
}

export function registerJobCommands(program: Command): void {
  const job = program.command('job').description('submit and follow jobs');
  registerExplainCommand(job);
  const withCommon = (c: Command) => c.option('--coordinator <url>', 'coordinator URL (env GRIDWORK_COORDINATOR)').option('--json', 'print JSON on stdout');

  withCommon(job.command('submit <spec>').description('validate a YAML/JSON job spec, upload its bundle and inputs, and submit it'))
    .option('--wait', 'wait for the job to end; exit 0 only if it succeeded')
    .action(async (specPath: string, opts: CommonOpts & { wait?: boolean }) => {
      const spec = await readSpecFile(specPath);
      const client = await requesterClient(opts.coordinator);
      const submitted = await client.submit(spec, {
        baseDir: dirname(resolve(specPath)),
        onUpload: ({ uploaded, total }) => isTty && process.stderr.write(`\ruploading ${uploaded}/${total} files`),
      });
      if (isTty) process.stderr.write('\n');
      info(`submitted ${submitted.id} (${submitted.tasks.length} task${submitted.tasks.length === 1 ? '' : 's'})`);
      if (!opts.wait) {
        if (opts.json) printJson(submitted);
        return;
      }
      const progress = new Progress();
      const final = await client.wait(submitted.id, { onUpdate: (j) => progress.update(j) });
      if (opts.json) printJson(final);
      else printJobHuman(final);
      if (final.state !== 'succeeded') throw new CliExit(EXIT_FAILED, `job ${final.id} ${final.state}${final.error ? `: ${final.error}` : ''}`);
    });

  withCommon(job.command('status <id>').description('show a job and its tasks')).action(async (id: string, opts: CommonOpts) => {
    const view = await (await requesterClient(opts.coordinator)).get(id);
    if (opts.json) printJson(view);
    else printJobHuman(view);
  });

  withCommon(job.command('logs <id>').description("print a job's logs"))
    .option('-f, --follow', 'keep printing new lines until the job ends')
    .action(async (id: string, opts: CommonOpts & { follow?: boolean }) => {
      const client = await requesterClient(opts.coordinator);
      for await (const e of client.logs(id, { follow: opts.follow ?? false })) {
        if (opts.json) process.stdout.write(`${JSON.stringify(e)}\n`);
        else {
          const prefix = color.dim(`[task ${e.taskIndex}${e.stream === 'stdout' ? '' : ` ${e.stream}`}] `);
          process.stdout.write(
            e.data
              .split(/(?<=\n)/)
              .map((l) => prefix + l)
              .join(''),
          );
        }
      }
    });

  withCommon(job.command('result <id>').description("download a job's outputs into DIR/task-<n>/"))
    .option('-o, --output <dir>', 'where to write', '.')
    .action(async (id: string, opts: CommonOpts & { output: string }) => {
      const client = await requesterClient(opts.coordinator);
      const files = await client.results(id, resolve(opts.output));
      if (opts.json) printJson({ files });
      else info(`wrote ${files.length} file(s) under ${resolve(opts.output)}`);
    });

  withCommon(job.command('cancel <id>').description('cancel a job; running tasks are stopped')).action(async (id: string, opts: CommonOpts) => {
    const view = await (await requesterClient(opts.coordinator)).cancel(id);
    if (opts.json) printJson(view);
    else info(`${view.id}: ${view.state}`);
  });

  withCommon(job.command('list').description('your jobs, newest first'))
    .option('--limit <n>', 'how many', '50')
    .action(async (opts: CommonOpts & { limit: string }) => {
      const jobs = await (await requesterClient(opts.coordinator)).list({ limit: Number(opts.limit) });
      if (opts.json) return printJson({ jobs });
      if (jobs.length === 0) info('no jobs yet');
      for (const j of jobs) info(`${j.id}  ${j.state.padEnd(10)} ${String(j.tasksDone).padStart(4)}/${String(j.tasks).padEnd(4)} ${j.name}  ${j.createdAt}`);
    });
}
