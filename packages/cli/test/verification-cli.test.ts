/**
 * Result verification as users see it in the CLI (issue 7, "Visibility"), a real `gridwork`
 * child process against a real coordinator: `provider status` (stake, past audits — never the
 * audit schedule — recent checks), `--wait` returning once the results are in while they are pending
 * verification (exit 0, not a wait through the audit window), the VERIFIED column of `job
 * status` and `job result`, and `job dispute`'s refusals and exit codes.
 *
 * One network, steps in order: its providers are on probation (every task audited), and an
 * audit runs on another provider — so with one provider a job stays `verifying`; adding a
 * second lets the audit run and the job succeed.
 */
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { mkdir, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import type { ProviderAgent } from '@gridwork/provider';
import { generateIdentity, startTestNetwork, type TestNetwork, tempDir, until } from '@gridwork/testkit';
import { GRIDWORK_BIN } from '../../testkit/src/processes.ts';

interface Run {
  code: number;
  stdout: string;
  stderr: string;
}

function gridwork(args: string[], env: Record<string, string | undefined>, timeoutMs = 120_000): Promise<Run> {
  const merged: Record<string, string> = {};
  for (const [k, v] of Object.entries({ ...process.env, NO_COLOR: undefined, FORCE_COLOR: undefined, ...env, CI: 'true' })) if (v !== undefined) merged[k] = v;
  return new Promise((resolve) => {
    execFile(process.execPath, [GRIDWORK_BIN, ...args], { env: merged, timeout: timeoutMs, maxBuffer: 16 << 20 }, (err, stdout, stderr) => {
      const code = err ? (typeof (err as { code?: unknown }).code === 'number' ? ((err as { code: number }).code as number) : 1) : 0;
      resolve({ code, stdout, stderr });
    });
  });
}

const json = (r: Run) => {
  try {
    return JSON.parse(r.stdout);
  } catch {
    throw new Error(`not JSON on stdout (exit ${r.code}):\n${r.stdout}\nstderr:\n${r.stderr}`);
  }
};

const PROBATION = 3;

describe('verification in the CLI', { timeout: 300_000 }, () => {
  let net: TestNetwork;
  let home: { path: string; remove: () => Promise<void> };
  let env: Record<string, string>;
  let first: ProviderAgent;
  let firstData: string;
  let jobId = '';
  before(async () => {
    net = await startTestNetwork({ providers: 1, coordinator: { verification: { probationTasks: PROBATION, genesisFees: '10' } } });
    first = net.providers[0] as ProviderAgent;
    firstData = join(net.dir, 'provider-0');
    home = await tempDir('gridwork-cli-verify-');
    env = { GRIDWORK_HOME: home.path, GRIDWORK_COORDINATOR: net.coordinator.url };
    assert.equal((await gridwork(['account', 'deposit', '20'], env)).code, 0);
  });
  after(async () => {
    await net?.close();
    await home?.remove();
  });

  test('`provider status --json` of a fresh provider: its stake, nothing audited yet, and nothing of its audit schedule', async () => {
    await net.client(net.identityOf(first)).deposit('20');
    const staked = await gridwork(['provider', 'stake', '5', '--data', firstData, '--json'], env);
    assert.equal(staked.code, 0, staked.stderr);
    const unstaked = await gridwork(['provider', 'unstake', '1.5', '--data', firstData, '--json'], env);
    assert.equal(unstaked.code, 0, unstaked.stderr);

    const r = await gridwork(['provider', 'status', '--data', firstData, '--json'], env);
    assert.equal(r.code, 0, r.stderr);
    const s = json(r);
    assert.equal(s.id, first.id);
    assert.equal(s.name, 'provider-0');
    assert.equal(s.stake, '3.5');
    assert.equal(s.unbonding, '1.5');
    assert.equal(s.slashed, '0');
    assert.equal(s.eligible, true);
    assert.equal(typeof s.reputation, 'number');
    assert.deepEqual(s.leases, { completed: 0, faulted: 0 });
    // History only: neither the rate its next tasks get (1 on probation) nor how long probation lasts.
    assert.deepEqual(s.audits, { passed: 0, failed: 0, streak: 0, lastPassedAt: null });
    assert.deepEqual(s.recentChecks, []);
    assert.equal(s.challenges.passed, 0);

    const human = await gridwork(['provider', 'status', '--data', firstData], env);
    assert.equal(human.code, 0, human.stderr);
    assert.match(human.stdout, /^provider-0 \S+: online$/m);
    assert.match(human.stdout, /^ {2}stake {7}3\.5 credits bonded, 1\.5 unbonding, 0 slashed$/m);
    assert.doesNotMatch(human.stdout, /audit rate|probation/);
    assert.match(human.stdout, /^ {2}audits {6}0 passed, 0 failed, 0 in a row$/m);
    assert.match(human.stdout, /recent checks: none yet/);
  });

  test('`provider status` with another key than a provider’s is PROVIDER_UNKNOWN; without a key it creates none (exit 2)', async () => {
    const stranger = join(home.path, 'stranger');
    await mkdir(stranger, { recursive: true });
    await writeFile(join(stranger, 'provider-key.json'), JSON.stringify(generateIdentity()));
    const r = await gridwork(['provider', 'status', '--data', stranger, '--json'], env);
    assert.equal(r.code, 2, r.stderr);
    assert.equal(json(r).error.code, 'PROVIDER_UNKNOWN');
    const none = await gridwork(['provider', 'status', '--data', join(home.path, 'nowhere')], env);
    assert.equal(none.code, 2);
    assert.match(none.stderr, /no provider key at/);
  });

  test('`submit --wait` returns once the results are in (exit 0) and says they are pending verification; status and result show it', async () => {
    const dir = join(home.path, 'job');
    await mkdir(join(dir, 'work'), { recursive: true });
    await writeFile(join(dir, 'work', 'ok.mjs'), "import { writeFileSync } from 'node:fs'; writeFileSync(process.env.GRIDWORK_OUTPUTS + '/out.txt', 'hi');\n");
    await writeFile(
      join(dir, 'job.yaml'),
      'version: 1\nname: audited\nkind: batch\nruntime: { kind: bundle, path: ./work, command: [node, ok.mjs] }\nresources: { cpu: 1, memoryGiB: 1 }\nprice: { maxPerHour: "1", budget: "0.5" }\n',
    );
    // The only provider is on probation: its result is audited, and nobody else can run the audit yet.
    const r = await gridwork(['job', 'submit', join(dir, 'job.yaml'), '--wait', '--json'], env);
    assert.equal(r.code, 0, r.stderr);
    const job = json(r);
    jobId = job.id;
    assert.equal(job.state, 'verifying');
    assert.equal(job.tasks[0].verification.state, 'pending');
    assert.match(r.stderr, /all results are in but pending verification until \d\d:\d\d: an audit or a dispute may still find one wrong/);
    assert.match(r.stderr, new RegExp(`gridwork job wait ${jobId} --until-verified`));

    const status = await gridwork(['job', 'status', jobId], env);
    assert.equal(status.code, 0, status.stderr);
    assert.match(status.stdout, /: verifying\n/);
    assert.match(status.stdout, /TASK\s+STATE\s+PROVIDER\s+DURATION\s+EXIT\s+COST\s+OUTPUT\s+VERIFIED/);
    assert.match(status.stdout, /\n\s+0\s+succeeded\s+provider-0\s.*\bpending until \d\d:\d\d/);

    const result = await gridwork(['job', 'result', jobId, '-o', join(dir, 'out')], env);
    assert.equal(result.code, 0, result.stderr);
    assert.match(result.stdout, /^TASK\s+STATE\s+FILES\s+VERIFIED\n\s*0\s+succeeded\s+1\s+pending until \d\d:\d\d\n$/);
    assert.match(result.stderr, /the results of task 0 are pending verification until \d\d:\d\d/);
    const resultJson = json(await gridwork(['job', 'result', jobId, '-o', join(dir, 'out'), '--json'], env));
    assert.equal(resultJson.complete, true);
    assert.deepEqual(resultJson.pendingVerification.tasks, [0]);
    assert.equal(resultJson.tasks[0].verification, 'pending');
  });

  test('`job dispute`: bad input exits 2; refusals exit 1 with their code (someone else’s job, no such task, window closed)', async () => {
    assert.ok(jobId, 'needs the job of the test before');
    const nonNumeric = await gridwork(['job', 'dispute', jobId, 'first', '--json'], env);
    assert.equal(nonNumeric.code, 2, nonNumeric.stderr);
    assert.match(json(nonNumeric).error.message, /expected a task index/);
    const missing = await gridwork(['job', 'dispute', jobId], env);
    assert.equal(missing.code, 2);
    assert.match(missing.stderr, /missing required argument 'task'/);

    const otherHome = await tempDir('gridwork-cli-other-');
    try {
      const other = await gridwork(['job', 'dispute', jobId, '0', '--json'], { GRIDWORK_HOME: otherHome.path, GRIDWORK_COORDINATOR: net.coordinator.url });
      assert.equal(other.code, 1, other.stderr);
      assert.equal(json(other).error.code, 'JOB_NOT_FOUND');
      assert.equal(json(other).error.exitCode, 1);
    } finally {
      await otherHome.remove();
    }
    const noTask = await gridwork(['job', 'dispute', jobId, '7', '--json'], env);
    assert.equal(noTask.code, 1, noTask.stderr);
    assert.equal(json(noTask).error.code, 'TASK_NOT_FOUND');
    // The network's audit window is 0: the result can no longer be disputed.
    const closed = await gridwork(['job', 'dispute', jobId, '0'], env);
    assert.equal(closed.code, 1, closed.stderr);
    assert.match(closed.stderr, /can no longer be disputed.*\[DISPUTE_WINDOW_CLOSED\]/);
    const closedJson = json(await gridwork(['job', 'dispute', jobId, '0', '--json'], env));
    assert.equal(closedJson.error.code, 'DISPUTE_WINDOW_CLOSED');
  });

  test('a second provider runs the audit: `job wait --until-verified` exits 0 with the job succeeded; both providers see the check', async () => {
    assert.ok(jobId, 'needs the job of the test before');
    const second = await net.addProvider();
    // An auditor holds at least the stake a wrong verdict would cost (1 credit here).
    await net.stake(second, '2');
    const r = await gridwork(['job', 'wait', jobId, '--until-verified', '--json'], env);
    assert.equal(r.code, 0, r.stderr);
    const job = json(r);
    assert.equal(job.state, 'succeeded');
    assert.equal(job.tasks[0].verification.state, 'verified');
    assert.ok(job.tasks[0].verification.checks.some((c: { kind: string; state: string }) => c.kind === 'audit' && c.state === 'passed'));
    const status = await gridwork(['job', 'status', jobId], env);
    assert.match(status.stdout, /\n\s+0\s+succeeded\s+provider-0\s.*\bverified\b/);

    // Audit counters follow the verdict (reputation counts it a moment later).
    const checked = await until(
      async () => json(await gridwork(['provider', 'status', '--data', firstData, '--json'], env)),
      (s) => s.audits.passed > 0,
      { what: 'the passed audit to be counted' },
    );
    assert.equal(checked.audits.passed, 1);
    assert.equal(checked.audits.streak, 1);
    assert.ok(checked.audits.lastPassedAt);
    assert.deepEqual(Object.keys(checked.audits).sort(), ['failed', 'lastPassedAt', 'passed', 'streak']);
    assert.deepEqual(
      checked.recentChecks.map((c: { kind: string; role: string; state: string; outcome: string }) => [c.kind, c.role, c.state, c.outcome]),
      [['audit', 'checked', 'passed', 'confirmed']],
    );
    const checker = await until(
      async () => json(await gridwork(['provider', 'status', '--data', join(net.dir, 'provider-1'), '--json'], env)),
      (s) => s.id === second.id && s.recentChecks.length > 0,
      { what: 'the second provider to see its audit' },
    );
    assert.deepEqual(
      checker.recentChecks.map((c: { kind: string; role: string; state: string }) => [c.kind, c.role, c.state]),
      [['audit', 'checker', 'passed']],
    );
    const human = await gridwork(['provider', 'status', '--data', join(net.dir, 'provider-1')], env);
    assert.match(human.stdout, /recent checks:\n\s+ID\s+KIND\s+ROLE\s+STATE\s+OUTCOME\s+CREATED\s+DETAIL\n\s+ver_\S+\s+audit\s+checker\s+passed\s+confirmed\s/);
  });

  test('completion and help list the new commands', async () => {
    const bash = await gridwork(['completion', 'bash'], env);
    assert.match(bash.stdout, /"job"\) words="[^"]*\bdispute\b/);
    assert.match(bash.stdout, /"provider"\) words="[^"]*\bstatus\b/);
    assert.match(bash.stdout, /"job\/wait"\) words="[^"]*--until-verified/);
    const help = await gridwork(['job', '--help'], env);
    assert.match(help.stdout, /dispute \[options\] <id> <task>/);
    const providerHelp = await gridwork(['provider', '--help'], env);
    assert.match(providerHelp.stdout, /status \[options\]/);
  });
});
