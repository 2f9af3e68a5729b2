import { spawn } from 'node:child_process';
import { constants as fsConstants } from 'node:fs';
import { access, chown, mkdtemp, rm, stat } from 'node:fs/promises';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import type { Readable } from 'node:stream';
import { GridworkError } from '@gridwork/protocol';
import type { ExposedPort } from './runtime.ts';

/**
 * Network for sandboxed tasks that may use it (`network: true`). The task never shares the host's network
 * namespace (that would hand it the host's loopback services: PostgreSQL with trust auth, NATS, Redis, the
 * coordinator). Instead:
 *
 *   1. the launcher runs `unshare --user --net --map-user=U --map-group=U` in front of bwrap, so bwrap (and, with
 *      --share-net, the task) lives in a fresh network namespace owned by a user namespace of the task's uid U.
 *      (bwrap's own --unshare-net would put the namespace under an intermediate user namespace that no path in
 *      /proc names, so nothing could join it to configure it);
 *   2. bwrap waits on --block-fd before it executes the task; meanwhile the agent starts slirp4netns on that
 *      namespace: a user-mode TCP/IP stack that gives it `tap0` (10.0.2.100/24, gateway 10.0.2.2, DNS 10.0.2.3)
 *      and forwards the task's connections through ordinary sockets of the host. `--disable-host-loopback` makes
 *      10.0.2.2 refuse instead of reaching the host's 127.0.0.1; IPv6 is not enabled;
 *   3. the agent adds `unreachable` routes inside the namespace for private, shared, link-local, multicast and
 *      reserved IPv4 ranges and for every address of the host itself (slirp would otherwise connect to them for
 *      the task), then releases the block. The task has no capabilities over that namespace (it runs in a user
 *      namespace nested below its owner), so it cannot change the routes back.
 *
 * Exposed ports (services): the agent reaches a task port through a host port that slirp4netns forwards
 * (`--api-socket`, `add_hostfwd` on 127.0.0.1 of the host to 10.0.2.100:<task port>). A task with ports but
 * without `network` gets the same namespace with no way out: every route but an on-link 10.0.2.2/32 (where the
 * forwarded connections come from) is deleted, so it can answer connections and open none: 10.0.2.2 refuses
 * (--disable-host-loopback), DNS on 10.0.2.3 and everything else is "network unreachable". Such a task must
 * listen on 0.0.0.0 (or 10.0.2.100), not on its own loopback, which slirp4netns cannot reach.
 *
 * slirp4netns runs as the task's uid when /dev/net/tun is open to everyone (the Debian default, mode 0666),
 * with --enable-seccomp; where it is root-only (mode 0600, as on these CI machines) it has to run as root, and
 * then runs with --enable-sandbox as well (an empty filesystem, capabilities dropped). If slirp4netns (Debian package `slirp4netns`) or
 * unshare/nsenter/ip are missing, or slirp4netns cannot configure the namespace, the run is refused with
 * SANDBOX_UNAVAILABLE: network access never degrades to the host's namespace.
 */

export const NETWORK_INSTALL_HINT = 'network access for tasks needs slirp4netns (apt-get install -y slirp4netns)';

/** slirp4netns's fixed addresses with --configure. */
export const SLIRP_DNS = '10.0.2.3';
const SLIRP_MTU = 65520;
/** How long slirp4netns may take to configure the namespace. */
const SLIRP_READY_TIMEOUT_MS = 15_000;

/** IPv4 ranges a task with network may not reach (slirp's own 10.0.2.0/24 stays on-link: a more specific route). */
export const BLOCKED_IPV4_RANGES: readonly string[] = [
  '0.0.0.0/8', // "this network"
  '10.0.0.0/8', // private
  '100.64.0.0/10', // carrier-grade NAT
  '169.254.0.0/16', // link-local (cloud metadata services live here)
  '172.16.0.0/12', // private
  '192.0.0.0/24', // IETF protocol assignments
  '192.0.2.0/24', // documentation
  '192.168.0.0/16', // private
  '198.18.0.0/15', // benchmarking
  '198.51.100.0/24', // documentation
  '203.0.113.0/24', // documentation
  '224.0.0.0/4', // multicast
  '240.0.0.0/4', // reserved, broadcast
];

export interface TaskNetworkTools {
  slirp4netnsPath: string;
  unsharePath: string;
  nsenterPath: string;
  ipPath: string;
  setprivPath: string;
}

/** Resolves a command name through PATH (as the launcher's environment would), or checks an explicit path. */
export async function findExecutable(name: string, searchPath: string): Promise<string | undefined> {
  const candidates = name.includes('/') ? [name] : searchPath.split(':').map((dir) => path.join(dir, name));
  for (const candidate of candidates) {
    const st = await stat(candidate).catch(() => undefined);
    if (
      st?.isFile() &&
      (await access(candidate, fsConstants.X_OK)
        .then(() => true)
        .catch(() => false))
    )
      return candidate;
  }
  return undefined;
}

/** Throws SANDBOX_UNAVAILABLE (before anything runs) when a tool the network needs is missing. */
export async function assertNetworkTools(tools: TaskNetworkTools, searchPath: string): Promise<void> {
  for (const name of [tools.slirp4netnsPath, tools.unsharePath, tools.nsenterPath, tools.ipPath]) {
    if (!(await findExecutable(name, searchPath))) {
      throw new GridworkError('SANDBOX_UNAVAILABLE', `sandbox: ${name} not found; ${NETWORK_INSTALL_HINT}. Refusing to run the task with the host's network`);
    }
  }
}

/** Launcher prefix that gives bwrap a fresh user + network namespace mapping uid/gid onto themselves. */
export function networkNamespacePrefix(tools: TaskNetworkTools, uid: number, gid: number): string[] {
  return [tools.unsharePath, '--user', '--net', `--map-user=${uid}`, `--map-group=${gid}`, '--'];
}

/** The task's /etc/resolv.conf: slirp4netns answers DNS on 10.0.2.3 (the host's resolver may be on its loopback). */
export const TASK_RESOLV_CONF = `nameserver ${SLIRP_DNS}\n`;

/** slirp4netns's address for the host (the source of forwarded connections) with --configure. */
const SLIRP_GATEWAY = '10.0.2.2';

/**
 * The `ip -batch` script that fences the namespace: unreachable routes for the blocked ranges and every IPv4
 * address of the host; or, for a task without network (only exposed ports), no route at all but the on-link
 * gateway, so that forwarded connections can be answered and nothing else is reachable.
 */
export function routeBatch(isolated: boolean, hostAddresses: readonly string[] = ownAddresses()): string {
  if (isolated) return `route del default\nroute del 10.0.2.0/24 dev tap0\nroute add ${SLIRP_GATEWAY}/32 dev tap0\n`;
  return [...BLOCKED_IPV4_RANGES, ...hostAddresses.map((a) => `${a}/32`)].map((r) => `route add unreachable ${r}\n`).join('');
}

function ownAddresses(): string[] {
  return Object.values(os.networkInterfaces())
    .flat()
    .filter((a) => a !== undefined && a.family === 'IPv4' && !a.internal)
    .map((a) => a?.address ?? '');
}

/** A TCP port that is free on 127.0.0.1 right now (the kernel's pick). */
export function freeLoopbackPort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = net.createServer();
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => {
      const address = server.address();
      server.close(() => (typeof address === 'object' && address ? resolve(address.port) : reject(new Error('no port'))));
    });
  });
}

/** One request on slirp4netns's API socket; resolves with the parsed answer. */
function slirpApi(socketPath: string, request: unknown): Promise<{ return?: unknown; error?: { desc?: string } }> {
  return new Promise((resolve, reject) => {
    const socket = net.connect({ path: socketPath });
    let text = '';
    const timer = setTimeout(() => socket.destroy(new Error('slirp4netns API did not answer')), 5000);
    socket.setEncoding('utf8');
    socket.on('data', (d: string) => {
      text += d;
    });
    socket.on('error', (err) => {
      clearTimeout(timer);
      reject(err);
    });
    socket.on('end', () => {
      clearTimeout(timer);
      try {
        resolve(JSON.parse(text) as { return?: unknown; error?: { desc?: string } });
      } catch {
        reject(new Error(`slirp4netns API answered ${JSON.stringify(text.slice(0, 200))}`));
      }
    });
    socket.end(JSON.stringify(request));
  });
}

/** Forwards 127.0.0.1:<a free port> of the host to the task's port; retries a port taken meanwhile. */
async function forwardPort(socketPath: string, taskPort: number): Promise<ExposedPort> {
  let last = '';
  for (let attempt = 0; attempt < 5; attempt++) {
    const host = await freeLoopbackPort();
    const answer = await slirpApi(socketPath, {
      execute: 'add_hostfwd',
      arguments: { proto: 'tcp', host_addr: '127.0.0.1', host_port: host, guest_port: taskPort },
    });
    if (answer.error === undefined) return { task: taskPort, host, address: '127.0.0.1' };
    last = answer.error.desc ?? JSON.stringify(answer.error);
  }
  throw new Error(`cannot forward a host port to task port ${taskPort}: ${last}`);
}

/** Runs a short command and collects its stderr; resolves with its exit code. */
function runQuiet(file: string, args: string[], env: Record<string, string>, input?: string): Promise<{ code: number | null; stderr: string }> {
  return new Promise((resolve) => {
    const child = spawn(file, args, { env, stdio: [input === undefined ? 'ignore' : 'pipe', 'ignore', 'pipe'] });
    let stderr = '';
    child.stderr?.setEncoding('utf8');
    child.stderr?.on('data', (d: string) => {
      if (stderr.length < 4000) stderr += d;
    });
    child.on('error', (err) => resolve({ code: 127, stderr: err.message }));
    child.on('close', (code) => resolve({ code, stderr }));
    if (input !== undefined) child.stdin?.end(input);
  });
}

export interface TaskNetwork {
  /** Host ports forwarded to the task's ports, in the order asked. */
  ports: ExposedPort[];
  /** Stops slirp4netns (the task's network goes away with it). */
  close(): Promise<void>;
}

export interface TaskNetworkOptions {
  env: Record<string, string>;
  dropTo?: { uid: number; gid: number };
  /** Task ports to forward from host ports. @default [] */
  ports?: readonly number[];
  /** No way out at all (a task without `network` that exposes ports). @default false */
  isolated?: boolean;
}

/**
 * Configures the network namespace of process `pid` (the outer bwrap, started behind networkNamespacePrefix):
 * starts slirp4netns, waits until tap0 is up, adds the unreachable routes. Throws SANDBOX_UNAVAILABLE if any
 * step fails (slirp4netns is stopped again first).
 */
export async function startTaskNetwork(pid: number, tools: TaskNetworkTools, opts: TaskNetworkOptions): Promise<TaskNetwork> {
  const userns = `/proc/${pid}/ns/user`;
  const netns = `/proc/${pid}/ns/net`;
  // As the task's uid only if that uid may open /dev/net/tun (see the header comment).
  const tun = await stat('/dev/net/tun').catch(() => undefined);
  const tunForAll = tun !== undefined && (tun.mode & 0o006) === 0o006;
  const drop = opts.dropTo && tunForAll ? [tools.setprivPath, `--reuid=${opts.dropTo.uid}`, `--regid=${opts.dropTo.gid}`, '--clear-groups', '--nnp', '--'] : [];
  const ports = opts.ports ?? [];
  // The API socket lives in a directory of its own, owned by whoever runs slirp4netns.
  let apiDir: string | undefined;
  if (ports.length > 0) {
    apiDir = await mkdtemp(path.join(os.tmpdir(), 'gw-slirp-'));
    if (drop.length > 0 && opts.dropTo) await chown(apiDir, opts.dropTo.uid, opts.dropTo.gid);
  }
  const apiSocket = apiDir === undefined ? undefined : path.join(apiDir, 'api.sock');
  const slirpArgs = [
    '--configure',
    `--mtu=${SLIRP_MTU}`,
    '--disable-host-loopback',
    // slirp4netns 1.2's sandbox needs root (setegid(0)); as the task's uid it has nothing to give up anyway.
    ...(drop.length > 0 ? [] : ['--enable-sandbox']),
    '--enable-seccomp',
    '--ready-fd=3',
    '--exit-fd=4',
    ...(apiSocket === undefined ? [] : [`--api-socket=${apiSocket}`]),
    `--userns-path=${userns}`,
    String(pid),
    'tap0',
  ];
  const argv = [...drop, tools.slirp4netnsPath, ...slirpArgs];
  const child = spawn(argv[0] ?? tools.slirp4netnsPath, argv.slice(1), { env: opts.env, stdio: ['ignore', 'ignore', 'pipe', 'pipe', 'pipe'] });
  let stderr = '';
  child.stderr?.setEncoding('utf8');
  child.stderr?.on('data', (d: string) => {
    if (stderr.length < 4000) stderr += d;
  });
  const exitFd = child.stdio[4] as Readable | null;
  const readyFd = child.stdio[3] as Readable | null;
  exitFd?.on('error', () => {});
  readyFd?.on('error', () => {});
  let exited = false;
  const exitedPromise = new Promise<void>((resolve) => {
    child.on('close', () => {
      exited = true;
      resolve();
    });
    child.on('error', (err) => {
      stderr += err.message;
      exited = true;
      resolve();
    });
  });

  const close = async () => {
    if (!exited) {
      try {
        child.kill('SIGTERM');
      } catch {
        // already gone
      }
      exitFd?.destroy();
      const killer = setTimeout(() => child.kill('SIGKILL'), 2000);
      await exitedPromise;
      clearTimeout(killer);
    }
    readyFd?.destroy();
    if (apiDir !== undefined) await rm(apiDir, { recursive: true, force: true }).catch(() => {});
  };

  const fail = async (why: string): Promise<never> => {
    await close();
    const text = stderr
      .split('\n')
      .filter((l) => l.trim() !== '' && !l.includes('seccomp is experimental'))
      .join('; ');
    throw new GridworkError(
      'SANDBOX_UNAVAILABLE',
      `sandbox: could not give the task its own network (${why}${text ? `: ${text}` : ''}); the task was not started`,
    );
  };

  const ready = await new Promise<boolean>((resolve) => {
    const timer = setTimeout(() => resolve(false), SLIRP_READY_TIMEOUT_MS);
    readyFd?.once('data', () => {
      clearTimeout(timer);
      resolve(true);
    });
    void exitedPromise.then(() => {
      clearTimeout(timer);
      resolve(false);
    });
  });
  if (!ready) return fail(exited ? 'slirp4netns exited' : 'slirp4netns did not get ready');

  // Only the agent gets CAP_NET_ADMIN over the task's network namespace, never the task.
  // Root may enter the network namespace directly; another agent uid is the owner of the user namespace.
  const enter = process.getuid?.() === 0 ? [`--net=${netns}`] : [`--user=${userns}`, `--net=${netns}`, '--preserve-credentials'];
  const routes = await runQuiet(tools.nsenterPath, [...enter, '--', tools.ipPath, '-force', '-batch', '-'], opts.env, routeBatch(opts.isolated ?? false));
  if (routes.code !== 0) {
    stderr += routes.stderr;
    return fail(`adding routes failed with exit code ${routes.code}`);
  }
  const forwarded: ExposedPort[] = [];
  for (const port of ports) {
    try {
      forwarded.push(await forwardPort(apiSocket as string, port));
    } catch (err) {
      return fail((err as Error).message);
    }
  }
  return { ports: forwarded, close };
}
