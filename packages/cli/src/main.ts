/** The `gridwork` command. */
import { GRIDWORK_VERSION } from '@gridwork/protocol';
import { Command, CommanderError } from 'commander';
import { registerAccountCommands } from './commands/account.ts';
import { registerCoordinatorCommands } from './commands/coordinator.ts';
import { registerMarketCommands } from './commands/market.ts';
import { registerDemoCommand } from './commands/demo.ts';
import { registerJobCommands } from './commands/job.ts';
import { registerProviderCommands } from './commands/provider.ts';
import { color, describeError, EXIT_USAGE, exitCodeFor, info } from './output.ts';

const program = new Command('gridwork').description('Gridwork: an open network for GPU compute').version(GRIDWORK_VERSION).showHelpAfterError().exitOverride();
program.configureOutput({ writeOut: (s) => process.stdout.write(s), writeErr: (s) => process.stderr.write(s) });
registerDemoCommand(program);
registerJobCommands(program);
registerCoordinatorCommands(program);
registerProviderCommands(program);
registerAccountCommands(program);
registerMarketCommands(program);
for (const c of program.commands) {
  c.exitOverride();
  for (const sub of c.commands) sub.exitOverride();
}

try {
  await program.parseAsync(process.argv);
  process.exitCode = 0;
} catch (err) {
  if (err instanceof CommanderError) {
    // Help and version exit 0; every other commander error is a usage error.
    process.exitCode = err.exitCode === 0 ? 0 : EXIT_USAGE;
  } else {
    info(color.red(`error: ${describeError(err)}`));
    process.exitCode = exitCodeFor(err);
  }
}
// Open handles (sockets being closed, timers) must not keep a finished command alive.
setTimeout(() => process.exit(), 2000).unref();
