import { readSpecFile } from '@gridwork/sdk';
import type { MatchExplanation } from '@gridwork/protocol';
import type { Command } from 'commander';
import { requesterClient } from '../context.ts';
import { CliExit, color, EXIT_FAILED, info, printJson } from '../output.ts';

export function printExplanation(e: MatchExplanation): void {
  info(e.matchable ? color.green('matches now') : color.yellow('does not match now'));
  info(`  providers: ${e.providers.total} known, ${e.providers.online} online, ${e.candidates} can take it`);
  for (const r of e.reasons) info(`  - ${r}`);
  if (e.lowestAsk) info(`  lowest ask for this order: ${e.lowestAsk}/h (max price ${e.maxPerHour}/h)`);
  if (e.busyUntil) info(`  busy capacity frees up by ${e.busyUntil} at the latest`);
}

export function registerMarketCommands(program: Command): void {
  program
    .command('market')
    .description('standing asks by resource class: min / median / max price and free units')
    .option('--coordinator <url>', 'coordinator URL (env GRIDWORK_COORDINATOR)')
    .option('--json', 'print JSON on stdout')
    .action(async (opts: { coordinator?: string; json?: boolean }) => {
      const classes = await (await requesterClient(opts.coordinator)).market();
      if (opts.json) return printJson({ classes });
      if (classes.length === 0) return info('no provider is offering capacity right now');
      info(
        `${'class'.padEnd(20)} ${'unit'.padEnd(10)} ${'providers'.padStart(9)} ${'free'.padStart(8)} ${'min'.padStart(10)} ${'median'.padStart(10)} ${'max'.padStart(10)}`,
      );
      for (const c of classes) {
        info(
          `${c.resourceClass.padEnd(20)} ${c.unit.padEnd(10)} ${String(c.providers).padStart(9)} ${String(c.freeUnits).padStart(8)} ${c.min.padStart(10)} ${c.median.padStart(10)} ${c.max.padStart(10)}`,
        );
      }
    });
}

export function registerExplainCommand(job: Command): void {
  job
    .command('explain <spec>')
    .description('say which providers could run a spec now, and why the others cannot (exit 1 if none can)')
    .option('--coordinator <url>', 'coordinator URL (env GRIDWORK_COORDINATOR)')
    .option('--json', 'print JSON on stdout')
    .action(async (specPath: string, opts: { coordinator?: string; json?: boolean }) => {
      const spec = await readSpecFile(specPath);
      const e = await (await requesterClient(opts.coordinator)).explain(spec);
      if (opts.json) printJson(e);
      else printExplanation(e);
      if (!e.matchable) throw new CliExit(EXIT_FAILED, 'no provider can take this spec now');
    });
}
