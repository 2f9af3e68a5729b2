/**
 * The `gridwork` command as users run it (a real child process): exit codes (0 success, 1 the
 * job or operation failed, 2 bad usage or input), messages that name the problem, data on
 * stdout and diagnostics on stderr, `--json` (errors too), colour rules, and the demo end to end.
 */
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { existsSync } from 'node:fs';
import { mkdir, readFile, writeFile } from 'node:fs/promises';
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { GRIDWORK_VERSION } from '@gridwork/protocol';
import { startTestNetwork, type TestNetwork, tempDir } from '@gridwork/testkit';
import { freePort, GRIDWORK_BIN, startProviderProcess } from '../../testkit/src/processes.ts';

interface Run {
  code: number;
  stdout: string;
  stderr: string;
}

function gridwork(args: string[], env: Record<string, string | undefined> = {}, timeoutMs = 120_000): Promise<Run> {
  const merged: Record<string, string> = {};
  for (const [k, v] of Object.entries({ ...process.env, NO_COLOR: undefined, FORCE_COLOR: undefined, ...env, CI: 'true' })) if (v !== undefined) merged[k] = v;
  return new Promise((resolve) => {
    execFile(process.execPath, [GRIDWORK_BIN, ...args], { env: merged, timeout: timeoutMs, maxBuffer: 16 << 20 }, (err, stdout, stderr) => {
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

  test('an unreachable coordinator is a failure (exit 1) that says why: connection refused, DNS', async () => {
    const port = await freePort();
    const refused = await gridwork(['job', 'list'], { ...env, GRIDWORK_COORDINATOR: `http://127.0.0.1:${port}` });
    assert.equal(refused.code, 1);
    assert.match(refused.stderr, /cannot reach the coordinator at http:\/\/127\.0\.0\.1:\d+: connection refused/);
    assert.doesNotMatch(refused.stderr, /fetch failed/);
    const dns = await gridwork(['job', 'list'], { ...env, GRIDWORK_COORDINATOR: 'http://no-such-host.invalid:7070' });
    assert.equal(dns.code, 1);
    assert.match(dns.stderr, /the host name no-such-host\.invalid does not resolve/);
  });

  test('a malformed coordinator URL is bad input (exit 2), and creates no key', async () => {
    const fresh = await tempDir('gridwork-cli-fresh-');
    try {
      for (const url of ['127.0.0.1:7070', 'htp://x', 'not a url']) {
        const r = await gridwork(['job', 'list'], { GRIDWORK_HOME: fresh.path, GRIDWORK_COORDINATOR: url });
        assert.equal(r.code, 2, `${url}: ${r.stderr}`);
        assert.match(r.stderr, /invalid coordinator URL/);
      }
      assert.equal(existsSync(join(fresh.path, 'requester-key.json')), false);
    } finally {
      await fresh.remove();
    }
  });

  test('something that is not a Gridwork coordinator is named as such (exit 2)', async () => {
    const server: Server = createServer((_req, res) => {
      res.writeHead(404, { 'content-type': 'text/html' }).end('<html>nope</html>');
    });
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
    try {
      const url = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
      const r = await gridwork(['job', 'list', '--json'], { ...env, GRIDWORK_COORDINATOR: url });
      assert.equal(r.code, 2, r.stderr);
      assert.match(r.stderr, /is not a Gridwork coordinator/);
      assert.equal(JSON.parse(r.stdout).error.code, 'PROTOCOL_ERROR');
    } finally {
      server.close();
    }
  });

  test('with --json, an error is a JSON document on stdout too', async () => {
    const r = await gridwork(['job', 'status', 'job_aaaaaaaaaaaaaaaa', '--json'], env);
    assert.equal(r.code, 2);
    const doc = JSON.parse(r.stdout);
    assert.equal(doc.error.code, 'JOB_NOT_FOUND');
    assert.equal(doc.error.exitCode, 2);
    assert.match(doc.error.message, /job_aaaaaaaaaaaaaaaa|not found/i);
    const usage = await gridwork(['job', 'status', '--json', '--frob'], env);
    assert.equal(usage.code, 2);
    assert.match(JSON.parse(usage.stdout).error.message, /unknown option/);
  });

  test('data goes to stdout (`market | grep cpu` works), with a header and aligned columns; diagnostics to stderr', async () => {
    const r = await gridwork(['market'], env);
    assert.equal(r.code, 0, r.stderr);
    const lines = r.stdout.trimEnd().split('\n');
    assert.match(lines[0] as string, /^CLASS\s+UNIT\s+PROVIDERS\s+FREE\s+MIN\s+MEDIAN\s+MAX$/);
    assert.ok(lines.some((l) => /^cpu/.test(l)), r.stdout);
    const widths = new Set(lines.map((l) => l.length));
    assert.equal(widths.size, 1, 'right-aligned last column: every line has the same width');
    assert.equal(r.stderr, '');
    const balance = await gridwork(['account', 'balance'], env);
    assert.match(balance.stdout, /available/);
    assert.equal(balance.stderr, '');
  });

  test('`gridwork providers` lists who is online, with hardware, asks and reputation', async () => {
    const table = await gridwork(['providers'], env);
    assert.equal(table.code, 0, table.stderr);
    const [header, ...rows] = table.stdout.trimEnd().split('\n');
    assert.match(header as string, /^NAME\s+STATE\s+CORES\s+MEM GIB\s+GPUS\s+ASKS\s+REPUTATION\s+STAKE/);
    assert.equal(rows.length, 1);
    assert.match(rows[0] as string, /^provider-0\s+online\s+\d+/);
    const json = await gridwork(['providers', '--json'], env);
    const [p] = JSON.parse(json.stdout).providers;
    assert.equal(p.name, 'provider-0');
    assert.match(p.asks.cpuCoreHour, /^\d/);
  });

  test('colour only when asked for (FORCE_COLOR) and never with NO_COLOR; not on a pipe', async () => {
    const plain = await gridwork(['market'], env);
    assert.doesNotMatch(plain.stdout + plain.stderr, /\x1b\[/);
    const forced = await gridwork(['job', 'status', 'job_aaaaaaaaaaaaaaaa'], { ...env, FORCE_COLOR: '1' });
    assert.match(forced.stderr, /\x1b\[/);
    const none = await gridwork(['job', 'status', 'job_aaaaaaaaaaaaaaaa'], { ...env, FORCE_COLOR: '1', NO_COLOR: '1' });
    assert.doesNotMatch(none.stderr, /\x1b\[/);
  });

  test('--version is the protocol version; completion scripts list the commands', async () => {
    const v = await gridwork(['--version'], env);
    assert.equal(v.stdout.trim(), GRIDWORK_VERSION);
    const bash = await gridwork(['completion', 'bash'], env);
    assert.equal(bash.code, 0);
    assert.match(bash.stdout, /complete -F _gridwork gridwork/);
    assert.match(bash.stdout, /"job"\) words="[^"]*\btop-up\b/);
    const fish = await gridwork(['completion', 'fish'], env);
    assert.match(fish.stdout, /complete -c gridwork/);
    const bad = await gridwork(['completion', 'tcsh'], env);
    assert.equal(bad.code, 2);
  });

  test('`provider balance` without a data directory says where it looked and creates no key (exit 2)', async () => {
    const r = await gridwork(['provider', 'balance'], env);
    assert.equal(r.code, 2);
    assert.match(r.stderr, new RegExp(`no provider key at ${join(home.path, 'provider', 'provider-key.json').replaceAll('/', '\\/')}`));
    assert.equal(existsSync(join(home.path, 'provider')), false);
  });

  test('a provider started against a dead coordinator says it cannot connect (and keeps retrying)', async () => {
    const dead = `http://127.0.0.1:${await freePort()}`;
    const p = await startProviderProcess({ coordinatorUrl: dead, dataDir: join(home.path, 'lonely-provider'), name: 'lonely', runtime: 'process', env: { GRIDWORK_HOME: home.path } });
    try {
      assert.match(p.stderr(), /cannot reach the coordinator at http:\/\/127\.0\.0\.1:\d+: connection refused.*keeps retrying/);
      assert.equal(p.alive, true);
    } finally {
      await p.stop();
    }
  });

  test('profiles: a named coordinator from config.json; environment variables win; an unknown profile is exit 2', async () => {
    const cfgHome = await tempDir('gridwork-cli-profile-');
    try {
      await writeFile(
        join(cfgHome.path, 'config.json'),
        JSON.stringify({ defaultProfile: 'dead', profiles: { dead: { coordinator: 'http://127.0.0.1:1' }, test: { coordinator: net.coordinator.url } } }),
      );
      const viaProfile = await gridwork(['job', 'list', '--json', '--profile', 'test'], { GRIDWORK_HOME: cfgHome.path, GRIDWORK_COORDINATOR: undefined });
      assert.equal(viaProfile.code, 0, viaProfile.stderr);
      const viaEnvProfile = await gridwork(['job', 'list', '--json'], { GRIDWORK_HOME: cfgHome.path, GRIDWORK_COORDINATOR: undefined, GRIDWORK_PROFILE: 'test' });
      assert.equal(viaEnvProfile.code, 0, viaEnvProfile.stderr);
      const envWins = await gridwork(['job', 'list', '--json'], { GRIDWORK_HOME: cfgHome.path, GRIDWORK_COORDINATOR: net.coordinator.url });
      assert.equal(envWins.code, 0, envWins.stderr);
      const defaultProfile = await gridwork(['job', 'list'], { GRIDWORK_HOME: cfgHome.path, GRIDWORK_COORDINATOR: undefined });
      assert.equal(defaultProfile.code, 1, 'the default profile names a dead coordinator');
      const unknown = await gridwork(['job', 'list', '--profile', 'nope'], { GRIDWORK_HOME: cfgHome.path });
      assert.equal(unknown.code, 2);
      assert.match(unknown.stderr, /no profile "nope" .*\(profiles: dead, test\)/);
    } finally {
      await cfgHome.remove();
    }
  });

  test('a spec error lists allowed values and suggests the field meant', async () => {
    const spec = join(home.path, 'typo.yaml');
    await writeFile(spec, 'version: 1\nname: x\nkind: bach\nruntime: { kind: bundle, path: ., command: [node] }\nresouces: { cpu: 1, memoryGiB: 1 }\n');
    const r = await gridwork(['job', 'submit', spec], env);
    assert.equal(r.code, 2);
    assert.match(r.stderr, /kind: must be one of batch \| train \| service \| cluster \(got "bach"\); did you mean batch\?/);
    const numeric = join(home.path, 'numeric.yaml');
    await writeFile(numeric, 'version: 1\nname: x\nkind: batch\nruntime: { kind: bundle, path: ., command: [node] }\nresources: { cpu: 1, memoryGiB: 1 }\nprice: { maxPerHour: 1.00, budget: 0.5 }\n');
    const explained = await gridwork(['job', 'explain', numeric, '--json'], env);
    assert.equal(JSON.parse(explained.stdout).maxPerHour, '1', explained.stderr);
  });

  test('submit --wait exits 0 on success and 1 when the job fails', async () => {
    const dir = join(home.path, 'job');
    const { mkdir } = await import('node:fs/promises');
    await mkdir(join(dir, 'work'), { recursive: true });
    await writeFile(join(dir, 'work', 'ok.mjs'), "import { writeFileSync } from 'node:fs'; writeFileSync(process.env.GRIDWORK_OUTPUTS + '/out.txt', 'hi'); console.log('done');\n");
    await writeFile(join(dir, 'work', 'fail.mjs'), "console.error('loading model');\nconsole.error('boom: out of cheese');\nprocess.exit(4);\n");
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
    // The reason, where the user is looking: the last lines of the task's stderr, and where the rest is.
    assert.match(fail.stderr, /\| loading model\n.*\| boom: out of cheese/s);
    assert.match(fail.stderr, /all of it: gridwork job logs job_\w+ --task 0/);
    const list = await gridwork(['job', 'list'], env);
    assert.match(list.stdout, /^ID\s+STATE\s+TASKS\s+NAME\s+CREATED\n/);
    assert.match(list.stdout, /cli-fail\s+(just now|\d+ s ago)/);
  });

  test('a job nothing can run: submit says why, `job result` says what is missing (exit 1), top-up adds budget', async () => {
    const dir = join(home.path, 'gpu-job');
    await mkdir(join(dir, 'work'), { recursive: true });
    await writeFile(join(dir, 'work', 'x.mjs'), '\n');
    await writeFile(
      join(dir, 'gpu.yaml'),
      'version: 1\nname: needs-gpu\nkind: batch\nruntime: { kind: bundle, path: ./work, command: [node, x.mjs] }\nresources: { gpu: { count: 1, models: [h100-80gb] }, cpu: 1, memoryGiB: 1 }\nprice: { maxPerHour: "1", budget: "0.5" }\n',
    );
    assert.equal((await gridwork(['account', 'deposit', '5'], env)).code, 0);
    const sub = await gridwork(['job', 'submit', join(dir, 'gpu.yaml'), '--json'], env);
    assert.equal(sub.code, 0, sub.stderr);
    assert.match(sub.stderr, /nothing can run this job now[^\n]*\n\s+- .*GPU/i);
    const id = JSON.parse(sub.stdout).id as string;
    const result = await gridwork(['job', 'result', id, '-o', join(dir, 'out')], env);
    assert.equal(result.code, 1);
    assert.match(result.stderr, /is still \w+: 0 of 1 tasks have finished; outputs of task 0 are not there yet/);
    const topUp = await gridwork(['job', 'top-up', id, '0.25', '--json'], env);
    assert.equal(topUp.code, 0, topUp.stderr);
    assert.equal(JSON.parse(topUp.stdout).money.budget, '0.75');
    const status = await gridwork(['job', 'status', id], env);
    assert.match(status.stdout, /waiting for capacity:/);
    assert.equal((await gridwork(['job', 'cancel', id], env)).code, 0);
  });

  test('`gridwork init` scaffolds a spec and bundle that run as they are; it never overwrites', async () => {
    const dir = join(home.path, 'my-first-job');
    const init = await gridwork(['init', dir], env);
    assert.equal(init.code, 0, init.stderr);
    assert.match(await readFile(join(dir, 'job.yaml'), 'utf8'), /name: my-first-job/);
    const run = await gridwork(['job', 'submit', join(dir, 'job.yaml'), '--wait', '--json'], env);
    assert.equal(run.code, 0, run.stderr);
    assert.equal(JSON.parse(run.stdout).state, 'succeeded');
    const again = await gridwork(['init', dir], env);
    assert.equal(again.code, 2);
    assert.match(again.stderr, /already exists; nothing was changed/);
  });

  test('gridwork demo --quick --json runs one sharded job on N providers and prints one JSON summary', { timeout: 180_000 }, async () => {
    const r = await gridwork(['demo', '--quick', '--json', '--providers', '2'], { GRIDWORK_HOME: home.path }, 170_000);
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

  test('demo --spec says when its providers ask more than the max price, instead of waiting forever', { timeout: 120_000 }, async () => {
    const example = await readFile(new URL('../../../examples/embed-corpus/job.yaml', import.meta.url), 'utf8');
    const dir = join(home.path, 'cheap');
    await mkdir(dir, { recursive: true });
    const { cp } = await import('node:fs/promises');
    await cp(new URL('../../../examples/embed-corpus/', import.meta.url), dir, { recursive: true });
    await writeFile(join(dir, 'job.yaml'), example.replace(/maxPerHour: "[^"]+"/, 'maxPerHour: "0.01"'));
    const r = await gridwork(['demo', '--providers', '1', '--spec', join(dir, 'job.yaml')], { GRIDWORK_HOME: home.path }, 110_000);
    assert.equal(r.code, 1, r.stderr);
    assert.match(r.stderr, /the demo providers ask more than the spec's max price: the lowest ask for this order is [\d.]+\/h, the spec allows 0\.01\/h/);
  });
});
