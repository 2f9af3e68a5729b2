/**
 * Services on real, sandboxed agents (PGlite): a `kind: service` job's replicas start, turn
 * healthy, and the coordinator's ingress (`/services/<job>/…`) load-balances the owner's signed
 * requests across them through each agent's ingress; anyone else is refused; a replica whose
 * provider dies is replaced elsewhere while the other keeps serving; the job is metered while it
 * runs and stops when it is cancelled. Waits are on state read from the coordinator.
 */
import assert from 'node:assert/strict';
import { dirname, join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { fileURLToPath } from 'node:url';
import { internalsOf } from '@gridwork/coordinator/internal';
import type { JobSpec } from '@gridwork/protocol';
import { generateIdentity, type Identity, signRequest } from '@gridwork/protocol/node';
import type { ProviderAgent } from '@gridwork/provider';
import { startTestNetwork, type TestNetwork, until } from '@gridwork/testkit';
import { ingressOf } from '../src/providers/ingress-proof.ts';

const fixtures = join(dirname(fileURLToPath(import.meta.url)), 'fixtures');
const WAIT_MS = 60_000;

const serviceSpec: JobSpec = {
  version: 1,
  name: 'echo-service',
  kind: 'service',
  runtime: { kind: 'bundle', path: './tasks', command: ['node', 'task.mjs', 'serve'] },
  resources: { cpu: 0.5, memoryGiB: 0.5 },
  price: { maxPerHour: '36', budget: '20' },
  service: { port: 8080, healthPath: '/health', replicas: 2, startupTimeoutSeconds: 30 },
};

/** A request to the ingress, signed by `identity` (or not at all). */
async function call(url: string, identity: Identity | null, method: 'GET' | 'POST', path: string, body?: unknown) {
  const raw = body === undefined ? undefined : Buffer.from(JSON.stringify(body));
  const headers: Record<string, string> = raw ? { 'content-type': 'application/json' } : {};
  if (identity) Object.assign(headers, signRequest(identity, method, path, raw));
  const res = await fetch(new URL(path, url), { method, headers, ...(raw ? { body: raw } : {}) });
  const text = await res.text();
  return { status: res.status, replica: res.headers.get('x-gridwork-replica'), body: text ? (JSON.parse(text) as Record<string, unknown>) : null };
}

describe('services behind the coordinator ingress', { timeout: 180_000 }, () => {
  let net: TestNetwork;

  before(async () => {
    net = await startTestNetwork({ providers: 2, provider: { slots: 1 }, coordinator: { economics: { meteringIntervalMs: 300 } } });
  });
  after(async () => {
    await net?.close();
  });

  test('replicas serve the owner through the ingress, load-balanced; others are refused; a dead replica is replaced; cancel stops it', async () => {
    const owner = generateIdentity();
    const client = await net.fundedClient('100', owner);
    const job = await client.submit(serviceSpec, { baseDir: fixtures });
    assert.equal(job.tasks.length, 2, 'one task per replica');
    const { db } = internalsOf(net.coordinator);
    const healthy = () => db.selectFrom('leases').select(['id', 'provider_id']).where('job_id', '=', job.id).where('state', '=', 'running').where('service_health', '=', 'healthy').execute();
    const two = await until(healthy, (r) => r.length === 2, { timeoutMs: WAIT_MS, what: 'two healthy replicas' });
    assert.notEqual(two[0]?.provider_id, two[1]?.provider_id);

    // The owner's signed requests reach both replicas in turn, body and path intact.
    const seen = new Set<string>();
    for (let i = 0; i < 4; i++) {
      const r = await call(net.coordinator.url, owner, 'POST', `/services/${job.id}/echo?n=${i}`, { n: i, text: 'héllo' });
      assert.equal(r.status, 200, JSON.stringify(r.body));
      assert.deepEqual(r.body?.echo, { n: i, text: 'héllo' });
      assert.equal(r.body?.path, `/echo?n=${i}`);
      seen.add(String(r.replica));
    }
    assert.equal(seen.size, 2, 'both replicas served');

    // Nobody else gets in: unsigned, another tenant, a forged token straight to an agent's ingress.
    const unsigned = await call(net.coordinator.url, null, 'GET', `/services/${job.id}/echo`);
    assert.equal(unsigned.status, 404, 'a private service answers strangers as if it did not exist');
    const stranger = await call(net.coordinator.url, generateIdentity(), 'GET', `/services/${job.id}/echo`);
    assert.equal(stranger.status, 404);
    const ingress = await db.selectFrom('providers').select('ingress_url').where('id', '=', two[0]?.provider_id as string).executeTakeFirstOrThrow();
    const direct = await fetch(`${ingress.ingress_url}/${two[0]?.id}/echo`, { headers: { 'x-gridwork-service-token': 'f'.repeat(64) } });
    assert.equal(direct.status, 404, 'the agent ingress wants the replica secret');
    const nonService = await call(net.coordinator.url, owner, 'GET', `/services/job_${'a'.repeat(16)}/x`);
    assert.equal(nonService.status, 404);

    // One provider dies: the other replica keeps serving, and the lost one is replaced on a new provider.
    const deadProvider = two[0]?.provider_id as string;
    const dying = net.providers.find((p) => net.identityOf(p).publicKey === deadProvider) as ProviderAgent;
    await net.addProvider({ name: 'spare', slots: 1 });
    await dying.close();
    const stillUp = await call(net.coordinator.url, owner, 'GET', `/services/${job.id}/echo`);
    assert.equal(stillUp.status, 200, 'the surviving replica serves meanwhile');
    const replaced = await until(
      healthy,
      (r) => r.length === 2 && r.every((l) => l.provider_id !== deadProvider),
      { timeoutMs: WAIT_MS, what: 'the lost replica replaced elsewhere' },
    );
    assert.equal(replaced.length, 2);
    const lost = await db.selectFrom('leases').select('state').where('job_id', '=', job.id).where('provider_id', '=', deadProvider).executeTakeFirstOrThrow();
    assert.equal(lost.state, 'lost');
    const running = await client.get(job.id);
    assert.equal(running.state, 'running');

    // Metered while it runs; stopped by cancel.
    await until(
      () => client.get(job.id),
      (j) => Number(j.money.spent) > 0,
      { what: 'metering' },
    );
    await client.cancel(job.id);
    const stopped = await until(() => client.get(job.id), (j) => j.state === 'cancelled', { what: 'the stop' });
    assert.equal(stopped.state, 'cancelled');
    const gone = await call(net.coordinator.url, owner, 'GET', `/services/${job.id}/echo`);
    assert.equal(gone.status, 503);
  });
});

test('a provider can only advertise an ingress on the address it connected from (no proxying to other hosts)', () => {
  assert.equal(ingressOf('http://127.0.0.1:9000', '::ffff:127.0.0.1'), 'http://127.0.0.1:9000');
  assert.equal(ingressOf('http://[::1]:9000', '::1'), 'http://[::1]:9000');
  assert.equal(ingressOf('http://10.0.0.5:9000', '127.0.0.1'), null, 'another host');
  assert.equal(ingressOf('http://169.254.169.254', '203.0.113.7'), null, 'a metadata service');
  assert.equal(ingressOf('http://localhost:9000', '127.0.0.1'), null, 'a name, not the address');
  assert.equal(ingressOf('http://127.0.0.1:9000\\admin\\drop', '127.0.0.1'), null, 'a path, spelled with backslashes');
  assert.equal(ingressOf('http://127.0.0.1:9000/admin', '127.0.0.1'), null, 'a path');
  assert.equal(ingressOf('http://u:p@127.0.0.1:9000', '127.0.0.1'), null, 'credentials');
  assert.equal(ingressOf('http://127.0.0.1:80', '127.0.0.1'), null, 'not in the parser\'s spelling (default port)');
  assert.equal(ingressOf(undefined, '127.0.0.1'), null);
  assert.equal(ingressOf('http://127.0.0.1:9000', null), null);
});
