/**
 * A PostgreSQL server and a NATS server of a test's own, on free ports, for the fault tests and
 * the soak: killing or restarting them must not touch the servers every other test shares.
 * PostgreSQL is Debian's (the newest /usr/lib/postgresql/N), initialised in a temporary
 * directory with trust authentication and fsync off; as root it runs as the `postgres` user
 * (initdb refuses root). NATS is `nats-server` from PATH (core NATS: the replicas' doorbell).
 *
 * Import this file directly; it is deliberately not re-exported from the testkit's index.
 */
import { type ChildProcess, execFile, spawn } from 'node:child_process';
import { once } from 'node:events';
import { chown, mkdtemp, readdir, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { freePort } from './processes.ts';

const run = promisify(execFile);

export interface PrivatePostgres {
  /** postgres://postgres@127.0.0.1:PORT/postgres */
  readonly url: string;
  readonly port: number;
  /** `pg_ctl restart`: every connection is cut (`fast`: sessions end cleanly; `immediate`: as a crash, with recovery). */
  restart(mode?: 'fast' | 'immediate'): Promise<void>;
  /** `pg_ctl stop -m fast`: down until `start`. */
  stop(): Promise<void>;
  start(): Promise<void>;
  /** Stops the server and deletes its data. */
  remove(): Promise<void>;
}

async function postgresBin(): Promise<string> {
  const versions = (await readdir('/usr/lib/postgresql')).filter((v) => /^\d+$/.test(v)).sort((a, b) => Number(b) - Number(a));
  if (!versions[0]) throw new Error('no PostgreSQL under /usr/lib/postgresql (Debian package postgresql)');
  return `/usr/lib/postgresql/${versions[0]}/bin`;
}

export async function startPrivatePostgres(): Promise<PrivatePostgres> {
  const bin = await postgresBin();
  const dir = await mkdtemp(join(tmpdir(), 'gridwork-pg-'));
  const asRoot = process.getuid?.() === 0;
  if (asRoot) await chown(dir, ...(await postgresIds()));
  const as = (cmd: string, args: string[]) => (asRoot ? run('runuser', ['-u', 'postgres', '--', cmd, ...args]) : run(cmd, args));
  const data = join(dir, 'data');
  await as(join(bin, 'initdb'), ['-D', data, '-A', 'trust', '-U', 'postgres', '--no-sync', '-E', 'UTF8']);
  const port = await freePort();
  const options = `-p ${port} -k ${dir} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=200`;
  const ctl = (args: string[]) => as(join(bin, 'pg_ctl'), ['-D', data, '-l', join(dir, 'log'), ...args]);
  await ctl(['-o', options, '-w', 'start']);
  return {
    url: `postgres://postgres@127.0.0.1:${port}/postgres`,
    port,
    async restart(mode = 'fast') {
      await ctl(['-o', options, '-m', mode, '-w', 'restart']);
    },
    async stop() {
      await ctl(['-m', 'fast', '-w', 'stop']);
    },
    async start() {
      await ctl(['-o', options, '-w', 'start']);
    },
    async remove() {
      await ctl(['-m', 'immediate', '-w', 'stop']).catch(() => undefined);
      await rm(dir, { recursive: true, force: true });
    },
  };
}

async function postgresIds(): Promise<[number, number]> {
  const { stdout: uid } = await run('id', ['-u', 'postgres']);
  const { stdout: gid } = await run('id', ['-g', 'postgres']);
  return [Number(uid.trim()), Number(gid.trim())];
}

export interface PrivateNats {
  readonly url: string;
  readonly alive: boolean;
  /** SIGKILL; resolves once it is gone. */
  kill9(): Promise<void>;
  /** Starts it again on the same port. */
  start(): Promise<void>;
  stop(): Promise<void>;
}

export async function startPrivateNats(): Promise<PrivateNats> {
  const port = await freePort();
  let child: ChildProcess | undefined;
  const start = async () => {
    const c = spawn('nats-server', ['-a', '127.0.0.1', '-p', String(port)], { stdio: ['ignore', 'ignore', 'pipe'] });
    child = c;
    // Ready when it says so on stderr ("Server is ready").
    await new Promise<void>((resolve, reject) => {
      let text = '';
      c.stderr?.on('data', (d: Buffer) => {
        text += d.toString();
        if (text.includes('Server is ready')) resolve();
      });
      c.once('exit', (code) => reject(new Error(`nats-server exited (${code}): ${text.slice(-500)}`)));
      c.once('error', reject);
    });
  };
  const kill = async (signal: NodeJS.Signals) => {
    const c = child;
    if (!c || c.exitCode !== null || c.signalCode !== null) return;
    const gone = once(c, 'exit');
    c.kill(signal);
    await gone;
  };
  await start();
  return {
    url: `nats://127.0.0.1:${port}`,
    get alive() {
      return child !== undefined && child.exitCode === null && child.signalCode === null;
    },
    kill9: () => kill('SIGKILL'),
    start,
    stop: () => kill('SIGTERM'),
  };
}
