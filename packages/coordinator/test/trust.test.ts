/**
 * Trust layers L1 (capacity challenges) and L2 (result commitments) on a real coordinator with
 * real agents (PGlite, then PostgreSQL): an honest provider passes its challenges; one that
 * claims a benchmark class it does not have misses its deadlines, loses reputation and, after
 * three failures in a row, gets no work; one that answers with a wrong product is caught; a
 * finished lease carries a signed commitment that the coordinator checks, and a forged or
 * mismatched one is a proven fault. Conditions are awaited (database state, bus positions).
 */
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { dirname, join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { fileURLToPath } from 'node:url';
import { internalsOf } from '@gridwork/coordinator/internal';
import { canonicalJson, type JobSpec, leaseCommitmentMessage, MEMORY_BLOCK_WORDS, MerkleTree, outputsRoot, SeededRandom, wordsLeaf } from '@gridwork/protocol';
import { generateIdentity, type Identity, sha256Bytes, sha256Hex, signBytes, signRequest } from '@gridwork/protocol/node';
import { startCoordinator } from '@gridwork/coordinator';
import { type ChallengeSolver, honestSolver, ProviderAgent } from '@gridwork/provider';
import { postgresUrl, silentLogger, startTestNetwork, type TestNetwork, tempDir, uniqueSchema, until } from '@gridwork/testkit';
import WebSocket from 'ws';
import { challengeShare, resolveChallengeOptions, sizeChallenge } from '../src/verify/challenge-sizing.ts';

const here = dirname(fileURLToPath(import.meta.url));
const fixturesDir = join(here, 'fixtures');
const WAIT_MS = 60_000;

/** Challenges every ~200 ms, small enough to take milliseconds, deadlines of about a second. */
const CHALLENGES = { meanIntervalMs: 200, workMs: 20, latencyMs: 1500, maxMemoryBytes: 1024 * 1024, slack: 4 };

function spec(name: string, region: string): JobSpec {
  return {
    version: 1,
    name,
    kind: 'batch',
    runtime: { kind: 'bundle', path: './tasks', command: ['node', 'task.mjs', 'work', '50'] },
    resources: { cpu: 1, memoryGiB: 1 },
    price: { maxPerHour: '0.50', budget: '1.00' },
    placement: { regions: [region] },
  };
}

/** Answers with C + 1 in every row: a provider that did not compute the product. */
const wrongProduct: ChallengeSolver = {
  async solve(challenge, giveUpAt) {
    const done = await honestSolver.solve(challenge, giveUpAt);
    if (!done) return null;
    const n = challenge.n;
    const c = done.c.map((x) => (x + 1) | 0);
    const rows = new MerkleTree(
      sha256Bytes,
      Array.from({ length: n }, (_, i) => wordsLeaf(sha256Bytes, c.subarray(i * n, (i + 1) * n))),
    );
    return { ...done, c, rows };
  },
};

/**
 * Computes the product but not the memory chain: its "buffer" is a seekable stream it could
 * regenerate anywhere without holding it (a provider short of the memory it claims).
 */
const skippedMemory: ChallengeSolver = {
  async solve(challenge, giveUpAt) {
    const done = await honestSolver.solve(challenge, giveUpAt);
    if (!done) return null;
    const memory = new SeededRandom(challenge.seed).fill(new Int32Array(done.memory.length));
    const blocks = new MerkleTree(
      sha256Bytes,
      Array.from({ length: challenge.memoryBlocks }, (_, i) => wordsLeaf(sha256Bytes, memory.subarray(i * MEMORY_BLOCK_WORDS, (i + 1) * MEMORY_BLOCK_WORDS))),
    );
    return { ...done, memory, blocks };
  },
};

async function me(url: string, identity: Identity) {
  const path = '/v1/providers/me';
  const res = await fetch(new URL(path, url), { headers: signRequest(identity, 'GET', path) });
  assert.equal(res.status, 200, await res.clone().text());
  return (await res.json()) as {
    reputation: number;
    eligible: boolean;
    faultsProven: number;
    challenges: { passed: number; failed: number; failedInARow: number; busyMs: number; share: number; recent: { state: string; reason: string | null }[] };
  };
}

type Msg = Record<string, unknown> & { type: string };

/** A provider speaking the wire protocol by hand, to send reports no honest agent would. */
class RawProvider {
  readonly messages: Msg[] = [];
  private seq = 0;
  private heartbeat: NodeJS.Timeout | undefined;
  private constructor(
    readonly identity: Identity,
    readonly ws: WebSocket,
  ) {
    ws.on('message', (d) => this.messages.push(JSON.parse(d.toString()) as Msg));
    ws.on('close', () => clearInterval(this.heartbeat));
  }

  static connect(url: string): Promise<RawProvider> {
    const identity = generateIdentity();
    const ws = new WebSocket(`${url.replace(/^http/, 'ws')}/v1/providers/connect`, { headers: signRequest(identity, 'GET', '/v1/providers/connect') });
    return new Promise((res, rej) => {
      ws.once('open', () => res(new RawProvider(identity, ws)));
      ws.once('error', rej);
    });
  }

  next(match: (m: Msg) => boolean, what: string): Promise<Msg> {
    return until(
      async () => this.messages.find(match),
      (m) => m !== undefined,
      { timeoutMs: WAIT_MS, what },
    ) as Promise<Msg>;
  }

  async hello(region: string): Promise<void> {
    const instance = randomBytes(12).toString('base64url');
    const asks = { cpuCoreHour: '0.01', memoryGiBHour: '0', gpuHour: {} };
    this.ws.send(
      JSON.stringify({
        type: 'hello',
        protocol: 1,
        instance,
        name: `raw-${region}`,
        agentVersion: '0.1.0',
        runtime: 'process',
        slots: 2,
        hardware: { cpu: { model: 'x', cores: 4 }, memoryGiB: 8, diskGiB: 100, gpus: [] },
        attributes: { region },
        asks,
        asksSignature: signBytes(this.identity, canonicalJson({ asks, instance })),
        benchmarks: { cpuMopsPerCore: 1000, gpu: {} },
        bids: false,
        lastApplied: 0,
        running: [],
      }),
    );
    const welcome = await this.next((m) => m.type === 'welcome', 'welcome');
    this.heartbeat = setInterval(() => this.ws.send(JSON.stringify({ type: 'heartbeat', running: [] })), Number(welcome.heartbeatIntervalMs) / 3);
  }

  async report(body: Record<string, unknown>): Promise<void> {
    const seq = ++this.seq;
    this.ws.send(JSON.stringify({ seq, ...body }));
    await this.next((m) => m.type === 'ack' && m.seq === seq, `ack of ${String(body.type)}`);
  }

  async upload(url: string, bytes: Buffer): Promise<string> {
    const digest = sha256Hex(bytes);
    const res = await fetch(`${url}/v1/blobs/${digest}`, {
      method: 'PUT',
      headers: { 'content-type': 'application/octet-stream', ...signRequest(this.identity, 'PUT', `/v1/blobs/${digest}`, { digest }) },
      body: bytes,
    });
    assert.equal(res.status, 201, await res.text());
    return digest;
  }
}

for (const store of ['pglite', 'postgres'] as const) {
  describe(`trust L1 + L2 on ${store}`, () => {
    let net: TestNetwork;
    const raws: RawProvider[] = [];
    before(async () => {
      net = await startTestNetwork({ store, coordinator: { challenges: CHALLENGES } });
    });
    after(async () => {
      for (const r of raws) r.ws.close();
      await net?.close();
    });

    const providerRow = (id: string) => internalsOf(net.coordinator).db.selectFrom('providers').selectAll().where('id', '=', id).executeTakeFirstOrThrow();
    /** Waits until the provider's row (once it said hello) satisfies `holds`. */
    const providerWhen = async (id: string, holds: (p: Awaited<ReturnType<typeof providerRow>>) => boolean, what: string) => {
      const row = await until(
        () => internalsOf(net.coordinator).db.selectFrom('providers').selectAll().where('id', '=', id).executeTakeFirst(),
        (p) => p !== undefined && holds(p),
        { timeoutMs: WAIT_MS, what },
      );
      return row as Awaited<ReturnType<typeof providerRow>>;
    };

    test('an honest provider passes its challenges; its record says so, and challenges take a small share of its time', async () => {
      const honest = await net.addProvider({ attributes: { region: 'honest' } });
      await providerWhen(honest.id, (p) => p.challenges_passed >= 3, 'three passed challenges');
      const record = await me(net.coordinator.url, net.identityOf(honest));
      assert.equal(record.eligible, true);
      assert.equal(record.challenges.failed, 0, JSON.stringify(record.challenges.recent));
      assert.ok(record.challenges.passed >= 3);
      assert.ok(record.reputation > 0.5);
      assert.ok(record.challenges.recent.some((c) => c.state === 'passed'));

      // At the default rate (one challenge per 6 h) and the default size, the measured busy time
      // per challenge is a tiny share of the provider's time.
      const defaults = resolveChallengeOptions();
      const size = sizeChallenge(defaults, { benchmarks: { cpuMopsPerCore: 1000, gpu: {} }, hardware: { cpu: { model: 'x', cores: 8 }, memoryGiB: 32, diskGiB: 100, gpus: [] } });
      const expectedShare = challengeShare(size.expectedMs, defaults.meanIntervalMs);
      const measuredShare = challengeShare(record.challenges.busyMs / record.challenges.passed, defaults.meanIntervalMs);
      console.log(`challenge overhead at the default rate: expected ${(expectedShare * 100).toFixed(4)}% (n=${size.n}, ${size.memoryBlocks} KiB), measured test-size ${(measuredShare * 100).toFixed(5)}%`);
      assert.ok(expectedShare < 0.002, `expected share ${expectedShare}`);
      assert.ok(measuredShare < 0.002);
    });

    test('a provider claiming a benchmark class it does not have misses its deadlines, loses reputation and stake, and gets no work after three failures', async () => {
      const honest = net.providers[0];
      assert.ok(honest);
      const liar = await net.addProvider({ attributes: { region: 'liar' }, benchmarks: { cpuMopsPerCore: 1_000_000, gpu: {} } });
      const liarAccount = await net.fundedClient('10', net.identityOf(liar));
      await liarAccount.stake('5');
      const row = await providerWhen(liar.id, (p) => p.challenge_fail_streak >= 3, 'three failed challenges in a row');
      // Three missed deadlines in a row are capacity fraud: slashed once (the least slash, 1 credit).
      const slashed = await until(
        () => liarAccount.balance(),
        (b) => b.stake !== '5',
        { timeoutMs: WAIT_MS, what: 'the capacity-fraud slash' },
      );
      assert.equal(slashed.stake, '4');
      assert.equal(row.challenges_passed, 0);
      const { bus } = internalsOf(net.coordinator);
      await bus.reached('market-index', bus.head());
      const record = await me(net.coordinator.url, net.identityOf(liar));
      assert.equal(record.eligible, false);
      assert.ok(record.challenges.recent.some((c) => c.reason?.startsWith('missed-deadline')), JSON.stringify(record.challenges.recent));
      const honestRecord = await me(net.coordinator.url, net.identityOf(honest));
      assert.ok(record.reputation < honestRecord.reputation, `${record.reputation} < ${honestRecord.reputation}`);
      assert.ok(record.reputation < 0.3, `reputation ${record.reputation}`);

      // Work only the liar could take waits; work for the honest provider runs meanwhile.
      const client = await net.fundedClient('10');
      const forLiar = await client.submit(spec('for-liar', 'liar'), { baseDir: fixturesDir });
      const forHonest = await client.submit(spec('for-honest', 'honest'), { baseDir: fixturesDir });
      const done = await client.wait(forHonest.id, { signal: AbortSignal.timeout(WAIT_MS) });
      assert.equal(done.state, 'succeeded');
      const waiting = await client.get(forLiar.id);
      assert.ok(waiting.state === 'pending' || waiting.state === 'matching', waiting.state);
      assert.equal(waiting.tasks[0]?.providerId ?? null, null);
      await client.cancel(forLiar.id);
      await liar.close(); // its challenges burn the test's CPU until their deadlines
    });

    test('a provider answering with a wrong product fails its challenges as wrong-product', async () => {
      const cheat = await net.addProvider({ attributes: { region: 'cheat' }, challengeSolver: wrongProduct });
      const row = await providerWhen(cheat.id, (p) => p.challenges_failed >= 1, 'a failed challenge');
      assert.equal(row.challenges_passed, 0);
      const record = await me(net.coordinator.url, net.identityOf(cheat));
      assert.ok(record.challenges.recent.some((c) => c.reason?.startsWith('wrong-product')), JSON.stringify(record.challenges.recent));
      await cheat.close();
    });

    test('a provider out of matching after three failures gets work again once it passes a challenge', async () => {
      let honestNow = false;
      const recovering: ChallengeSolver = { solve: (c, giveUpAt) => (honestNow ? honestSolver : wrongProduct).solve(c, giveUpAt) };
      const p = await net.addProvider({ attributes: { region: 'recovering' }, challengeSolver: recovering });
      await providerWhen(p.id, (r) => r.challenge_fail_streak >= 3, 'three failed challenges in a row');
      const { bus } = internalsOf(net.coordinator);
      await bus.reached('market-index', bus.head());
      const client = await net.fundedClient('10');
      const job = await client.submit(spec('after-recovery', 'recovering'), { baseDir: fixturesDir });
      const waiting = await client.get(job.id);
      assert.equal(waiting.tasks[0]?.providerId ?? null, null, 'not placed while ineligible');
      honestNow = true;
      const done = await client.wait(job.id, { signal: AbortSignal.timeout(WAIT_MS) });
      assert.equal(done.state, 'succeeded');
      assert.equal(done.tasks[0]?.providerId, p.id);
      const record = await me(net.coordinator.url, net.identityOf(p));
      assert.equal(record.eligible, true);
      assert.equal(record.challenges.failedInARow, 0);
      assert.ok(record.challenges.passed >= 1);
      await p.close();
    });

    test('a provider that does not hold the memory buffer fails its challenges as bad-memory', async () => {
      const short = await net.addProvider({ attributes: { region: 'short' }, challengeSolver: skippedMemory });
      const row = await providerWhen(short.id, (p) => p.challenges_failed >= 1, 'a failed challenge');
      assert.equal(row.challenges_passed, 0);
      const record = await me(net.coordinator.url, net.identityOf(short));
      assert.ok(record.challenges.recent.some((c) => c.reason?.startsWith('bad-memory')), JSON.stringify(record.challenges.recent));
      await short.close();
    });

    test('challenge answers: one signed by another key fails the challenge; one for a challenge the provider was not given changes nothing; /me refuses a non-provider', async () => {
      const raw = await RawProvider.connect(net.coordinator.url);
      raws.push(raw);
      await raw.hello('raw-challenges');
      const issue = (await raw.next((m) => m.type === 'challenge.issue', 'a challenge')) as Msg & { challenge: { challengeId: string } };
      const { db } = internalsOf(net.coordinator);
      const root = 'a'.repeat(64);
      // An answer for someone else's challenge (or one that never existed): acknowledged, without effect.
      const foreign = await db.selectFrom('capacity_challenges').select(['id', 'state']).where('provider_id', '!=', raw.identity.publicKey).executeTakeFirst();
      for (const challengeId of [foreign?.id ?? null, `chal_${randomBytes(10).toString('hex')}`].filter((x) => x !== null)) {
        const existed = (await db.selectFrom('capacity_challenges').select('id').where('id', '=', challengeId).executeTakeFirst()) !== undefined;
        const signature = signBytes(raw.identity, canonicalJson({ v: 1, type: 'challenge.committed', challengeId, matrixRoot: root, memoryRoot: root }));
        await raw.report({ type: 'challenge.committed', challengeId, matrixRoot: root, memoryRoot: root, signature });
        const after = await db.selectFrom('capacity_challenges').selectAll().where('id', '=', challengeId).executeTakeFirst();
        assert.equal(after !== undefined, existed);
        assert.notEqual(after?.matrix_root, root);
      }
      // Its own challenge, answered with a signature by another key: failed as bad-signature.
      const id = issue.challenge.challengeId;
      const forged = signBytes(generateIdentity(), canonicalJson({ v: 1, type: 'challenge.committed', challengeId: id, matrixRoot: root, memoryRoot: root }));
      await raw.report({ type: 'challenge.committed', challengeId: id, matrixRoot: root, memoryRoot: root, signature: forged });
      const mine = await db.selectFrom('capacity_challenges').selectAll().where('id', '=', id).executeTakeFirstOrThrow();
      assert.equal(mine.state, 'failed');
      assert.match(mine.reason ?? '', /^bad-signature/);

      const path = '/v1/providers/me';
      const res = await fetch(new URL(path, net.coordinator.url), { headers: signRequest(generateIdentity(), 'GET', path) });
      assert.equal(res.status, 404);
      assert.equal(((await res.json()) as { error: { code: string } }).error.code, 'PROVIDER_UNKNOWN');
      const unsigned = await fetch(new URL(path, net.coordinator.url));
      assert.equal(unsigned.status, 401);
    });

    test('a finished lease stores the provider’s signed commitment over its outputs, checked against the audit commitment', async () => {
      const client = await net.fundedClient('10');
      const job = await client.submit(spec('committed', 'honest'), { baseDir: fixturesDir });
      const done = await client.wait(job.id, { signal: AbortSignal.timeout(WAIT_MS) });
      assert.equal(done.state, 'succeeded');
      const { db } = internalsOf(net.coordinator);
      const lease = await db.selectFrom('leases').selectAll().where('job_id', '=', job.id).executeTakeFirstOrThrow();
      const task = await db.selectFrom('tasks').selectAll().where('job_id', '=', job.id).executeTakeFirstOrThrow();
      assert.equal(lease.state, 'completed');
      assert.ok(lease.audit_seed && lease.audit_commitment);
      assert.equal(sha256Hex(lease.audit_seed), lease.audit_commitment);
      assert.equal(lease.outputs_root, outputsRoot(sha256Bytes, task.outputs));
      assert.ok(lease.commitment_signature);
      assert.equal(lease.fault, null);
    });

    for (const kind of ['mismatched root', 'forged signature'] as const) {
      test(`a ${kind} in lease.finished is a proven fault: the lease is lost, the task retried, the provider's reputation drops`, async () => {
        const raw = await RawProvider.connect(net.coordinator.url);
        raws.push(raw);
        const region = `raw-${kind.replace(' ', '-')}`;
        await raw.hello(region);
        const client = await net.fundedClient('10');
        const job = await client.submit(spec(`fault-${region}`, region), { baseDir: fixturesDir });
        const assign = (await raw.next((m) => m.type === 'lease.assign', 'assignment')) as Msg & { seq: number; lease: { leaseId: string; auditCommitment: string } };
        raw.ws.send(JSON.stringify({ type: 'ack', seq: assign.seq }));
        const leaseId = assign.lease.leaseId;
        assert.match(assign.lease.auditCommitment, /^[0-9a-f]{64}$/);
        await raw.report({ type: 'lease.started', leaseId });
        const digest = await raw.upload(net.coordinator.url, Buffer.from(`output of ${leaseId}\n`));
        const outputs = [{ path: 'result.txt', digest, size: `output of ${leaseId}\n`.length }];
        const outcome = { kind: 'exited', exitCode: 0 } as const;
        const honestRoot = outputsRoot(sha256Bytes, outputs);
        const root = kind === 'mismatched root' ? outputsRoot(sha256Bytes, [{ ...outputs[0], size: 1 } as (typeof outputs)[0]]) : honestRoot;
        const signer = kind === 'forged signature' ? generateIdentity() : raw.identity;
        const signature = signBytes(signer, leaseCommitmentMessage({ leaseId, outcome, durationMs: 5, outputsRoot: root, auditCommitment: assign.lease.auditCommitment }));
        const before = await providerRow(raw.identity.publicKey);
        await raw.report({ type: 'lease.finished', leaseId, outcome, durationMs: 5, outputs, commitment: { outputsRoot: root, signature } });

        const { db } = internalsOf(net.coordinator);
        const lease = await db.selectFrom('leases').selectAll().where('id', '=', leaseId).executeTakeFirstOrThrow();
        assert.equal(lease.state, 'lost');
        assert.equal(lease.fault, kind === 'mismatched root' ? 'commitment-mismatch' : 'bad-commitment-signature');
        assert.match(lease.error ?? '', /proven fault/);
        assert.equal(lease.outputs_root, root, 'the evidence is kept');
        const after = await until(
          () => providerRow(raw.identity.publicKey),
          (p) => p.faults_proven === before.faults_proven + 1,
          { what: 'the proven fault to be counted' },
        );
        assert.equal(after.leases_completed, before.leases_completed);
        const view = await client.get(job.id);
        assert.notEqual(view.state, 'succeeded');
        assert.ok((await me(net.coordinator.url, raw.identity)).reputation < 0.2);
        await client.cancel(job.id);
      });
    }
  });
}

/** Never answers: its challenges stay open until their deadline. */
const silentSolver: ChallengeSolver = {
  solve: (_challenge, giveUpAt) => new Promise((resolve) => setTimeout(() => resolve(null), Math.max(0, giveUpAt - Date.now())).unref()),
};

for (const store of ['pglite', 'postgres'] as const) {
  test(`a challenge open when the coordinator stops fails as missed after it restarts (${store})`, async () => {
    const dir = await tempDir();
    const database = store === 'postgres' ? { databaseUrl: postgresUrl(), databaseSchema: uniqueSchema() } : { databaseUrl: '' };
    const options = { dataDir: join(dir.path, 'coordinator'), port: 0, logger: silentLogger(), heartbeatIntervalMs: 300, dev: true, ...database };
    let coordinator = await startCoordinator({ ...options, challenges: { meanIntervalMs: 50, workMs: 10, latencyMs: 4000, maxMemoryBytes: 65536 } });
    const agent = await ProviderAgent.create({ coordinatorUrl: coordinator.url, dataDir: join(dir.path, 'provider'), gpus: 'none', slots: 1, runtime: 'process', logger: silentLogger(), challengeSolver: silentSolver });
    try {
      agent.start();
      const open = await until(
        () => internalsOf(coordinator).db.selectFrom('capacity_challenges').selectAll().where('state', '=', 'issued').executeTakeFirst(),
        (c) => c !== undefined,
        { timeoutMs: WAIT_MS, what: 'an issued challenge' },
      );
      assert.ok(open);
      await agent.close();
      await coordinator.close();
      const restartedAt = new Date();
      coordinator = await startCoordinator({ ...options, challenges: { meanIntervalMs: 3_600_000 } });
      const ended = await until(
        () => internalsOf(coordinator).db.selectFrom('capacity_challenges').selectAll().where('id', '=', open.id).executeTakeFirstOrThrow(),
        (c) => c.state === 'failed',
        { timeoutMs: WAIT_MS, what: 'the open challenge to fail after the restart' },
      );
      assert.match(ended.reason ?? '', /^missed-deadline/);
      assert.ok((ended.ended_at as Date) >= restartedAt, 'it failed after the restart');
      const row = await until(
        () => internalsOf(coordinator).db.selectFrom('providers').selectAll().where('id', '=', agent.id).executeTakeFirstOrThrow(),
        (p) => p.challenges_failed >= 1,
        { what: 'the failure to be counted' },
      );
      assert.equal(row.challenge_fail_streak, row.challenges_failed);
    } finally {
      await agent.close();
      await coordinator.close();
      await dir.remove();
    }
  });
}
