/**
 * `gridwork sim trust` as users run it (a real child process): with --json, stdout is exactly
 * one JSON document, and the exit code agrees with it — 0 when every goal that decides the exit
 * is met, 1 when one is missed (each missed one named on stderr); bad options are usage errors.
 */
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { describe, test } from 'node:test';
import { GRIDWORK_BIN } from '../../testkit/src/processes.ts';

interface Run {
  code: number;
  stdout: string;
  stderr: string;
}

function gridwork(args: string[], timeoutMs = 240_000): Promise<Run> {
  const env: Record<string, string> = {};
  for (const [k, v] of Object.entries({ ...process.env, NO_COLOR: undefined, FORCE_COLOR: undefined, CI: 'true' })) if (v !== undefined) env[k] = v;
  return new Promise((resolve) => {
    execFile(process.execPath, [GRIDWORK_BIN, ...args], { env, timeout: timeoutMs, maxBuffer: 16 << 20 }, (err, stdout, stderr) => {
      const code = err ? (typeof (err as { code?: unknown }).code === 'number' ? ((err as { code: number }).code as number) : 1) : 0;
      resolve({ code, stdout, stderr });
    });
  });
}

describe('gridwork sim trust', { timeout: 300_000 }, () => {
  test('--json prints one JSON document and exits 0 or 1 as its goals say', async () => {
    const r = await gridwork(['sim', 'trust', '--jobs', '20', '--providers', '6', '--json']);
    assert.ok(r.code === 0 || r.code === 1, `exit ${r.code}: ${r.stderr.slice(-2000)}`);
    const doc = JSON.parse(r.stdout) as {
      simulation: string;
      ok: boolean;
      goals: { id: string; met: boolean; exit: boolean }[];
      params: { providers: number; jobs: number };
      strategies: { strategy: string }[];
      ledger: { balanced: boolean };
    };
    assert.equal(doc.simulation, 'trust');
    assert.equal(doc.params.providers, 6);
    assert.equal(doc.params.jobs, 20);
    assert.ok(doc.strategies.length > 0);
    assert.equal(doc.ledger.balanced, true);
    const missed = doc.goals.filter((g) => g.exit && !g.met);
    assert.equal(doc.ok, missed.length === 0);
    assert.equal(r.code, doc.ok ? 0 : 1, r.stderr.slice(-2000));
    for (const g of missed) assert.match(r.stderr, new RegExp(g.id.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')));
    assert.match(r.stderr, /batch \d+\/\d+/, 'progress goes to stderr');
  });

  test('bad options are usage errors (exit 2) that name the option', async () => {
    const share = await gridwork(['sim', 'trust', '--cheaters', '1.5']);
    assert.equal(share.code, 2);
    assert.match(share.stderr, /--cheaters/);
    const strategy = await gridwork(['sim', 'trust', '--strategies', 'always-wrong,sneaky', '--json']);
    assert.equal(strategy.code, 2);
    assert.match(strategy.stderr, /unknown strategy "sneaky"/);
    assert.equal(JSON.parse(strategy.stdout).error.exitCode, 2);
  });
});
