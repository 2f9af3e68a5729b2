/**
 * Where the CLI finds the coordinator and the requester's key: flags, then environment
 * variables, then the profile in $GRIDWORK_HOME/config.json, then defaults (the SDK's
 * `resolveConfig`, so `GridworkClient.fromEnv()` sees the same). The SDK is imported when a
 * command needs it, not when the CLI starts.
 */
import { homedir } from 'node:os';
import { join } from 'node:path';
import type { GridworkClient } from '@gridwork/sdk';
import type { Command } from 'commander';

export const DEFAULT_COORDINATOR = 'http://127.0.0.1:7070';

/** GRIDWORK_HOME, default ~/.gridwork. */
export function gridworkHome(): string {
  return process.env.GRIDWORK_HOME ?? join(homedir(), '.gridwork');
}

export interface ClientFlags {
  coordinator?: string;
  profile?: string;
}

/** --coordinator and --profile, on every command that talks to a coordinator. */
export function withClientOptions(c: Command): Command {
  return c
    .option('--coordinator <urls>', COORDINATOR_HELP)
    .option('--profile <name>', 'profile from $GRIDWORK_HOME/config.json (env GRIDWORK_PROFILE)')
    .option('--json', 'print JSON on stdout (errors too)');
}

/** Help of --coordinator wherever it is an option. */
export const COORDINATOR_HELP =
  'coordinator URL, or several replicas of one network separated by commas (env GRIDWORK_COORDINATOR; default http://127.0.0.1:7070)';

/** The coordinator URLs, in order: one, or several replicas (--coordinator a,b, GRIDWORK_COORDINATOR or the profile). */
export async function coordinatorUrls(flags: ClientFlags): Promise<string[]> {
  const { resolveConfig, normalizeCoordinatorUrl } = await import('@gridwork/sdk');
  const config = await resolveConfig({ coordinator: flags.coordinator, profile: flags.profile });
  const urls = config.coordinator
    .split(/[\s,]+/)
    .filter((u) => u !== '')
    .map(normalizeCoordinatorUrl);
  // Nothing but commas: the same usage error as any other malformed URL.
  return urls.length > 0 ? [...new Set(urls)] : [normalizeCoordinatorUrl(config.coordinator)];
}

/** The requester's client; the key is created on first use (GRIDWORK_KEY_FILE, default GRIDWORK_HOME/requester-key.json). */
export async function requesterClient(flags: ClientFlags): Promise<GridworkClient> {
  const { GridworkClient } = await import('@gridwork/sdk');
  return GridworkClient.fromEnv({ coordinator: flags.coordinator, profile: flags.profile });
}
