/**
 * Three coordinator processes on one PostgreSQL schema and a real NATS work as one network
 * (issue 15's first "done when"): three providers, each connected to a different replica, and
 * three requesters, each submitting to a different replica. The leader places every task on
 * whichever provider fits, whatever replica holds its socket (the assignment reaches the
 * provider through its own replica's outbox delivery); the leader is killed with SIGKILL while
 * tasks run, the office moves within 3 s, the providers and requesters of the dead replica move
 * to the others, and every job still succeeds, each task completed once, with the ledger exact.
 */
import assert from 'node:assert/strict';
import { mkdir, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { Writable } from 'node:stream';
import { after, before, describe, test } from 'node:test';
import { type Db, openDatabase } from '@gridwork/coordinator/internal';
import { parseCredits } from '@gridwork/protocol';
import { generateIdentity } from '@gridwork/protocol/node';
import { ProviderAgent } from '@gridwork/provider';
import { GridworkClient, type JobSpec, type JobView } from '@gridwork/sdk';
import { dropSchema, natsUrl, postgresUrl, tempDir, uniqueSchema, until } from '@gridwork/testkit';
import pg from 'pg';
import pino from 'pino';
import { type CoordinatorProcess, freePort, startCoordinatorProcess, stopAll } from '../../testkit/src/processes.ts';
import { assertLedgerExact } from './fixtures/ledger-exact.ts';

const WAIT_MS = 90_000;
const TASK_MS = 4000;

/** An agent's log lines, for which coordinator it connected to. */
function linesOf() {
  const lines: Record<string, unknown>[] = [];
  const stream = new Writable({
    write(chunk: Buffer, _enc, done) {
      for (const line of chunk.toString().split('\n')) if (line.trim()) lines.push(JSON.parse(line) as Record<string, unknown>);
      done();
    },
  });
  return { lines, logger: pino({ level: 'info' }, stream) };
}

const rotate = <T>(xs: readonly T[], i: number): T[] => [...xs.slice(i), ...xs.slice(0, i)];

describe('three coordinator replicas work as one network (PostgreSQL + NATS)', { timeout: 300_000 }, () => {
  const schema = uniqueSchema('gw_together');
  const env = { GRIDWORK_DATABASE_URL: postgresUrl(), GRIDWORK_DATABASE_SCHEMA: schema, GRIDWORK_NATS_URL: natsUrl() };
  let dir: { path: string; remove: () => Promise<void> };
  const replicas: CoordinatorProcess[] = [];
  const agents: ProviderAgent[] = [];
  let db: Db;
  let client: pg.Client;

  before(async () => {
    dir = await tempDir('gridwork-together-');
    client = new pg.Client({ connectionString: postgresUrl() });
    await client.connect();
    // One after the other: the first migrates the schema. One blob directory, as replicas share a volume.
    for (const i of [0, 1, 2]) {
      replicas.push(
        await startCoordinatorProcess({
          label: `replica-${i}`,
          dataDir: join(dir.path, 'coordinator'),
          port: await freePort(),
          heartbeatMs: 1000,
          args: ['--dev', '--no-verification', '--metering-ms', '500'],
          env,
        }),
      );
    }
    db = await openDatabase({ url: postgresUrl(), schema });
  });

  after(async () => {
    await Promise.all(agents.map((a) => a.close()));
    await stopAll(replicas);
    await db?.destroy();
    await client?.end();
    await dropSchema(schema);
    await dir?.remove();
  });

  test('jobs submitted to any replica run on providers of any replica; the leader dies mid-run and every job succeeds with exact money', async () => {
    const urls = replicas.map((r) => r.url);
    const roleOf = async (url: string) => ((await (await fetch(`${url}/healthz`)).json()) as { role: string }).role;
    const roles = await until(() => Promise.all(urls.map(roleOf)), (r) => r.filter((x) => x === 'leader').length === 1, { what: 'one leader' });
    const leaderAt = roles.indexOf('leader');

    // Provider i connects to replica i first.
    const logs = [0, 1, 2].map(() => linesOf());
    for (const i of [0, 1, 2]) {
      const agent = await ProviderAgent.create({
        coordinatorUrl: rotate(urls, i).join(','),
        dataDir: join(dir.path, `provider-${i}`),
        name: `provider-${i}`,
        runtime: 'process',
        containers: 'off',
        gpus: 'none',
        slots: 2,
        logger: logs[i]?.logger,
      });
      agent.start();
      agents.push(agent);
    }
    const holder = new Map<string, number>(); // provider id → the replica its socket is on
    for (const i of [0, 1, 2]) {
      await until(
        async () => logs[i]?.lines.find((l) => l.msg === 'connected to coordinator'),
        (l) => l !== undefined,
        { what: `provider ${i} to connect` },
      );
      const first = logs[i]?.lines.find((l) => l.msg === 'connected to coordinator');
      assert.equal(first?.coordinator, urls[i], `provider ${i} is on replica ${i}`);
      holder.set(agents[i]?.id as string, i);
    }

    // Requester i submits to replica i: two jobs of two tasks each, that take TASK_MS.
    const bundle = join(dir.path, 'bundle');
    await mkdir(bundle);
    await writeFile(join(bundle, 'README'), 'a bundle needs a file\n');
    const spec = (name: string): JobSpec => ({
      version: 1,
      name,
      kind: 'batch',
      runtime: { kind: 'bundle', path: '.', command: ['sh', '-c', `sleep ${TASK_MS / 1000}; echo ran > "$GRIDWORK_OUTPUTS/out.txt"`] },
      resources: { cpu: 1, memoryGiB: 1 },
      price: { maxPerHour: '0.50', budget: '1.00' },
      shards: 2,
      timeoutSeconds: 120,
    });
    const requesters = [0, 1, 2].map((i) => new GridworkClient({ url: rotate(urls, i), identity: generateIdentity() }));
    const submitted: { job: JobView; at: number; requester: GridworkClient }[] = [];
    for (const [i, requester] of requesters.entries()) {
      await requester.deposit('10');
      for (const n of [0, 1]) submitted.push({ job: await requester.submit(spec(`r${i}-job${n}`), { baseDir: bundle }), at: i, requester });
    }
    assert.equal(submitted.length, 6);

    // The first wave runs (six slots for twelve tasks): kill the leader under it.
    await until(
      () => Promise.all(submitted.map((s) => s.requester.get(s.job.id))),
      (jobs) => jobs.flatMap((j) => j.tasks).filter((t) => t.state === 'running').length >= 3,
      { timeoutMs: WAIT_MS, what: 'tasks of the first wave to run' },
    );
    const office = async () => (await client.query<{ epoch: string }>(`select epoch from "${schema}".coordinator_leader`)).rows[0]?.epoch;
    const epochBefore = BigInt((await office()) ?? '0');
    const leader = replicas[leaderAt] as CoordinatorProcess;
    const killedAt = Date.now();
    await leader.kill9();
    await until(office, (e) => e !== undefined && BigInt(e) > epochBefore, { what: 'the next term', pollMs: 20 });
    const movedMs = Date.now() - killedAt;
    assert.ok(movedMs < 3000, `the office moved after ${movedMs} ms`);

    // Every job ends, and succeeds, whichever replica it was submitted to.
    const ended = await Promise.all(
      submitted.map((s) =>
        until(
          () => s.requester.get(s.job.id),
          (j) => ['succeeded', 'failed', 'cancelled'].includes(j.state),
          { timeoutMs: WAIT_MS, pollMs: 250, what: `job ${s.job.name} to end` },
        ),
      ),
    );
    for (const j of ended) assert.equal(j.state, 'succeeded', `${j.name}: ${JSON.stringify(j.tasks)}`);

    // Placed across replicas: every provider ran work, and tasks submitted to one replica ran on
    // providers whose sockets another replica held.
    const ranOn = ended.flatMap((j, k) => j.tasks.map((t) => ({ submittedAt: submitted[k]?.at, providerId: t.providerId as string })));
    assert.deepEqual(new Set(ranOn.map((r) => r.providerId)), new Set(agents.map((a) => a.id)), 'every provider ran tasks');
    const crossed = ranOn.filter((r) => holder.get(r.providerId) !== r.submittedAt);
    assert.ok(crossed.length > 0, `no task ran on another replica's provider: ${JSON.stringify(ranOn)}`);

    // Nothing placed twice: each task completed exactly once; and the money is exact.
    const leases = await db.selectFrom('leases').select(['id', 'task_id', 'state']).execute();
    const tasks = await db.selectFrom('tasks').select(['id']).execute();
    assert.equal(tasks.length, 12);
    for (const t of tasks) {
      assert.equal(leases.filter((l) => l.task_id === t.id && l.state === 'completed').length, 1, `task ${t.id} completed once: ${JSON.stringify(leases.filter((l) => l.task_id === t.id))}`);
    }
    assert.deepEqual(
      leases.filter((l) => ['offered', 'starting', 'running'].includes(l.state)),
      [],
      'no lease is left active',
    );
    await assertLedgerExact(
      db,
      leases.map((l) => l.id),
    );
    // Each requester paid for what its jobs spent (fees on top), and nothing is still held for it.
    for (const [i, requester] of requesters.entries()) {
      const spent = ended.filter((_, k) => submitted[k]?.requester === requester).reduce((sum, j) => sum + parseCredits(j.money.spent), 0n);
      const balance = await requester.balance();
      assert.ok(spent > 0n);
      assert.ok(parseCredits('10') - parseCredits(balance.available) >= spent, `requester ${i}: spent ${spent}, left ${balance.available}`);
      assert.equal(parseCredits(balance.held), 0n, `requester ${i}: nothing held`);
    }
  });
});
