/**
 * The SDK given several coordinator URLs: two real coordinators (replicas) on one PostgreSQL
 * schema, a port where nothing listens, and stand-ins that break in the ways a dying replica or a
 * proxy does. A request moves to the next URL only where sending it again cannot apply it twice;
 * the client stays with the URL that answered; a broken job stream resumes on the next replica.
 */
import assert from 'node:assert/strict';
import { once } from 'node:events';
import { createServer as createHttpServer } from 'node:http';
import { type AddressInfo, createServer as createNetServer, type Server } from 'node:net';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { type Coordinator, startCoordinator } from '@gridwork/coordinator';
import { dropSchema, generateIdentity, postgresUrl, silentLogger, tempDir, uniqueSchema } from '@gridwork/testkit';
import { type ConnectionEvent, CoordinatorUnreachableError, GridworkClient, GridworkError, type JobSpec, type JobView } from '../src/index.ts';

/** A coordinator on `schema`, with the test network's settings (testkit's startTestNetwork). */
function replica(dataDir: string, schema: string): Promise<Coordinator> {
  return startCoordinator({
    dataDir,
    port: 0,
    logger: silentLogger(),
    heartbeatIntervalMs: 1000,
    heartbeatMisses: 4,
    dev: true,
    economics: { meteringIntervalMs: 500 },
    challenges: { meanIntervalMs: 365 * 24 * 3600_000 },
    databaseUrl: postgresUrl(),
    databaseSchema: schema,
    verification: { windowMs: 0, probationTasks: 0, minAuditRate: 0, maxAuditRate: 0, canaryRate: 0, genesisFees: '0' },
  });
}

async function listening(server: Server | ReturnType<typeof createHttpServer>): Promise<string> {
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  return `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
}

/** A URL where nothing listens: connection refused. */
async function deadUrl(): Promise<string> {
  const server = createNetServer();
  const url = await listening(server);
  await new Promise<void>((resolve) => server.close(() => resolve()));
  return url;
}

/** A server that reads the request, then drops the connection without answering (a replica dying mid-request). */
async function dropsRequests(): Promise<{ url: string; received: () => number; close: () => Promise<void> }> {
  let received = 0;
  const server = createNetServer((socket) => {
    socket.on('error', () => {});
    socket.once('data', () => {
      received++;
      socket.resetAndDestroy();
    });
  });
  const url = await listening(server);
  return { url, received: () => received, close: () => new Promise<void>((resolve) => server.close(() => resolve())) };
}

/** A server answering every request as a proxy (502) or a closing Fastify (503, before any handler runs) does. */
async function answers(status: 502 | 503): Promise<{ url: string; received: () => number; close: () => Promise<void> }> {
  let received = 0;
  const server = createHttpServer((req, res) => {
    received++;
    req.resume();
    res.writeHead(status, { 'content-type': 'application/json', connection: 'close' });
    res.end(JSON.stringify({ error: status === 503 ? 'Service Unavailable' : 'Bad Gateway', message: 'x', statusCode: status }));
  });
  const url = await listening(server);
  return { url, received: () => received, close: () => new Promise<void>((resolve) => server.close(() => resolve())) };
}

/** A job no provider can take (there are none): it waits in the market until cancelled. No files to upload. */
const WAITING: JobSpec = {
  version: 1,
  name: 'waits',
  kind: 'batch',
  runtime: { kind: 'container', image: 'example/app:1', command: ['true'] },
  resources: { cpu: 1, memoryGiB: 1 },
  price: { maxPerHour: '0.50', budget: '1.00' },
};

const NO_SUCH_JOB = 'job_aaaaaaaaaaaaaaaa';

describe('SDK failover between coordinator replicas (PostgreSQL)', { timeout: 120_000 }, () => {
  let dir: { path: string; remove: () => Promise<void> };
  const schema = uniqueSchema('gw_failover');
  let first: Coordinator;
  let second: Coordinator;
  let firstClosed = false;
  const cleanup: (() => Promise<unknown>)[] = [];

  before(async () => {
    dir = await tempDir('gridwork-sdk-failover-');
    // One after the other: the first migrates the schema, the second finds it migrated.
    first = await replica(join(dir.path, 'first'), schema);
    second = await replica(join(dir.path, 'second'), schema);
  });

  after(async () => {
    for (const c of cleanup.reverse()) await c().catch(() => {});
    if (!firstClosed) await first?.close();
    await second?.close();
    await dropSchema(schema);
    await dir?.remove();
  });

  test('given [dead, live], a client reaches the live coordinator and stays with it', async () => {
    const dead = await deadUrl();
    const client = new GridworkClient({ url: [dead, first.url], identity: generateIdentity() });
    assert.deepEqual(client.urls, [dead, first.url]);
    assert.equal(client.url, dead, 'the first URL given, until it fails');
    const balance = await client.balance();
    assert.equal(balance.available, '0');
    assert.equal(client.url, first.url, 'sticky: later requests go to the URL that answered');
    // A signed POST (money, with its idempotency key) goes straight to the live one now.
    assert.equal((await client.deposit('5')).available, '5');
    assert.equal(client.url, first.url);
    // One string with commas is the same list (GRIDWORK_COORDINATOR, --coordinator).
    assert.deepEqual(new GridworkClient({ url: `${dead}, ${first.url}/`, identity: generateIdentity() }).urls, [dead, first.url]);
  });

  test('every URL unreachable: one NETWORK_ERROR that names them all', async () => {
    const [a, b] = [await deadUrl(), await deadUrl()];
    const client = new GridworkClient({ url: [a, b], identity: generateIdentity() });
    await assert.rejects(client.balance(), (err: unknown) => {
      assert.ok(err instanceof CoordinatorUnreachableError, String(err));
      assert.equal(err.code, 'NETWORK_ERROR');
      assert.match(err.message, /tried every coordinator given: .*:\d+: refused; .*:\d+: refused/);
      return true;
    });
  });

  test('a POST without an idempotency key is not sent again after the connection broke once it was sent', async () => {
    const dropping = await dropsRequests();
    cleanup.push(dropping.close);
    const client = new GridworkClient({ url: [dropping.url, first.url], identity: generateIdentity() });
    // Cancel carries no idempotency key: sent again, the live coordinator would answer JOB_NOT_FOUND.
    await assert.rejects(client.cancel('job-that-may-exist'), (err: unknown) => {
      assert.ok(err instanceof CoordinatorUnreachableError, String(err));
      assert.equal(err.code, 'NETWORK_ERROR');
      assert.equal(err.reason, 'reset');
      assert.match(err.message, /connection reset.*not sent to another coordinator: POST \/v1\/jobs\/job-that-may-exist\/cancel may have been applied, and it carries no idempotency key/);
      return true;
    });
    assert.equal(dropping.received(), 1);
    assert.equal(client.url, dropping.url, 'nothing answered: the client did not move');

    // The same break for a GET, or a POST with an idempotency key: sent to the next coordinator.
    assert.equal((await client.balance()).available, '0');
    assert.equal(client.url, first.url);
    const keyed = new GridworkClient({ url: [dropping.url, first.url], identity: generateIdentity() });
    assert.equal((await keyed.deposit('3', { idempotencyKey: 'deposit-once' })).available, '3');
    assert.equal(dropping.received(), 3);
    assert.equal((await keyed.balance()).available, '3', 'the key moved the money once');
  });

  test("a closing replica's 503 sends any request on (nothing ran); a proxy's 502 only a repeatable one", async () => {
    const closing = await answers(503);
    const proxy = await answers(502);
    cleanup.push(closing.close, proxy.close);
    const viaClosing = new GridworkClient({ url: [closing.url, first.url], identity: generateIdentity() });
    // Reached the live coordinator: its answer, not the stand-in's.
    await assert.rejects(viaClosing.cancel(NO_SUCH_JOB), (err: unknown) => err instanceof GridworkError && err.code === 'JOB_NOT_FOUND');
    assert.equal(closing.received(), 1);
    assert.equal(viaClosing.url, first.url);

    const viaProxy = new GridworkClient({ url: [proxy.url, first.url], identity: generateIdentity() });
    await assert.rejects(viaProxy.cancel(NO_SUCH_JOB), (err: unknown) => {
      assert.ok(err instanceof GridworkError && err.code === 'UNAVAILABLE', String(err));
      assert.match(err.message, /HTTP 502.*not sent to another coordinator/);
      return true;
    });
    assert.equal((await viaProxy.balance()).available, '0');
    assert.equal(proxy.received(), 2);
  });

  test('a job stream resumes on the next replica when its replica closes; later requests go there too', async () => {
    const client = new GridworkClient({ url: [first.url, second.url], identity: generateIdentity() });
    await client.deposit('10');
    const job = await client.submitPrepared({ spec: WAITING, inputs: [] });
    const connection: ConnectionEvent['state'][] = [];
    const seen: JobView[] = [];
    let resolveFirst: () => void = () => {};
    const firstSnapshot = new Promise<void>((resolve) => {
      resolveFirst = resolve;
    });
    const watching = (async () => {
      for await (const j of client.watch(job.id, { retryDelayMs: 50, onConnection: (e) => connection.push(e.state), signal: AbortSignal.timeout(60_000) })) {
        seen.push(j);
        resolveFirst();
      }
    })();
    await firstSnapshot;
    assert.equal(client.url, first.url);

    await first.close();
    firstClosed = true;
    // A GET after the first replica went away: answered by the second, from the same database.
    const balance = await client.balance();
    assert.equal(balance.held, job.money.held);
    assert.equal(client.url, second.url);

    // Cancelled through the second replica: the stream, reopened there, sees it and ends.
    const cancelled = await client.cancel(job.id);
    assert.equal(cancelled.state, 'cancelled');
    await watching;
    assert.equal(seen.at(-1)?.state, 'cancelled');
    assert.deepEqual(connection.slice(-1), ['restored'], `the stream was lost, then restored: ${connection.join(', ')}`);
    assert.equal(new Set(seen.map((j) => JSON.stringify(j))).size, seen.length, 'no snapshot yielded twice');
  });
});
