/**
 * Two coordinator replicas on one PostgreSQL schema hear each other's events: a job submitted
 * and cancelled through one replica is followed to its end on a stream opened on the other,
 * which commits nothing meanwhile (before bus/replica-doorbell.ts, that stream never moved: a
 * replica read events others committed only after publishing one of its own). With NATS the
 * other replica's ring wakes it (polling is set to an hour, so only the ring can); without NATS
 * it reads the head every `replicaPollMs`. And so a job submitted through one replica is placed
 * by the other, whose scheduler a commit of the first now wakes, on a provider connected to it.
 */
import assert from 'node:assert/strict';
import { chmod, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { type Coordinator, startCoordinator } from '@gridwork/coordinator';
import { internalsOf } from '@gridwork/coordinator/internal';
import { parseCredits as credits } from '@gridwork/protocol';
import { generateIdentity } from '@gridwork/protocol/node';
import { GridworkClient, type JobSpec, type JobView } from '@gridwork/sdk';
import { fixedPricing, ProviderAgent, scriptPricing } from '@gridwork/provider';
import { dropSchema, natsUrl, postgresUrl, silentLogger, tempDir, uniqueSchema, until, uploadTinyBundle } from '@gridwork/testkit';

const spec: JobSpec = {
  version: 1,
  name: 'seen-elsewhere',
  kind: 'batch',
  runtime: { kind: 'bundle', path: '.', command: ['true'] },
  resources: { cpu: 1, memoryGiB: 1 },
  price: { maxPerHour: '0.50', budget: '1.00' },
};

function replica(dataDir: string, schema: string, extra: { natsUrl?: string; replicaPollMs: number }): Promise<Coordinator> {
  return startCoordinator({
    dataDir,
    port: 0,
    logger: silentLogger(),
    dev: true,
    databaseUrl: postgresUrl(),
    databaseSchema: schema,
    challenges: { meanIntervalMs: 365 * 24 * 3600_000 },
    // No audits or canaries: nothing here needs a second provider to check the first.
    verification: { windowMs: 0, probationTasks: 0, minAuditRate: 0, maxAuditRate: 0, canaryRate: 0, genesisFees: '0' },
    ...extra,
  });
}

for (const mode of ['nats', 'polling'] as const) {
  describe(`replicas hear each other's events (${mode === 'nats' ? 'NATS doorbell, no polling' : 'polling, no NATS'})`, { timeout: 120_000 }, () => {
    const schema = uniqueSchema(`gw_replica_events_${mode}`);
    const extra = mode === 'nats' ? { natsUrl: natsUrl(), replicaPollMs: 3_600_000 } : { natsUrl: '', replicaPollMs: 300 };
    let dir: { path: string; remove: () => Promise<void> };
    let a: Coordinator;
    let b: Coordinator;

    before(async () => {
      dir = await tempDir('gridwork-replica-events-');
      // One data directory: replicas share their blobs (a volume or an object store in production).
      a = await replica(`${dir.path}/coordinator`, schema, extra);
      b = await replica(`${dir.path}/coordinator`, schema, extra);
    });

    after(async () => {
      await a?.close();
      await b?.close();
      await dropSchema(schema);
      await dir?.remove();
    });

    test('a job submitted and cancelled on one replica is followed to its end on the other', async () => {
      const identity = generateIdentity();
      const onA = new GridworkClient({ url: a.url, identity });
      const onB = new GridworkClient({ url: b.url, identity });
      await onA.deposit('5');
      const job = await onA.submitPrepared({ spec, bundle: await uploadTinyBundle(onA), inputs: [] });
      // The stream on B: its first snapshot comes from the table; what follows, only from A's commits.
      const seen: JobView[] = [];
      const watching = (async () => {
        for await (const view of onB.watch(job.id, { signal: AbortSignal.timeout(60_000) })) {
          seen.push(view);
          if (seen.length === 1) void onA.cancel(job.id);
        }
      })();
      await watching.catch((err: Error) => assert.fail(`the stream on the other replica: ${err.message}; it saw ${seen.map((v) => v.state).join(' → ')}`));
      assert.notEqual(seen[0]?.state, 'cancelled', 'the first snapshot is from before the cancel');
      assert.equal(seen.at(-1)?.state, 'cancelled', `saw ${seen.map((v) => v.state).join(' → ')}`);
      // B's account view agrees: the hold went back once, whichever replica reads it.
      assert.deepEqual(await onB.balance(), await onA.balance());
    });

    test('a job submitted on one replica runs on a provider connected only to the other', async () => {
      const agent = await ProviderAgent.create({
        coordinatorUrl: b.url,
        dataDir: `${dir.path}/provider`,
        name: `only-on-b-${mode}`,
        runtime: 'process',
        containers: 'off',
        gpus: 'none',
        slots: 1,
        logger: silentLogger(),
      });
      try {
        agent.start();
        const onA = new GridworkClient({ url: a.url, identity: generateIdentity() });
        await until(() => onA.providers(), (ps) => ps.some((p) => p.id === agent.id && p.state === 'online'), { what: 'the provider online' });
        await onA.deposit('5');
        const job = await onA.submitPrepared({ spec, bundle: await uploadTinyBundle(onA), inputs: [] });
        const done = await onA.wait(job.id, { until: 'end', signal: AbortSignal.timeout(60_000) });
        assert.equal(done.state, 'succeeded', JSON.stringify(done.tasks));
        assert.equal(done.tasks[0]?.providerId, agent.id);
        // Settled once: nothing still held, and the requester paid at least what the provider got (fees on top).
        const balance = await onA.balance();
        assert.deepEqual([done.money.held, balance.held], ['0', '0']);
        assert.ok(credits('5') - credits(balance.available) >= credits(done.money.spent), `spent ${done.money.spent}, left ${balance.available}`);

        // Its channel on B keeps failing: B pauses it, and the leader (A) honours the pause until it ends.
        // (Its one slot is free again once the leader's index has applied the lease's end, which
        // may come just after the job's end is visible.)
        await until(() => onA.explain(spec), (x) => x.candidates === 1, { what: 'the provider a candidate again after its lease ended' });
        await internalsOf(b).providers.paused(agent.id, Date.now() + 2000);
        await until(() => onA.explain(spec), (x) => x.candidates === 0, { what: 'the leader to honour the pause' });
        await until(() => onA.explain(spec), (x) => x.candidates === 1, { what: 'the provider back after its pause' });

        // Its socket on B closes: the leader (A) stops counting it as a candidate at once, long
        // before B would declare it offline for missed heartbeats (15 s at the defaults).
        await agent.close();
        const e = await until(() => onA.explain(spec), (x) => x.candidates === 0, { what: 'the leader to stop counting the closed provider' });
        assert.equal(e.excluded.offline, 1, JSON.stringify(e));
        const row = (await onA.providers()).find((p) => p.id === agent.id);
        assert.equal(row?.state, 'online', 'still online (its heartbeats have not timed out): the disconnection is what counted');
      } finally {
        await agent.close();
      }
    });

    if (mode === 'nats') {
      test('an auction opened by the leader reaches a bidder connected to another replica, and its bid wins there', async () => {
        const roleOf = async (c: Coordinator) => ((await (await fetch(`${c.url}/healthz`)).json()) as { role: string }).role;
        assert.deepEqual([await roleOf(a), await roleOf(b)], ['leader', 'edge']);
        const script = join(dir.path, 'bid.sh');
        await writeFile(
          script,
          // A quarter of the order's max price (24), at once: no interpreter to start on a busy machine.
          '#!/bin/sh\ncat > /dev/null\necho 6\n',
        );
        await chmod(script, 0o755);
        // Both on the edge: the standing ask is cheaper than the bidder's, so only a bid that reached the leader's auction wins.
        const benchmarks = { cpuMopsPerCore: 1000, gpu: {} };
        const common = { coordinatorUrl: b.url, runtime: 'process' as const, containers: 'off' as const, gpus: 'none' as const, slots: 1, logger: silentLogger(), benchmarks };
        const standing = await ProviderAgent.create({ ...common, dataDir: `${dir.path}/standing`, name: 'standing', pricing: fixedPricing({ cpuCoreHour: '10', memoryGiBHour: '0' }) });
        const bidder = await ProviderAgent.create({
          ...common,
          dataDir: `${dir.path}/bidder`,
          name: 'bidder',
          pricing: scriptPricing({ script, rates: { cpuCoreHour: '20', memoryGiBHour: '0' } }),
        });
        try {
          standing.start();
          bidder.start();
          const onA = new GridworkClient({ url: a.url, identity: generateIdentity() });
          await until(
            () => onA.providers(),
            (ps) => [standing.id, bidder.id].every((id) => ps.some((p) => p.id === id && p.state === 'online')),
            { what: 'both providers online' },
          );
          await onA.deposit('20');
          const auctioned: JobSpec = { ...spec, name: 'auctioned', price: { maxPerHour: '24', budget: '5', auctionWindowMs: 3000 } };
          const job = await onA.submitPrepared({ spec: auctioned, bundle: await uploadTinyBundle(onA), inputs: [] });
          const done = await onA.wait(job.id, { until: 'end', signal: AbortSignal.timeout(60_000) });
          assert.equal(done.state, 'succeeded', JSON.stringify(done.tasks));
          assert.equal(done.tasks[0]?.providerId, bidder.id, 'the bidder on the edge won the leader\'s auction');
          assert.equal(done.tasks[0]?.pricePerHour, '6', 'at its bid');
        } finally {
          await Promise.all([standing.close(), bidder.close()]);
        }
      });
    }
  });
}
