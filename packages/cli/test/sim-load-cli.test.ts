/**
 * `gridwork sim load` as users run it (a real child process), small: 40 simulated providers on two
 * replicas it starts on the test PostgreSQL and NATS. With --json, stdout is one JSON document
 * whose figures come from the run — every provider connected, every submitted job placed, the
 * silenced providers detected, the leader's office moved — and the exit code agrees with the
 * goals (1 when one is missed). Without a database it is a usage error.
 */
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { describe, test } from 'node:test';
import { natsUrl, postgresUrl } from '@gridwork/testkit';
import { GRIDWORK_BIN } from '../../testkit/src/processes.ts';

function gridwork(args: string[], env: Record<string, string | undefined> = {}): Promise<{ code: number; stdout: string; stderr: string }> {
  const full: Record<string, string> = {};
  for (const [k, v] of Object.entries({ ...process.env, NO_COLOR: undefined, FORCE_COLOR: undefined, CI: 'true', ...env })) if (v !== undefined) full[k] = v;
  return new Promise((resolve) => {
    execFile(process.execPath, [GRIDWORK_BIN, ...args], { env: full, timeout: 240_000, maxBuffer: 16 << 20 }, (err, stdout, stderr) => {
      const code = err ? (typeof (err as { code?: unknown }).code === 'number' ? ((err as { code: number }).code as number) : 1) : 0;
      resolve({ code, stdout, stderr });
    });
  });
}

describe('gridwork sim load', { timeout: 300_000 }, () => {
  test('--json: the fleet connects, the offered jobs are placed, silent providers are detected, the office moves', async () => {
    const r = await gridwork(
      ['sim', 'load', '--providers', '40', '--replicas', '2', '--rate', '10', '--seconds', '2', '--heartbeat-ms', '1000', '--idle-seconds', '2', '--json'],
      { GRIDWORK_DATABASE_URL: postgresUrl(), GRIDWORK_NATS_URL: natsUrl() },
    );
    assert.ok(r.code === 0 || r.code === 1, `exit ${r.code}: ${r.stderr.slice(-3000)}`);
    const doc = JSON.parse(r.stdout) as {
      fleet: { connected: number; replicas: number };
      memory: { withFleetMiB: number; baselineMiB: number };
      heartbeats: { windowSeconds: number };
      load: { submitted: number; placed: number; placementsPerSecond: number; submitToRunningMs: { n: number; p50: number; p99: number }; errors: number };
      failureDetection: { silenced: number; undetected: number; detectedMs: { max: number } | null };
      failover: { ms: number | null };
      goals: { id: string; met: boolean }[];
      errors: string[];
    };
    assert.equal(doc.fleet.connected, 40);
    assert.equal(doc.fleet.replicas, 2);
    assert.ok(doc.memory.baselineMiB > 0 && doc.memory.withFleetMiB > 0);
    assert.equal(doc.load.errors, 0, JSON.stringify(doc.errors));
    assert.equal(doc.load.submitted, 20);
    assert.equal(doc.load.placed, doc.load.submitted, 'every submitted job reached a provider');
    assert.equal(doc.load.submitToRunningMs.n, doc.load.submitted);
    assert.ok(doc.load.submitToRunningMs.p50 > 0 && doc.load.submitToRunningMs.p99 >= doc.load.submitToRunningMs.p50);
    assert.equal(doc.failureDetection.silenced, 4);
    assert.equal(doc.failureDetection.undetected, 0);
    // Not declared offline early: the timeout (3 × 1000 ms) runs from the last heartbeat heard,
    // which may precede the silencing by up to one interval (1000 ms): 2000 ms after it at least.
    // (CI once saw a max under 3000 ms, with the provider detected correctly.)
    assert.ok((doc.failureDetection.detectedMs?.max ?? 0) >= 2000, JSON.stringify(doc.failureDetection));
    assert.ok(doc.failover.ms !== null && doc.failover.ms > 0, 'the office moved after the leader was killed');
    assert.deepEqual(
      doc.goals.map((g) => g.id),
      ['G3', 'G4', 'G6', 'G7'],
    );
    assert.equal(r.code, doc.goals.every((g) => g.met) ? 0 : 1);
    assert.match(r.stderr, /providers connected/, 'progress goes to stderr');
  });

  test('without a PostgreSQL URL it is a usage error', async () => {
    const r = await gridwork(['sim', 'load', '--json'], { GRIDWORK_DATABASE_URL: undefined });
    assert.equal(r.code, 2, r.stderr);
    assert.match(r.stderr, /--database-url/);
  });
});
