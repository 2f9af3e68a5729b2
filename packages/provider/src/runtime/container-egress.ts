/**
 * The egress filter of task containers: what task-network.ts does for sandboxed tasks with unreachable routes,
 * done here by the host's packet filter, because a container's routes belong to the engine.
 *
 * A container with `network: true` joins a bridge network of the agent's own (never the engine's default
 * bridge), and two chains of the host's iptables `filter` table apply to everything that enters the host from
 * that bridge:
 *
 *   GRIDWORK-EGRESS, jumped to from the top of DOCKER-USER (the engine's hook, evaluated first in FORWARD):
 *     traffic routed beyond the host to the ranges the sandbox blocks (BLOCKED_IPV4_RANGES: private, shared,
 *     link-local with the cloud metadata address 169.254.169.254, multicast, reserved) is rejected with "network
 *     unreachable", the answer the sandbox's unreachable routes give; public destinations pass (the engine
 *     masquerades them as before);
 *   GRIDWORK-EGRESS-IN, jumped to from the top of INPUT: traffic to the host itself (the bridge's gateway, the
 *     engine's other bridges, every interface, and addresses that appear later) is rejected, except the replies
 *     of connections the host opened (the agent's health checks, the engine's port proxy on 127.0.0.1).
 *
 * Both let DNS (port 53) through to the host's resolvers from /etc/resolv.conf: the engine's resolver inside the
 * container forwards queries to them, often on a private address (slirp4netns forwards the sandbox's DNS to the
 * same resolvers). The network is created without IPv6, and the engine disables IPv6 inside its containers.
 * The agent-only network of containers that expose ports without network access (`internal`: no route out) gets
 * the same jumps, so that such a task cannot reach the host through its gateway either.
 *
 * Fail closed: before each container that needs the filter starts, one `iptables -S` checks that both chains are
 * as installed and both jumps of its bridge come first; missing or moved rules are reinstalled in one
 * `iptables-restore --noflush` transaction and verified again. When that cannot be done (no iptables, an agent
 * without root, the engine's chains in the other iptables backend or absent because it runs with
 * --iptables=false, an engine on another machine whose bridge is not an interface here), the run is refused with
 * SANDBOX_UNAVAILABLE: network access never falls back to an unfiltered bridge.
 */
import { spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import { readFile } from 'node:fs/promises';
import { isIPv4 } from 'node:net';
import { GridworkError } from '@gridwork/protocol';
import { BLOCKED_IPV4_RANGES } from './task-network.ts';

/** Applies to traffic from task bridges that the host forwards (jumped to from DOCKER-USER). */
export const EGRESS_FORWARD_CHAIN = 'GRIDWORK-EGRESS';
/** Applies to traffic from task bridges to the host itself (jumped to from INPUT). */
export const EGRESS_INPUT_CHAIN = 'GRIDWORK-EGRESS-IN';
/** The engine's chain for its users' rules, evaluated first in FORWARD. */
export const ENGINE_USER_CHAIN = 'DOCKER-USER';

export const EGRESS_INSTALL_HINT =
  'network access for containers needs iptables (apt-get install -y iptables), an agent running as root and a local engine that manages iptables';

const ESTABLISHED = '-m conntrack --ctstate RELATED,ESTABLISHED -j RETURN';
const REJECT = '-j REJECT --reject-with icmp-net-unreachable';
/** Linux interface names: at most 15 characters; these are the ones the engine makes. */
const BRIDGE_NAME = /^[A-Za-z0-9][A-Za-z0-9_.-]{0,14}$/;

/** The filter's rules (iptables rule specifications, as `iptables -S` prints them after `-A CHAIN`). */
export interface EgressRules {
  forward: string[];
  input: string[];
}

/** The IPv4 resolvers of a resolv.conf, except loopback ones (the engine never forwards to those). */
export function resolvConfNameservers(text: string): string[] {
  const found = new Set<string>();
  for (const line of text.split('\n')) {
    const address = /^\s*nameserver\s+(\S+)/.exec(line)?.[1];
    if (address && isIPv4(address) && !address.startsWith('127.')) found.add(address);
  }
  return [...found];
}

/** The rules of both chains. Pure. */
export function egressRules(nameservers: readonly string[]): EgressRules {
  const dns = nameservers.flatMap((ns) => ['udp', 'tcp'].map((proto) => `-d ${ns}/32 -p ${proto} -m ${proto} --dport 53 -j RETURN`));
  return {
    forward: [ESTABLISHED, ...dns, ...BLOCKED_IPV4_RANGES.map((range) => `-d ${range} ${REJECT}`)],
    input: [ESTABLISHED, ...dns, REJECT],
  };
}

/** The two jumps that send a bridge's traffic through the filter. */
export function egressJumps(bridge: string): { chain: string; rule: string }[] {
  return [
    { chain: 'INPUT', rule: `-i ${bridge} -j ${EGRESS_INPUT_CHAIN}` },
    { chain: ENGINE_USER_CHAIN, rule: `-i ${bridge} -j ${EGRESS_FORWARD_CHAIN}` },
  ];
}

/** `iptables -S` output → each chain's rules (without `-A CHAIN `); chains without rules are present, empty. */
export function parseRuleListing(listing: string): Map<string, string[]> {
  const chains = new Map<string, string[]>();
  for (const line of listing.split('\n')) {
    const m = /^-([NPA]) (\S+)(?: (.*))?$/.exec(line.trim());
    if (!m?.[2]) continue;
    const rules = chains.get(m[2]) ?? [];
    chains.set(m[2], rules);
    if (m[1] === 'A') rules.push(m[3] ?? '');
  }
  return chains;
}

const isEgressJump = (rule: string) => /^-i \S+ -j GRIDWORK-EGRESS(-IN)?$/.test(rule);

/** Whether `rule` comes before every rule of the chain that is not a jump into the filter. */
export function jumpFirst(rules: readonly string[], rule: string): boolean {
  for (const r of rules) {
    if (r === rule) return true;
    if (!isEgressJump(r)) return false;
  }
  return false;
}

/**
 * The `iptables-restore --noflush` input, one transaction: both chains rewritten (declaring a chain flushes it),
 * and the bridge's jumps moved to the top of their chains (`existing` says how many copies to delete first).
 */
export function egressRestoreScript(rules: EgressRules, bridge: string, existing: ReadonlyMap<string, readonly string[]>): string {
  const lines = ['*filter', `:${EGRESS_FORWARD_CHAIN} - [0:0]`, `:${EGRESS_INPUT_CHAIN} - [0:0]`];
  for (const rule of rules.forward) lines.push(`-A ${EGRESS_FORWARD_CHAIN} ${rule}`);
  for (const rule of rules.input) lines.push(`-A ${EGRESS_INPUT_CHAIN} ${rule}`);
  for (const jump of egressJumps(bridge)) {
    const copies = existing.get(jump.chain)?.filter((r) => r === jump.rule).length ?? 0;
    for (let i = 0; i < copies; i++) lines.push(`-D ${jump.chain} ${jump.rule}`);
    lines.push(`-I ${jump.chain} 1 ${jump.rule}`);
  }
  lines.push('COMMIT', '');
  return lines.join('\n');
}

export interface CommandResult {
  code: number | null;
  stdout: string;
  stderr: string;
}

/** Runs a command (no shell) with `input` on its stdin. */
export type CommandRunner = (file: string, args: readonly string[], input?: string) => Promise<CommandResult>;

/** The default CommandRunner: a missing command ends with code 127 and the spawn error as stderr. */
export const runCommand: CommandRunner = (file, args, input) =>
  new Promise((resolve) => {
    const child = spawn(file, [...args], { stdio: [input === undefined ? 'ignore' : 'pipe', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdout?.setEncoding('utf8').on('data', (d: string) => {
      stdout += d;
    });
    child.stderr?.setEncoding('utf8').on('data', (d: string) => {
      if (stderr.length < 4000) stderr += d;
    });
    child.stdin?.on('error', () => {});
    child.on('error', (err) => resolve({ code: 127, stdout, stderr: err.message }));
    child.on('close', (code) => resolve({ code, stdout, stderr }));
    if (input !== undefined) child.stdin?.end(input);
  });

/** Puts a task bridge behind the filter, or throws SANDBOX_UNAVAILABLE. */
export interface EgressFilter {
  ensure(bridge: string): Promise<void>;
}

export interface IptablesEgressFilterOptions {
  /** @default 'iptables' (through PATH, as the engine finds it) */
  iptables?: string;
  /** @default 'iptables-restore' */
  iptablesRestore?: string;
  /** The host's resolvers that tasks may send DNS queries to. @default the IPv4 nameservers of /etc/resolv.conf */
  nameservers?: () => Promise<string[]>;
  /** Whether a network interface of that name exists on this host. @default a look in /sys/class/net */
  interfaceExists?: (name: string) => boolean;
  /** @default runCommand */
  run?: CommandRunner;
}

export class IptablesEgressFilter implements EgressFilter {
  private readonly iptables: string;
  private readonly iptablesRestore: string;
  private readonly nameservers: () => Promise<string[]>;
  private readonly interfaceExists: (name: string) => boolean;
  private readonly run: CommandRunner;
  /** Both chains as iptables listed them after the last verified install. */
  private installed: { forward: string[]; input: string[] } | undefined;
  private queue: Promise<unknown> = Promise.resolve();

  constructor(opts: IptablesEgressFilterOptions = {}) {
    this.iptables = opts.iptables ?? 'iptables';
    this.iptablesRestore = opts.iptablesRestore ?? 'iptables-restore';
    this.nameservers =
      opts.nameservers ??
      (() =>
        readFile('/etc/resolv.conf', 'utf8')
          .then(resolvConfNameservers)
          .catch(() => []));
    this.interfaceExists = opts.interfaceExists ?? ((name) => existsSync(`/sys/class/net/${name}`));
    this.run = opts.run ?? runCommand;
  }

  /** One at a time: concurrent starts would otherwise reinstall over each other. */
  ensure(bridge: string): Promise<void> {
    const next = this.queue.then(() => this.ensureNow(bridge));
    this.queue = next.catch(() => {});
    return next;
  }

  private async ensureNow(bridge: string): Promise<void> {
    const refuse = (why: string): never => {
      throw new GridworkError(
        'SANDBOX_UNAVAILABLE',
        `container runtime: cannot filter the network of bridge ${bridge} (${why}); ${EGRESS_INSTALL_HINT}. Refusing to run the task with unfiltered network access`,
      );
    };
    if (!BRIDGE_NAME.test(bridge)) refuse('not an interface name');
    if (!this.interfaceExists(bridge)) refuse('no such interface on this host: is the engine on another machine?');
    let chains = await this.list(refuse);
    if (!chains.has(ENGINE_USER_CHAIN)) {
      refuse(`${this.iptables} shows no ${ENGINE_USER_CHAIN} chain: the engine runs with --iptables=false or uses the other iptables backend`);
    }
    if (this.inPlace(chains, bridge)) return;

    const rules = egressRules(await this.nameservers());
    const restore = await this.run(this.iptablesRestore, ['-w', '--noflush'], egressRestoreScript(rules, bridge, chains));
    if (restore.code !== 0) refuse(`${this.iptablesRestore} exited with ${restore.code}: ${restore.stderr.trim()}`);
    chains = await this.list(refuse);
    for (const jump of egressJumps(bridge)) {
      if (!jumpFirst(chains.get(jump.chain) ?? [], jump.rule)) refuse(`"${jump.rule}" is not first in ${jump.chain} after installing it`);
    }
    const forward = chains.get(EGRESS_FORWARD_CHAIN) ?? [];
    const input = chains.get(EGRESS_INPUT_CHAIN) ?? [];
    if (!sameRules(forward, rules.forward) || !sameRules(input, rules.input)) {
      // Another iptables version may print a rule differently: ask it whether each one is there, and nothing else.
      if (forward.length !== rules.forward.length || input.length !== rules.input.length) refuse('the chains differ from what was installed');
      for (const [chain, list] of [
        [EGRESS_FORWARD_CHAIN, rules.forward],
        [EGRESS_INPUT_CHAIN, rules.input],
      ] as const) {
        for (const rule of list) {
          if ((await this.run(this.iptables, ['-w', '-C', chain, ...rule.split(' ')])).code !== 0)
            refuse(`"${rule}" is missing from ${chain} after installing it`);
        }
      }
    }
    this.installed = { forward, input };
  }

  private inPlace(chains: ReadonlyMap<string, readonly string[]>, bridge: string): boolean {
    if (this.installed === undefined) return false;
    return (
      sameRules(chains.get(EGRESS_FORWARD_CHAIN), this.installed.forward) &&
      sameRules(chains.get(EGRESS_INPUT_CHAIN), this.installed.input) &&
      egressJumps(bridge).every((jump) => jumpFirst(chains.get(jump.chain) ?? [], jump.rule))
    );
  }

  private async list(refuse: (why: string) => never): Promise<Map<string, string[]>> {
    const listed = await this.run(this.iptables, ['-w', '-S']);
    if (listed.code !== 0) refuse(`${this.iptables} -S exited with ${listed.code}: ${listed.stderr.trim()}`);
    return parseRuleListing(listed.stdout);
  }
}

function sameRules(a: readonly string[] | undefined, b: readonly string[]): boolean {
  return a !== undefined && a.length === b.length && a.every((rule, i) => rule === b[i]);
}
