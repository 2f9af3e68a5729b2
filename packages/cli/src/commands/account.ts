import { join } from 'node:path';
import type { BalanceView } from '@gridwork/protocol';
import { GridworkClient, loadOrCreateIdentity } from '@gridwork/sdk';
import type { Command } from 'commander';
import { coordinatorUrl, requesterClient } from '../context.ts';
import { color, info, printJson } from '../output.ts';

interface Opts {
  coordinator?: string;
  json?: boolean;
  idempotencyKey?: string;
}

export function printBalance(b: BalanceView): void {
  info(`account ${b.account}`);
  info(`  available  ${b.available}`);
  info(`  held       ${b.held}   (budgets of your running jobs)`);
  info(`  stake      ${b.stake}`);
  info(`  unbonding  ${b.unbonding}${b.unbondings.map((u) => `\n    ${u.amount} on ${u.releaseAt}`).join('')}`);
}

export function registerAccountCommands(program: Command): void {
  const account = program.command('account').description('your credits: balance, deposits, withdrawals, history');
  const common = (c: Command) => c.option('--coordinator <url>', 'coordinator URL (env GRIDWORK_COORDINATOR)').option('--json', 'print JSON on stdout');
  const money = (c: Command) => common(c).option('--idempotency-key <key>', 'retry-safe key: the same key moves money once (default: random)');
  const show = (b: BalanceView, opts: Opts) => (opts.json ? printJson(b) : printBalance(b));
  const keyOf = (opts: Opts) => (opts.idempotencyKey ? { idempotencyKey: opts.idempotencyKey } : {});

  common(account.command('balance').description('available, held, staked and unbonding credits')).action(async (opts: Opts) => {
    show(await (await requesterClient(opts.coordinator)).balance(), opts);
  });
  money(account.command('deposit <amount>').description('faucet deposit, on coordinators started with --dev')).action(async (amount: string, opts: Opts) => {
    show(await (await requesterClient(opts.coordinator)).deposit(amount, keyOf(opts)), opts);
  });
  money(account.command('withdraw <amount>').description('withdraw available credits')).action(async (amount: string, opts: Opts) => {
    show(await (await requesterClient(opts.coordinator)).withdraw(amount, keyOf(opts)), opts);
  });
  common(account.command('history').description('ledger transactions touching your account, newest first'))
    .option('--limit <n>', 'how many', '50')
    .action(async (opts: Opts & { limit: string }) => {
      const entries = await (await requesterClient(opts.coordinator)).history({ limit: Number(opts.limit) });
      if (opts.json) return printJson({ entries });
      if (entries.length === 0) info('no transactions yet');
      for (const e of entries) {
        const change = e.change.startsWith('-') ? color.red(e.change) : e.change === '0' ? color.dim(e.change) : color.green(`+${e.change}`);
        info(`${e.at}  ${e.kind.padEnd(14)} ${change.padStart(14)}  ${color.dim(JSON.stringify(e.memo))}`);
      }
    });
  money(account.command('credit <account> <amount>').description("operator: credit an account (signs with the coordinator's operator key)"))
    .option(
      '--operator-key <file>',
      'operator key file',
      join(process.env.GRIDWORK_HOME ?? join(process.env.HOME ?? '.', '.gridwork'), 'coordinator', 'operator-key.json'),
    )
    .action(async (target: string, amount: string, opts: Opts & { operatorKey: string }) => {
      const client = new GridworkClient({ url: coordinatorUrl(opts.coordinator), identity: await loadOrCreateIdentity(opts.operatorKey) });
      show(await client.credit(target, amount, keyOf(opts)), opts);
    });
}
