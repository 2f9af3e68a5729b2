/**
 * Coordinators and provider agents as real child processes (the `gridwork` binary), for tests
 * that kill them with SIGKILL and start them again. Each child is started, awaited until it
 * prints its ready JSON line, and keeps its stdout and stderr for diagnostics when a test fails.
 * Import this file directly; it is deliberately not re-exported from the testkit's index.
 */
import { type ChildProcess, spawn } from 'node:child_process';
import { readdirSync, readFileSync } from 'node:fs';
import { createServer } from 'node:net';
import { dirname, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

/** The CLI entry point, run with this Node: no npx, no shell, so the child's pid is the agent's own. */
export const GRIDWORK_BIN = resolve(dirname(fileURLToPath(import.meta.url)), '../../cli/bin/gridwork.js');

/** Output kept per stream (the tail); enough for the last few hundred log lines. */
const KEEP_CHARS = 256 * 1024;

export interface ExitStatus {
  code: number | null;
  signal: NodeJS.Signals | null;
}

export interface GridworkProcess {
  /** A label for diagnostics, e.g. `coordinator#2` or `provider-1`. */
  readonly label: string;
  readonly child: ChildProcess;
  readonly pid: number;
  /** The ready line the process printed, parsed. */
  readonly ready: Record<string, unknown>;
  /** Resolves when the process has exited (with its status). */
  readonly exited: Promise<ExitStatus>;
  readonly alive: boolean;
  stdout(): string;
  stderr(): string;
  /** SIGKILL (kill -9): no handler runs, nothing is flushed. Resolves once the process is gone. */
  kill9(): Promise<ExitStatus>;
  /** SIGTERM, then SIGKILL after `graceMs`. Resolves once the process is gone. */
  stop(graceMs?: number): Promise<ExitStatus>;
}

export interface StartProcessOptions {
  label: string;
  /** Arguments after `gridwork`. */
  args: readonly string[];
  /** The `event` of the JSON line on stdout that says the process is ready. */
  readyEvent: string;
  /** Added to the test process's environment. `undefined` removes a variable. */
  env?: Record<string, string | undefined>;
  /** @default 60_000 */
  readyTimeoutMs?: number;
}

class Tail {
  private text = '';
  push(chunk: string): void {
    this.text += chunk;
    if (this.text.length > KEEP_CHARS * 2) this.text = this.text.slice(-KEEP_CHARS);
  }
  get value(): string {
    return this.text.length > KEEP_CHARS ? this.text.slice(-KEEP_CHARS) : this.text;
  }
}

/** Starts `gridwork ARGS…` and resolves once it printed `{"event": readyEvent, …}` on stdout. */
export async function startGridworkProcess(options: StartProcessOptions): Promise<GridworkProcess> {
  const env: Record<string, string> = {};
  // NODE_TEST_CONTEXT (set by the test runner for this process) is not the child's business.
  for (const [k, v] of Object.entries({ ...process.env, NODE_TEST_CONTEXT: undefined, ...options.env })) if (v !== undefined) env[k] = v;
  const child = spawn(process.execPath, [GRIDWORK_BIN, ...options.args], { env, stdio: ['ignore', 'pipe', 'pipe'] });
  const out = new Tail();
  const err = new Tail();
  let status: ExitStatus | undefined;
  const exited = new Promise<ExitStatus>((resolveExit) => {
    child.once('exit', (code, signal) => {
      status = { code, signal };
      resolveExit(status);
    });
  });
  child.stdout.setEncoding('utf8');
  child.stderr.setEncoding('utf8');
  child.stderr.on('data', (d: string) => err.push(d));

  const describe = () => `${options.label} (gridwork ${options.args.join(' ')})`;
  const ready = await new Promise<Record<string, unknown>>((resolveReady, reject) => {
    let pending = '';
    const timer = setTimeout(() => {
      child.kill('SIGKILL');
      reject(
        new Error(
          `${describe()} printed no "${options.readyEvent}" line within ${options.readyTimeoutMs ?? 60_000} ms\nstdout:\n${out.value}\nstderr:\n${err.value}`,
        ),
      );
    }, options.readyTimeoutMs ?? 60_000);
    const onData = (d: string) => {
      out.push(d);
      pending += d;
      let nl = pending.indexOf('\n');
      while (nl >= 0) {
        const line = pending.slice(0, nl).trim();
        pending = pending.slice(nl + 1);
        nl = pending.indexOf('\n');
        if (!line.startsWith('{')) continue;
        try {
          const parsed = JSON.parse(line) as Record<string, unknown>;
          if (parsed.event === options.readyEvent) {
            clearTimeout(timer);
            child.off('exit', onEarlyExit);
            resolveReady(parsed);
            return;
          }
        } catch {
          // not a JSON line: keep reading
        }
      }
    };
    const onEarlyExit = (code: number | null, signal: NodeJS.Signals | null) => {
      clearTimeout(timer);
      reject(new Error(`${describe()} exited (code ${code}, signal ${signal}) before it was ready\nstdout:\n${out.value}\nstderr:\n${err.value}`));
    };
    child.stdout.on('data', onData);
    child.once('exit', onEarlyExit);
    child.once('error', (e) => {
      clearTimeout(timer);
      reject(new Error(`${describe()} could not be started: ${e.message}`));
    });
  });
  // Keep draining stdout after the ready line so the child never blocks on a full pipe.
  child.stdout.removeAllListeners('data');
  child.stdout.on('data', (d: string) => out.push(d));

  const killAndWait = (signal: NodeJS.Signals): Promise<ExitStatus> => {
    if (status) return Promise.resolve(status);
    child.kill(signal);
    return exited;
  };
  return {
    label: options.label,
    child,
    pid: child.pid as number,
    ready,
    exited,
    get alive() {
      return status === undefined;
    },
    stdout: () => out.value,
    stderr: () => err.value,
    kill9: () => killAndWait('SIGKILL'),
    async stop(graceMs = 10_000) {
      if (status) return status;
      child.kill('SIGTERM');
      const timer = setTimeout(() => child.kill('SIGKILL'), graceMs);
      const s = await exited;
      clearTimeout(timer);
      return s;
    },
  };
}

export interface CoordinatorProcessOptions {
  dataDir: string;
  /** A fixed port, so a restarted coordinator comes back on the same URL (see freePort). */
  port: number;
  /** @default 500 */
  heartbeatMs?: number;
  /** @default 'warn' */
  logLevel?: string;
  /** Further `coordinator start` options, e.g. ['--dev', '--metering-ms', '500']. */
  args?: readonly string[];
  /** E.g. GRIDWORK_DATABASE_URL and GRIDWORK_DATABASE_SCHEMA for PostgreSQL. Without them PGlite under dataDir is used. */
  env?: Record<string, string | undefined>;
  label?: string;
}

export interface CoordinatorProcess extends GridworkProcess {
  readonly url: string;
}

/** `gridwork coordinator start`; resolves once it listens. */
export async function startCoordinatorProcess(o: CoordinatorProcessOptions): Promise<CoordinatorProcess> {
  const p = await startGridworkProcess({
    label: o.label ?? 'coordinator',
    args: [
      'coordinator',
      'start',
      '--port',
      String(o.port),
      '--data',
      o.dataDir,
      '--heartbeat-ms',
      String(o.heartbeatMs ?? 500),
      '--log-level',
      o.logLevel ?? 'warn',
      ...(o.args ?? []),
    ],
    readyEvent: 'listening',
    // PGlite unless the caller names PostgreSQL: never pick up a URL from the developer's shell.
    env: { GRIDWORK_DATABASE_URL: undefined, GRIDWORK_DATABASE_SCHEMA: undefined, ...o.env },
  });
  return Object.assign(p, { url: String(p.ready.url) });
}

export interface ProviderProcessOptions {
  coordinatorUrl: string;
  /** Holds the agent's key: the same directory means the same provider identity. */
  dataDir: string;
  name: string;
  /** @default 1 */
  slots?: number;
  /** @default 'sandbox' */
  runtime?: 'sandbox' | 'process';
  /** @default 'warn' */
  logLevel?: string;
  /** How long SIGTERM lets running tasks finish (stop()). @default 2000 */
  drainTimeoutMs?: number;
  /** Further `provider start` options, e.g. ['--price-cpu', '0.05']. */
  args?: readonly string[];
  env?: Record<string, string | undefined>;
  label?: string;
}

export interface ProviderProcess extends GridworkProcess {
  /** The provider's id (its public key). */
  readonly id: string;
  readonly name: string;
}

/** `gridwork provider start`; resolves once the agent has started (it connects by itself). */
export async function startProviderProcess(o: ProviderProcessOptions): Promise<ProviderProcess> {
  const p = await startGridworkProcess({
    label: o.label ?? o.name,
    args: [
      'provider',
      'start',
      '--coordinator',
      o.coordinatorUrl,
      '--data',
      o.dataDir,
      '--name',
      o.name,
      '--gpus',
      'none',
      '--runtime',
      o.runtime ?? 'sandbox',
      '--slots',
      String(o.slots ?? 1),
      '--drain-timeout-ms',
      String(o.drainTimeoutMs ?? 2000),
      '--log-level',
      o.logLevel ?? 'warn',
      ...(o.args ?? []),
    ],
    readyEvent: 'started',
    env: o.env ?? {},
  });
  return Object.assign(p, { id: String(p.ready.id), name: String(p.ready.name) });
}

/**
 * A loopback port that was free a moment ago (listened on, then closed), for a coordinator that
 * must come back on the same URL after a kill. It is taken below Linux's ephemeral range
 * (/proc/sys/net/ipv4/ip_local_port_range, 32768+ by default) so that, while the coordinator is
 * down, no outgoing connection on this machine is handed the port as its local end.
 */
export async function freePort(): Promise<number> {
  for (let attempt = 0; attempt < 50; attempt++) {
    const port = 20_000 + Math.floor(Math.random() * 12_000);
    if (await canListen(port)) return port;
  }
  throw new Error('no free port found between 20000 and 32000');
}

function canListen(port: number): Promise<boolean> {
  return new Promise((resolvePort) => {
    const server = createServer();
    server.unref();
    server.once('error', () => resolvePort(false));
    server.listen({ host: '127.0.0.1', port }, () => server.close(() => resolvePort(true)));
  });
}

/**
 * Live processes whose command line (or, with `environ`, environment) contains `needle`, read
 * from /proc (Linux only). Reading another user's environment needs root, which the sandbox
 * tests have anyway. Zombies have an empty command line and are not reported: they are dead.
 */
export function processesMatching(needle: string, options: { environ?: boolean } = {}): { pid: number; cmdline: string }[] {
  const found: { pid: number; cmdline: string }[] = [];
  for (const entry of readdirSync('/proc')) {
    if (!/^\d+$/.test(entry) || Number(entry) === process.pid) continue;
    try {
      const cmdline = readFileSync(`/proc/${entry}/cmdline`, 'utf8').replaceAll('\0', ' ').trim();
      if (cmdline === '') continue;
      if (cmdline.includes(needle) || (options.environ && readFileSync(`/proc/${entry}/environ`, 'utf8').includes(needle))) {
        found.push({ pid: Number(entry), cmdline });
      }
    } catch {
      // gone meanwhile, or not ours to read
    }
  }
  return found;
}

/** Everything the given processes wrote to stderr (tails), labelled: for assertion messages. */
export function diagnostics(processes: readonly (GridworkProcess | undefined)[]): string {
  return processes
    .filter((p): p is GridworkProcess => p !== undefined)
    .map((p) => `--- ${p.label} (pid ${p.pid}, ${p.alive ? 'alive' : 'exited'}) stderr:\n${p.stderr().slice(-8000) || '(empty)'}`)
    .join('\n');
}

/** Stops whatever is still running, politely first; for `after()` hooks. */
export async function stopAll(processes: readonly (GridworkProcess | undefined)[], graceMs = 5000): Promise<void> {
  await Promise.all(processes.filter((p): p is GridworkProcess => p?.alive === true).map((p) => p.stop(graceMs)));
}
