/** Where the CLI finds the coordinator and the requester's key: flags, then environment, then defaults. */
import { homedir } from 'node:os';
import { join } from 'node:path';
import { GridworkClient, loadOrCreateIdentity } from '@gridwork/sdk';

export const DEFAULT_COORDINATOR = 'http://127.0.0.1:7070';

/** GRIDWORK_HOME, default ~/.gridwork. */
export function gridworkHome(): string {
  return process.env.GRIDWORK_HOME ?? join(homedir(), '.gridwork');
}

export function coordinatorUrl(flag: string | undefined): string {
  return flag ?? process.env.GRIDWORK_COORDINATOR ?? DEFAULT_COORDINATOR;
}

/** The requester's client; the key is created on first use under GRIDWORK_HOME. */
export async function requesterClient(flag: string | undefined): Promise<GridworkClient> {
  const identity = await loadOrCreateIdentity(join(gridworkHome(), 'requester-key.json'));
  return new GridworkClient({ url: coordinatorUrl(flag), identity });
}
