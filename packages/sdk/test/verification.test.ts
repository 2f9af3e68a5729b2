/**
 * The SDK and result verification, against a real coordinator (testkit): `wait()` returns once
 * the results are in (a `verifying` job) instead of waiting out the audit window, `until: 'end'`
 * waits for the end; `dispute()` and `providerStatus()` with their typed errors.
 *
 * The network's one provider starts on probation (its results are audited) and an audit runs
 * on another provider: its job stays `verifying` until a second provider joins.
 */
import assert from 'node:assert/strict';
import { mkdir, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import type { ProviderAgent } from '@gridwork/provider';
import { startTestNetwork, type TestNetwork, tempDir } from '@gridwork/testkit';
import { GridworkError, RESULTS_READY_STATES, TERMINAL_JOB_STATES } from '../src/index.ts';

test('results are ready in every terminal state, and while verifying (which is not terminal)', () => {
  for (const s of TERMINAL_JOB_STATES) assert.ok(RESULTS_READY_STATES.includes(s));
  assert.ok(RESULTS_READY_STATES.includes('verifying'));
  assert.ok(!TERMINAL_JOB_STATES.includes('verifying'));
});

describe('verification in the SDK', { timeout: 180_000 }, () => {
  let net: TestNetwork;
  let dir: { path: string; remove: () => Promise<void> };
  before(async () => {
    net = await startTestNetwork({ providers: 1, coordinator: { verification: { probationTasks: 2, genesisFees: '10' } } });
    dir = await tempDir('gridwork-sdk-verify-');
    await mkdir(join(dir.path, 'work'), { recursive: true });
    await writeFile(
      join(dir.path, 'work', 'main.mjs'),
      "import { writeFileSync } from 'node:fs';\nwriteFileSync(process.env.GRIDWORK_OUTPUTS + '/r.txt', 'ok');\n",
    );
    await writeFile(
      join(dir.path, 'job.yaml'),
      'version: 1\nname: sdk-verify\nkind: batch\nruntime: { kind: bundle, path: ./work, command: [node, main.mjs] }\nresources: { cpu: 1, memoryGiB: 1 }\nprice: { maxPerHour: 1, budget: 0.5 }\n',
    );
  });
  after(async () => {
    await net?.close();
    await dir?.remove();
  });

  test('providerStatus(): the provider’s own record; another key is PROVIDER_UNKNOWN', async () => {
    const provider = net.client(net.identityOf(net.providers[0] as ProviderAgent));
    await provider.deposit('10');
    await provider.stake('4');
    const s = await provider.providerStatus();
    assert.equal(s.id, provider.accountId);
    assert.equal(s.stake, '4');
    assert.equal(s.unbonding, '0');
    assert.equal(s.slashed, '0');
    // Past audits only: nothing of its audit schedule (it is on probation here, and is not told).
    assert.deepEqual(s.audits, { passed: 0, failed: 0, streak: 0, lastPassedAt: null });
    assert.deepEqual(s.recentChecks, []);
    await assert.rejects(net.client().providerStatus(), (err: unknown) => err instanceof GridworkError && err.code === 'PROVIDER_UNKNOWN');
  });

  test('wait() returns a verifying job (results in, pending verification); until: "end" waits for the audit; dispute() errors are typed', async () => {
    const client = await net.fundedClient('10');
    const submitted = await client.submitFile(join(dir.path, 'job.yaml'));
    const ready = await client.wait(submitted.id, { signal: AbortSignal.timeout(60_000) });
    assert.equal(ready.state, 'verifying');
    const v = ready.tasks[0]?.verification;
    assert.equal(v?.state, 'pending');
    assert.ok(v?.pendingUntil && !Number.isNaN(Date.parse(v.pendingUntil)));
    assert.ok(
      v?.checks.some((c) => c.kind === 'audit' && c.state === 'open'),
      'its audit waits for another provider',
    );
    // Nobody can audit it yet: waiting for the end does not end.
    await assert.rejects(
      client.wait(submitted.id, { until: 'end', signal: AbortSignal.timeout(1000) }),
      (err: unknown) => err instanceof GridworkError && err.code === 'ABORTED',
    );

    const code = (p: Promise<unknown>, expected: string) => assert.rejects(p, (err: unknown) => err instanceof GridworkError && err.code === expected);
    await code(client.dispute(submitted.id, -1), 'BAD_REQUEST');
    await code(client.dispute(submitted.id, 1.5), 'BAD_REQUEST');
    await code(client.dispute(submitted.id, 3), 'TASK_NOT_FOUND');
    await code((await net.fundedClient('1')).dispute(submitted.id, 0), 'JOB_NOT_FOUND');
    await code(client.dispute(submitted.id, 0), 'DISPUTE_WINDOW_CLOSED'); // the network's audit window is 0

    // The auditor holds at least the stake a wrong verdict would cost (1 credit here).
    await net.stake(await net.addProvider(), '2');
    const ended = await client.wait(submitted.id, { until: 'end', signal: AbortSignal.timeout(90_000) });
    assert.equal(ended.state, 'succeeded');
    assert.equal(ended.tasks[0]?.verification?.state, 'verified');
  });
});
