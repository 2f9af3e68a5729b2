/**
 * End-to-end tests of a whole network: a real coordinator (PGlite, then PostgreSQL), real
 * provider agents running tasks in the bubblewrap sandbox, and the SDK client, all over
 * loopback HTTP and WebSockets. Nothing is mocked; conditions are awaited, never slept on.
 */
import { internalsOf } from '@gridwork/coordinator/internal';
import assert from 'node:assert/strict';
import { readdir, readFile } from 'node:fs/promises';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { after, before, describe, test } from 'node:test';
import { type GridworkClient, GridworkError, type JobSpec, type JobView, type LogEntry, readSpecFile } from '@gridwork/sdk';
import { type TestNetwork, postgresUrl, startTestNetwork, tempDir, until } from '@gridwork/testkit';
import pg from 'pg';

const here = dirname(fileURLToPath(import.meta.url));
const exampleDir = resolve(here, '../../../examples/embed-corpus');
const fixturesDir = join(here, 'fixtures');

/** Generous bound on any one wait; a healthy run needs a few seconds at most. */
const WAIT_MS = 30_000;

interface FixtureJob {
  name: string;
  /** Arguments of fixtures/tasks/task.mjs. */
  args: string[];
  shards?: number;
  timeoutSeconds?: number;
  /** Only providers with this `region` attribute may take the tasks. */
  region?: string;
  gpus?: number;
  diskGiB?: number;
  /** A shell command instead of task.mjs. */
  sh?: string;
}

function fixtureSpec(job: FixtureJob): JobSpec {
  return {
    version: 1,
    name: job.name,
    kind: 'batch',
    runtime: { kind: 'bundle', path: './tasks', command: job.sh ? ['sh', '-c', job.sh] : ['node', 'task.mjs', ...job.args] },
    resources: { cpu: 1, memoryGiB: 1, ...(job.gpus ? { gpu: { count: job.gpus } } : {}), ...(job.diskGiB !== undefined ? { diskGiB: job.diskGiB } : {}) },
    price: { maxPerHour: '0.50', budget: '1.00' },
    ...(job.shards ? { shards: job.shards } : {}),
    ...(job.timeoutSeconds ? { timeoutSeconds: job.timeoutSeconds } : {}),
    ...(job.region ? { placement: { regions: [job.region] } } : {}),
  };
}

function submitFixture(client: GridworkClient, job: FixtureJob): Promise<JobView> {
  return client.submit(fixtureSpec(job), { baseDir: fixturesDir });
}

function waitFor(client: GridworkClient, jobId: string): Promise<JobView> {
  return client.wait(jobId, { signal: AbortSignal.timeout(WAIT_MS) });
}

async function allLogs(client: GridworkClient, jobId: string): Promise<LogEntry[]> {
  const out: LogEntry[] = [];
  for await (const e of client.logs(jobId)) out.push(e);
  return out;
}

/** All text of one stream of one task (chunks may split lines). */
function text(logs: readonly LogEntry[], taskIndex: number, stream: LogEntry['stream'], leaseId?: string): string {
  return logs
    .filter((e) => e.taskIndex === taskIndex && e.stream === stream && (leaseId === undefined || e.leaseId === leaseId))
    .map((e) => e.data)
    .join('');
}

/** Resolves once `leaseId`'s workload has printed its first line, i.e. it runs inside the sandbox. */
function workloadStarted(client: GridworkClient, jobId: string, taskIndex: number, leaseId: string): Promise<LogEntry[]> {
  return until(
    () => allLogs(client, jobId),
    (logs) => text(logs, taskIndex, 'stdout', leaseId).includes('fixture: task'),
    { what: `task ${taskIndex} to start in the sandbox` },
  );
}

/** Another account's job answers as one that does not exist. */
async function expectNotFound(call: () => Promise<unknown>): Promise<void> {
  await assert.rejects(call, (err: unknown) => {
    assert.ok(err instanceof GridworkError, `expected a GridworkError, got ${String(err)}`);
    assert.equal(err.code, 'JOB_NOT_FOUND');
    return true;
  });
}

const STATE_RANK: Record<string, number> = { pending: 0, matching: 1, running: 2, verifying: 3, succeeded: 4, failed: 4, cancelled: 4 };

for (const store of ['pglite', 'postgres'] as const) {
  describe(`network on ${store}: 3 providers × 2 slots, sandbox runtime`, () => {
    let net: TestNetwork;
    let client: GridworkClient;
    let scratch: { path: string; remove: () => Promise<void> };
    let example: JobView | undefined;

    before(async () => {
      scratch = await tempDir('gridwork-network-test-');
      // 300 ms heartbeats (testkit) × 8 misses: a provider closed abruptly is declared lost in
      // ~2.5 s, and a test process starved of CPU by parallel suites (load ≫ cores on CI) does
      // not see healthy providers declared lost, which would turn into unexpected retries.
      net = await startTestNetwork({ store, providers: 3, coordinator: { heartbeatMisses: 4 } });
      client = await net.fundedClient('100');
    });

    after(async () => {
      await net?.close();
      await scratch?.remove();
      if (store === 'postgres' && net) {
        // Each network gets its own schema in the shared test database; leave nothing behind.
        const pgClient = new pg.Client({ connectionString: postgresUrl() });
        await pgClient.connect();
        try {
          await pgClient.query(`drop schema if exists "${net.coordinator.config.databaseSchema}" cascade`);
        } finally {
          await pgClient.end();
        }
      }
    });

    test('embed-corpus: 6 tasks across providers, outputs cover every input document once', async () => {
      const spec = await readSpecFile(join(exampleDir, 'job.yaml'));
      const submitted = await client.submit(spec, { baseDir: exampleDir });
      assert.equal(submitted.owner, client.accountId);
      assert.equal(submitted.tasks.length, 6);

      const snapshots: JobView[] = [];
      for await (const snap of client.watch(submitted.id, { signal: AbortSignal.timeout(WAIT_MS) })) snapshots.push(snap);
      assert.ok(snapshots.length >= 2, `expected several snapshots, got ${snapshots.length}`);
      assert.equal(snapshots.at(-1)?.state, 'succeeded');
      for (let i = 1; i < snapshots.length; i++) {
        const [prev, cur] = [snapshots[i - 1] as JobView, snapshots[i] as JobView];
        const done = (j: JobView) => j.tasks.filter((t) => t.state === 'succeeded').length;
        assert.ok(done(cur) >= done(prev), `progress went back at snapshot ${i}: ${done(prev)} → ${done(cur)}`);
        assert.ok(
          (STATE_RANK[cur.state] ?? -1) >= (STATE_RANK[prev.state] ?? -1),
          `state went back at snapshot ${i}: ${prev.state} → ${cur.state}; tasks: ${JSON.stringify(cur.tasks.map((t) => [t.state, t.attempts, t.error]))}`,
        );
      }

      const job = await client.get(submitted.id);
      example = job;
      assert.equal(job.state, 'succeeded');
      assert.equal(job.error, null);
      assert.equal(job.tasks.length, 6);
      const names = new Set(net.providers.map((p) => p.name));
      for (const t of job.tasks) {
        assert.equal(t.state, 'succeeded', `task ${t.index}`);
        assert.equal(t.exitCode, 0, `task ${t.index}`);
        assert.equal(t.attempts, 0, `task ${t.index}`);
        assert.ok(t.providerName && names.has(t.providerName), `task ${t.index} ran on ${t.providerName}`);
        assert.match(t.outputDigest ?? '', /^[0-9a-f]{64}$/);
        assert.deepEqual(
          t.outputs.map((o) => o.path),
          ['embeddings.jsonl', 'summary.json'],
        );
      }
      assert.ok(new Set(job.tasks.map((t) => t.providerName)).size > 1, 'tasks spread over more than one provider');

      // Results: every input document embedded exactly once.
      const dest = join(scratch.path, `${store}-results`);
      const written = await client.results(job.id, dest);
      assert.equal(written.length, 12);
      const inputIds: string[] = [];
      const dataFiles = (await readdir(join(exampleDir, 'data'))).filter((f) => f.endsWith('.jsonl')).sort();
      for (const f of dataFiles) {
        for (const line of (await readFile(join(exampleDir, 'data', f), 'utf8')).split('\n')) {
          if (line.trim()) inputIds.push(String((JSON.parse(line) as { id: string }).id));
        }
      }
      let docs = 0;
      let filesProcessed = 0;
      const embeddedIds: string[] = [];
      for (const t of job.tasks) {
        const summary = JSON.parse(await readFile(join(dest, `task-${t.index}`, 'summary.json'), 'utf8')) as { docs: number; filesProcessed: number };
        docs += summary.docs;
        filesProcessed += summary.filesProcessed;
        const lines = (await readFile(join(dest, `task-${t.index}`, 'embeddings.jsonl'), 'utf8')).split('\n').filter(Boolean);
        assert.equal(lines.length, summary.docs, `task ${t.index}: one line per document`);
        for (const line of lines) {
          const row = JSON.parse(line) as { id: string; embedding: number[] };
          assert.equal(row.embedding.length, 32);
          embeddedIds.push(String(row.id));
        }
      }
      assert.equal(docs, inputIds.length);
      assert.equal(filesProcessed, dataFiles.length);
      assert.equal(new Set(embeddedIds).size, embeddedIds.length, 'no document embedded twice');
      assert.equal(new Set(inputIds).size, inputIds.length, 'input ids are unique');
      assert.deepEqual([...embeddedIds].sort(), [...inputIds].sort());

      // Logs: each task's final line, and the agent's own system lines.
      const logs = await allLogs(client, job.id);
      for (const t of job.tasks) {
        assert.match(text(logs, t.index, 'stdout'), /^done: \d+ docs/m, `task ${t.index} logged its done: line`);
        assert.match(text(logs, t.index, 'system'), /in the sandbox runtime/, `task ${t.index} has a system line`);
      }
      assert.ok((await client.list()).some((j) => j.id === job.id && j.state === 'succeeded' && j.tasksDone === 6));
    });

    test('embed-corpus again: identical output digests, no new blobs', async (t) => {
      if (!example) return t.skip('the first run failed');
      const countBlobs = async () =>
        Number(
          (
            await internalsOf(net.coordinator).db
              .selectFrom('blobs')
              .select((eb) => eb.fn.countAll<string>().as('n'))
              .executeTakeFirstOrThrow()
          ).n,
        );
      const blobsBefore = await countBlobs();
      let uploaded = 0;
      const spec = await readSpecFile(join(exampleDir, 'job.yaml'));
      const again = await client.submit(spec, { baseDir: exampleDir, onUpload: (u) => (uploaded = u.uploaded) });
      assert.notEqual(again.id, example.id);
      assert.equal(uploaded, 0, 'bundle and inputs were already stored');
      const job = await waitFor(client, again.id);
      assert.equal(job.state, 'succeeded');
      assert.deepEqual(
        job.tasks.map((t) => [t.index, t.outputDigest]),
        example.tasks.map((t) => [t.index, t.outputDigest]),
      );
      assert.equal(await countBlobs(), blobsBefore, 'identical outputs are stored once');
    });

    test('a task that exits non-zero fails the job at once, without a retry', async () => {
      const submitted = await submitFixture(client, { name: 'exit-three', args: ['fail', '3'] });
      const job = await waitFor(client, submitted.id);
      assert.equal(job.state, 'failed');
      const [task] = job.tasks;
      assert.ok(task);
      assert.equal(task.state, 'failed');
      assert.equal(task.exitCode, 3);
      assert.equal(task.attempts, 0);
      assert.match(task.error ?? '', /code 3/);
      assert.match(job.error ?? '', /code 3/);
      const logs = await allLogs(client, job.id);
      assert.match(text(logs, 0, 'stderr'), /failing on purpose with code 3/);
      assert.deepEqual(new Set(logs.map((e) => e.leaseId)), new Set([task.leaseId]), 'one lease only: no retry');
    });

    test('the time limit kills a task that never ends and fails the job', async () => {
      const submitted = await submitFixture(client, { name: 'time-limit', args: ['hang'], timeoutSeconds: 1 });
      const job = await waitFor(client, submitted.id);
      assert.equal(job.state, 'failed');
      const [task] = job.tasks;
      assert.ok(task);
      assert.equal(task.state, 'failed');
      assert.equal(task.exitCode, null);
      assert.equal(task.attempts, 0);
      assert.match(task.error ?? '', /timeout/);
      assert.match(job.error ?? '', /timeout/);
      assert.match(text(await allLogs(client, job.id), 0, 'system'), /time limit of 1s reached/);
    });

    test('a fork bomb ends its task with PROCESS_LIMIT; the provider stays online for the next job', async () => {
      const submitted = await submitFixture(client, { name: 'fork-bomb', args: [], sh: 'bomb() { bomb | bomb & }; bomb; sleep 20' });
      const job = await waitFor(client, submitted.id);
      assert.equal(job.state, 'failed');
      const [task] = job.tasks;
      assert.equal(task?.attempts, 0, 'a workload limit is not retried');
      assert.match(task?.error ?? '', /^PROCESS_LIMIT: processes limit reached/);
      const next = await waitFor(client, (await submitFixture(client, { name: 'after-bomb', args: ['work', '10'] })).id);
      assert.equal(next.state, 'succeeded', 'the providers still run work');
    });

    test('a task writing more than its diskGiB ends with DISK_LIMIT', async () => {
      const submitted = await submitFixture(client, { name: 'disk-hog', args: [], diskGiB: 0.001, sh: 'head -c 3000000 /dev/zero > "$GRIDWORK_OUTPUTS/big"; sleep 5' });
      const job = await waitFor(client, submitted.id);
      assert.equal(job.state, 'failed');
      assert.match(job.tasks[0]?.error ?? '', /^DISK_LIMIT: disk limit reached/);
      assert.deepEqual(job.tasks[0]?.outputs, [], 'nothing of it is uploaded');
    });

    test('a task hiding data under a name that is not UTF-8 still meets DISK_LIMIT', async () => {
      const submitted = await submitFixture(client, {
        name: 'disk-hider',
        args: [],
        diskGiB: 0.001,
        sh: 'd="$GRIDWORK_OUTPUTS/$(printf \'x\\377\')"; mkdir "$d" && head -c 3000000 /dev/zero > "$d/big"; sleep 5',
      });
      const job = await waitFor(client, submitted.id);
      assert.equal(job.state, 'failed');
      assert.match(job.tasks[0]?.error ?? '', /^DISK_LIMIT: disk limit reached/);
    });

    test('outputs the agent cannot read back fail the task as its own limit, not as the provider\'s fault', async () => {
      const submitted = await submitFixture(client, { name: 'unreadable-outputs', args: [], sh: 'echo x > "$GRIDWORK_OUTPUTS/$(printf \'r\\377\')"' });
      const job = await waitFor(client, submitted.id);
      assert.equal(job.state, 'failed');
      const [task] = job.tasks;
      assert.equal(task?.attempts, 0, 'not retried elsewhere: no provider is blamed');
      assert.match(task?.error ?? '', /^PAYLOAD_TOO_LARGE: outputs limit reached: the agent cannot read the task's output file/);
    });

    test('cancel stops a running task on its provider', async () => {
      const submitted = await submitFixture(client, { name: 'cancel-me', args: ['hang'] });
      const running = await until(
        () => client.get(submitted.id),
        (j) => j.tasks[0]?.state === 'running',
        { what: 'the task to run' },
      );
      const task = running.tasks[0];
      assert.ok(task?.leaseId && task.providerId);
      await workloadStarted(client, submitted.id, 0, task.leaseId);
      const agent = net.providers.find((p) => p.id === task.providerId);
      assert.ok(agent, 'the task runs on one of our providers');
      assert.ok(agent.runningLeases.includes(task.leaseId));

      const cancelled = await client.cancel(submitted.id);
      assert.equal(cancelled.state, 'cancelled');
      assert.equal(cancelled.tasks[0]?.state, 'cancelled');
      await until(
        async () => agent.runningLeases,
        (leases) => leases.length === 0,
        { what: `provider ${agent.name} to stop the lease` },
      );
      const logs = await until(
        () => allLogs(client, submitted.id),
        (l) => text(l, 0, 'system').includes('task cancelled'),
        { what: 'the cancel to be logged' },
      );
      assert.ok(logs.length > 0);
      assert.equal((await client.get(submitted.id)).state, 'cancelled');
    });

    test('another identity can neither see, watch nor cancel a job', async () => {
      // A job no provider can run stays open, so cancelling it would have an effect.
      const submitted = await submitFixture(client, { name: 'private', args: ['hang'], gpus: 1 });
      const stranger = net.client();
      await expectNotFound(() => stranger.get(submitted.id));
      await expectNotFound(() => stranger.cancel(submitted.id));
      await expectNotFound(async () => {
        for await (const _ of stranger.watch(submitted.id)) assert.fail('a stranger got a snapshot');
      });
      await expectNotFound(async () => {
        for await (const _ of stranger.logs(submitted.id)) assert.fail('a stranger got a log entry');
      });
      assert.ok(!(await stranger.list()).some((j) => j.id === submitted.id));
      const job = await client.get(submitted.id);
      assert.ok(['pending', 'matching'].includes(job.state), job.state);
      assert.equal((await client.cancel(submitted.id)).state, 'cancelled');
    });

    test('a job whose resources no provider has stays queued, not failed', async () => {
      const submitted = await submitFixture(client, { name: 'needs-gpu', args: ['work', '0'], gpus: 1 });
      await until(
        () => client.get(submitted.id),
        (j) => j.state === 'matching',
        { what: 'the scheduler to consider the job' },
      );
      // Another job runs to completion meanwhile: the scheduler made passes, and still left this one queued.
      const other = await waitFor(client, (await submitFixture(client, { name: 'runs-meanwhile', args: ['work', '0'] })).id);
      assert.equal(other.state, 'succeeded');
      const job = await client.get(submitted.id);
      assert.ok(['pending', 'matching'].includes(job.state), job.state);
      assert.equal(job.error, null);
      assert.equal(job.tasks[0]?.state, 'queued');
      assert.equal(job.tasks[0]?.providerId, null);
      assert.equal(job.tasks[0]?.attempts, 0);
      const cancelled = await client.cancel(submitted.id);
      assert.equal(cancelled.state, 'cancelled');
      assert.equal(cancelled.tasks[0]?.state, 'cancelled');
    });

    test('a provider lost mid-run: its tasks are retried on another and complete once', async () => {
      const a = await net.addProvider({ name: `${store}-loss-a`, attributes: { region: 'loss' } });
      const submitted = await submitFixture(client, { name: 'survive-loss', args: ['work', '1500'], shards: 2, region: 'loss' });
      const running = await until(
        () => client.get(submitted.id),
        (j) => j.tasks.every((t) => t.state === 'running'),
        { what: 'both tasks to run on provider A' },
      );
      const firstLeases = running.tasks.map((t) => t.leaseId as string);
      for (const t of running.tasks) {
        assert.equal(t.providerId, a.id);
        await workloadStarted(client, submitted.id, t.index, t.leaseId as string);
      }
      const b = await net.addProvider({ name: `${store}-loss-b`, attributes: { region: 'loss' } });
      await a.close(); // abrupt: no reports; the coordinator notices the missing heartbeats

      const job = await waitFor(client, submitted.id);
      assert.equal(job.state, 'succeeded', job.error ?? '');
      const dest = join(scratch.path, `${store}-loss`);
      await client.results(job.id, dest);
      const logs = await allLogs(client, job.id);
      for (const t of job.tasks) {
        assert.equal(t.attempts, 1, `task ${t.index}`);
        assert.equal(t.providerId, b.id, `task ${t.index}`);
        assert.notEqual(t.leaseId, firstLeases[t.index]);
        assert.deepEqual(
          t.outputs.map((o) => o.path),
          ['result.txt'],
          'exactly one output set',
        );
        assert.equal(await readFile(join(dest, `task-${t.index}`, 'result.txt'), 'utf8'), `task ${t.index} lease ${t.leaseId}\n`);
        assert.deepEqual(
          new Set(logs.filter((e) => e.taskIndex === t.index).map((e) => e.leaseId)),
          new Set([firstLeases[t.index], t.leaseId]),
          'two leases: the lost one and the retry',
        );
        assert.doesNotMatch(text(logs, t.index, 'stdout', firstLeases[t.index]), /finished/, 'the lost lease never finished');
      }
    });

    test('a draining provider hands its running task back; it completes elsewhere without an attempt counted', async () => {
      const c = await net.addProvider({ name: `${store}-drain-c`, attributes: { region: 'drain' }, slots: 1, drainTimeoutMs: 200 });
      const submitted = await submitFixture(client, { name: 'survive-drain', args: ['work', '1500'], region: 'drain' });
      const running = await until(
        () => client.get(submitted.id),
        (j) => j.tasks[0]?.state === 'running',
        { what: 'the task to run on provider C' },
      );
      const first = running.tasks[0];
      assert.ok(first?.leaseId);
      assert.equal(first.providerId, c.id);
      await workloadStarted(client, submitted.id, 0, first.leaseId);
      const d = await net.addProvider({ name: `${store}-drain-d`, attributes: { region: 'drain' } });

      await c.drain();
      assert.deepEqual(c.runningLeases, []);
      const job = await waitFor(client, submitted.id);
      assert.equal(job.state, 'succeeded', job.error ?? '');
      const [task] = job.tasks;
      assert.ok(task);
      assert.equal(task.attempts, 0);
      assert.equal(task.providerId, d.id);
      assert.notEqual(task.leaseId, first.leaseId);
      assert.deepEqual(
        task.outputs.map((o) => o.path),
        ['result.txt'],
      );
      const logs = await allLogs(client, job.id);
      assert.match(text(logs, 0, 'system', first.leaseId), /handed back/);
      assert.match(text(logs, 0, 'stdout', task.leaseId ?? ''), /finished/);
    });
  });
}
