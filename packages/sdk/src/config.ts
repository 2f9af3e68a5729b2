/**
 * Where a requester's coordinator and key come from, shared by `GridworkClient.fromEnv()` and
 * the `gridwork` CLI. Precedence: explicit options (CLI flags), then environment variables,
 * then the selected profile of the config file, then defaults.
 *
 * - `GRIDWORK_HOME` (default `~/.gridwork`): holds `requester-key.json` and `config.json`.
 * - `GRIDWORK_COORDINATOR`: coordinator URL (default http://127.0.0.1:7070); or several replicas
 *   of one network separated by commas, e.g. `http://10.0.0.5:7070,http://10.0.0.6:7070`.
 * - `GRIDWORK_KEY_FILE`: the requester key file (default `$GRIDWORK_HOME/requester-key.json`).
 * - `GRIDWORK_PROFILE`: profile of the config file to use (default: its `defaultProfile`).
 * - `GRIDWORK_CONFIG`: the config file (default `$GRIDWORK_HOME/config.json`), e.g.
 *   `{ "defaultProfile": "lab", "profiles": { "lab": { "coordinator": "http://10.0.0.5:7070", "keyFile": "/home/me/lab-key.json" } } }`
 *   (a profile's `coordinator` may list several URLs too: comma-separated, or an array).
 */
import { readFile } from 'node:fs/promises';
import { homedir } from 'node:os';
import { isAbsolute, join, resolve } from 'node:path';
import { GridworkError } from '@gridwork/protocol/errors';

export const DEFAULT_COORDINATOR = 'http://127.0.0.1:7070';

export interface Profile {
  /** One URL, several separated by commas, or a list. */
  coordinator?: string | string[];
  keyFile?: string;
}

export interface ConfigFile {
  defaultProfile?: string;
  profiles?: Record<string, Profile>;
}

export interface ConfigOptions {
  /** Coordinator URL, or several separated by commas; beats everything else. */
  coordinator?: string | undefined;
  /** Profile name; beats GRIDWORK_PROFILE and the file's defaultProfile. */
  profile?: string | undefined;
  /** Key file; beats GRIDWORK_KEY_FILE and the profile. */
  keyFile?: string | undefined;
  /** @default process.env */
  env?: Record<string, string | undefined>;
}

export interface ResolvedConfig {
  /** The coordinator URL, or several separated by commas (replicas of one network, in order). */
  coordinator: string;
  keyFile: string;
  home: string;
  configFile: string;
  /** The profile used, if any. */
  profile: string | undefined;
}

export function gridworkHome(env: Record<string, string | undefined> = process.env): string {
  return env.GRIDWORK_HOME ?? join(homedir(), '.gridwork');
}

function expandHome(path: string): string {
  return path === '~' || path.startsWith('~/') ? join(homedir(), path.slice(1)) : path;
}

export async function readConfigFile(path: string): Promise<ConfigFile | undefined> {
  let text: string;
  try {
    text = await readFile(path, 'utf8');
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
    throw new GridworkError('BAD_REQUEST', `cannot read the config file ${path}: ${(err as Error).message}`);
  }
  let parsed: unknown;
  try {
    parsed = JSON.parse(text);
  } catch (err) {
    throw new GridworkError('BAD_REQUEST', `config file ${path} is not valid JSON: ${(err as Error).message}`);
  }
  if (typeof parsed !== 'object' || parsed === null || Array.isArray(parsed)) throw new GridworkError('BAD_REQUEST', `config file ${path}: expected an object`);
  const c = parsed as ConfigFile;
  if (c.profiles !== undefined && (typeof c.profiles !== 'object' || c.profiles === null)) {
    throw new GridworkError('BAD_REQUEST', `config file ${path}: "profiles" must be an object of named profiles`);
  }
  return c;
}

export async function resolveConfig(options: ConfigOptions = {}): Promise<ResolvedConfig> {
  const env = options.env ?? process.env;
  const home = gridworkHome(env);
  const configFile = env.GRIDWORK_CONFIG ?? join(home, 'config.json');
  const file = await readConfigFile(configFile);
  const wanted = options.profile ?? env.GRIDWORK_PROFILE ?? file?.defaultProfile;
  let profile: Profile = {};
  if (wanted !== undefined) {
    const found = file?.profiles?.[wanted];
    if (!found) {
      const known = Object.keys(file?.profiles ?? {});
      throw new GridworkError(
        'BAD_REQUEST',
        `no profile "${wanted}" in ${configFile}${known.length > 0 ? ` (profiles: ${known.join(', ')})` : file ? ' (it defines no profiles)' : ' (the file does not exist)'}`,
      );
    }
    profile = found;
  }
  const keyFile = options.keyFile ?? env.GRIDWORK_KEY_FILE ?? profile.keyFile ?? join(home, 'requester-key.json');
  return {
    coordinator: options.coordinator ?? env.GRIDWORK_COORDINATOR ?? profileCoordinator(profile, configFile) ?? DEFAULT_COORDINATOR,
    keyFile: isAbsolute(expandHome(keyFile)) ? expandHome(keyFile) : resolve(home, keyFile),
    home,
    configFile,
    profile: wanted,
  };
}

/** A profile's coordinator as one string (URLs separated by commas). */
function profileCoordinator(profile: Profile, configFile: string): string | undefined {
  const c = profile.coordinator;
  if (c === undefined || typeof c === 'string') return c;
  if (!Array.isArray(c) || !c.every((u) => typeof u === 'string')) {
    throw new GridworkError('BAD_REQUEST', `config file ${configFile}: a profile's "coordinator" must be a URL, URLs separated by commas, or a list of URLs`);
  }
  return c.join(',');
}
