import assert from 'node:assert/strict';
import { mkdir, mkdtemp, readFile, readdir, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { until } from '@gridwork/testkit';
import type { RunRequest } from './runtime.ts';
import { PROCESS_RUNTIME_WARNING, createProcessRuntime } from './process-runtime.ts';

let root = '';
let counter = 0;
const warnings: string[] = [];
const runtime = createProcessRuntime({ warn: (m) => warnings.push(m), killGraceMs: 300 });

before(async () => {
  root = await mkdtemp(path.join(os.tmpdir(), 'gw-proc-'));
});
after(async () => {
  await rm(root, { recursive: true, force: true });
});

interface Task {
  bundle: string;
  inputs: string;
  outputs: string;
  checkpoints: string;
}

async function makeTask(bundleFiles: Record<string, string> = {}, inputFiles: Record<string, string> = {}): Promise<Task> {
  const dir = path.join(root, `task-${++counter}`);
  const t = { bundle: `${dir}/bundle`, inputs: `${dir}/inputs`, outputs: `${dir}/outputs`, checkpoints: `${dir}/checkpoints` };
  for (const d of Object.values(t)) await mkdir(d, { recursive: true });
  for (const [name, text] of Object.entries(bundleFiles)) await writeFile(path.join(t.bundle, name), text);
  for (const [name, text] of Object.entries(inputFiles)) await writeFile(path.join(t.inputs, name), text);
  return t;
}

function request(t: Task, command: string[], extra: Partial<RunRequest> = {}) {
  const out = { stdout: '', stderr: '' };
  const req: RunRequest = {
    bundleDir: t.bundle,
    inputsDir: t.inputs,
    outputsDir: t.outputs,
    checkpointsDir: t.checkpoints,
    command,
    env: {},
    network: false,
    timeoutMs: 30_000,
    memoryBytes: 1024 ** 3,
    cpu: 1,
    diskBytes: 10 * 1024 ** 3,
    onOutput: (stream, data) => {
      out[stream] += data;
    },
    ...extra,
  };
  return { req, out };
}

/** Whether pid is a live (not zombie) process. A killed orphan may linger as a zombie until reaped. */
/** SIGKILL is delivered asynchronously: a killed process may still show as running for a moment. */
async function diesWithin(pid: number, ms: number): Promise<boolean> {
  const deadline = Date.now() + ms;
  while (await alive(pid)) {
    if (Date.now() > deadline) return false;
    await new Promise((r) => setTimeout(r, 10));
  }
  return true;
}

async function alive(pid: number): Promise<boolean> {
  const stat = await readFile(`/proc/${pid}/stat`, 'utf8').catch(() => '');
  const state = stat.slice(stat.lastIndexOf(')') + 2, stat.lastIndexOf(')') + 3);
  return state !== '' && state !== 'Z' && state !== 'X';
}

describe('process runtime', () => {
  test('warns once, at creation', async () => {
    assert.deepEqual(warnings, [PROCESS_RUNTIME_WARNING]);
    assert.match(PROCESS_RUNTIME_WARNING, /UNSANDBOXED/);
    await runtime.check();
    assert.equal(warnings.length, 1);
    assert.equal(runtime.kind, 'process');
  });

  test('same env contract with real paths; cwd is the bundle; output captured', async () => {
    const t = await makeTask(
      {
        'main.js': `
          const fs = require('node:fs');
          const text = fs.readFileSync(process.env.GRIDWORK_INPUTS + '/in.txt', 'utf8');
          fs.writeFileSync(process.env.GRIDWORK_OUTPUTS + '/out.txt', text.toUpperCase());
          console.log(JSON.stringify({ cwd: process.cwd(), env: process.env }));
          console.error('err ✓');
        `,
      },
      { 'in.txt': 'hello' },
    );
    process.env.GW_AGENT_SECRET = 'must-not-leak';
    const { req, out } = request(t, ['node', 'main.js'], { env: { MY_VAR: '1' } });
    const result = await runtime.run(req);
    delete process.env.GW_AGENT_SECRET;
    assert.equal(result.exitCode, 0, out.stderr);
    assert.equal(out.stderr, 'err ✓\n');
    assert.equal(await readFile(path.join(t.outputs, 'out.txt'), 'utf8'), 'HELLO');
    const seen = JSON.parse(out.stdout) as { cwd: string; env: Record<string, string> };
    assert.equal(seen.cwd, t.bundle);
    assert.deepEqual(seen.env, {
      PATH: '/usr/local/bin:/usr/bin:/bin',
      HOME: '/tmp',
      LANG: 'C.UTF-8',
      MY_VAR: '1',
      GRIDWORK_INPUTS: t.inputs,
      GRIDWORK_OUTPUTS: t.outputs,
      GRIDWORK_CHECKPOINTS: t.checkpoints,
    });
  });

  test("a cluster member finds the agent's delivered rounds at $GRIDWORK_EXCHANGE/in", async () => {
    const t = await makeTask({ 'member.js': "console.log(require('node:fs').readFileSync(process.env.GRIDWORK_EXCHANGE + '/in/round-1/complete', 'utf8'))" });
    const exchangeIn = path.join(path.dirname(t.checkpoints), 'exchange-in');
    await mkdir(path.join(exchangeIn, 'round-1'), { recursive: true });
    await writeFile(path.join(exchangeIn, 'round-1', 'complete'), 'relayed');
    await mkdir(path.join(t.checkpoints, 'exchange', 'in'), { recursive: true });
    const { req, out } = request(t, ['node', 'member.js'], { env: { WORLD_SIZE: '2' }, exchangeInDir: exchangeIn });
    const result = await runtime.run(req);
    assert.equal(result.exitCode, 0, out.stderr);
    assert.equal(out.stdout, 'relayed\n');
  });

  test('the task env cannot redirect the GRIDWORK_* directories', async () => {
    const t = await makeTask();
    const { req, out } = request(t, ['sh', '-c', 'echo $GRIDWORK_OUTPUTS'], { env: { GRIDWORK_OUTPUTS: '/etc' } });
    await runtime.run(req);
    assert.equal(out.stdout, `${t.outputs}\n`);
  });

  test('the time limit kills the task and a grandchild that ignores SIGTERM', async () => {
    const t = await makeTask();
    let grandchild: Promise<boolean> | undefined;
    // The limit must not fire before sh has installed its trap; 3 s leaves a loaded machine room for that.
    const { req, out } = request(t, ['sh', '-c', "trap '' TERM; sleep 86400 & echo $!; wait"], {
      timeoutMs: 3000,
      onOutput: (stream, data) => {
        out[stream] += data;
        if (out.stdout.endsWith('\n')) grandchild ??= alive(Number(out.stdout.trim()));
      },
    });
    const result = await runtime.run(req);
    assert.equal(result.timedOut, true);
    assert.equal(result.aborted, false);
    assert.equal(result.signal, 'SIGKILL', 'SIGTERM was ignored, so SIGKILL ended it');
    assert.ok(result.durationMs >= 3000 && result.durationMs < 15_000, String(result.durationMs));
    assert.equal(await grandchild, true, 'the grandchild ran');
    // SIGKILL is delivered asynchronously: on a loaded machine the grandchild may still be listed a moment after.
    await until(
      () => alive(Number(out.stdout.trim())),
      (a) => a === false,
      { what: 'the grandchild to be gone' },
    );
  });

  test('SIGTERM comes first', async () => {
    const t = await makeTask();
    // Stopped once the trap is installed, not by a short time limit that could fire before sh even starts.
    const controller = new AbortController();
    const script = `trap 'echo saved > "$GRIDWORK_CHECKPOINTS/on-term"; exit 0' TERM; sleep 86400 & echo ready; wait`;
    const { req, out } = request(t, ['sh', '-c', script], {
      signal: controller.signal,
      onOutput: (stream, data) => {
        out[stream] += data;
        if (out.stdout.includes('ready')) controller.abort();
      },
    });
    const result = await runtime.run(req);
    assert.equal(result.aborted, true);
    assert.equal(result.exitCode, 0);
    assert.equal(await readFile(path.join(t.checkpoints, 'on-term'), 'utf8'), 'saved\n');
  });

  test('an AbortSignal stops the task and its children', async () => {
    const t = await makeTask();
    const controller = new AbortController();
    const { req, out } = request(t, ['sh', '-c', 'sleep 86400 & echo $!; wait'], {
      signal: controller.signal,
      onOutput: (stream, data) => {
        out[stream] += data;
        if (out.stdout.endsWith('\n')) controller.abort();
      },
    });
    const result = await runtime.run(req);
    assert.equal(result.aborted, true);
    assert.equal(result.timedOut, false);
    assert.equal(result.signal, 'SIGTERM');
    assert.equal(await alive(Number(out.stdout.trim())), false);
  });

  test('background children do not outlive a task that exits normally', async () => {
    const t = await makeTask();
    const { req, out } = request(t, ['sh', '-c', 'sleep 86400 > /dev/null 2>&1 & echo $!']);
    const result = await runtime.run(req);
    assert.equal(result.exitCode, 0);
    assert.equal(await diesWithin(Number(out.stdout.trim()), 2000), true);
  });

  test('an already aborted signal does not start the task', async () => {
    const t = await makeTask();
    const { req } = request(t, ['sh', '-c', 'echo started > "$GRIDWORK_OUTPUTS/x"'], { signal: AbortSignal.abort() });
    const result = await runtime.run(req);
    assert.equal(result.aborted, true);
    assert.deepEqual(await readdir(t.outputs), []);
  });

  test('exit codes and signals are reported', async () => {
    const t = await makeTask();
    assert.equal((await runtime.run(request(t, ['sh', '-c', 'exit 42']).req)).exitCode, 42);
    const killed = await runtime.run(request(t, ['sh', '-c', 'kill -KILL $$']).req);
    assert.deepEqual([killed.exitCode, killed.signal], [null, 'SIGKILL']);
  });

  test('a missing command gives exit code 127 and a message', async () => {
    const t = await makeTask();
    const { req, out } = request(t, ['no-such-command-xyz']);
    const result = await runtime.run(req);
    assert.equal(result.exitCode, 127);
    assert.match(out.stderr, /cannot start no-such-command-xyz/);
  });

  test('accepts cpu and diskBytes and enforces neither (development only)', async () => {
    const t = await makeTask();
    const { req, out } = request(t, ['sh', '-c', 'head -c 65536 /dev/zero > "$GRIDWORK_OUTPUTS/f"; echo ok'], { cpu: 0.5, diskBytes: 1024 });
    const result = await runtime.run(req);
    assert.equal(result.exitCode, 0, out.stderr);
    assert.equal(out.stdout, 'ok\n');
    assert.equal(result.limit, undefined);
    await assert.rejects(runtime.run(request(t, ['true'], { cpu: 0 }).req), { code: 'INVALID_SPEC' });
    await assert.rejects(runtime.run(request(t, ['true'], { diskBytes: -1 }).req), { code: 'INVALID_SPEC' });
  });

  test('missing directories are rejected', async () => {
    const t = await makeTask();
    await assert.rejects(runtime.run(request(t, ['true'], { outputsDir: path.join(root, 'nope') }).req), { code: 'INTERNAL' });
  });
});
