/** `gridwork account …`: balance, deposit, withdraw, history, operator credit. */
import { join } from 'node:path';
import type { BalanceView } from '@gridwork/protocol';
import type { Command } from 'commander';
import { type ClientFlags, coordinatorUrls, gridworkHome, requesterClient, withClientOptions } from '../context.ts';
import { CliExit, EXIT_USAGE, info, out, outColor, printJson, relativeTime, table } from '../output.ts';

interface Opts extends ClientFlags {
  json?: boolean;
  idempotencyKey?: string;
}

export function printBalance(b: BalanceView): void {
  out(`account ${b.account}`);
  for (const l of table(
    ['balance', 'credits', ''],
    [
      ['available', b.available, ''],
      ['held', b.held, '(budgets of your running jobs)'],
      ['stake', b.stake, ''],
      ['unbonding', b.unbonding, b.unbondings.map((u) => `${u.amount} ${relativeTime(u.releaseAt)}`).join(', ')],
    ],
    { right: ['credits'] },
  ))
    out(`  ${l}`);
}

export function registerAccountCommands(program: Command): void {
  const account = program.command('account').description('your credits: balance, deposits, withdrawals, history');
  const money = (c: Command) => withClientOptions(c).option('--idempotency-key <key>', 'retry-safe key: the same key moves money once (default: random)');
  const show = (b: BalanceView, opts: Opts) => (opts.json ? printJson(b) : printBalance(b));
  const keyOf = (opts: Opts) => (opts.idempotencyKey ? { idempotencyKey: opts.idempotencyKey } : {});

  withClientOptions(account.command('balance').description('available, held, staked and unbonding credits')).action(async (opts: Opts) => {
    show(await (await requesterClient(opts)).balance(), opts);
  });
  money(account.command('deposit <amount>').description('faucet deposit, on coordinators started with --dev')).action(async (amount: string, opts: Opts) => {
    show(await (await requesterClient(opts)).deposit(amount, keyOf(opts)), opts);
  });
  money(account.command('withdraw <amount>').description('withdraw available credits')).action(async (amount: string, opts: Opts) => {
    show(await (await requesterClient(opts)).withdraw(amount, keyOf(opts)), opts);
  });
  withClientOptions(account.command('history').description('ledger transactions touching your account, newest first'))
    .option('--limit <n>', 'how many', '50')
    .action(async (opts: Opts & { limit: string }) => {
      const limit = Number(opts.limit);
      if (!Number.isInteger(limit) || limit < 1) throw new CliExit(EXIT_USAGE, `--limit: expected a positive integer, got "${opts.limit}"`);
      const entries = await (await requesterClient(opts)).history({ limit });
      if (opts.json) return printJson({ entries });
      if (entries.length === 0) return info('no transactions yet');
      const rows = entries.map((e) => {
        const change = e.change.startsWith('-') ? outColor.red(e.change) : e.change === '0' ? outColor.dim(e.change) : outColor.green(`+${e.change}`);
        const note = Object.entries(e.memo)
          .map(([k, v]) => `${k}=${typeof v === 'string' ? v : JSON.stringify(v)}`)
          .join(' ');
        return [relativeTime(e.at), e.kind, change, note];
      });
      for (const l of table(['when', 'kind', 'change', 'note'], rows, { right: ['change'] })) out(l);
    });
  money(account.command('credit <account> <amount>').description("operator: credit an account (signs with the coordinator's operator key)"))
    .option('--operator-key <file>', 'operator key file', join(gridworkHome(), 'coordinator', 'operator-key.json'))
    .action(async (target: string, amount: string, opts: Opts & { operatorKey: string }) => {
      const { GridworkClient, loadOrCreateIdentity } = await import('@gridwork/sdk');
      const url = await coordinatorUrls(opts);
      const client = new GridworkClient({ url, identity: await loadOrCreateIdentity(opts.operatorKey) });
      show(await client.credit(target, amount, keyOf(opts)), opts);
    });
}
