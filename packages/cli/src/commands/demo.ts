/**
 * `gridwork demo`: a whole network on this machine. By default the full demo (demo/full-demo.ts):
 * a coordinator, four staked providers (one of them cheats) and a requester that trains a model
 * (resuming after its provider is killed), runs batch inference, serves the model, trains on a
 * cluster and sees the cheater caught and slashed. `--quick` (implied by `--spec` or
 * `--providers`) is the single-job demo (demo/quick-demo.ts). The demo modules load only when the
 * command runs.
 */
import type { Command } from 'commander';
import { CliExit, EXIT_USAGE } from '../output.ts';
import { intOption } from './shared.ts';

interface DemoOptions {
  quick?: boolean;
  providers?: number;
  json?: boolean;
  data?: string;
  spec?: string;
  runtime?: string;
  keep?: boolean;
}

export function registerDemoCommand(program: Command): void {
  program
    .command('demo')
    .description(
      'run a whole network on this machine: train (and survive a provider dying), batch inference, a service, a cluster, and a cheater caught by audit',
    )
    .option('--quick', 'run one sharded batch job instead (examples/embed-corpus, or --spec) on N providers')
    .option('--providers <n>', 'with --quick: number of provider agents (default 3; implies --quick)', intOption)
    .option('--spec <file>', 'with --quick: the job spec to run (implies --quick)')
    .option('--data <dir>', 'keep all data (database, blobs, results) here instead of a temporary directory')
    .option('--runtime <kind>', 'sandbox or process (default: sandbox when bubblewrap works here)')
    .option('--json', 'print the report as one JSON document on stdout')
    .option('--keep', 'keep the network and its web console running afterwards, until Ctrl-C')
    .action(async (opts: DemoOptions) => {
      if (opts.runtime !== undefined && opts.runtime !== 'sandbox' && opts.runtime !== 'process') {
        throw new CliExit(EXIT_USAGE, `--runtime must be sandbox or process (got "${opts.runtime}")`);
      }
      const runtime = opts.runtime as 'sandbox' | 'process' | undefined;
      const common = { ...(opts.data ? { data: opts.data } : {}), ...(runtime ? { runtime } : {}), json: opts.json ?? false, keep: opts.keep ?? false };
      if (opts.quick || opts.spec !== undefined || opts.providers !== undefined) {
        const { QUICK_EXAMPLE, runQuickDemo } = await import('../demo/quick-demo.ts');
        await runQuickDemo({ ...common, providers: opts.providers ?? 3, spec: opts.spec ?? QUICK_EXAMPLE });
        return;
      }
      const { runFullDemo } = await import('../demo/full-demo.ts');
      await runFullDemo(common);
    });
}
