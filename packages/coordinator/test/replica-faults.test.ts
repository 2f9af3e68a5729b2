/**
 * Faults with nothing lost (issue 15, item 6), on a network of processes with a PostgreSQL and a
 * NATS of its own (testkit/replica-cluster.ts): three coordinator replicas, three providers each
 * connected to a different replica first. While tasks run: SIGKILL of an edge replica, SIGKILL of
 * the leader, SIGKILL of NATS, a restart of PostgreSQL, and a provider whose socket goes silent
 * without closing (SIGSTOP). After each, its jobs succeed; at the end every task completed exactly
 * once, no lease is left active, the ledger is exact (double entry, every ended lease settled
 * once, nothing left held), and the reputation subscriber (durable) counted every lease ending
 * exactly once.
 */
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import type { JobView } from '@gridwork/sdk';
import { until } from '@gridwork/testkit';
import { ReplicaCluster } from '../../testkit/src/replica-cluster.ts';

const TASK_MS = 2000;

describe('faults among coordinator replicas, with nothing lost (PostgreSQL + NATS of its own)', { timeout: 600_000 }, () => {
  let c: ReplicaCluster;
  const log: string[] = [];

  before(async () => {
    c = await ReplicaCluster.start({ replicas: 3, providers: 3, slots: 2, heartbeatMs: 1000 });
  });

  after(async () => {
    if (log.length) console.log(`fault steps:\n  ${log.join('\n  ')}`);
    await c?.close();
  });

  /** Submits a job and waits until `running` of its tasks run (read through any replica that answers). */
  const runningJob = async (name: string, tasks: number, running = 1): Promise<JobView> => {
    const job = await c.submit(name, tasks, TASK_MS);
    return until(
      () => c.client.get(job.id).catch(() => job),
      (j) => j.tasks.filter((t) => t.state === 'running').length >= running,
      { timeoutMs: 60_000, what: `${name}: ${running} task(s) running` },
    );
  };
  const step = async (what: string, fn: () => Promise<void>) => {
    const t0 = Date.now();
    await fn();
    log.push(`${what}: ${Date.now() - t0} ms`);
  };
  const succeeded = async () => {
    for (const j of await c.waitJobs()) assert.equal(j.state, 'succeeded', `${j.name}: ${JSON.stringify(j.tasks.map((t) => [t.state, t.error]))}`);
  };

  test('SIGKILL of an edge replica while its providers run tasks: they move, the jobs succeed', async () => {
    await step('edge killed', async () => {
      const leader = await c.leader();
      const edge = (leader + 1) % 3;
      await runningJob('edge-kill', 4, 2);
      await c.killReplica(edge);
      // Submits go to the replicas that are left.
      await c.submit('after-edge-kill', 2, TASK_MS);
      await succeeded();
      await c.startReplica(edge);
    });
  });

  test('SIGKILL of the leader mid-run: another leads, the jobs succeed', async () => {
    await step('leader killed', async () => {
      const leader = await c.leader();
      const epoch = await c.epoch();
      await runningJob('leader-kill', 4, 2);
      await c.killReplica(leader);
      await c.leader();
      assert.ok((await c.epoch()) > epoch, 'another replica took office, at a later epoch');
      await c.submit('after-leader-kill', 2, TASK_MS);
      await succeeded();
      await c.startReplica(leader);
    });
  });

  test('SIGKILL of NATS: replicas fall back to polling, then hear rings again when it is back', async () => {
    await step('NATS killed', async () => {
      await runningJob('nats-kill', 4, 1);
      await c.nats.kill9();
      await c.submit('without-nats', 2, TASK_MS);
      await succeeded();
      await c.nats.start();
      await c.submit('nats-back', 2, TASK_MS);
      await succeeded();
    });
  });

  test('a PostgreSQL restart under load: connections are cut, nothing is lost', async () => {
    await step('PostgreSQL restarted', async () => {
      await runningJob('pg-restart', 6, 2);
      await c.pg.restart('fast');
      await c.submit('after-pg-restart', 2, TASK_MS);
      await succeeded();
    });
  });

  test('a provider whose socket goes silent without closing: declared offline, its tasks run elsewhere', async () => {
    await step('provider silenced', async () => {
      const lostBefore = await c.lostLeases();
      const job = await runningJob('silent-provider', 4, 2);
      const victimId = job.tasks.find((t) => t.state === 'running')?.providerId;
      const victim = c.providers.findIndex((p) => p?.id === victimId);
      assert.ok(victim >= 0);
      c.pauseProvider(victim);
      try {
        await until(
          // Listed no more (the listing shows providers that are not offline).
          () => c.client.providers(),
          (rows) => !rows.some((r) => r.id === victimId),
          { timeoutMs: 60_000, what: 'the silent provider declared offline' },
        );
        await succeeded();
        assert.ok((await c.lostLeases()) > lostBefore, 'the silent provider lost its running leases');
      } finally {
        c.resumeProvider(victim);
      }
      // Back: it says hello again and is online.
      await c.waitProviders();
    });
  });

  test('after every fault: each task completed once, the ledger exact, every lease ending counted once', async () => {
    await succeeded();
    const a = await c.audit();
    log.push(`audit: ${JSON.stringify(a, (_k, v) => (typeof v === 'bigint' ? String(v) : v))}`);
    assert.equal(a.succeeded, a.jobs, 'every job succeeded');
    assert.deepEqual(a.tasksNotCompletedOnce, [], 'every task completed exactly once');
    assert.equal(a.activeLeases, 0, 'no lease left active');
    assert.equal(a.ledgerTotal, 0n, 'postings sum to zero');
    assert.deepEqual(a.ledgerMismatched, [], 'every cached balance equals its postings');
    assert.deepEqual(a.unsettled, [], 'every ended lease settled exactly once');
    assert.deepEqual(a.leftover, [], 'nothing left in escrow or held');
    assert.deepEqual(a.reputationDrift, [], 'the durable reputation subscriber counted each lease ending once');
  });
});
