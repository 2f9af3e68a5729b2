/**
 * The `gridwork` command. Starting it loads only commander and the command definitions; each
 * command imports what it needs (the SDK, the coordinator, the provider agent) when it runs.
 */
import { Command, CommanderError } from 'commander';
import { registerAccountCommands } from './commands/account.ts';
import { registerCompletionCommand } from './commands/completion.ts';
import { registerCoordinatorCommands } from './commands/coordinator.ts';
import { registerDemoCommand } from './commands/demo.ts';
import { registerInitCommand } from './commands/init.ts';
import { registerJobCommands } from './commands/job.ts';
import { registerMarketCommands } from './commands/market.ts';
import { registerProviderCommands } from './commands/provider.ts';
import { registerSimCommands } from './commands/sim.ts';
import { VERSION } from './version.ts';
import { color, describeError, errorDocument, EXIT_FAILED, EXIT_LOST, EXIT_USAGE, exitCodeFor, info, jsonWritten } from './output.ts';

const wantsJson = process.argv.includes('--json');

const program = new Command('gridwork')
  .description('Gridwork: an open network for GPU compute')
  .version(VERSION)
  .showHelpAfterError()
  .exitOverride()
  .addHelpText(
    'after',
    `
Exit codes: 0 success; ${EXIT_FAILED} the job or operation failed; ${EXIT_USAGE} bad usage or input; ${EXIT_LOST} lost contact with the coordinator while waiting (the job is still running).
Settings: --coordinator / GRIDWORK_COORDINATOR, --profile / GRIDWORK_PROFILE (profiles in $GRIDWORK_HOME/config.json), GRIDWORK_HOME (default ~/.gridwork), GRIDWORK_KEY_FILE, NO_COLOR.`,
  );
program.configureOutput({
  writeOut: (s) => process.stdout.write(s),
  // With --json, commander's own usage errors become the JSON error document below.
  writeErr: (s) => process.stderr.write(s),
});
registerDemoCommand(program);
registerInitCommand(program);
registerJobCommands(program);
registerCoordinatorCommands(program);
registerProviderCommands(program);
registerAccountCommands(program);
registerMarketCommands(program);
registerSimCommands(program);
registerCompletionCommand(program);
const exitOverrideAll = (c: Command) => {
  c.exitOverride();
  for (const sub of c.commands) exitOverrideAll(sub);
};
exitOverrideAll(program);

try {
  await program.parseAsync(process.argv);
  process.exitCode = 0;
} catch (err) {
  let code: number;
  if (err instanceof CommanderError) {
    // Help and version exit 0; every other commander error is a usage error.
    code = err.exitCode === 0 ? 0 : EXIT_USAGE;
    if (code !== 0 && wantsJson && !jsonWritten()) {
      process.stdout.write(`${JSON.stringify({ error: { code: 'USAGE', message: err.message.replace(/^error: /, ''), exitCode: code } }, null, 2)}\n`);
    }
  } else {
    code = exitCodeFor(err);
    info(color.red(`error: ${describeError(err)}`));
    if (wantsJson && !jsonWritten()) process.stdout.write(`${JSON.stringify(errorDocument(err, code), null, 2)}\n`);
  }
  process.exitCode = code;
}
// Open handles (sockets being closed, timers) must not keep a finished command alive.
setTimeout(() => process.exit(), 2000).unref();
