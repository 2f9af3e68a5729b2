/**
 * PostgreSQL down under a running coordinator (a PostgreSQL of the test's own): a request gets
 * 503 with the stable code UNAVAILABLE — never a 500 — the process stays up, and once the database
 * is back the same requests succeed, with nothing lost.
 */
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import { type Coordinator, startCoordinator } from '@gridwork/coordinator';
import { generateIdentity, signRequest } from '@gridwork/protocol/node';
import { GridworkClient } from '@gridwork/sdk';
import { silentLogger, tempDir, until } from '@gridwork/testkit';
import { type PrivatePostgres, startPrivatePostgres } from '../../testkit/src/private-services.ts';

describe('the database out of reach', { timeout: 120_000 }, () => {
  let pg: PrivatePostgres;
  let c: Coordinator;
  let dir: { path: string; remove: () => Promise<void> };

  before(async () => {
    [pg, dir] = await Promise.all([startPrivatePostgres(), tempDir('gridwork-db-outage-')]);
    c = await startCoordinator({ dataDir: dir.path, port: 0, dev: true, logger: silentLogger(), databaseUrl: pg.url, natsUrl: '' });
  });

  after(async () => {
    await c?.close();
    await pg?.remove();
    await dir?.remove();
  });

  test('requests get 503 UNAVAILABLE while PostgreSQL is down, and succeed again once it is back', async () => {
    const identity = generateIdentity();
    const client = new GridworkClient({ url: c.url, identity });
    await client.deposit('7');
    await pg.stop();
    try {
      for (const [method, path] of [
        ['GET', '/v1/account'],
        ['GET', '/v1/jobs'],
        ['GET', '/v1/providers'],
      ] as const) {
        const res = await fetch(new URL(path, c.url), { method, headers: signRequest(identity, method, path) });
        const body = (await res.json()) as { error?: { code: string; message: string } };
        assert.equal(res.status, 503, `${method} ${path}: ${JSON.stringify(body)}`);
        assert.equal(body.error?.code, 'UNAVAILABLE');
        assert.match(body.error?.message ?? '', /database/);
      }
    } finally {
      await pg.start();
    }
    // Back: the pool reconnects by itself; the deposit made before the outage is still there.
    const balance = await until(
      () => client.balance().catch(() => undefined),
      (b) => b !== undefined,
      { what: 'the account readable again' },
    );
    assert.equal(balance?.available, '7');
  });
});
