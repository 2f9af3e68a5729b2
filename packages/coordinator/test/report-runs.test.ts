/**
 * A provider's reports that arrive back to back are applied as one run (provider-channels.ts,
 * ProviderService.applyMany). What a run may not do that one report at a time did not: wait on
 * rows it has no business with (a duplicate, a log line, someone else's lease), or go on applying
 * what a connection sent after the coordinator closed it.
 */
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import { generateIdentity } from '@gridwork/protocol/node';
import { postgresUrl, startTestNetwork, type TestNetwork, until, uploadTinyBundle } from '@gridwork/testkit';
import { RawProvider } from '@gridwork/testkit/raw-provider';
import pg from 'pg';
import { internalsOf } from '../src/internal.ts';

const log = (leaseId: string, seq: number) => ({ seq, type: 'lease.log', leaseId, chunks: [{ stream: 'stdout', data: `line ${seq}\n`, ts: Date.now() }] });
const acks = (p: RawProvider) => p.messages.filter((m) => m.type === 'ack').length;

describe('runs of provider reports (PostgreSQL)', { timeout: 120_000 }, () => {
  let net: TestNetwork;
  let other: pg.Client;
  const raws: RawProvider[] = [];

  before(async () => {
    net = await startTestNetwork({ store: 'postgres' });
    other = new pg.Client({ connectionString: postgresUrl(), options: `-c search_path=${net.coordinator.config.databaseSchema}` });
    await other.connect();
  });
  after(async () => {
    for (const r of raws) r.close();
    await other?.end();
    await net?.close();
  });

  test("a run waits on no job row it does not change: duplicates, log lines, another provider's lease", async () => {
    const client = await net.fundedClient('100', generateIdentity());
    const bundle = await uploadTinyBundle(client);
    const victim = await RawProvider.connect(net.coordinator.url);
    raws.push(victim);
    await victim.hello({ attributes: { region: 'victims' } });
    const job = await client.submitPrepared({
      spec: {
        version: 1,
        name: 'victim-job',
        kind: 'batch',
        runtime: { kind: 'bundle', path: '.', command: ['true'] },
        resources: { cpu: 1, memoryGiB: 1 },
        placement: { regions: ['victims'] },
        price: { maxPerHour: '1.00', budget: '1.00' },
      },
      bundle,
      inputs: [],
    });
    const { lease } = await victim.assignment();
    assert.equal(await victim.report({ type: 'lease.started', leaseId: lease.leaseId }), undefined);
    const attacker = await RawProvider.connect(net.coordinator.url);
    raws.push(attacker);
    await attacker.hello({ attributes: { region: 'elsewhere' } });
    assert.equal(await attacker.report({ type: 'provider.state', state: 'online' }), undefined);

    // Another transaction (a placement, a lease ending) holds the victim's job row meanwhile.
    await other.query('begin');
    try {
      await other.query('select id from jobs where id = $1 for no key update', [job.id]);
      const attackerAcks = acks(attacker);
      for (let i = 0; i < 8; i++) attacker.send(log(lease.leaseId, 1)); // duplicates of its seq 1, naming the victim's lease
      await until(
        async () => acks(attacker),
        (n) => n === attackerAcks + 8,
        { what: "the attacker's duplicates answered while the victim's job is held" },
      );
      const victimAcks = acks(victim);
      victim.send(log(lease.leaseId, 2));
      victim.send(log(lease.leaseId, 3));
      await until(
        async () => acks(victim),
        (n) => n === victimAcks + 2,
        { what: "the victim's log lines applied while its job is held" },
      );
    } finally {
      await other.query('rollback');
    }
    assert.deepEqual(
      attacker.messages.filter((m) => m.type === 'error'),
      [],
      'duplicates are answered as such, without an error',
    );
    const { db } = internalsOf(net.coordinator);
    const victimRow = await db.selectFrom('providers').select('in_seq').where('id', '=', victim.id).executeTakeFirstOrThrow();
    assert.equal(victimRow.in_seq, 3n);
  });

  for (const refusedFirst of [false, true]) {
    test(`a gap closes the connection once and nothing after it is applied (${refusedFirst ? 'a refused report first: the run is applied one by one' : 'the run applied together'})`, async () => {
      const p = await RawProvider.connect(net.coordinator.url);
      raws.push(p);
      await p.hello({ attributes: { region: 'gappers' } });
      p.send(refusedFirst ? log('lease_aaaaaaaaaaaaaaaa', 1) : { seq: 1, type: 'provider.state', state: 'online' });
      for (const seq of [3, 4, 5, 6, 7]) p.send({ seq, type: 'provider.state', state: 'draining' });
      await until(
        async () => p.closed,
        (closed) => closed,
        { what: 'the coordinator to close the connection' },
      );
      const errors = p.messages.filter((m) => m.type === 'error');
      assert.deepEqual(
        errors.map((m) => m.code),
        refusedFirst ? ['LEASE_NOT_FOUND', 'PROTOCOL_ERROR'] : ['PROTOCOL_ERROR'],
      );
      assert.match(String(errors.at(-1)?.message), /sequence gap at 3/);
      const { db } = internalsOf(net.coordinator);
      const row = await db.selectFrom('providers').select(['in_seq', 'state']).where('id', '=', p.id).executeTakeFirstOrThrow();
      assert.equal(row.in_seq, 1n);
      assert.notEqual(row.state, 'draining', 'nothing after the gap was applied');
      // One protocol fault, not one per report queued behind the gap (five in a minute take a provider out of matching).
      const paused = await db.selectFrom('events').select('position').where('type', '=', 'provider.paused').where('provider_id', '=', p.id).execute();
      assert.deepEqual(paused, []);
    });
  }
});
