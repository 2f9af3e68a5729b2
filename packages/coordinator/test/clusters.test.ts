/**
 * Clusters on real, sandboxed agents (PGlite): a `kind: cluster` job is gang-scheduled — nothing
 * is placed (or held) until every member fits — each member gets RANK and WORLD_SIZE and exchanges
 * files with the others through the coordinator's relay; when one member's provider dies, the
 * whole cluster restarts from its members' last checkpoints and ends with the result of an
 * uninterrupted run. Waits are on state read from the coordinator.
 */
import assert from 'node:assert/strict';
import { readFile } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { fileURLToPath } from 'node:url';
import { internalsOf } from '@gridwork/coordinator/internal';
import type { JobSpec } from '@gridwork/protocol';
import type { ProviderAgent } from '@gridwork/provider';
import { startTestNetwork, type TestNetwork, until } from '@gridwork/testkit';

const fixtures = join(dirname(fileURLToPath(import.meta.url)), 'fixtures');
const WAIT_MS = 90_000;
const ROUNDS = 12;

/** What the fixture's members compute together in 12 uninterrupted rounds. */
function expected(size: number): number {
  let state = 1;
  for (let round = 1; round <= ROUNDS; round++) {
    let sum = 0;
    for (let rank = 0; rank < size; rank++) sum += (state * 31 + rank + round) % 1000003;
    state = sum % 1000003;
  }
  return state;
}

const clusterSpec: JobSpec = {
  version: 1,
  name: 'allreduce',
  kind: 'cluster',
  runtime: { kind: 'bundle', path: './tasks', command: ['node', 'task.mjs', 'cluster', String(ROUNDS), '3', '250'] },
  resources: { cpu: 1, memoryGiB: 1 },
  price: { maxPerHour: '36', budget: '50' },
  cluster: { size: 2 },
};

describe('gang-scheduled clusters', { timeout: 240_000 }, () => {
  let net: TestNetwork;

  before(async () => {
    net = await startTestNetwork({ coordinator: { economics: { meteringIntervalMs: 300 } } });
    await net.addProvider({ name: 'one', slots: 1 });
  });
  after(async () => {
    await net?.close();
  });

  test('all members or none: a cluster waits until it fits, exchanges rounds, and restarts whole from its checkpoints when a member dies', async () => {
    const client = await net.fundedClient('100');
    const { db } = internalsOf(net.coordinator);
    const job = await client.submit(clusterSpec, { baseDir: fixtures });
    assert.equal(job.tasks.length, 2);
    // One free slot in the network: no member is placed (a half-placed gang would hold it for nothing).
    const waiting = await until(() => client.get(job.id), (j) => j.state === 'matching', { what: 'the cluster to wait' });
    assert.ok(waiting.tasks.every((t) => t.state === 'queued'));
    const leases = () => db.selectFrom('leases').select(['id', 'provider_id', 'state', 'task_id']).where('job_id', '=', job.id).orderBy('created_at').execute();
    assert.deepEqual(await leases(), [], 'nothing reserved while the gang does not fit');

    await net.addProvider({ name: 'two', slots: 1 });
    const running = await until(leases, (ls) => ls.filter((l) => l.state === 'running').length === 2, { timeoutMs: WAIT_MS, what: 'both members running' });
    assert.notEqual(running[0]?.provider_id, running[1]?.provider_id);

    // Let the members pass a checkpoint (round 3 or later), then one member's provider dies.
    await until(
      () => db.selectFrom('checkpoints').select('step').where('lease_id', 'in', running.map((l) => l.id)).execute(),
      (cs) => cs.length >= 2,
      { timeoutMs: WAIT_MS, what: 'a checkpoint on both members' },
    );
    await net.addProvider({ name: 'spare', slots: 1 });
    const victim = net.providers.find((p) => net.identityOf(p).publicKey === running[1]?.provider_id) as ProviderAgent;
    await victim.close();

    const done = await until(() => client.get(job.id), (j) => j.state === 'succeeded' || j.state === 'failed', { timeoutMs: WAIT_MS, what: 'the restarted cluster' });
    assert.equal(done.state, 'succeeded', done.error ?? '');
    const all = await leases();
    const first = all.filter((l) => running.some((r) => r.id === l.id));
    assert.deepEqual(first.map((l) => l.state).sort(), ['cancelled', 'lost'], 'the dead member lost, the survivor stopped with it');
    const second = all.filter((l) => !running.some((r) => r.id === l.id));
    assert.equal(second.length, 2, 'both members placed again, together');
    assert.ok(second.every((l) => l.state === 'completed'));
    assert.ok(second.every((l) => l.provider_id !== running[1]?.provider_id), 'not on the dead provider');

    // Resumed from checkpoints, with the same result as an uninterrupted run.
    const logs = [];
    for await (const e of client.logs(job.id)) logs.push(e);
    assert.ok(logs.some((e) => second.some((l) => l.id === e.leaseId) && /resumed from round [1-9]/.test(e.data)), 'members resumed from a checkpoint');
    const files = await client.results(job.id, join(net.dir, 'cluster-results'));
    const result = files.find((f) => f.endsWith('result.txt')) as string;
    assert.equal(await readFile(result, 'utf8'), `state after ${ROUNDS} rounds: ${expected(2)}\n`);
    const rounds = await db.selectFrom('cluster_exchange').select(['round', 'rank']).where('job_id', '=', job.id).execute();
    assert.equal(rounds.length, ROUNDS * 2, 'every round of every rank relayed');
  });
});
