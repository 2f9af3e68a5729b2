/**
 * GET /v1/providers (registerNetworkRoutes) against a real coordinator's database, with real
 * connected providers, read through the SDK. The route is mounted on its own HTTP app sharing
 * the coordinator's database, so this test does not depend on how server.ts wires it.
 */
import { internalsOf } from '@gridwork/coordinator/internal';
import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import { generateIdentity, startTestNetwork, type TestNetwork, silentLogger, until } from '@gridwork/testkit';
import { GridworkClient } from '@gridwork/sdk';
import type { FastifyInstance } from 'fastify';
import { createHttpApp } from '../src/api/http-app.ts';
import { registerNetworkRoutes } from '../src/api/network-routes.ts';
import { Authenticator } from '../src/auth/authenticator.ts';

let net: TestNetwork;
let app: FastifyInstance;
let url: string;
before(async () => {
  net = await startTestNetwork({ providers: 2 });
  app = await createHttpApp({ log: silentLogger(), auth: new Authenticator(internalsOf(net.coordinator).db), maxJsonBytes: 1 << 20, trustProxy: false, version: 'test' });
  registerNetworkRoutes(app, { db: internalsOf(net.coordinator).db });
  url = await app.listen({ host: '127.0.0.1', port: 0 });
});
after(async () => {
  await app?.close();
  await net?.close();
});

test('lists online providers with hardware, asks, reputation and stake; public (no signature needed)', async () => {
  const client = new GridworkClient({ url, identity: generateIdentity() });
  const providers = await until(
    () => client.providers(),
    (ps) => ps.length === 2 && ps.every((p) => p.asks !== null),
    { what: 'two providers with asks' },
  );
  assert.deepEqual(providers.map((p) => p.name).sort(), ['provider-0', 'provider-1']);
  for (const p of providers) {
    assert.equal(p.state, 'online');
    assert.ok(p.hardware.cpu.cores >= 1);
    assert.match(p.asks?.cpuCoreHour ?? '', /^\d+(\.\d+)?$/);
    assert.ok(p.reputation > 0 && p.reputation <= 1);
    assert.equal(p.stake, '0');
    assert.ok(!Number.isNaN(Date.parse(p.lastSeenAt)));
  }
  const unsigned = await fetch(`${url}/v1/providers`);
  assert.equal(unsigned.status, 200);
  assert.equal(((await unsigned.json()) as { providers: unknown[] }).providers.length, 2);
});

test('an offline provider is listed only with all=true', async () => {
  const client = new GridworkClient({ url, identity: generateIdentity() });
  const gone = net.providers.pop();
  assert.ok(gone);
  await gone.close();
  await until(
    () => client.providers(),
    (ps) => ps.length === 1,
    { what: 'the closed provider to leave the online list' },
  );
  const all = await client.providers({ all: true });
  assert.equal(all.length, 2);
  assert.equal(all.find((p) => p.name === gone.name)?.state, 'offline');
});

test('bad query values are refused with the shared error shape', async () => {
  const res = await fetch(`${url}/v1/providers?limit=0`);
  assert.equal(res.status, 400);
  const body = (await res.json()) as { error: { code: string } };
  assert.equal(body.error.code, 'VALIDATION_FAILED');
});
