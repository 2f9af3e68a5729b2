/**
 * The `gridwork` command as users run it (a real child process): exit codes (0 success, 1 the
 * job or operation failed, 2 bad usage or input), messages that name the problem, `--json` on
 * stdout, and the demo end to end.
 */
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { startTestNetwork, type TestNetwork, tempDir } from '@gridwork/testkit';
import { GRIDWORK_BIN } from '../../testkit/src/processes.ts';

interface Run {
  code: number;
  stdout: string;
  stderr: string;
}

function gridwork(args: string[], env: Record<string, string> = {}, timeoutMs = 120_000): Promise<Run> {
  return new Promise((resolve) => {
    execFile(process.execPath, [GRIDWORK_BIN, ...args], { env: { ...process.env, ...env, CI: 'true' }, timeout: timeoutMs, maxBuffer: 16 << 20 }, (err, stdout, stderr) => {
      const code = err ? (typeof (err as { code?: unknown }).code === 'number' ? ((err as { code: number }).code as number) : 1) : 0;
      resolve({ code, stdout, stderr });
    });
  });
}

describe('gridwork CLI', () => {
  let net: TestNetwork;
  let home: { path: string; remove: () => Promise<void> };
  let env: Record<string, string>;
  before(async () => {
    net = await startTestNetwork({ providers: 1 });
    home = await tempDir('gridwork-cli-home-');
    env = { GRIDWORK_HOME: home.path, GRIDWORK_COORDINATOR: net.coordinator.url };
  });
  after(async () => {
    await net?.close();
    await home?.remove();
  });

  test('an unknown command is a usage error (exit 2)', async () => {
    const r = await gridwork(['job', 'frob'], env);
    assert.equal(r.code, 2);
    assert.match(r.stderr, /unknown command 'frob'/);
  });

  test('an invalid spec exits 2 and names the field; nothing is submitted', async () => {
    const spec = join(home.path, 'bad.yaml');
    await writeFile(spec, 'version: 1\nname: x\nkind: batch\nruntime: { kind: bundle, path: ., command: [node] }\nresources: { cpu: -1, memoryGiB: 1 }\n');
    const r = await gridwork(['job', 'submit', spec], env);
    assert.equal(r.code, 2);
    assert.match(r.stderr, /resources\.cpu/);
    assert.match(r.stderr, /INVALID_SPEC/);
    const list = await gridwork(['job', 'list', '--json'], env);
    assert.equal(list.code, 0);
    assert.deepEqual(JSON.parse(list.stdout).jobs, []);
  });

  test('malformed YAML exits 2 with the parser message', async () => {
    const spec = join(home.path, 'broken.yaml');
    await writeFile(spec, 'version: 1\nname: [unclosed\n');
    const r = await gridwork(['job', 'submit', spec], env);
    assert.equal(r.code, 2);
    assert.match(r.stderr, /not valid YAML/);
  });

  test('a job that does not exist is a 2, with its code', async () => {
    const r = await gridwork(['job', 'status', 'job_aaaaaaaaaaaaaaaa'], env);
    assert.equal(r.code, 2);
    assert.match(r.stderr, /JOB_NOT_FOUND/);
  });

  test('money: bad amounts exit 2; a deposit shows in --json balance', async () => {
    const bad = await gridwork(['account', 'deposit', '1.0000001'], env);
    assert.equal(bad.code, 2);
    assert.match(bad.stderr, /more than 6 decimal places/);
    const ok = await gridwork(['account', 'deposit', '5', '--json'], env);
    assert.equal(ok.code, 0, ok.stderr);
    assert.equal(JSON.parse(ok.stdout).available, '5');
  });

  test('an unreachable coordinator is a failure (exit 1), not a crash', async () => {
    const r = await gridwork(['job', 'list'], { ...env, GRIDWORK_COORDINATOR: 'http://127.0.0.1:9' });
    assert.equal(r.code, 1);
    assert.match(r.stderr, /cannot reach the coordinator/);
  });

  test('submit --wait exits 0 on success and 1 when the job fails', async () => {
    const dir = join(home.path, 'job');
    const { mkdir } = await import('node:fs/promises');
    await mkdir(join(dir, 'work'), { recursive: true });
    await writeFile(join(dir, 'work', 'ok.mjs'), "import { writeFileSync } from 'node:fs'; writeFileSync(process.env.GRIDWORK_OUTPUTS + '/out.txt', 'hi'); console.log('done');\n");
    await writeFile(join(dir, 'work', 'fail.mjs'), 'process.exit(4);\n');
    const spec = (script: string) =>
      `version: 1\nname: cli-${script}\nkind: batch\nruntime: { kind: bundle, path: ./work, command: [node, ${script}.mjs] }\nresources: { cpu: 1, memoryGiB: 1 }\nprice: { maxPerHour: "1", budget: "0.5" }\n`;
    await writeFile(join(dir, 'ok.yaml'), spec('ok'));
    await writeFile(join(dir, 'fail.yaml'), spec('fail'));
    const ok = await gridwork(['job', 'submit', join(dir, 'ok.yaml'), '--wait', '--json'], env);
    assert.equal(ok.code, 0, ok.stderr);
    const job = JSON.parse(ok.stdout);
    assert.equal(job.state, 'succeeded');
    const result = await gridwork(['job', 'result', job.id, '-o', join(dir, 'out'), '--json'], env);
    assert.equal(result.code, 0, result.stderr);
    assert.deepEqual(JSON.parse(result.stdout).files, [join(dir, 'out', 'task-0', 'out.txt')]);
    const fail = await gridwork(['job', 'submit', join(dir, 'fail.yaml'), '--wait'], env);
    assert.equal(fail.code, 1);
    assert.match(fail.stderr, /exited with code 4/);
  });

  test('gridwork demo --json runs the whole network and prints one JSON summary', { timeout: 180_000 }, async () => {
    const r = await gridwork(['demo', '--json', '--providers', '2'], { GRIDWORK_HOME: home.path }, 170_000);
    assert.equal(r.code, 0, r.stderr);
    const summary = JSON.parse(r.stdout);
    assert.equal(summary.ok, true);
    assert.equal(summary.job.state, 'succeeded');
    assert.equal(summary.tasks.length, 6);
    assert.equal(summary.providers.length, 2);
    for (const t of summary.tasks) {
      assert.equal(t.exitCode, 0);
      assert.match(t.outputDigest, /^[0-9a-f]{64}$/);
    }
    assert.equal(summary.results.docs, 342);
    assert.ok(Number(summary.money.spent) > 0);
  });
});
