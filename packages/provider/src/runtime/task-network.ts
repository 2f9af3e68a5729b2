import { spawn } from 'node:child_process';
import { constants as fsConstants } from 'node:fs';
import { access, stat } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import type { Readable } from 'node:stream';
import { GridworkError } from '@gridwork/protocol';

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

/** unreachable routes for the blocked ranges and every IPv4 address of the host. */
function routeBatch(): string {
  const own = Object.values(os.networkInterfaces())
    .flat()
    .filter((a) => a !== undefined && a.family === 'IPv4' && !a.internal)
    .map((a) => `${a?.address}/32`);
  return [...BLOCKED_IPV4_RANGES, ...own].map((r) => `route add unreachable ${r}\n`).join('');
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
  /** Stops slirp4netns (the task's network goes away with it). */
  close(): Promise<void>;
}

/**
 * Configures the network namespace of process `pid` (the outer bwrap, started behind networkNamespacePrefix):
 * starts slirp4netns, waits until tap0 is up, adds the unreachable routes. Throws SANDBOX_UNAVAILABLE if any
 * step fails (slirp4netns is stopped again first).
 */
export async function startTaskNetwork(
  pid: number,
  tools: TaskNetworkTools,
  opts: { env: Record<string, string>; dropTo?: { uid: number; gid: number } },
): Promise<TaskNetwork> {
  const userns = `/proc/${pid}/ns/user`;
  const netns = `/proc/${pid}/ns/net`;
  // As the task's uid only if that uid may open /dev/net/tun (see the header comment).
  const tun = await stat('/dev/net/tun').catch(() => undefined);
  const tunForAll = tun !== undefined && (tun.mode & 0o006) === 0o006;
  const drop = opts.dropTo && tunForAll ? [tools.setprivPath, `--reuid=${opts.dropTo.uid}`, `--regid=${opts.dropTo.gid}`, '--clear-groups', '--nnp', '--'] : [];
  const slirpArgs = [
    '--configure',
    `--mtu=${SLIRP_MTU}`,
    '--disable-host-loopback',
    // slirp4netns 1.2's sandbox needs root (setegid(0)); as the task's uid it has nothing to give up anyway.
    ...(drop.length > 0 ? [] : ['--enable-sandbox']),
    '--enable-seccomp',
    '--ready-fd=3',
    '--exit-fd=4',
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
  const routes = await runQuiet(tools.nsenterPath, [...enter, '--', tools.ipPath, '-force', '-batch', '-'], opts.env, routeBatch());
  if (routes.code !== 0) {
    stderr += routes.stderr;
    return fail(`adding routes failed with exit code ${routes.code}`);
  }
  return { close };
}
