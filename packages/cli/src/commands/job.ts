/** `gridwork job …`: submit, wait, status, logs, result, dispute, cancel, list, top-up, explain. */
import { dirname, resolve } from 'node:path';
import type { JobView, MatchExplanation, TaskView } from '@gridwork/protocol';
import type { GridworkClient } from '@gridwork/sdk';
import type { Command } from 'commander';
import { type ClientFlags, requesterClient, withClientOptions } from '../context.ts';
import {
  CliExit,
  color,
  EXIT_FAILED,
  EXIT_LOST,
  EXIT_USAGE,
  formatDuration,
  info,
  isTty,
  out,
  outColor,
  parseDuration,
  printJson,
  relativeTime,
  table,
} from '../output.ts';
import { Progress, waitingReasons } from '../progress.ts';

interface CommonOpts extends ClientFlags {
  json?: boolean;
}

interface WaitFlags {
  giveUpAfter?: string;
  untilVerified?: boolean;
}

/** How long a wait keeps trying without contact before exiting 3. */
export const DEFAULT_GIVE_UP = '15m';

const giveUpOption = (c: Command) =>
  c.option(
    '--give-up-after <duration>',
    `stop waiting after this long without contact with the coordinator and exit ${EXIT_LOST} (the job keeps running); e.g. 90s, 15m, 2h (env GRIDWORK_GIVE_UP_AFTER; default ${DEFAULT_GIVE_UP})`,
  );

const untilVerifiedOption = (c: Command) =>
  c.option(
    '--until-verified',
    'wait until every result is verified (the audit window has closed), not only until the results are in; a result an audit or dispute proves wrong fails the job (exit 1)',
  );

/** "12:03" today, "2026-05-01 12:03" another day: when a pending result settles, in local time. */
export function clockTime(iso: string, now = new Date()): string {
  const t = new Date(iso);
  if (Number.isNaN(t.getTime())) return iso;
  const two = (n: number) => String(n).padStart(2, '0');
  const hm = `${two(t.getHours())}:${two(t.getMinutes())}`;
  const sameDay = t.getFullYear() === now.getFullYear() && t.getMonth() === now.getMonth() && t.getDate() === now.getDate();
  return sameDay ? hm : `${t.getFullYear()}-${two(t.getMonth() + 1)}-${two(t.getDate())} ${hm}`;
}

/** A task's verification for people: `pending until 12:03`, `verified`, `failed`, `disputed`, or `-` (no result, or not verified). */
export function verificationText(t: Pick<TaskView, 'verification'>): string {
  const v = t.verification;
  if (!v) return '-';
  if (v.state === 'pending') return v.pendingUntil ? `pending until ${clockTime(v.pendingUntil)}` : 'pending';
  return v.state;
}

/** Tasks whose results are still pending verification (or disputed), and the latest time one of them settles. */
export function pendingVerification(job: JobView): { tasks: number[]; until: string | null } {
  const pending = job.tasks.filter((t) => t.verification?.state === 'pending' || t.verification?.state === 'disputed');
  const times = pending.map((t) => t.verification?.pendingUntil).filter((x): x is string => typeof x === 'string');
  const until = times.length === 0 ? null : times.reduce((a, b) => (Date.parse(a) >= Date.parse(b) ? a : b));
  return { tasks: pending.map((t) => t.index), until };
}

/** One line on a verifying job: its results are in, but an audit or a dispute may still fail it. */
function verifyingNote(job: JobView): string {
  const { tasks, until } = pendingVerification(job);
  const which = tasks.length === job.tasks.length ? 'all results' : `the results of ${tasks.length} task${tasks.length === 1 ? '' : 's'}`;
  return `${which} are in but pending verification${until ? ` until ${clockTime(until)}` : ''}: an audit or a dispute may still find one wrong (dispute one with: gridwork job dispute ${job.id} TASK)`;
}

export function giveUpMs(flags: WaitFlags): number {
  const text = flags.giveUpAfter ?? process.env.GRIDWORK_GIVE_UP_AFTER ?? DEFAULT_GIVE_UP;
  return parseDuration(text, '--give-up-after');
}

export function printJobHuman(job: JobView): void {
  const paint =
    job.state === 'succeeded' ? outColor.green : job.state === 'failed' ? outColor.red : job.state === 'verifying' ? outColor.cyan : (s: string) => s;
  out(`${outColor.bold(job.name)} ${job.id}: ${paint(job.state)}${job.error ? ` — ${job.error}` : ''}`);
  out(`  created ${relativeTime(job.createdAt)}, updated ${relativeTime(job.updatedAt)}`);
  out(
    `  cost ${job.money.spent} of ${job.money.budget} budget (max ${job.money.maxPerHour}/task-hour), ${job.money.held} held${job.money.lowBalanceSince ? outColor.yellow(`  LOW BALANCE since ${relativeTime(job.money.lowBalanceSince)}: add budget with \`gridwork job top-up ${job.id} AMOUNT\` or leases stop`) : ''}`,
  );
  if (job.state === 'verifying') out(`  ${verifyingNote(job)}`);
  const reasons = waitingReasons(job);
  if (reasons.length > 0) {
    out(outColor.yellow('  waiting for capacity:'));
    for (const r of reasons) out(`    - ${r}`);
  }
  const paintVerified = (text: string) =>
    text === 'verified' ? outColor.green(text) : text === 'failed' ? outColor.red(text) : text === 'disputed' ? outColor.yellow(text) : text;
  const rows = job.tasks.map((t) => [
    String(t.index),
    t.state,
    t.providerName ?? '-',
    formatDuration(t.durationMs),
    String(t.exitCode ?? '-'),
    t.cost,
    t.outputDigest ? t.outputDigest.slice(0, 16) : '-',
    paintVerified(verificationText(t)),
    t.error && t.state !== 'succeeded' ? t.error : '',
  ]);
  const headers = ['task', 'state', 'provider', 'duration', 'exit', 'cost', 'output', 'verified', 'error'];
  for (const l of table(headers, rows, { right: ['task', 'duration', 'exit', 'cost'] })) out(`  ${l}`);
}

export function printExplanation(e: MatchExplanation, write: (line: string) => void = out): void {
  write(e.matchable ? outColor.green('matches now') : outColor.yellow('does not match now'));
  write(`  providers: ${e.providers.total} known, ${e.providers.online} online, ${e.candidates} can take it`);
  for (const r of e.reasons) write(`  - ${r}`);
  if (e.lowestAsk) write(`  lowest ask for this order: ${e.lowestAsk}/h (max price ${e.maxPerHour}/h)`);
  if (e.busyUntil) write(`  busy capacity frees up by ${e.busyUntil} at the latest`);
  // Older coordinators do not name their best candidates.
  const best = e.best ?? [];
  if (best.length > 0) write(`  best ranked: ${best.map((c) => `${c.name} at ${c.pricePerHour}/h`).join(', ')}`);
}

/** The last stderr lines of each failed task (its latest attempt), and where to see the rest. */
async function showFailedTasks(client: GridworkClient, job: JobView, lines = 10): Promise<void> {
  const failed = job.tasks.filter((t) => t.state === 'failed');
  if (failed.length === 0) return;
  const wanted = new Map(failed.map((t) => [t.index, t.leaseId]));
  const tails = new Map<number, string[]>();
  try {
    for await (const l of client.logLines(job.id)) {
      if (l.stream !== 'stderr' || !wanted.has(l.taskIndex)) continue;
      const lease = wanted.get(l.taskIndex);
      if (lease && l.leaseId !== lease) continue;
      const tail = tails.get(l.taskIndex) ?? [];
      tail.push(l.line);
      if (tail.length > lines) tail.shift();
      tails.set(l.taskIndex, tail);
    }
  } catch (err) {
    info(color.dim(`(could not read the logs: ${(err as Error).message})`));
  }
  for (const t of failed.slice(0, 5)) {
    info(color.red(`task ${t.index} failed${t.error ? `: ${t.error}` : ''}`));
    const tail = tails.get(t.index) ?? [];
    if (tail.length > 0) {
      info(`  last ${tail.length} line${tail.length === 1 ? '' : 's'} of its stderr:`);
      for (const l of tail) info(color.dim(`  | ${l}`));
    } else info('  (it wrote nothing to stderr)');
    info(`  all of it: gridwork job logs ${job.id} --task ${t.index}`);
  }
  if (failed.length > 5) info(`… and ${failed.length - 5} more failed tasks: gridwork job status ${job.id}`);
}

/**
 * Follows a job until its results are in (with --until-verified, to its end); exit 0 if it
 * succeeded or is verifying, 1 if not, 3 if contact was lost for too long.
 */
async function waitAndReport(client: GridworkClient, jobId: string, opts: CommonOpts & WaitFlags): Promise<void> {
  const giveUpAfterMs = giveUpMs(opts);
  const progress = new Progress();
  let lostNoted = false;
  let final: JobView;
  try {
    final = await client.wait(jobId, {
      until: opts.untilVerified ? 'end' : 'results',
      giveUpAfterMs,
      onUpdate: (j) => !opts.json && progress.update(j),
      onConnection: (e) => {
        if (e.state === 'lost' && !lostNoted) {
          lostNoted = true;
          const why = e.error instanceof Error ? e.error.message : 'stream ended';
          progress.note(
            color.yellow(`lost contact with the coordinator (${why}); reconnecting — giving up after ${formatDuration(giveUpAfterMs)} without contact`),
          );
        } else if (e.state === 'restored') {
          lostNoted = false;
          progress.note(color.green(`reconnected after ${formatDuration(e.lostForMs)}`));
        }
      },
    });
  } catch (err) {
    const { LostContactError } = await import('@gridwork/sdk');
    if (err instanceof LostContactError) {
      throw new CliExit(EXIT_LOST, `${err.message}. Check on it later with: gridwork job status ${jobId}`, 'LOST_CONTACT', {
        jobId,
        lastState: err.lastSeen?.state ?? null,
      });
    }
    throw err;
  }
  if (opts.json) printJson(final);
  else printJobHuman(final);
  if (final.state === 'verifying') {
    info(color.cyan(`job ${final.id}: ${verifyingNote(final)}; \`gridwork job wait ${final.id} --until-verified\` waits for that`));
    return;
  }
  if (final.state !== 'succeeded') {
    await showFailedTasks(client, final);
    throw new CliExit(EXIT_FAILED, `job ${final.id} ${final.state}${final.error ? `: ${final.error}` : ''}`, 'JOB_FAILED');
  }
}

export function registerJobCommands(program: Command): void {
  const job = program.command('job').description('submit and follow jobs');

  untilVerifiedOption(
    giveUpOption(withClientOptions(job.command('submit <spec>').description('validate a YAML/JSON job spec, upload its bundle and inputs, and submit it'))),
  )
    .option(
      '--wait',
      `wait until the job's results are in; exit 0 if it succeeded (or its results are pending verification), 1 if not, ${EXIT_LOST} if contact was lost`,
    )
    .option('--idempotency-key <key>', 'retry-safe key: submitting again with the same key returns the same job (default: random)')
    .action(async (specPath: string, opts: CommonOpts & WaitFlags & { wait?: boolean; idempotencyKey?: string }) => {
      if (opts.wait) giveUpMs(opts); // a bad duration is a usage error before anything is submitted
      const { readSpecFile } = await import('@gridwork/sdk');
      const spec = await readSpecFile(specPath);
      const client = await requesterClient(opts);
      const mib = (n: number) => (n / 1048576).toFixed(1);
      const submitted = await client.submit(spec, {
        baseDir: dirname(resolve(specPath)),
        ...(opts.idempotencyKey ? { idempotencyKey: opts.idempotencyKey } : {}),
        onUpload: ({ uploaded, total, bytes, totalBytes }) =>
          isTty && process.stderr.write(`\r\x1b[2Kuploading ${uploaded}/${total} files, ${mib(bytes)}/${mib(totalBytes)} MiB`),
      });
      if (isTty) process.stderr.write('\r\x1b[2K');
      info(`submitted ${submitted.id} (${submitted.tasks.length} task${submitted.tasks.length === 1 ? '' : 's'})`);
      // The job view explains waiting tasks when it is read; the submit reply may predate that.
      const waiting = submitted.tasks.some((t) => t.state === 'queued');
      const explained = waiting && !submitted.explain ? await client.get(submitted.id).catch(() => submitted) : submitted;
      if (waitingReasons(explained).length > 0) {
        info(color.yellow('nothing can run this job now; it waits until capacity appears:'));
        for (const r of waitingReasons(explained)) info(color.yellow(`  - ${r}`));
      }
      if (!opts.wait) {
        if (opts.json) printJson(submitted);
        return;
      }
      await waitAndReport(client, submitted.id, opts);
    });

  untilVerifiedOption(
    giveUpOption(
      withClientOptions(
        job
          .command('wait <id>')
          .description(
            `wait until a job's results are in; exit 0 if it succeeded (or its results are pending verification), 1 if not, ${EXIT_LOST} if contact was lost`,
          ),
      ),
    ),
  ).action(async (id: string, opts: CommonOpts & WaitFlags) => {
    giveUpMs(opts);
    await waitAndReport(await requesterClient(opts), id, opts);
  });

  withClientOptions(job.command('status <id>').description('show a job and its tasks')).action(async (id: string, opts: CommonOpts) => {
    const view = await (await requesterClient(opts)).get(id);
    if (opts.json) printJson(view);
    else printJobHuman(view);
  });

  giveUpOption(withClientOptions(job.command('logs <id>').description("print a job's output, line by line")))
    .option('-f, --follow', 'keep printing new lines until the job ends (reconnects if the connection breaks)')
    .option('--task <n>', 'only this task')
    .option('--stream <name>', 'only stdout, stderr or system')
    .action(async (id: string, opts: CommonOpts & WaitFlags & { follow?: boolean; task?: string; stream?: string }) => {
      const task = opts.task === undefined ? undefined : Number(opts.task);
      if (task !== undefined && !(Number.isInteger(task) && task >= 0)) throw new CliExit(EXIT_USAGE, `--task: expected a task index, got "${opts.task}"`);
      if (opts.stream !== undefined && !['stdout', 'stderr', 'system'].includes(opts.stream)) {
        throw new CliExit(EXIT_USAGE, `--stream: must be one of stdout | stderr | system, got "${opts.stream}"`);
      }
      const client = await requesterClient(opts);
      const { LostContactError } = await import('@gridwork/sdk');
      try {
        for await (const l of client.logLines(id, { follow: opts.follow ?? false, giveUpAfterMs: giveUpMs(opts) })) {
          if (task !== undefined && l.taskIndex !== task) continue;
          if (opts.stream !== undefined && l.stream !== opts.stream) continue;
          if (opts.json) process.stdout.write(`${JSON.stringify(l)}\n`);
          else {
            const prefix = outColor.dim(`[task ${l.taskIndex}${l.stream === 'stdout' ? '' : ` ${l.stream}`}] `);
            process.stdout.write(`${prefix}${l.line}\n`);
          }
        }
      } catch (err) {
        if (err instanceof LostContactError) throw new CliExit(EXIT_LOST, `${err.message}. Resume with: gridwork job logs ${id} -f`, 'LOST_CONTACT');
        throw err;
      }
    });

  withClientOptions(
    job.command('result <id>').description("download a job's outputs into DIR/task-<n>/ and show each task's verification (exit 1 if some are not there yet)"),
  )
    .option('-o, --output <dir>', 'where to write', '.')
    .action(async (id: string, opts: CommonOpts & { output: string }) => {
      const client = await requesterClient(opts);
      const view = await client.get(id);
      const files = await client.results(id, resolve(opts.output));
      const missing = view.tasks.filter((t) => t.state !== 'succeeded').map((t) => t.index);
      const pending = pendingVerification(view);
      if (opts.json) {
        printJson({
          job: view.id,
          state: view.state,
          complete: missing.length === 0,
          files,
          missingTasks: missing,
          pendingVerification: { tasks: pending.tasks, until: pending.until },
          tasks: view.tasks.map((t) => ({
            index: t.index,
            state: t.state,
            files: t.outputs.length,
            verification: t.verification?.state ?? null,
            pendingUntil: t.verification?.pendingUntil ?? null,
          })),
        });
      } else {
        const rows = view.tasks.map((t) => [String(t.index), t.state, String(t.outputs.length), verificationText(t)]);
        for (const l of table(['task', 'state', 'files', 'verified'], rows, { right: ['task', 'files'] })) out(l);
        info(`wrote ${files.length} file(s) under ${resolve(opts.output)}`);
        if (pending.tasks.length > 0) {
          const list = pending.tasks.length > 10 ? `${pending.tasks.slice(0, 10).join(', ')}, …` : pending.tasks.join(', ');
          info(
            color.cyan(
              `the results of task${pending.tasks.length === 1 ? '' : 's'} ${list} are pending verification${pending.until ? ` until ${clockTime(pending.until)}` : ''}: an audit or a dispute may still find one wrong (dispute one with: gridwork job dispute ${view.id} TASK)`,
            ),
          );
        }
      }
      if (missing.length > 0) {
        const done = view.tasks.length - missing.length;
        const list = missing.length > 10 ? `${missing.slice(0, 10).join(', ')}, …` : missing.join(', ');
        const { RESULTS_READY_STATES } = await import('@gridwork/sdk');
        const running = !RESULTS_READY_STATES.includes(view.state);
        throw new CliExit(
          EXIT_FAILED,
          running
            ? `job ${id} is still ${view.state}: ${done} of ${view.tasks.length} tasks have finished; outputs of task${missing.length === 1 ? '' : 's'} ${list} are not there yet (wait with: gridwork job wait ${id})`
            : `job ${id} ${view.state}: task${missing.length === 1 ? '' : 's'} ${list} produced no outputs (see: gridwork job status ${id})`,
          'RESULTS_INCOMPLETE',
        );
      }
    });

  withClientOptions(
    job
      .command('dispute <id> <task>')
      .description("dispute a task's result while it is pending verification: post a bond, and a referee provider re-runs the task"),
  ).action(async (id: string, taskText: string, opts: CommonOpts) => {
    if (!/^\d+$/.test(taskText) || Number(taskText) > 9999) throw new CliExit(EXIT_USAGE, `TASK: expected a task index (0, 1, …), got "${taskText}"`);
    const client = await requesterClient(opts);
    let d: Awaited<ReturnType<GridworkClient['dispute']>>;
    try {
      d = await client.dispute(id, Number(taskText));
    } catch (err) {
      // The coordinator refused the dispute (no such job or task, nothing pending to dispute,
      // too late, no funds for the bond): the operation failed, whatever its HTTP status.
      const { GridworkError } = await import('@gridwork/sdk');
      if (err instanceof GridworkError && err.code !== 'NETWORK_ERROR' && err.code !== 'PROTOCOL_ERROR') {
        throw new CliExit(EXIT_FAILED, err.message, err.code, err.details, { cause: err });
      }
      throw err;
    }
    if (opts.json) return printJson(d);
    out(`dispute ${d.id} opened on task ${d.taskIndex} of ${d.jobId}: a bond of ${d.bond} credits was posted from your available balance`);
    out(`  a referee provider re-runs the task${d.checkJobId ? ` (check job ${d.checkJobId})` : ''}; the task's earnings stay unpaid until it decides:`);
    out("  - upheld (the referee's result differs): your bond comes back, the task's cost is refunded, you get a share of the provider's slashed stake");
    out('  - dismissed (the referee agrees with the provider): the bond pays the provider');
    out(`  follow it with: gridwork job status ${d.jobId} (the task's VERIFIED column says disputed until then)`);
  });

  withClientOptions(job.command('cancel <id>').description('cancel a job; running tasks are stopped')).action(async (id: string, opts: CommonOpts) => {
    const view = await (await requesterClient(opts)).cancel(id);
    if (opts.json) printJson(view);
    else out(`${view.id}: ${view.state}`);
  });

  withClientOptions(job.command('top-up <id> <amount>').description("add credits to a job's budget from your available balance"))
    .option('--idempotency-key <key>', 'retry-safe key: the same key moves money once (default: random)')
    .action(async (id: string, amount: string, opts: CommonOpts & { idempotencyKey?: string }) => {
      const view = await (await requesterClient(opts)).addBudget(id, amount, opts.idempotencyKey ? { idempotencyKey: opts.idempotencyKey } : {});
      if (opts.json) printJson(view);
      else out(`${view.id}: budget now ${view.money.budget} (${view.money.spent} spent, ${view.money.held} held)`);
    });

  withClientOptions(job.command('list').description('your jobs, newest first'))
    .option('--limit <n>', 'how many', '50')
    .action(async (opts: CommonOpts & { limit: string }) => {
      const limit = Number(opts.limit);
      if (!Number.isInteger(limit) || limit < 1) throw new CliExit(EXIT_USAGE, `--limit: expected a positive integer, got "${opts.limit}"`);
      const jobs = await (await requesterClient(opts)).list({ limit });
      if (opts.json) return printJson({ jobs });
      if (jobs.length === 0) return info('no jobs yet');
      const rows = jobs.map((j) => [j.id, j.state, `${j.tasksDone}/${j.tasks}`, j.name, relativeTime(j.createdAt)]);
      for (const l of table(['id', 'state', 'tasks', 'name', 'created'], rows, { right: ['tasks'] })) out(l);
    });

  withClientOptions(
    job.command('explain <spec>').description('say which providers could run a spec now, and why the others cannot (exit 1 if none can)'),
  ).action(async (specPath: string, opts: CommonOpts) => {
    const { readSpecFile } = await import('@gridwork/sdk');
    const spec = await readSpecFile(specPath);
    const e = await (await requesterClient(opts)).explain(spec);
    if (opts.json) printJson(e);
    else printExplanation(e);
    if (!e.matchable) throw new CliExit(EXIT_FAILED, 'no provider can take this spec now', 'NO_MATCH');
  });
}
