/**
 * Waiting that survives (issue 9): idle streams carry keepalive lines the SDK skips;
 * `job submit --wait` and the SDK's log follow keep going
 * across a coordinator killed with SIGKILL and started again, resuming where they were (no
 * line twice, none lost); a wait that cannot reach the coordinator for longer than
 * --give-up-after exits 3 ("lost contact, the job is still running"), not 1 ("failed").
 * Everything is driven by events (task states, lines on stderr), not by timing.
 */
import assert from 'node:assert/strict';
import { type ChildProcess, spawn } from 'node:child_process';
import { mkdir, writeFile } from 'node:fs/promises';
import { request } from 'node:http';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
import type { ProviderAgent } from '@gridwork/provider';
import { type Identity, signRequest } from '@gridwork/protocol/node';
import { GridworkClient } from '@gridwork/sdk';
import { generateIdentity, silentLogger, tempDir, until } from '@gridwork/testkit';
import { type CoordinatorProcess, diagnostics, freePort, GRIDWORK_BIN, startCoordinatorProcess, stopAll } from '../../testkit/src/processes.ts';

interface Cli {
  child: ChildProcess;
  stdout: () => string;
  stderr: () => string;
  exited: Promise<number | null>;
  /** Resolves when stderr matches. */
  saw: (re: RegExp) => Promise<void>;
}

function startCli(args: string[], env: Record<string, string>): Cli {
  const child = spawn(process.execPath, [GRIDWORK_BIN, ...args], { env: { ...process.env, ...env, CI: 'true' }, stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  let err = '';
  const waiters: { re: RegExp; resolve: () => void }[] = [];
  child.stdout?.setEncoding('utf8').on('data', (d: string) => {
    out += d;
  });
  child.stderr?.setEncoding('utf8').on('data', (d: string) => {
    err += d;
    for (const w of [...waiters]) if (w.re.test(err)) w.resolve();
  });
  const exited = new Promise<number | null>((r) => child.once('exit', (code) => r(code)));
  return {
    child,
    stdout: () => out,
    stderr: () => err,
    exited,
    saw: (re) =>
      re.test(err)
        ? Promise.resolve()
        : new Promise<void>((resolve, reject) => {
            waiters.push({ re, resolve });
            void exited.then((code) => reject(new Error(`the CLI exited (${code}) before printing ${re}; stderr:\n${err}`)));
          }),
  };
}

let home: { path: string; remove: () => Promise<void> };
let port: number;
let coordinator: CoordinatorProcess | undefined;
let provider: ProviderAgent | undefined;
let client: GridworkClient;
let identity: Identity;
let env: Record<string, string>;
const clis: Cli[] = [];

const startCoordinator = async () => {
  // No result verification: these tests are about waiting across restarts, to the job's end (with
  // one provider on probation, an audit could never run and the job would stay verifying).
  coordinator = await startCoordinatorProcess({ dataDir: join(home.path, 'coordinator'), port, args: ['--dev', '--metering-ms', '500', '--no-verification'] });
  return coordinator;
};

/** A job whose only task prints "before", waits until `gate` exists, prints "after" and succeeds. */
async function writeGatedJob(name: string, gate: string): Promise<string> {
  const dir = join(home.path, name);
  await mkdir(join(dir, 'work'), { recursive: true });
  await writeFile(
    join(dir, 'work', 'gate.mjs'),
    "import { existsSync, writeFileSync } from 'node:fs';\nconsole.log('before');\nwhile (!existsSync(process.env.GATE)) await new Promise((r) => setTimeout(r, 50));\nconsole.log('after');\nwriteFileSync(process.env.GRIDWORK_OUTPUTS + '/done.txt', 'done');\n",
  );
  const spec = join(dir, 'job.yaml');
  await writeFile(
    spec,
    `version: 1\nname: ${name}\nkind: batch\nruntime: { kind: bundle, path: ./work, command: [node, gate.mjs], env: { GATE: "${gate}" } }\nresources: { cpu: 1, memoryGiB: 1 }\nprice: { maxPerHour: "1", budget: "1" }\ntimeoutSeconds: 600\n`,
  );
  return spec;
}

before(async () => {
  home = await tempDir('gridwork-waiting-');
  port = await freePort();
  await startCoordinator();
  const { ProviderAgent: Agent } = await import('@gridwork/provider');
  provider = await Agent.create({
    coordinatorUrl: `http://127.0.0.1:${port}`,
    dataDir: join(home.path, 'provider'),
    name: 'waiting-provider',
    runtime: 'process',
    gpus: 'none',
    slots: 2,
    logger: silentLogger(),
  });
  provider.start();
  identity = generateIdentity();
  await writeFile(join(home.path, 'requester-key.json'), JSON.stringify(identity));
  client = new GridworkClient({ url: `http://127.0.0.1:${port}`, identity });
  await client.deposit('50');
  env = { GRIDWORK_HOME: home.path, GRIDWORK_COORDINATOR: `http://127.0.0.1:${port}` };
});

after(async () => {
  for (const c of clis) if (c.child.exitCode === null) c.child.kill('SIGKILL');
  await provider?.close();
  await stopAll([coordinator]);
  await home?.remove();
});

test('submit --wait and a log follow survive a coordinator killed and restarted', { timeout: 240_000 }, async () => {
  const gate = join(home.path, 'gate-1');
  const spec = await writeGatedJob('survivor', gate);
  const cli = startCli(['job', 'submit', spec, '--wait', '--json', '--give-up-after', '10m'], env);
  clis.push(cli);
  await cli.saw(/submitted (job_\w+)/);
  const jobId = (/submitted (job_\w+)/.exec(cli.stderr()) as RegExpExecArray)[1] as string;
  await until(
    () => client.get(jobId),
    (j) => j.tasks[0]?.state === 'running',
    { what: 'the task to run', timeoutMs: 60_000 },
  );
  const lines: string[] = [];
  const follow = (async () => {
    for await (const l of client.logLines(jobId, { follow: true, retryDelayMs: 100 })) if (l.stream === 'stdout') lines.push(l.line);
  })();
  await until(
    async () => lines.length,
    (n) => n >= 1,
    { what: 'the first log line' },
  );

  await coordinator?.kill9();
  await cli.saw(/lost contact with the coordinator/);
  await startCoordinator();
  await cli.saw(/reconnected after/);
  await writeFile(gate, 'open');

  const code = await cli.exited;
  assert.equal(code, 0, `${cli.stderr()}\n${diagnostics([coordinator])}`);
  const final = JSON.parse(cli.stdout());
  assert.equal(final.id, jobId);
  assert.equal(final.state, 'succeeded');
  await follow;
  assert.deepEqual(lines, ['before', 'after'], 'each line once, across the restart');
});

test('a wait that loses contact for longer than --give-up-after exits 3 and says the job is still running', { timeout: 240_000 }, async () => {
  const gate = join(home.path, 'gate-2');
  const spec = await writeGatedJob('abandoned', gate);
  const submitted = await client.submitFile(spec);
  const cli = startCli(['job', 'wait', submitted.id, '--json', '--give-up-after', '1s'], env);
  clis.push(cli);
  await until(
    () => client.get(submitted.id),
    (j) => j.tasks[0]?.state === 'running',
    { what: 'the task to run', timeoutMs: 60_000 },
  );
  await coordinator?.kill9();
  const code = await cli.exited;
  assert.equal(code, 3, cli.stderr());
  assert.match(cli.stderr(), /lost contact with the coordinator for \d+ s while waiting for job job_\w+; the job is still running/);
  assert.match(cli.stderr(), new RegExp(`gridwork job status ${submitted.id}`));
  const doc = JSON.parse(cli.stdout());
  assert.equal(doc.error.code, 'LOST_CONTACT');
  assert.equal(doc.error.exitCode, 3);

  // The job really was still running: with the coordinator back, it finishes.
  await startCoordinator();
  await writeFile(gate, 'open');
  const final = await client.wait(submitted.id);
  assert.equal(final.state, 'succeeded');
});

test('an idle stream carries keepalive lines (so no client or proxy times it out), and the SDK skips them', { timeout: 120_000 }, async () => {
  const gate = join(home.path, 'gate-3');
  const spec = await writeGatedJob('quiet', gate);
  const submitted = await client.submitFile(spec);
  await until(
    () => client.get(submitted.id),
    (j) => j.tasks[0]?.state === 'running',
    { what: 'the task to run', timeoutMs: 60_000 },
  );
  const lines: string[] = [];
  const follow = (async () => {
    for await (const l of client.logLines(submitted.id, { follow: true })) if (l.stream === 'stdout') lines.push(l.line);
  })();
  // The same stream, raw: resolves once an empty line (a keepalive) arrives after the first entry.
  const path = `/v1/jobs/${submitted.id}/logs?after=0&follow=true`;
  const sawKeepalive = await new Promise<string>((resolve, reject) => {
    const req = request(`http://127.0.0.1:${port}${path}`, { headers: signRequest(identity, 'GET', path) }, (res) => {
      let text = '';
      res.setEncoding('utf8');
      res.on('data', (d: string) => {
        text += d;
        if (/\}\n\n/.test(text)) {
          req.destroy();
          resolve(text);
        }
      });
      res.on('end', () => reject(new Error(`stream ended without a keepalive: ${text}`)));
    });
    req.on('error', (err) => (err.message === 'socket hang up' ? undefined : reject(err)));
    req.end();
  });
  assert.match(sawKeepalive, /"data":"before\\n"[^\n]*\n\n/);
  await writeFile(gate, 'open');
  await follow;
  assert.deepEqual(lines, ['before', 'after']);
  assert.equal((await client.wait(submitted.id)).state, 'succeeded');
});
