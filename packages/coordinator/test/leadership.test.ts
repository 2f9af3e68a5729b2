/**
 * One leader among replicas (leader/leadership.ts): three coordinator processes on one PostgreSQL
 * schema, one of them the leader (GET /healthz says `role`); SIGKILL of the leader moves the
 * office to another within 3 s (the bound), with the next epoch; a replica that starts
 * while another leads stays an edge.
 */
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { dropSchema, postgresUrl, tempDir, uniqueSchema, until } from '@gridwork/testkit';
import { type CoordinatorProcess, freePort, startCoordinatorProcess } from '../../testkit/src/processes.ts';
import pg from 'pg';

describe('leader election among coordinator processes (PostgreSQL advisory lock)', { timeout: 180_000 }, () => {
  const schema = uniqueSchema('gw_leader');
  const env = { GRIDWORK_DATABASE_URL: postgresUrl(), GRIDWORK_DATABASE_SCHEMA: schema, GRIDWORK_NATS_URL: undefined };
  let dir: { path: string; remove: () => Promise<void> };
  const replicas: CoordinatorProcess[] = [];
  let client: pg.Client;

  const start = async (i: number) => {
    const p = await startCoordinatorProcess({ label: `replica-${i}`, dataDir: join(dir.path, `r${i}`), port: await freePort(), args: ['--dev'], env });
    replicas.push(p);
    return p;
  };
  const roleOf = async (p: CoordinatorProcess) => ((await (await fetch(`${p.url}/healthz`)).json()) as { role: string }).role;
  const office = async () => (await client.query<{ epoch: string; holder: string }>(`select epoch, holder from "${schema}".coordinator_leader`)).rows[0];

  before(async () => {
    dir = await tempDir('gridwork-leader-');
    client = new pg.Client({ connectionString: postgresUrl() });
    await client.connect();
    // One after the other: the first migrates the schema.
    for (const i of [0, 1, 2]) await start(i);
  });

  after(async () => {
    await Promise.all(replicas.map((p) => p.stop()));
    await client.end();
    await dropSchema(schema);
    await dir?.remove();
  });

  test('exactly one replica leads; SIGKILL of it hands the office to another within 3 s, at the next epoch', async () => {
    const roles = await until(
      () => Promise.all(replicas.map(roleOf)),
      (r) => r.filter((x) => x === 'leader').length === 1,
      { what: 'one leader among three' },
    );
    assert.deepEqual([...roles].sort(), ['edge', 'edge', 'leader']);
    const leader = replicas[roles.indexOf('leader')] as CoordinatorProcess;
    const before = await office();
    assert.equal(before?.holder.split(':').at(-1), String(leader.pid), 'the office names the leader');

    const killedAt = Date.now();
    await leader.kill9();
    const rest = replicas.filter((p) => p !== leader);
    // Timed by the office itself (the next term's row), read straight from the database.
    const now = await until(office, (o) => o !== undefined && BigInt(o.epoch) > BigInt(before?.epoch ?? 0), { what: 'the next term', pollMs: 20 });
    const tookMs = Date.now() - killedAt;
    assert.ok(tookMs < 3000, `the office moved after ${tookMs} ms`);
    assert.equal(BigInt(now?.epoch ?? 0), BigInt(before?.epoch ?? 0) + 1n);
    const after = await until(
      () => Promise.all(rest.map(roleOf)),
      (r) => r.includes('leader'),
      { what: 'the new leader saying so' },
    );
    assert.equal(after.filter((x) => x === 'leader').length, 1, `roles after the kill: ${after}`);
    assert.equal(now?.holder.split(':').at(-1), String(rest[after.indexOf('leader')]?.pid));

    // The killed one comes back: it serves, and leads nothing while another does.
    const back = await start(3);
    assert.equal(await roleOf(back), 'edge');
  });
});
