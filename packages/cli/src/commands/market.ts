/** `gridwork market` (asks by resource class) and `gridwork providers` (who is online, with what). */
import type { Command } from 'commander';
import { type ClientFlags, requesterClient, withClientOptions } from '../context.ts';
import { info, out, outColor, printJson, relativeTime, table } from '../output.ts';

export function registerMarketCommands(program: Command): void {
  withClientOptions(program.command('market').description('standing asks by resource class: min / median / max price and free units')).action(
    async (opts: ClientFlags & { json?: boolean }) => {
      const classes = await (await requesterClient(opts)).market();
      if (opts.json) return printJson({ classes });
      if (classes.length === 0) return info('no provider is offering capacity right now');
      const rows = classes.map((c) => [c.resourceClass, c.unit, String(c.providers), String(c.freeUnits), c.min, c.median, c.max]);
      for (const l of table(['class', 'unit', 'providers', 'free', 'min', 'median', 'max'], rows, { right: ['providers', 'free', 'min', 'median', 'max'] })) out(l);
    },
  );

  withClientOptions(program.command('providers').description('providers on the network: state, hardware, asks, reputation, benchmark'))
    .option('--all', 'include offline providers')
    .action(async (opts: ClientFlags & { json?: boolean; all?: boolean }) => {
      const providers = await (await requesterClient(opts)).providers({ all: opts.all ?? false });
      if (opts.json) return printJson({ providers });
      if (providers.length === 0) return info(opts.all ? 'no provider has ever connected' : 'no provider is online right now (--all lists offline ones too)');
      const rows = providers.map((p) => {
        const gpus = new Map<string, number>();
        for (const g of p.hardware.gpus) gpus.set(g.model, (gpus.get(g.model) ?? 0) + 1);
        const gpuText = [...gpus].map(([m, n]) => `${n}× ${m}`).join(', ') || '-';
        const gpuAsk = Object.entries(p.asks?.gpuHour ?? {})
          .map(([m, price]) => `${m} ${price}`)
          .join(', ');
        const state = p.state === 'online' && p.connected ? outColor.green('online') : p.state === 'online' ? outColor.yellow('online (not connected)') : p.state;
        return [
          p.name,
          state,
          String(p.hardware.cpu.cores),
          String(Math.round(p.hardware.memoryGiB)),
          gpuText,
          p.asks ? `${p.asks.cpuCoreHour}/core-h${gpuAsk ? `, ${gpuAsk}/gpu-h` : ''}` : '-',
          p.reputation.toFixed(2),
          p.stake,
          p.benchmarks ? `${Math.round(p.benchmarks.cpuMopsPerCore)} Mops/core` : '-',
          p.attributes.region ?? '-',
          relativeTime(p.lastSeenAt),
        ];
      });
      for (const l of table(['name', 'state', 'cores', 'mem GiB', 'gpus', 'asks', 'reputation', 'stake', 'benchmark', 'region', 'seen'], rows, {
        right: ['cores', 'mem GiB', 'reputation', 'stake'],
      }))
        out(l);
    });
}
