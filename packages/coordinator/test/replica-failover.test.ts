/**
 * A provider agent given several coordinator URLs, against two real coordinators (replicas) on
 * one PostgreSQL schema (and one blob directory): it skips a dead URL, runs work on the first replica, and when that one
 * closes it moves to the second, whose hello resumes where the first left off (the sequence of
 * coordinator messages goes on), shows online there, and runs the next job there.
 *
 * Two replicas do not cooperate fully yet (each runs its own scheduler and in-process bus), so
 * only one of them serves the provider at a time here.
 */
import assert from 'node:assert/strict';
import { EventEmitter, once } from 'node:events';
import { mkdir, writeFile } from 'node:fs/promises';
import { type AddressInfo, createServer } from 'node:net';
import { join } from 'node:path';
import { Writable } from 'node:stream';
import { after, before, describe, test } from 'node:test';
import { type Coordinator, startCoordinator } from '@gridwork/coordinator';
import { generateIdentity } from '@gridwork/protocol/node';
import { ProviderAgent } from '@gridwork/provider';
import { GridworkClient, type JobSpec } from '@gridwork/sdk';
import { dropSchema, postgresUrl, silentLogger, tempDir, uniqueSchema } from '@gridwork/testkit';
import pino from 'pino';

const WAIT_MS = 60_000;

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

async function deadUrl(): Promise<string> {
  const server = createServer();
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  const { port } = server.address() as AddressInfo;
  await new Promise<void>((resolve) => server.close(() => resolve()));
  return `http://127.0.0.1:${port}`;
}

/** The agent's log lines, parsed: what the tests wait on (the link says which coordinator it connected to). */
function capturingLogger() {
  const lines: Record<string, unknown>[] = [];
  const events = new EventEmitter();
  const stream = new Writable({
    write(chunk: Buffer, _enc, done) {
      for (const line of chunk.toString().split('\n')) {
        if (!line.trim()) continue;
        const parsed = JSON.parse(line) as Record<string, unknown>;
        lines.push(parsed);
        events.emit('line', parsed);
      }
      done();
    },
  });
  /** Resolves with the first line (already logged or to come) that `match` accepts. */
  const next = (match: (line: Record<string, unknown>) => boolean, from = 0): Promise<Record<string, unknown>> =>
    new Promise((resolve, reject) => {
      const found = lines.slice(from).find(match);
      if (found) return resolve(found);
      const timer = setTimeout(() => {
        events.off('line', on);
        reject(new Error(`no such log line within ${WAIT_MS} ms; lines: ${lines.map((l) => l.msg).join(' | ')}`));
      }, WAIT_MS);
      const on = (l: Record<string, unknown>) => {
        if (!match(l)) return;
        clearTimeout(timer);
        events.off('line', on);
        resolve(l);
      };
      events.on('line', on);
    });
  return { logger: pino({ level: 'debug' }, stream), lines, next };
}

const connectedTo = (url: string) => (l: Record<string, unknown>) => l.msg === 'connected to coordinator' && l.coordinator === url;

describe('provider agent failover between coordinator replicas (PostgreSQL)', { timeout: 180_000 }, () => {
  const schema = uniqueSchema('gw_agent_failover');
  let dir: { path: string; remove: () => Promise<void> };
  let first: Coordinator;
  let second: Coordinator;
  let firstClosed = false;
  let agent: ProviderAgent | undefined;
  let bundleDir: string;
  const log = capturingLogger();

  const spec = (name: string): JobSpec => ({
    version: 1,
    name,
    kind: 'batch',
    runtime: { kind: 'bundle', path: '.', command: ['sh', '-c', 'echo "ran" > "$GRIDWORK_OUTPUTS/out.txt"'] },
    resources: { cpu: 1, memoryGiB: 1 },
    price: { maxPerHour: '0.50', budget: '1.00' },
  });

  before(async () => {
    dir = await tempDir('gridwork-agent-failover-');
    bundleDir = join(dir.path, 'bundle');
    await mkdir(bundleDir);
    await writeFile(join(bundleDir, 'README'), 'a bundle needs a file\n');
    // One after the other: the first migrates the schema, the second finds it migrated. Both keep
    // blobs in one directory, as replicas share a volume (or an object store): the blob index is
    // in the shared database, so a blob one of them stored is one the other must be able to serve.
    first = await replica(join(dir.path, 'coordinator'), schema);
    second = await replica(join(dir.path, 'coordinator'), schema);
  });

  after(async () => {
    await agent?.close();
    if (!firstClosed) await first?.close();
    await second?.close();
    await dropSchema(schema);
    await dir?.remove();
  });

  test('skips a dead URL, runs a job on the first replica, moves to the second when the first closes, and resumes there', async () => {
    const dead = await deadUrl();
    agent = await ProviderAgent.create({
      // One string with commas, as GRIDWORK_COORDINATOR and --coordinator give it.
      coordinatorUrl: `${dead},${first.url},${second.url}`,
      dataDir: join(dir.path, 'provider'),
      name: 'failover-provider',
      runtime: 'process',
      containers: 'off',
      gpus: 'none',
      slots: 1,
      logger: log.logger,
    });
    agent.start();
    const onFirst = await log.next(connectedTo(first.url));
    assert.equal(onFirst.lastApplied, 0);
    assert.ok(
      log.lines.some((l) => l.msg === 'could not connect to the coordinator' && l.coordinator === dead && l.next === first.url),
      'the dead URL was tried first and cost one failover',
    );

    // Work on the first replica: the agent applies its lease assignment (coordinator seq 1 and on).
    const requester = new GridworkClient({ url: [first.url, second.url], identity: generateIdentity() });
    await requester.deposit('10');
    const job1 = await requester.submit(spec('on-first'), { baseDir: bundleDir });
    const done1 = await requester.wait(job1.id, { until: 'end', signal: AbortSignal.timeout(WAIT_MS) });
    assert.equal(done1.state, 'succeeded', JSON.stringify(done1.tasks));
    assert.equal(done1.tasks[0]?.providerId, agent.id);

    const linesBefore = log.lines.length;
    await first.close();
    firstClosed = true;
    const onSecond = await log.next(connectedTo(second.url), linesBefore);
    assert.ok(typeof onSecond.lastApplied === 'number' && onSecond.lastApplied >= 1, `the hello resumed after what the first replica sent: ${JSON.stringify(onSecond)}`);
    assert.ok(
      log.lines.slice(linesBefore).some((l) => l.msg === 'lost the coordinator connection; trying the next coordinator' && l.coordinator === first.url && l.next === second.url),
      'the agent logged the move',
    );

    // The second replica knows the provider as the same one (same instance: nothing was lost), online.
    const listing = (await requester.providers()).find((p) => p.id === agent?.id);
    assert.equal(requester.url, second.url, 'the requester moved to the second replica too');
    assert.equal(listing?.state, 'online');
    const first1 = await requester.get(job1.id);
    assert.equal(first1.tasks[0]?.state, done1.tasks[0]?.state, 'the first job is untouched by the move');

    // The next job runs there: the second replica's messages follow on from the first's.
    const job2 = await requester.submit(spec('on-second'), { baseDir: bundleDir });
    const done2 = await requester.wait(job2.id, { until: 'end', signal: AbortSignal.timeout(WAIT_MS) });
    assert.equal(done2.state, 'succeeded', JSON.stringify(done2.tasks));
    assert.equal(done2.tasks[0]?.providerId, agent.id);
    assert.ok(
      !log.lines.some((l) => l.msg === 'sequence gap from coordinator; reconnecting'),
      'no sequence gap: the second replica went on from where the agent was',
    );
    // The agent's own signed calls follow the link to the second replica.
    const balance = await agent.balance();
    assert.equal(balance.account, agent.id);
  });
});
