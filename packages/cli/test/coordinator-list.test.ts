/**
 * `--coordinator`, GRIDWORK_COORDINATOR and a profile's `coordinator` take several URLs (replicas
 * of one network, comma-separated; a profile may give a list): the `gridwork` command, run as a
 * child process, gets past a dead first URL for requester commands and for `provider start`.
 */
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { startTestNetwork, type TestNetwork, tempDir, until } from '@gridwork/testkit';
import { freePort, GRIDWORK_BIN, startProviderProcess } from '../../testkit/src/processes.ts';

interface Run {
  code: number;
  stdout: string;
  stderr: string;
}

function gridwork(args: string[], env: Record<string, string | undefined>): Promise<Run> {
  const merged: Record<string, string> = {};
  for (const [k, v] of Object.entries({ ...process.env, NO_COLOR: undefined, FORCE_COLOR: undefined, GRIDWORK_COORDINATOR: undefined, ...env, CI: 'true' })) {
    if (v !== undefined) merged[k] = v;
  }
  return new Promise((resolve) => {
    execFile(process.execPath, [GRIDWORK_BIN, ...args], { env: merged, timeout: 120_000, maxBuffer: 16 << 20 }, (err, stdout, stderr) => {
      const code = err ? (typeof (err as { code?: unknown }).code === 'number' ? ((err as { code: number }).code as number) : 1) : 0;
      resolve({ code, stdout, stderr });
    });
  });
}

describe('gridwork CLI with several coordinator URLs', { timeout: 240_000 }, () => {
  let net: TestNetwork;
  let home: { path: string; remove: () => Promise<void> };
  let dead: string;
  before(async () => {
    net = await startTestNetwork();
    home = await tempDir('gridwork-cli-replicas-');
    dead = `http://127.0.0.1:${await freePort()}`;
  });
  after(async () => {
    await net?.close();
    await home?.remove();
  });

  test('--coordinator dead,live, GRIDWORK_COORDINATOR likewise, and a profile listing both: the live one answers', async () => {
    const viaFlag = await gridwork(['account', 'balance', '--json', '--coordinator', `${dead},${net.coordinator.url}`], { GRIDWORK_HOME: home.path });
    assert.equal(viaFlag.code, 0, viaFlag.stderr);
    assert.equal(JSON.parse(viaFlag.stdout).available, '0');
    const viaEnv = await gridwork(['job', 'list', '--json'], { GRIDWORK_HOME: home.path, GRIDWORK_COORDINATOR: `${dead}, ${net.coordinator.url}` });
    assert.equal(viaEnv.code, 0, viaEnv.stderr);
    assert.deepEqual(JSON.parse(viaEnv.stdout).jobs, []);
    await writeFile(join(home.path, 'config.json'), JSON.stringify({ profiles: { replicas: { coordinator: [dead, net.coordinator.url] } } }));
    const viaProfile = await gridwork(['job', 'list', '--json', '--profile', 'replicas'], { GRIDWORK_HOME: home.path });
    assert.equal(viaProfile.code, 0, viaProfile.stderr);
    // A malformed entry is a usage error up front, as a single malformed URL is.
    const bad = await gridwork(['job', 'list', '--coordinator', `${net.coordinator.url},ftp://x`], { GRIDWORK_HOME: home.path });
    assert.equal(bad.code, 2, bad.stderr);
    assert.match(bad.stderr, /invalid coordinator URL "ftp:\/\/x"/);
  });

  test('`provider start --coordinator dead,live` says the dead one cannot be reached and serves the live one', async () => {
    const p = await startProviderProcess({
      coordinatorUrl: `${dead},${net.coordinator.url}`,
      dataDir: join(home.path, 'provider'),
      name: 'replica-provider',
      runtime: 'process',
      env: { GRIDWORK_HOME: home.path },
    });
    try {
      assert.match(p.stderr(), /cannot reach the coordinator at http:\/\/127\.0\.0\.1:\d+: connection refused.*keeps retrying/);
      const online = await until(
        () => net.client().providers(),
        (ps) => ps.some((x) => x.id === p.id && x.state === 'online'),
        { what: 'the provider to come online on the live coordinator', timeoutMs: 60_000 },
      );
      assert.equal(online.find((x) => x.id === p.id)?.name, 'replica-provider');
    } finally {
      await p.stop();
    }
  });
});
