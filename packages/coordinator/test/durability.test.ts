/**
 * Durability under kill -9: coordinators and provider agents run as real child processes (the
 * `gridwork` binary), tasks run in the bubblewrap sandbox, the store is PGlite on disk (and
 * PostgreSQL for the coordinator crash). A process is killed with SIGKILL while tasks run; the
 * network must finish the job with every task succeeded exactly once: one completed lease, one
 * output set, its final log line stored once. Conditions are polled with until(), never slept on.
 */
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { chmod, cp, mkdir, readdir, readFile } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { after, describe, test } from 'node:test';
import { fileURLToPath } from 'node:url';
import { type Db, openDatabase } from '@gridwork/coordinator/internal';
import { type Identity, signedFetch } from '@gridwork/protocol/node';
import { GridworkClient, type JobSpec, type JobView, type LogEntry } from '@gridwork/sdk';
import { generateIdentity, postgresUrl, type StoreKind, tempDir, uniqueSchema, until } from '@gridwork/testkit';
import {
  type CoordinatorProcess,
  diagnostics,
  freePort,
  type GridworkProcess,
  type ProviderProcess,
  processesMatching,
  startCoordinatorProcess,
  startProviderProcess,
  stopAll,
} from '../../testkit/src/processes.ts';
import pg from 'pg';
import { assertLedgerExact } from './fixtures/ledger-exact.ts';

const fixtureDir = join(dirname(fileURLToPath(import.meta.url)), 'fixtures', 'durability');
/** The sharded input of the fixture job: part-00.txt … part-11.txt. */
const INPUT_FILES = Array.from({ length: 12 }, (_, i) => `part-${String(i).padStart(2, '0')}.txt`);
/** Bound on any one wait; a healthy run needs a few seconds. */
const WAIT_MS = 30_000;

interface ProviderRow {
  id: string;
  name: string;
  state: string;
  connected: boolean;
}

/** One test's network of child processes; every process it ever started stays listed for diagnostics. */
class Network {
  readonly spawned: GridworkProcess[] = [];
  readonly providers: ProviderProcess[] = [];
  readonly identity: Identity = generateIdentity();
  readonly marker = `gwdur${randomBytes(6).toString('hex')}`;
  coordinator!: CoordinatorProcess;
  client!: GridworkClient;
  port = 0;
  private dir!: { path: string; remove: () => Promise<void> };
  private schema: string | undefined;
  private t0 = Date.now();
  /** What happened when (seconds since the test began): printed with every result. */
  readonly timeline: string[] = [];

  constructor(
    readonly store: StoreKind,
    readonly heartbeatMs: number,
  ) {}

  mark(what: string): void {
    this.timeline.push(`${what} @${((Date.now() - this.t0) / 1000).toFixed(1)}s`);
  }

  get providerTmp(): string {
    return join(this.dir.path, 'tmp');
  }

  /**
   * Tasks whose workload has written its output on its provider's disk (the sandbox's
   * /outputs), whether or not the coordinator has heard of it yet.
   */
  async outputsOnDisk(): Promise<number[]> {
    const found = new Set<number>();
    for (const root of (await readdir(this.providerTmp)).filter((n) => n.startsWith('gridwork-tasks-'))) {
      for (const lease of await readdir(join(this.providerTmp, root)).catch(() => [])) {
        const text = await readFile(join(this.providerTmp, root, lease, 'outputs', 'result.json'), 'utf8').catch(() => '');
        try {
          const r = JSON.parse(text) as { task: number; marker: string };
          if (r.marker === this.marker) found.add(r.task);
        } catch {
          // not written yet (or half written)
        }
      }
    }
    return [...found].sort((a, b) => a - b);
  }

  get coordinatorDir(): string {
    return join(this.dir.path, 'coordinator');
  }

  private get env(): Record<string, string> {
    return this.schema ? { GRIDWORK_DATABASE_URL: postgresUrl(), GRIDWORK_DATABASE_SCHEMA: this.schema } : {};
  }

  /** The coordinator's URL, fixed for the whole test: restarts reuse the port. */
  get url(): string {
    return `http://127.0.0.1:${this.port}`;
  }

  /** Starts the coordinator and the providers side by side (providers retry until it listens). */
  async start(providers: number, slots: number): Promise<void> {
    this.t0 = Date.now();
    this.dir = await tempDir('gridwork-durability-');
    // The providers' TMPDIR, where their per-lease work directories live: the sandbox's uid
    // must be able to traverse it (0711), and the test looks into it (outputsOnDisk).
    await chmod(this.dir.path, 0o711);
    await mkdir(this.providerTmp, { mode: 0o711 });
    if (this.store === 'postgres') this.schema = uniqueSchema('gw_durability');
    this.port = await freePort();
    this.client = new GridworkClient({ url: this.url, identity: this.identity });
    const coordinator = async () => {
      if (this.store === 'pglite') await cp(await pgliteTemplate(), join(this.coordinatorDir, 'db'), { recursive: true });
      await this.startCoordinator();
    };
    // allSettled: when one start fails, the others are still listed (and stopped) by cleanup().
    const started = await Promise.allSettled([coordinator(), ...Array.from({ length: providers }, (_, i) => this.startProvider(`dur-p${i}`, slots))]);
    for (const r of started) if (r.status === 'rejected') throw r.reason;
    await this.waitConnected(this.providers.map((p) => p.id));
    this.mark('providers connected');
    await this.client.deposit('100');
  }

  async startCoordinator(): Promise<CoordinatorProcess> {
    const n = this.spawned.filter((p) => p.label.startsWith('coordinator')).length;
    this.coordinator = await startCoordinatorProcess({
      label: `coordinator#${n + 1}`,
      dataDir: this.coordinatorDir,
      port: this.port,
      heartbeatMs: this.heartbeatMs,
      // --dev: the faucet funds the requester. Usage is metered every 500 ms, so leases also
      // report usage (sequenced messages that must apply once) across the crashes. Results are
      // paid at once (no audits): this test is about crashes, verification/ has its own.
      args: ['--dev', '--metering-ms', '500', '--no-verification'],
      env: this.env,
    });
    this.spawned.push(this.coordinator);
    this.mark(`${this.coordinator.label} listening`);
    assert.equal(this.coordinator.url, this.url);
    return this.coordinator;
  }

  /** Starts a provider whose key lives in `provider-data/<name>`: the same name is the same provider. */
  async startProvider(name: string, slots: number): Promise<ProviderProcess> {
    const n = this.spawned.filter((p) => p.label.startsWith(`${name}#`)).length;
    const p = await startProviderProcess({
      label: `${name}#${n + 1}`,
      coordinatorUrl: this.url,
      dataDir: join(this.dir.path, 'provider-data', name),
      name,
      slots,
      env: { TMPDIR: this.providerTmp },
    });
    this.spawned.push(p);
    this.mark(`${p.label} started`);
    const i = this.providers.findIndex((q) => q.name === name);
    if (i >= 0) this.providers[i] = p;
    else this.providers.push(p);
    return p;
  }

  async providerRows(): Promise<ProviderRow[]> {
    const res = await signedFetch(this.url, this.identity, 'GET', '/v1/providers');
    return ((await res.json()) as { providers: ProviderRow[] }).providers;
  }

  waitConnected(ids: readonly string[], what = 'providers to connect'): Promise<ProviderRow[]> {
    return until(
      () => this.providerRows(),
      (rows) => ids.every((id) => rows.some((r) => r.id === id && r.connected && r.state === 'online')),
      { timeoutMs: WAIT_MS, pollMs: 100, what },
    );
  }

  spec(name: string, shards: number, taskMs: number): JobSpec {
    return {
      version: 1,
      name,
      kind: 'batch',
      runtime: { kind: 'bundle', path: './bundle', command: ['node', 'task.mjs', this.marker, String(taskMs)] },
      resources: { cpu: 1, memoryGiB: 1 },
      price: { maxPerHour: '0.50', budget: '1.00' },
      inputs: [{ name: 'parts', path: './inputs/*.txt', shard: true }],
      shards,
      timeoutSeconds: 60,
    };
  }

  submit(name: string, shards: number, taskMs: number): Promise<JobView> {
    return this.client.submit(this.spec(name, shards, taskMs), { baseDir: fixtureDir });
  }

  async logs(jobId: string): Promise<LogEntry[]> {
    const out: LogEntry[] = [];
    for await (const e of this.client.logs(jobId)) out.push(e);
    return out;
  }

  /** Polls (the event stream would break when a coordinator is killed) until the job has ended. */
  async finished(jobId: string): Promise<JobView> {
    const job = await until(
      () => this.client.get(jobId),
      (j) => ['succeeded', 'failed', 'cancelled'].includes(j.state),
      { timeoutMs: WAIT_MS, pollMs: 200, what: `job ${jobId} to end` },
    );
    this.mark(`job ${job.state}`);
    return job;
  }

  async kill9(p: GridworkProcess): Promise<void> {
    const exit = await p.kill9();
    assert.equal(exit.signal, 'SIGKILL', `${p.label} died of SIGKILL`);
    this.mark(`${p.label} killed`);
  }

  /** Stops every process still running (providers first, so the coordinator sees them leave). */
  async stop(): Promise<void> {
    await stopAll(this.providers);
    await stopAll(this.spawned);
  }

  /** The coordinator's database, opened directly; only after the coordinator has stopped (PGlite: one process). */
  async withDb<T>(read: (db: Db) => Promise<T>): Promise<T> {
    assert.ok(!this.coordinator.alive, 'stop the coordinator before opening its database');
    const db = await openDatabase(
      this.schema ? { url: postgresUrl(), schema: this.schema, migrate: false } : { dataDir: join(this.coordinatorDir, 'db'), migrate: false },
    );
    try {
      return await read(db);
    } finally {
      await db.destroy();
    }
  }

  async cleanup(): Promise<void> {
    await stopAll(this.spawned, 3000).catch(() => {});
    if (this.schema) {
      const client = new pg.Client({ connectionString: postgresUrl() });
      await client.connect();
      await client.query(`drop schema if exists ${this.schema} cascade`).finally(() => client.end());
    }
    await this.dir?.remove();
  }

  diagnostics(): string {
    return diagnostics(this.spawned);
  }
}

/**
 * A migrated PGlite store, made once per file and copied for each test: creating one takes
 * seconds (a restart, which the copy amounts to, takes about one).
 */
let template: { dir: Promise<{ path: string; remove: () => Promise<void> }>; db: Promise<string> } | undefined;
function pgliteTemplate(): Promise<string> {
  if (!template) {
    const dir = tempDir('gridwork-durability-template-');
    const db = dir.then(async ({ path }) => {
      await (await openDatabase({ dataDir: join(path, 'db') })).destroy();
      return join(path, 'db');
    });
    template = { dir, db };
  }
  return template.db;
}
after(async () => {
  await template?.db.catch(() => {});
  await (await template?.dir)?.remove();
});

/** Runs a test body; prints its timeline, and on failure appends the children's stderr to the error. */
async function withDiagnostics(net: Network, t: { diagnostic(message: string): void }, body: () => Promise<void>): Promise<void> {
  try {
    await body();
  } catch (err) {
    if (err instanceof Error) err.message += `\n\ntimeline: ${net.timeline.join(', ')}\n\nchild processes:\n${net.diagnostics()}`;
    throw err;
  } finally {
    t.diagnostic(`timeline: ${net.timeline.join(', ')}`);
  }
}

const startLine = (net: Network, task: number) => `durability ${net.marker}: task ${task} started with `;
const finalLine = (net: Network, task: number) => `durability ${net.marker}: task ${task} done\n`;

function countOf(haystack: string, needle: string): number {
  let n = 0;
  for (let i = haystack.indexOf(needle); i >= 0; i = haystack.indexOf(needle, i + needle.length)) n++;
  return n;
}

/** stdout of one lease, chunks joined (a chunk may split a line). */
function leaseStdout(logs: readonly LogEntry[], leaseId: string): string {
  return logs
    .filter((e) => e.leaseId === leaseId && e.stream === 'stdout')
    .map((e) => e.data)
    .join('');
}

/** Task indexes whose workload has printed its start line (it runs inside the sandbox). */
function startedTasks(net: Network, logs: readonly LogEntry[], shards: number): number[] {
  const byLease = new Map<string, string>();
  for (const e of logs) if (e.stream === 'stdout') byLease.set(e.leaseId, (byLease.get(e.leaseId) ?? '') + e.data);
  const out = new Set<number>();
  for (const e of logs) {
    for (let t = 0; t < shards; t++) if (e.taskIndex === t && (byLease.get(e.leaseId) ?? '').includes(startLine(net, t))) out.add(t);
  }
  return [...out].sort((a, b) => a - b);
}

/** The fixture's shard of INPUT_FILES: dealt round-robin in path order. */
function expectedInputs(task: number, shards: number): string[] {
  return INPUT_FILES.filter((_, i) => i % shards === task);
}

/**
 * What every test ends with: the job succeeded; through the API each task has one output set
 * (result.json naming its own index and shard) and its final line once; in the database each
 * task has exactly one completed lease, no lease is left active, and no lease stored a line twice.
 */
async function assertEachTaskSucceededOnce(
  net: Network,
  job: JobView,
  shards: number,
): Promise<{ lost: { taskIdx: number; error: string | null; providerId: string; endedAt: Date | null }[] }> {
  assert.equal(job.state, 'succeeded', `job ${job.id}: ${job.error}`);
  assert.equal(job.tasks.length, shards);
  const logs = await net.logs(job.id);
  for (const t of job.tasks) {
    assert.equal(t.state, 'succeeded', `task ${t.index}`);
    assert.equal(t.exitCode, 0, `task ${t.index}`);
    assert.deepEqual(
      t.outputs.map((o) => o.path),
      ['result.json'],
      `task ${t.index} has exactly one output set`,
    );
    assert.ok(t.leaseId, `task ${t.index} names its lease`);
    assert.equal(countOf(leaseStdout(logs, t.leaseId), finalLine(net, t.index)), 1, `task ${t.index}: final line once in its lease's logs (API)`);
  }
  const scratch = await tempDir('gridwork-durability-results-');
  try {
    await net.client.results(job.id, scratch.path);
    for (const t of job.tasks) {
      const result = JSON.parse(await readFile(join(scratch.path, `task-${t.index}`, 'result.json'), 'utf8')) as {
        task: number;
        inputs: string[];
        marker: string;
      };
      assert.deepEqual(result, { ...result, task: t.index, inputs: expectedInputs(t.index, shards), marker: net.marker }, `task ${t.index} output`);
    }
  } finally {
    await scratch.remove();
  }

  await net.stop();
  net.mark('all stopped');
  return net.withDb(async (db) => {
    const tasks = await db.selectFrom('tasks').select(['id', 'idx', 'state', 'lease_id']).where('job_id', '=', job.id).orderBy('idx').execute();
    const leases = await db
      .selectFrom('leases')
      .innerJoin('tasks', 'tasks.id', 'leases.task_id')
      .select(['leases.id', 'leases.state', 'leases.error', 'leases.provider_id', 'leases.ended_at', 'tasks.idx'])
      .where('leases.job_id', '=', job.id)
      .execute();
    const stored = await db.selectFrom('task_logs').select(['lease_id', 'task_idx', 'stream', 'data']).where('job_id', '=', job.id).orderBy('id').execute();
    assert.equal(tasks.length, shards);
    for (const t of tasks) {
      const completed = leases.filter((l) => l.idx === t.idx && l.state === 'completed');
      assert.equal(completed.length, 1, `task ${t.idx}: exactly one completed lease, got ${JSON.stringify(leases.filter((l) => l.idx === t.idx))}`);
      assert.equal(t.state, 'succeeded');
      assert.equal(t.lease_id, completed[0]?.id, `task ${t.idx} points at its completed lease`);
    }
    assert.deepEqual(
      leases.filter((l) => ['offered', 'starting', 'running'].includes(l.state)),
      [],
      'no lease is left active',
    );
    for (const l of leases) {
      const text = stored
        .filter((r) => r.lease_id === l.id && r.stream === 'stdout')
        .map((r) => r.data)
        .join('');
      const finals = countOf(text, finalLine(net, l.idx));
      const starts = countOf(text, startLine(net, l.idx));
      if (l.state === 'completed') assert.equal(finals, 1, `lease ${l.id} (task ${l.idx}): final line stored once, got ${finals}`);
      else assert.ok(finals <= 1, `lease ${l.id} (task ${l.idx}, ${l.state}): final line stored ${finals} times`);
      assert.ok(starts <= 1, `lease ${l.id} (task ${l.idx}): start line stored ${starts} times`);
    }
    // The ledger survived the crashes intact, every ended lease settled once, nothing left held.
    await assertLedgerExact(db, leases.map((l) => l.id));
    return { lost: leases.filter((l) => l.state === 'lost').map((l) => ({ taskIdx: l.idx, error: l.error, providerId: l.provider_id, endedAt: l.ended_at })) };
  });
}

for (const store of ['pglite', 'postgres'] as const) {
  describe(`coordinator killed with SIGKILL while tasks run (${store})`, () => {
    // A short heartbeat (lost after 3 s) while the providers' reconnect backoff grows to
    // 5 s ± 25% during the outage: the restarted coordinator must give them that time before
    // judging heartbeats, so that "resumes exactly where it was" (no lease lost) holds.
    const net = new Network(store, 1000);
    after(() => net.cleanup());

    test('a coordinator restarted on the same data and port finishes the job; providers reconnect by themselves', { timeout: 90_000 }, (t) =>
      withDiagnostics(net, t, async () => {
        const SHARDS = 6;
        await net.start(3, 1);
        const submitted = await net.submit('coordinator-crash', SHARDS, 2500);

        // Up to three tasks run in sandboxes (one slot per provider), the rest are queued; the
        // kill comes as soon as one workload runs, well before any can finish (2.5 s).
        const running = await until(
          async () => ({ logs: await net.logs(submitted.id), job: await net.client.get(submitted.id) }),
          ({ logs }) => startedTasks(net, logs, SHARDS).length >= 1,
          { timeoutMs: WAIT_MS, what: 'a task to run in the sandbox' },
        );
        assert.ok(!running.job.tasks.some((x) => x.state === 'succeeded'), 'no task finished before the kill');
        net.mark(`${startedTasks(net, running.logs, SHARDS).length} tasks running`);
        const old = net.coordinator;
        await net.kill9(old);
        // Stay down until a task has finished meanwhile: its report and its output upload must
        // wait for the coordinator, not be lost (nor redone).
        const finishedWhileDown = await until(
          () => net.outputsOnDisk(),
          (tasks) => tasks.length > 0,
          { timeoutMs: WAIT_MS, what: 'a task to finish while the coordinator is down' },
        );
        net.mark(`task(s) ${finishedWhileDown.join(',')} finished while down`);

        const restarted = await net.startCoordinator();
        assert.equal(restarted.url, old.url, 'the restarted coordinator is at the same URL');
        // The providers were not touched: they reconnect by themselves.
        await net.waitConnected(
          net.providers.map((p) => p.id),
          'providers to reconnect to the restarted coordinator',
        );
        net.mark('providers reconnected');
        assert.ok(
          net.providers.every((p) => p.alive && p.pid === net.spawned.find((s) => s.label === `${p.name}#1`)?.pid),
          'providers are the original processes',
        );

        const job = await net.finished(submitted.id);
        // Tasks that finished while the coordinator was down reported (and uploaded) afterwards:
        // no work was lost or redone.
        assert.deepEqual(
          job.tasks.map((x) => x.attempts),
          Array(SHARDS).fill(0),
          'no task needed a second attempt',
        );
        const { lost } = await assertEachTaskSucceededOnce(net, job, SHARDS);
        assert.deepEqual(lost, [], 'no lease was lost across the crash');
        for (const p of net.providers) assert.match(p.stderr(), /lost the coordinator connection/, `${p.name} noticed the crash and reconnected`);
      }),
    );
  });
}

describe('provider killed with SIGKILL while its task runs', () => {
  const net = new Network('pglite', 300);
  after(() => net.cleanup());

  test('its task is requeued after the heartbeat timeout and finishes on the other provider; no sandboxed process lingers', { timeout: 60_000 }, (t) =>
    withDiagnostics(net, t, async () => {
      await net.start(2, 1);
      const submitted = await net.submit('provider-crash', 2, 3000);
      const { job } = await until(
        async () => ({ logs: await net.logs(submitted.id), job: await net.client.get(submitted.id) }),
        ({ logs }) => startedTasks(net, logs, 2).length === 2,
        { timeoutMs: WAIT_MS, what: 'both tasks to run in the sandbox' },
      );
      net.mark('both tasks running');
      const victimTask = job.tasks[0];
      assert.ok(victimTask?.leaseId && victimTask.providerName, 'task 0 is placed');
      const victim = net.providers.find((p) => p.name === victimTask.providerName) as ProviderProcess;
      const survivor = net.providers.find((p) => p !== victim) as ProviderProcess;
      assert.equal(job.tasks[1]?.providerName, survivor.name, 'one task per provider (one slot each)');
      const lostLease = victimTask.leaseId;

      // The victim's sandbox (bwrap and the task inside) is visible before the kill.
      assert.ok(processesMatching(lostLease, { environ: true }).length > 0, 'the victim’s sandboxed task runs before the kill');
      const killedAt = Date.now();
      await net.kill9(victim);
      // bwrap --die-with-parent: the sandbox dies with the agent.
      await until(
        async () => processesMatching(lostLease, { environ: true }),
        (procs) => procs.length === 0,
        { timeoutMs: 5000, what: 'the killed provider’s sandboxed processes to exit' },
      );

      const done = await net.finished(submitted.id);
      const t0 = done.tasks[0];
      assert.equal(t0?.attempts, 1, 'the lost attempt counts');
      assert.equal(t0?.providerName, survivor.name, 'task 0 finished on the survivor');
      assert.notEqual(t0?.leaseId, lostLease);
      assert.equal(done.tasks[1]?.attempts, 0);
      assert.equal(done.tasks[1]?.providerName, survivor.name);
      await until(
        async () => processesMatching(net.marker),
        (procs) => procs.length === 0,
        { timeoutMs: 5000, what: 'no task process of this test to remain' },
      );

      const { lost } = await assertEachTaskSucceededOnce(net, done, 2);
      assert.equal(lost.length, 1, `one lost lease: ${JSON.stringify(lost)}`);
      assert.equal(lost[0]?.taskIdx, 0);
      assert.equal(lost[0]?.providerId, victim.id);
      assert.match(lost[0]?.error ?? '', /stopped responding/);
      // Lost through the heartbeat timeout (3 × 300 ms since the last heartbeat, at most 300 ms
      // before the kill), not at once when the socket closed; generous above for loaded machines.
      const detectedMs = (lost[0]?.endedAt?.getTime() ?? 0) - killedAt;
      assert.ok(detectedMs >= 250 && detectedMs < 10_000, `loss detected ${detectedMs} ms after the kill (timeout 3 × 300 ms)`);
    }),
  );
});

describe('provider killed with SIGKILL and restarted at once (same key, new instance)', () => {
  // A long heartbeat: the leases must be requeued by the new instance's hello, not by the timeout.
  const net = new Network('pglite', 5000);
  after(() => net.cleanup());

  test('the hello of the new instance loses the old leases at once and the job still succeeds', { timeout: 60_000 }, (t) =>
    withDiagnostics(net, t, async () => {
      await net.start(2, 1);
      const submitted = await net.submit('provider-restart', 2, 3000);
      const { job } = await until(
        async () => ({ logs: await net.logs(submitted.id), job: await net.client.get(submitted.id) }),
        ({ logs }) => startedTasks(net, logs, 2).length === 2,
        { timeoutMs: WAIT_MS, what: 'both tasks to run in the sandbox' },
      );
      net.mark('both tasks running');
      const victimTask = job.tasks[0];
      assert.ok(victimTask?.leaseId && victimTask.providerName, 'task 0 is placed');
      const victim = net.providers.find((p) => p.name === victimTask.providerName) as ProviderProcess;
      const lostLease = victimTask.leaseId;

      const killedAt = Date.now();
      await net.kill9(victim);
      const reborn = await net.startProvider(victim.name, 1);
      assert.equal(reborn.id, victim.id, 'same data directory, same key');
      await until(
        async () => processesMatching(lostLease, { environ: true }),
        (procs) => procs.length === 0,
        { timeoutMs: 5000, what: 'the killed instance’s sandboxed processes to exit' },
      );

      const done = await net.finished(submitted.id);
      assert.equal(done.tasks[0]?.attempts, 1);
      assert.notEqual(done.tasks[0]?.leaseId, lostLease);
      const { lost } = await assertEachTaskSucceededOnce(net, done, 2);
      assert.equal(lost.length, 1, `one lost lease: ${JSON.stringify(lost)}`);
      assert.equal(lost[0]?.providerId, victim.id);
      assert.match(lost[0]?.error ?? '', /restarted/, 'lost through the new instance’s hello, not the heartbeat timeout');
      const detectedMs = (lost[0]?.endedAt?.getTime() ?? 0) - killedAt;
      assert.ok(detectedMs < 15_000, `requeued ${detectedMs} ms after the kill, before the heartbeat timeout (15 s)`);
    }),
  );
});
