/**
 * `gridwork demo` as a newcomer runs it (a real child process): the full demo ends with exit 0 and
 * one JSON report on stdout in which every claim held — the training resumed elsewhere after its
 * provider was killed, both inference jobs have verified results for every input, the service
 * answered through the ingress, the cluster succeeded, the cheater was slashed and no honest
 * provider was, the cheater's shards were re-run by the network inside their jobs — with every
 * job's kind spelled as in its spec. Also: what its cheater writes, and bad input.
 */
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { mkdir, readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { readSpecFile } from '@gridwork/sdk';
import { tempDir } from '@gridwork/testkit';
import { GRIDWORK_BIN } from '../../testkit/src/processes.ts';
import { madeUpResults } from '../src/demo/cheater.ts';
import type { DemoReport } from '../src/demo/demo-report.ts';
import { CheckpointWatch } from '../src/demo/train-step.ts';
import { EXAMPLES_DIR } from '../src/demo/workloads.ts';

interface Run {
  code: number;
  stdout: string;
  stderr: string;
}

function gridwork(args: string[], env: Record<string, string | undefined>, timeoutMs: number): Promise<Run> {
  const merged: Record<string, string> = {};
  for (const [k, v] of Object.entries({ ...process.env, NO_COLOR: undefined, FORCE_COLOR: undefined, ...env, CI: 'true' })) if (v !== undefined) merged[k] = v;
  return new Promise((resolve) => {
    execFile(process.execPath, [GRIDWORK_BIN, ...args], { env: merged, timeout: timeoutMs, maxBuffer: 32 << 20 }, (err, stdout, stderr) => {
      const code = err ? (typeof (err as { code?: unknown }).code === 'number' ? ((err as { code: number }).code as number) : 1) : 0;
      resolve({ code, stdout, stderr });
    });
  });
}

let home: { path: string; remove: () => Promise<void> };
before(async () => {
  home = await tempDir('gridwork-demo-test-');
});
after(async () => {
  await home?.remove();
});

describe('gridwork demo', () => {
  test('the full demo does everything it claims: one JSON report, exit 0', { timeout: 300_000 }, async () => {
    const r = await gridwork(['demo', '--json'], { GRIDWORK_HOME: home.path }, 290_000);
    assert.equal(r.code, 0, r.stderr.slice(-6000));
    const report = JSON.parse(r.stdout) as DemoReport;
    assert.equal(report.ok, true);
    for (const c of report.claims) assert.equal(c.ok, true, `${c.step}: ${c.claim}: ${c.detail}`);
    assert.deepEqual([...new Set(report.claims.map((c) => c.step))].sort(), ['audit', 'cluster', 'inference', 'service', 'train']);
    assert.deepEqual(
      report.steps.map((s) => s.step),
      ['train', 'inference', 'service', 'cluster', 'audit'],
    );

    // Every job's kind is its spec's, spelled as there.
    const kinds = new Map<string, string>();
    for (const name of ['train', 'infer-trained', 'infer-pretrained', 'service', 'cluster']) {
      const spec = await readSpecFile(join(EXAMPLES_DIR, name, 'job.yaml'));
      kinds.set(spec.name, spec.kind);
    }
    for (const j of report.jobs) assert.equal(j.kind, kinds.get(j.name), j.name);
    assert.deepEqual([...new Set(report.jobs.map((j) => j.kind))].sort(), ['batch', 'cluster', 'service', 'train']);

    const providers = new Map(report.providers.map((p) => [p.name, p]));
    assert.equal(report.providers.length, 5, 'four providers and the one that replaced the killed one');
    const killed = report.providers.filter((p) => p.state === 'killed');
    assert.equal(killed.length, 1);

    // 1. Training: resumed from a checkpoint, on a provider that is not the dead one.
    const train = report.jobs.filter((j) => j.kind === 'train');
    assert.equal(train.length, 1);
    assert.equal(train[0]?.state, 'succeeded');
    assert.match(
      train[0]?.notes.join('; ') ?? '',
      new RegExp(`${killed[0]?.name} killed at about step \\d+; resumed on provider-\\d from the checkpoint at step [1-9]\\d*`),
    );
    assert.equal(train[0]?.tasksByProvider[killed[0]?.name ?? ''], undefined);

    // 2. Inference: the two example jobs. Each shard the cheater faked was refuted and re-run by
    // the network inside its job, on another provider: both jobs succeeded, none of their final
    // results is the cheater's, and the demo submitted no re-run job of its own.
    const batch = report.jobs.filter((j) => j.step === 'inference');
    assert.deepEqual(batch.map((j) => j.name).sort(), ['infer-spiral-mlp', 'ocr-text-lines']);
    assert.deepEqual(
      report.jobs.filter((j) => j.step === 'audit').map((j) => j.name),
      [],
    );
    const cheaters = report.providers.filter((p) => p.role === 'cheater');
    assert.equal(cheaters.length, 1);
    const cheater = cheaters[0] as DemoReport['providers'][number];
    for (const j of batch) {
      assert.equal(j.state, 'succeeded', `${j.name}: ${j.error}`);
      assert.equal(j.tasksByProvider[cheater.name], undefined, `${j.name}: no final result is the cheater's`);
    }
    const reruns = batch.flatMap((j) => j.notes.filter((n) => n.includes(`${cheater.name}'s result refuted`)));
    assert.ok(reruns.length >= 1, 'at least one refuted shard re-run');
    for (const n of reruns) assert.match(n, /re-run by provider-\d: verified$/);

    // 3. Service and 4. cluster.
    const service = report.jobs.find((j) => j.kind === 'service');
    assert.equal(service?.state, 'cancelled');
    assert.equal(service?.tasks, 2);
    const cluster = report.jobs.find((j) => j.kind === 'cluster');
    assert.equal(cluster?.state, 'succeeded');
    assert.equal(Object.keys(cluster?.tasksByProvider ?? {}).length, 2, 'members on two providers');

    // 5. The cheater slashed, nobody else.
    assert.ok(Number(cheater.stake.change) < 0, JSON.stringify(cheater));
    assert.ok(Number(cheater.slashed) > 0);
    assert.ok(cheater.audits.failed >= 1);
    for (const p of report.providers.filter((x) => x.role === 'honest')) {
      assert.equal(p.stake.change, '0', p.name);
      assert.equal(p.slashed, '0', p.name);
      assert.equal(p.audits.failed, 0, p.name);
    }
    assert.ok(Number(report.money.requester.refunded) > 0, 'the faked results were refunded');
    assert.ok(
      [...providers.values()].some((p) => Number(p.rewards) > 0),
      'whoever proved the fault got a share of the slash',
    );
    assert.ok(report.elapsedMs > 0);
  });

  test('--data must be new or empty for the full demo (exit 2)', async () => {
    const dir = join(home.path, 'used');
    await mkdir(dir, { recursive: true });
    await writeFile(join(dir, 'something'), 'x');
    const r = await gridwork(['demo', '--data', dir], { GRIDWORK_HOME: home.path }, 60_000);
    assert.equal(r.code, 2, r.stderr);
    assert.match(r.stderr, /--data .* is not empty/);
    const bad = await gridwork(['demo', '--runtime', 'docker'], { GRIDWORK_HOME: home.path }, 60_000);
    assert.equal(bad.code, 2);
    assert.match(bad.stderr, /--runtime must be sandbox or process/);
  });

  test("the cheater fakes only the jobs it is told to, keeping the outputs' shape", async () => {
    const dir = join(home.path, 'outputs');
    await mkdir(dir, { recursive: true });
    const line = { file: 'points/a.csv', row: 0, x: 0.1, y: 0.2, class: 2, probabilities: [0.1, 0.2, 0.7], truth: 2 };
    await writeFile(join(dir, 'predictions.jsonl'), `${JSON.stringify(line)}\n`);
    await writeFile(
      join(dir, 'results.jsonl'),
      `${JSON.stringify({ image: 'images/l.png', text: 'hello', confidence: 0.9, expected: 'hello', match: true })}\n`,
    );
    const faked: string[] = [];
    const tamper = madeUpResults(
      () => new Set(['job_target']),
      (jobId, task) => faked.push(`${jobId}/${task}`),
    );
    const lease = (jobId: string) => ({ jobId, taskIndex: 1 }) as Parameters<typeof tamper>[1];
    await tamper(dir, lease('job_other'));
    assert.deepEqual(faked, []);
    assert.deepEqual(JSON.parse(await readFile(join(dir, 'predictions.jsonl'), 'utf8')), line);
    await tamper(dir, lease('job_target'));
    assert.deepEqual(faked, ['job_target/1']);
    assert.deepEqual(JSON.parse(await readFile(join(dir, 'predictions.jsonl'), 'utf8')), { ...line, class: 0, probabilities: [1, 0, 0] });
    const ocr = JSON.parse(await readFile(join(dir, 'results.jsonl'), 'utf8'));
    assert.deepEqual([ocr.text, ocr.confidence, ocr.match], ['', 0, false]);
  });

  test('the provider running the training is killed once the coordinator holds its checkpoints: after the backlog, or at once on a fast machine', async () => {
    const watch = new CheckpointWatch();
    const slow = watch.uploaded('job_a', 6000, 10_000);
    // The agent's first scan hands over the backlog (each one after the previous one was uploaded).
    for (const step of [50, 100, 150]) watch.seen('provider-1', 'job_a', 'lease_1', step);
    const pending = await Promise.race([slow.then(() => 'answered'), new Promise((r) => setTimeout(() => r('waiting'), 50))]);
    assert.equal(pending, 'waiting', 'not before the backlog is up');
    await new Promise((r) => setTimeout(r, 650));
    watch.seen('provider-1', 'job_a', 'lease_1', 200); // the next scan: everything before it is at the coordinator
    assert.deepEqual(await slow, { provider: 'provider-1', leaseId: 'lease_1', uploaded: 150, latest: 200 });

    const fast = watch.uploaded('job_b', 6000, 10_000);
    for (let step = 50; step <= 6000; step += 50) watch.seen('provider-3', 'job_b', 'lease_2', step);
    const u = await fast;
    assert.equal(u.provider, 'provider-3');
    assert.equal(u.uploaded, 5950, 'past half the run, it goes at once');
  });
});
