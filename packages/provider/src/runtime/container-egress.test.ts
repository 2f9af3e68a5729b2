/**
 * The containers' egress filter: its rules (pure), the listing parser, and the install → check → reinstall flow
 * against an iptables kept in memory, with every way of failing refused. The rules against real packets, a real
 * engine and real containers: container-engine.test.ts.
 */
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { GridworkError } from '@gridwork/protocol';
import {
  type CommandResult,
  EGRESS_FORWARD_CHAIN,
  EGRESS_INPUT_CHAIN,
  egressJumps,
  egressRestoreScript,
  egressRules,
  IptablesEgressFilter,
  jumpFirst,
  parseRuleListing,
  resolvConfNameservers,
} from './container-egress.ts';
import { BLOCKED_IPV4_RANGES } from './task-network.ts';

describe('egress rules', () => {
  test('forwarded traffic: replies pass, DNS to the resolvers passes, every range the sandbox blocks is rejected as unreachable', () => {
    const { forward } = egressRules(['10.255.255.53']);
    assert.equal(forward[0], '-m conntrack --ctstate RELATED,ESTABLISHED -j RETURN');
    assert.deepEqual(forward.slice(1, 3), ['-d 10.255.255.53/32 -p udp -m udp --dport 53 -j RETURN', '-d 10.255.255.53/32 -p tcp -m tcp --dport 53 -j RETURN']);
    assert.deepEqual(
      forward.slice(3),
      BLOCKED_IPV4_RANGES.map((r) => `-d ${r} -j REJECT --reject-with icmp-net-unreachable`),
    );
    for (const range of ['10.0.0.0/8', '172.16.0.0/12', '192.168.0.0/16', '169.254.0.0/16', '100.64.0.0/10', '224.0.0.0/4']) {
      assert.ok(forward.includes(`-d ${range} -j REJECT --reject-with icmp-net-unreachable`), range);
    }
  });

  test('traffic to the host itself: only replies (and DNS to a resolver) pass, everything else is rejected', () => {
    assert.deepEqual(egressRules([]).input, ['-m conntrack --ctstate RELATED,ESTABLISHED -j RETURN', '-j REJECT --reject-with icmp-net-unreachable']);
    assert.equal(egressRules(['192.168.1.1']).input.at(-1), '-j REJECT --reject-with icmp-net-unreachable');
  });

  test("the host's resolvers: IPv4, not loopback (the engine never forwards there), each once", () => {
    const conf = '# generated\nnameserver 127.0.0.53\nnameserver 10.255.255.53\nnameserver ::1\nnameserver 10.255.255.53\n  nameserver 9.9.9.9 \nsearch x\n';
    assert.deepEqual(resolvConfNameservers(conf), ['10.255.255.53', '9.9.9.9']);
    assert.deepEqual(resolvConfNameservers(''), []);
  });

  test('listing, jump order and the restore transaction', () => {
    const chains = parseRuleListing(
      [
        '-P INPUT ACCEPT',
        '-N DOCKER-USER',
        '-N GRIDWORK-EGRESS',
        '-A INPUT -i gw0 -j GRIDWORK-EGRESS-IN',
        '-A INPUT -i br-1 -j GRIDWORK-EGRESS-IN',
        '-A INPUT -j ACCEPT',
        '-A DOCKER-USER -j RETURN',
        '# Warning: iptables-legacy tables present',
      ].join('\n'),
    );
    assert.deepEqual(chains.get('INPUT'), ['-i gw0 -j GRIDWORK-EGRESS-IN', '-i br-1 -j GRIDWORK-EGRESS-IN', '-j ACCEPT']);
    assert.deepEqual(chains.get('GRIDWORK-EGRESS'), []);
    assert.deepEqual(chains.get('DOCKER-USER'), ['-j RETURN']);
    assert.equal(jumpFirst(chains.get('INPUT') ?? [], '-i br-1 -j GRIDWORK-EGRESS-IN'), true, "other bridges' jumps may come first");
    assert.equal(jumpFirst(['-j ACCEPT', '-i br-1 -j GRIDWORK-EGRESS-IN'], '-i br-1 -j GRIDWORK-EGRESS-IN'), false);
    assert.equal(jumpFirst([], '-i br-1 -j GRIDWORK-EGRESS-IN'), false);

    const script = egressRestoreScript(egressRules([]), 'br-1', chains).split('\n');
    assert.equal(script[0], '*filter');
    assert.ok(script.includes(`:${EGRESS_FORWARD_CHAIN} - [0:0]`) && script.includes(`:${EGRESS_INPUT_CHAIN} - [0:0]`));
    assert.deepEqual(
      script.filter((l) => l.includes('br-1')),
      ['-D INPUT -i br-1 -j GRIDWORK-EGRESS-IN', '-I INPUT 1 -i br-1 -j GRIDWORK-EGRESS-IN', '-I DOCKER-USER 1 -i br-1 -j GRIDWORK-EGRESS'],
    );
    assert.equal(script.at(-2), 'COMMIT');
  });
});

/**
 * An iptables filter table in memory, driven through the CommandRunner: `-S`, `-C` and `iptables-restore
 * --noflush` (declare = create or flush, -A, -I n, -D of the first match; a failing line fails the whole input).
 */
class FakeIptables {
  chains = new Map<string, string[]>([
    ['INPUT', ['-j ACCEPT']],
    ['FORWARD', ['-j DOCKER-USER']],
    ['DOCKER-USER', ['-j RETURN']],
  ]);
  calls: string[] = [];
  /** What `-S` prints a rule as (another iptables version may normalise differently). */
  printed = (rule: string) => rule;
  /** What a restored rule becomes (an iptables that quietly does something else). */
  stored = (rule: string) => rule;
  failRestore: string | undefined;

  run = async (file: string, args: readonly string[], input?: string): Promise<CommandResult> => {
    this.calls.push(`${file} ${args.join(' ')}`);
    const ok = (stdout = ''): CommandResult => ({ code: 0, stdout, stderr: '' });
    const fail = (stderr: string): CommandResult => ({ code: 1, stdout: '', stderr });
    if (file === 'iptables' && args.join(' ') === '-w -S') {
      const lines: string[] = [];
      for (const [chain, rules] of this.chains) {
        lines.push(['INPUT', 'FORWARD', 'OUTPUT'].includes(chain) ? `-P ${chain} ACCEPT` : `-N ${chain}`);
        for (const rule of rules) lines.push(`-A ${chain} ${this.printed(rule)}`);
      }
      return ok(`${lines.join('\n')}\n`);
    }
    if (file === 'iptables' && args[1] === '-C') {
      return this.chains.get(args[2] ?? '')?.includes(args.slice(3).join(' ')) ? ok() : fail('Bad rule (does a matching rule exist in that chain?)');
    }
    if (file === 'iptables-restore') {
      if (this.failRestore) return fail(this.failRestore);
      const next = new Map([...this.chains].map(([k, v]) => [k, [...v]]));
      for (const line of (input ?? '').split('\n')) {
        const declared = /^:(\S+) - \[0:0\]$/.exec(line)?.[1];
        if (declared) next.set(declared, []);
        const m = /^-([AID]) (\S+) (?:(\d+) )?(.*)$/.exec(line);
        if (!m) continue;
        const rules = next.get(m[2] ?? '');
        if (!rules) return fail(`line: chain ${m[2]} does not exist`);
        const rule = this.stored(m[4] ?? '');
        if (m[1] === 'A') rules.push(rule);
        else if (m[1] === 'I') rules.splice(Number(m[3] ?? 1) - 1, 0, rule);
        else {
          const at = rules.indexOf(rule);
          if (at < 0) return fail('iptables-restore: line failed');
          rules.splice(at, 1);
        }
      }
      this.chains = next;
      return ok();
    }
    return { code: 127, stdout: '', stderr: `spawn ${file} ENOENT` };
  };
}

function filterOn(fake: FakeIptables, bridges = ['br-1', 'br-2']) {
  return new IptablesEgressFilter({ run: fake.run, nameservers: async () => ['10.255.255.53'], interfaceExists: (name) => bridges.includes(name) });
}

const refused = (pattern: RegExp) => (err: unknown) => err instanceof GridworkError && err.code === 'SANDBOX_UNAVAILABLE' && pattern.test(err.message);

describe('the iptables egress filter (an iptables in memory)', () => {
  test('installs both chains and the jumps once, in one transaction; later starts only look', async () => {
    const fake = new FakeIptables();
    const filter = filterOn(fake);
    await filter.ensure('br-1');
    assert.deepEqual(fake.calls, ['iptables -w -S', 'iptables-restore -w --noflush', 'iptables -w -S']);
    const rules = egressRules(['10.255.255.53']);
    assert.deepEqual(fake.chains.get(EGRESS_FORWARD_CHAIN), rules.forward);
    assert.deepEqual(fake.chains.get(EGRESS_INPUT_CHAIN), rules.input);
    assert.deepEqual(fake.chains.get('INPUT'), ['-i br-1 -j GRIDWORK-EGRESS-IN', '-j ACCEPT']);
    assert.deepEqual(fake.chains.get('DOCKER-USER'), ['-i br-1 -j GRIDWORK-EGRESS', '-j RETURN']);

    fake.calls = [];
    await filter.ensure('br-1');
    assert.deepEqual(fake.calls, ['iptables -w -S'], 'in place: one listing, nothing written');

    // A second bridge (the internal network) gets its own jumps; the first keeps its own.
    await filter.ensure('br-2');
    assert.deepEqual(fake.chains.get('INPUT'), ['-i br-2 -j GRIDWORK-EGRESS-IN', '-i br-1 -j GRIDWORK-EGRESS-IN', '-j ACCEPT']);
    fake.calls = [];
    await filter.ensure('br-1');
    assert.deepEqual(fake.calls, ['iptables -w -S']);
  });

  test('rules flushed, edited or outranked by someone else are put back before the next container starts', async () => {
    const fake = new FakeIptables();
    const filter = filterOn(fake);
    await filter.ensure('br-1');
    const installed = new Map([...fake.chains].map(([k, v]) => [k, [...v]]));

    fake.chains.set(EGRESS_FORWARD_CHAIN, []); // iptables -F GRIDWORK-EGRESS
    await filter.ensure('br-1');
    assert.deepEqual(fake.chains, installed);

    fake.chains.get(EGRESS_INPUT_CHAIN)?.splice(1, 1); // one rule deleted
    await filter.ensure('br-1');
    assert.deepEqual(fake.chains, installed);

    fake.chains.get('INPUT')?.unshift('-i br-1 -j ACCEPT'); // an ACCEPT above the jump
    fake.chains.get('DOCKER-USER')?.splice(0, 1); // the jump deleted
    await filter.ensure('br-1');
    assert.deepEqual(fake.chains.get('INPUT'), ['-i br-1 -j GRIDWORK-EGRESS-IN', '-i br-1 -j ACCEPT', '-j ACCEPT'], 'moved to the top, not duplicated');
    assert.deepEqual(fake.chains.get('DOCKER-USER'), ['-i br-1 -j GRIDWORK-EGRESS', '-j RETURN']);
  });

  test('an iptables that prints rules its own way: each rule is confirmed with -C, then that form is what later checks expect', async () => {
    const fake = new FakeIptables();
    fake.printed = (rule) => rule.replace('RELATED,ESTABLISHED', 'ESTABLISHED,RELATED');
    const filter = filterOn(fake);
    await filter.ensure('br-1');
    const rules = egressRules(['10.255.255.53']);
    assert.equal(fake.calls.filter((c) => c.startsWith('iptables -w -C')).length, rules.forward.length + rules.input.length);
    fake.calls = [];
    await filter.ensure('br-1');
    assert.deepEqual(fake.calls, ['iptables -w -S']);
  });

  test('every way of not getting the filter in place refuses the run', async () => {
    await assert.rejects(filterOn(new FakeIptables()).ensure('br-9'), refused(/no such interface on this host/));
    await assert.rejects(filterOn(new FakeIptables(), ['x; rm -rf /']).ensure('x; rm -rf /'), refused(/not an interface name/));

    const noIptables = new FakeIptables();
    await assert.rejects(
      new IptablesEgressFilter({ run: noIptables.run, iptables: '/nonexistent/iptables', interfaceExists: () => true }).ensure('br-1'),
      refused(/ENOENT/),
    );

    const noEngineChain = new FakeIptables();
    noEngineChain.chains.delete('DOCKER-USER');
    await assert.rejects(filterOn(noEngineChain).ensure('br-1'), refused(/no DOCKER-USER chain/));

    const denied = new FakeIptables();
    denied.failRestore = 'iptables-restore v1.8.9 (nf_tables): Permission denied (you must be root)';
    await assert.rejects(filterOn(denied).ensure('br-1'), refused(/Permission denied/));
    assert.equal(denied.chains.has(EGRESS_FORWARD_CHAIN), false);

    const lying = new FakeIptables();
    lying.stored = (rule) => (rule.includes('169.254.0.0/16') ? '-j RETURN' : rule);
    await assert.rejects(filterOn(lying).ensure('br-1'), refused(/is missing from GRIDWORK-EGRESS after installing it/));
  });

  test('concurrent starts are served one after the other: one install', async () => {
    const fake = new FakeIptables();
    const filter = filterOn(fake);
    await Promise.all([filter.ensure('br-1'), filter.ensure('br-1'), filter.ensure('br-1')]);
    assert.equal(fake.calls.filter((c) => c.startsWith('iptables-restore')).length, 1);
    assert.deepEqual(
      egressJumps('br-1').map((j) => fake.chains.get(j.chain)?.filter((r) => r === j.rule).length),
      [1, 1],
    );
  });
});
