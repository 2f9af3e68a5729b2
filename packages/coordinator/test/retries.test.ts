/**
 * Batch work across providers (PGlite, real sandboxed agents): a task whose provider failed it is
 * retried on another provider even when the failing one is cheaper (with one retry allowed, a
 * retry on the same provider would fail the job), and the result manifest the
 * SDK writes maps each task to its files, its provider and its verification state — also while
 * the job still runs (partial results).
 */
import assert from 'node:assert/strict';
import { readFile } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { fileURLToPath } from 'node:url';
import type { JobSpec } from '@gridwork/protocol';
import { fixedPricing } from '@gridwork/provider';
import { startTestNetwork, type TestNetwork, until } from '@gridwork/testkit';

const fixtures = join(dirname(fileURLToPath(import.meta.url)), 'fixtures');
const benchmarks = { cpuMopsPerCore: 1000, gpu: {} };

describe('batch retries and the result manifest', { timeout: 120_000 }, () => {
  let net: TestNetwork;

  before(async () => {
    net = await startTestNetwork({ provider: { benchmarks } });
  });
  after(async () => {
    await net?.close();
  });

  test('a failed shard is retried on another provider; the manifest says who produced what, partial results included', async () => {
    // The cheap provider fails every task after running it (it cannot deliver its outputs).
    const flaky = await net.addProvider({
      name: 'cheap-flaky',
      slots: 2,
      pricing: fixedPricing({ cpuCoreHour: '1', memoryGiBHour: '0' }),
      resultTamper: async () => {
        throw new Error('disk full');
      },
    });
    const client = await net.fundedClient('50');
    const spec: JobSpec = {
      version: 1,
      name: 'retry-elsewhere',
      kind: 'batch',
      runtime: { kind: 'bundle', path: './tasks', command: ['node', 'task.mjs', 'square', '50'] },
      resources: { cpu: 1, memoryGiB: 1 },
      shards: 2,
      price: { maxPerHour: '10', budget: '5' },
      maxRetries: 1,
    };
    // Both providers from the start: the cheap one gets both tasks first; their retries must go to the dear one.
    await net.addProvider({ name: 'dear-reliable', slots: 1, pricing: fixedPricing({ cpuCoreHour: '5', memoryGiBHour: '0' }) });
    const job = await client.submit(spec, { baseDir: fixtures });
    // Partial results: as soon as one task is done, the manifest holds it and marks the other unfinished.
    const partialDir = join(net.dir, 'partial');
    const one = await until(() => client.get(job.id), (j) => j.tasks.some((t) => t.state === 'succeeded'), { timeoutMs: 60_000, what: 'one task done' });
    if (one.state !== 'succeeded') {
      const files = await client.results(job.id, partialDir);
      const partial = JSON.parse(await readFile(join(partialDir, 'manifest.json'), 'utf8'));
      assert.equal(files.length, partial.tasks.filter((t: { state: string }) => t.state === 'succeeded').length);
      assert.ok(partial.tasks.some((t: { outputs: unknown[] }) => t.outputs.length === 0), 'an unfinished task has no outputs yet');
    }
    const done = await until(() => client.get(job.id), (j) => j.state === 'succeeded' || j.state === 'failed', { timeoutMs: 60_000, what: 'the job' });
    assert.equal(done.state, 'succeeded', done.error ?? '');
    for (const t of done.tasks) {
      assert.equal(t.providerName, 'dear-reliable', `task ${t.index} retried away from the provider that failed it`);
      assert.ok(t.attempts >= 1);
    }
    assert.ok(flaky.name === 'cheap-flaky');
    const dir = join(net.dir, 'results');
    const files = await client.results(job.id, dir);
    assert.equal(files.length, 2);
    const manifest = JSON.parse(await readFile(join(dir, 'manifest.json'), 'utf8'));
    assert.equal(manifest.job, job.id);
    assert.equal(manifest.state, 'succeeded');
    for (const [i, t] of manifest.tasks.entries()) {
      assert.equal(t.index, i);
      assert.equal(t.provider.name, 'dear-reliable');
      assert.equal(t.outputs.length, 1);
      assert.equal(t.outputs[0].file, `task-${i}/result.txt`);
      assert.equal(await readFile(join(dir, t.outputs[0].file), 'utf8'), `task ${i} of 2: ${i * i}\n`);
      assert.equal(t.verification, 'verified', 'paid at once: no audit window in this network');
    }
  });
});
