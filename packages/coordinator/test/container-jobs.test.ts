/**
 * Container jobs on a real coordinator (PGlite) with real agents: placed only on providers that offer the
 * container runtime, explained while none does, and bundle jobs unaffected. No Docker engine runs here, so the
 * provider that offers containers runs them with a stand-in runtime of kind `container` (the real one is tested
 * in the provider's container-runtime.test.ts); what is under test is the registry, the hello, matching,
 * explain and the agent's runtime selection.
 */
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import type { GridworkClient, JobSpec, JobView } from '@gridwork/sdk';
import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { createProcessRuntime, type RunRequest, type Runtime } from '@gridwork/provider';
import { type TestNetwork, startTestNetwork, tempDir, until } from '@gridwork/testkit';

const WAIT_MS = 30_000;

const containerSpec = (name: string): JobSpec => ({
  version: 1,
  name,
  kind: 'batch',
  runtime: { kind: 'container', image: 'example/app:1', command: ['sh', '-c', 'echo "ran in $IMAGE_SEEN" > "$GRIDWORK_OUTPUTS/out.txt"'] },
  resources: { cpu: 1, memoryGiB: 1 },
  price: { maxPerHour: '0.50', budget: '1.00' },
});

/** A runtime of kind `container` that runs the command as a process and records the image it was asked for. */
function standInContainerRuntime(seen: string[]): Runtime {
  const inner = createProcessRuntime({ warn: () => {} });
  const start = (req: RunRequest) => {
    seen.push(req.image ?? '(none)');
    return inner.start({ ...req, env: { ...req.env, IMAGE_SEEN: req.image ?? '' } });
  };
  return { kind: 'container', check: async () => {}, start, run: async (req) => (await start(req)).wait() };
}

describe('container jobs on a real coordinator', () => {
  let net: TestNetwork;
  let client: GridworkClient;
  const images: string[] = [];

  before(async () => {
    // Bundle-only providers: no Docker engine here, and `containers: 'off'` makes sure of it elsewhere.
    net = await startTestNetwork({ providers: 2, provider: { runtime: 'process', containers: 'off' } });
    client = await net.fundedClient('100');
    // The explanations below count providers: both must have said hello (a hello also proves the
    // agent's ingress first, a round trip the agent's start does not wait for).
    await until(
      () => client.providers(),
      (ps) => ps.filter((p) => p.state === 'online').length === 2,
      { what: 'both providers online', timeoutMs: WAIT_MS },
    );
  });
  after(async () => {
    await net?.close();
  });

  let waiting: JobView;

  test('the agents declare only the runtimes they offer', () => {
    for (const p of net.providers) assert.deepEqual(p.runtimes, ['process']);
  });

  test('a container job is accepted and waits, explained: no provider offers the container runtime', async () => {
    const explained = await client.explain(containerSpec('explain-only'));
    assert.equal(explained.matchable, false);
    assert.equal(explained.excluded.runtime, 2);
    assert.ok(explained.reasons.includes('no provider offers the container runtime'), explained.reasons.join('; '));

    waiting = await client.submit(containerSpec('waits-for-containers'));
    const seen = await until(
      () => client.get(waiting.id),
      (j) => j.explain !== undefined,
      { what: 'the job view to explain why it waits', timeoutMs: WAIT_MS },
    );
    assert.ok(['pending', 'matching'].includes(seen.state), seen.state);
    assert.ok(seen.tasks.every((t) => t.state === 'queued'), JSON.stringify(seen.tasks));
    assert.ok(seen.explain?.reasons.includes('no provider offers the container runtime'), JSON.stringify(seen.explain?.reasons));
  });

  test('a bundle job still runs meanwhile', async () => {
    const bundle: JobSpec = {
      version: 1,
      name: 'bundle-still-runs',
      kind: 'batch',
      runtime: { kind: 'bundle', path: '.', command: ['sh', '-c', 'echo ok > "$GRIDWORK_OUTPUTS/ok.txt"'] },
      resources: { cpu: 1, memoryGiB: 1 },
      price: { maxPerHour: '0.50', budget: '1.00' },
    };
    const dir = await tempDir('gridwork-bundle-');
    try {
      await writeFile(join(dir.path, 'README'), 'a bundle needs a file\n');
      const done = await client.wait((await client.submit(bundle, { baseDir: dir.path })).id, { signal: AbortSignal.timeout(WAIT_MS) });
      assert.equal(done.state, 'succeeded', JSON.stringify(done.tasks));
    } finally {
      await dir.remove();
    }
    assert.equal((await client.get(waiting.id)).tasks[0]?.state, 'queued', 'the container job did not go to a bundle provider');
  });

  test('once a provider offers containers, the waiting job goes there and runs with its image', async () => {
    const docker = await net.addProvider({ name: 'docker-host', runtimes: [createProcessRuntime({ warn: () => {} }), standInContainerRuntime(images)] });
    assert.deepEqual(docker.runtimes, ['process', 'container']);
    const done = await client.wait(waiting.id, { signal: AbortSignal.timeout(WAIT_MS) });
    assert.equal(done.state, 'succeeded', JSON.stringify(done.tasks));
    assert.equal(done.tasks[0]?.providerId, docker.id);
    assert.deepEqual(images, ['example/app:1']);
    const fits = await client.explain(containerSpec('fits-now'));
    assert.equal(fits.excluded.runtime, 2);
    assert.equal(fits.candidates, 1);
  });
});
