/**
 * `gridwork demo --keep` as a newcomer runs it (a real child process): it prints the web
 * console's URL, keeps the network and the console up after the job, and stops cleanly on
 * Ctrl-C (SIGINT), exit status 0.
 */
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { mkdir, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
import { tempDir } from '@gridwork/testkit';
import { GRIDWORK_BIN } from '../../testkit/src/processes.ts';

let dir: { path: string; remove: () => Promise<void> };
before(async () => {
  dir = await tempDir('gridwork-demo-keep-');
});
after(async () => {
  await dir?.remove();
});

test('demo --keep prints the console URL, serves it after the job, and stops on Ctrl-C', { timeout: 180_000 }, async () => {
  await mkdir(join(dir.path, 'work'), { recursive: true });
  await writeFile(join(dir.path, 'work', 'main.mjs'), "console.log('tiny');\n");
  await writeFile(
    join(dir.path, 'job.yaml'),
    'version: 1\nname: tiny\nkind: batch\nruntime: { kind: bundle, path: ./work, command: [node, main.mjs] }\nresources: { cpu: 1, memoryGiB: 1 }\nprice: { maxPerHour: 5, budget: 0.5 }\n',
  );
  const env: Record<string, string> = {};
  for (const [k, v] of Object.entries({ ...process.env, CI: 'true', NO_COLOR: '1', GRIDWORK_HOME: join(dir.path, 'home') })) if (v !== undefined) env[k] = v;
  const child = spawn(process.execPath, [GRIDWORK_BIN, 'demo', '--keep', '--providers', '1', '--spec', join(dir.path, 'job.yaml')], {
    env,
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  const exited = new Promise<number | null>((resolve) => child.once('exit', (code) => resolve(code)));
  let stderr = '';
  try {
    const url = await new Promise<string>((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`demo did not say it keeps running; stderr:\n${stderr}`)), 150_000);
      child.stderr.on('data', (chunk: Buffer) => {
        stderr += chunk.toString();
        const m = stderr.match(/keeps running; web console at (http:\/\/[^\s]+)\/ /);
        if (m?.[1]) {
          clearTimeout(timer);
          resolve(m[1]);
        }
      });
      void exited.then((code) => reject(new Error(`demo exited (${code}) before keeping the network up; stderr:\n${stderr}`)));
    });
    assert.match(stderr, /web console: http:\/\/127\.0\.0\.1:\d+\/ \(import .*requester-key\.json on its Key page/);
    assert.match(stderr, /job job_[a-z2-7]{16} succeeded/);

    const page = await fetch(`${url}/`);
    assert.equal(page.status, 200);
    assert.match(await page.text(), /<div id="app">/);
    const network = (await (await fetch(`${url}/v1/network`)).json()) as { providers: { state: string }[]; leases: { placed: number } };
    assert.equal(network.providers.filter((p) => p.state === 'online').length, 1);
    assert.ok(network.leases.placed >= 1);
    assert.match(await (await fetch(`${url}/metrics`)).text(), /gridwork_placements_total [1-9]/);

    child.kill('SIGINT');
    assert.equal(await exited, 0, stderr);
    await assert.rejects(fetch(`${url}/`), 'the coordinator is closed after Ctrl-C');
  } finally {
    if (child.exitCode === null) child.kill('SIGKILL');
  }
});
