/**
 * Issue 16, attacks 1 and 6: a provider's benchmark claim counts only as far as a capacity
 * challenge proved it, and a provider learns nothing about when it is audited.
 *
 * The attacker is what the issue describes: a fresh, unstaked key speaking the wire protocol by
 * hand (@gridwork/testkit RawProvider), whose hello claims the largest CPU benchmark a hello may
 * carry and asks 25 times the honest price. Before this change it scored as if the claim were
 * true and took the job; challenges came hours later. Here:
 * - an absurd claim (10^12 Mops, a GPU 5,000 times an RTX 4090) is refused at hello with
 *   PROTOCOL_ERROR naming the field, and registers nothing;
 * - the attacker is challenged within seconds of its hello, scores as the floor (throughput 1)
 *   meanwhile, does not win against the honest provider, and after missing its challenge's
 *   deadline still scores as the floor;
 * - an honest provider (a raw client answering with the agent's own solver, when the test says)
 *   scores as the floor until its challenge passes and by its claim at once after; a claim raised
 *   later counts only up to what was proven, and is challenged again at its next hello;
 * - GPU claims count as the floor (no GPU challenge exists yet): price decides between GPUs;
 * - `/v1/providers/me` carries past audits, never the audit rate or what is left of probation.
 * The rule itself (`provenBenchmarks`, what a challenge's size proves) is checked first, alone.
 *
 * What the order book believes is read back from `explain` (what the attacker read): a
 * candidate's score is price ÷ throughput ÷ (0.5 + 0.5 × reputation), so throughput = price ÷
 * (score × that factor). Real coordinator, PGlite and PostgreSQL; every wait is on a condition.
 */
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { dirname, join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { fileURLToPath } from 'node:url';
import { internalsOf } from '@gridwork/coordinator/internal';
import { BENCHMARK_LIMITS, type CapacityChallenge, canonicalJson, type JobSpec, parseCredits } from '@gridwork/protocol';
import { type Identity, signBytes, signRequest } from '@gridwork/protocol/node';
import { ChallengeResponder, fixedPricing, honestSolver } from '@gridwork/provider';
import type { GridworkClient } from '@gridwork/sdk';
import { startTestNetwork, type StoreKind, type TestNetwork, until } from '@gridwork/testkit';
import { RawProvider, type WireMessage } from '@gridwork/testkit/raw-provider';
import { provenBenchmarks } from '../src/market/market.ts';
import { mostProvableMops, resolveChallengeOptions, sizeChallenge } from '../src/verify/challenge-sizing.ts';

const here = dirname(fileURLToPath(import.meta.url));
const fixturesDir = join(here, 'fixtures');
const WAIT_MS = 60_000;
/** How soon after its hello an unproven claim must be challenged ("within a second or two", with room for a loaded machine). */
const PROMPT_MS = 5_000;

/**
 * Only the hello's challenge (the Poisson one is a year away): small, so an honest answer takes
 * milliseconds; deadlines of a few seconds.
 */
const CHALLENGES = { meanIntervalMs: 365 * 24 * 3600_000, workMs: 20, latencyMs: 3000, maxMemoryBytes: 1024 * 1024, slack: 4, proveOnHello: true };

const HONEST_ASKS = { cpuCoreHour: '0.02', memoryGiBHour: '0.004' };
/** 25 times the honest price. */
const ATTACKER_ASKS = { cpuCoreHour: '0.50', memoryGiBHour: '0.10' };

function cpuSpec(name: string, region: string): JobSpec {
  return {
    version: 1,
    name,
    kind: 'batch',
    runtime: { kind: 'bundle', path: './tasks', command: ['node', 'task.mjs', 'work', '50'] },
    resources: { cpu: 1, memoryGiB: 1 },
    price: { maxPerHour: '1.00', budget: '1.00' },
    placement: { regions: [region] },
  };
}

function gpuSpec(name: string, region: string): JobSpec {
  return {
    ...cpuSpec(name, region),
    resources: { cpu: 1, memoryGiB: 1, gpu: { count: 1, models: ['h100-80gb'] } },
    price: { maxPerHour: '20.00', budget: '20.00' },
  };
}

interface HelloOptions {
  region: string;
  cpuMopsPerCore: number;
  gpu?: Record<string, number>;
  asks?: { cpuCoreHour: string; memoryGiBHour: string; gpuHour?: Record<string, string> };
  gpus?: number;
}

/** A signed hello with this claim and these asks (the raw client's default hello otherwise). */
function hello(raw: RawProvider, o: HelloOptions): Promise<WireMessage> {
  const instance = randomBytes(12).toString('base64url');
  const asks = { cpuCoreHour: '0.02', memoryGiBHour: '0.004', gpuHour: {}, ...o.asks };
  const gpus = Array.from({ length: o.gpus ?? 0 }, (_, index) => ({ index, uuid: `GPU-${index}`, model: 'h100-80gb', name: 'H100', vramGiB: 80 }));
  return raw.hello({
    instance,
    name: `raw-${o.region}`,
    asks,
    asksSignature: signBytes(raw.identity, canonicalJson({ asks, instance })),
    attributes: { region: o.region },
    hardware: { cpu: { model: 'x', cores: 4 }, memoryGiB: 8, diskGiB: 100, gpus },
    benchmarks: { cpuMopsPerCore: o.cpuMopsPerCore, gpu: o.gpu ?? {} },
  });
}

type IssueMessage = WireMessage & { challenge: CapacityChallenge };

describe('the rule for proven benchmarks', () => {
  test('proven CPU throughput = min(claim, the claim of the latest passed challenge), the floor (1) without one; GPU claims are the floor', () => {
    const claim = (cpuMopsPerCore: number, gpu: Record<string, number> = {}) => ({ cpuMopsPerCore, gpu });
    assert.deepEqual(provenBenchmarks(claim(1e6, { 'h100-80gb': 1000 }), null), claim(1));
    assert.deepEqual(provenBenchmarks(null, null), claim(1));
    assert.deepEqual(provenBenchmarks(claim(800), 800), claim(800));
    assert.deepEqual(provenBenchmarks(claim(1e6), 800), claim(800), 'a raised claim counts as far as it was proven');
    assert.deepEqual(provenBenchmarks(claim(500), 800), claim(500), 'a lower claim counts in full');
    assert.deepEqual(provenBenchmarks(claim(0.5), 800), claim(1), 'never below the floor');
    assert.deepEqual(provenBenchmarks(claim(800, { 'rtx-4090': 1, 'b200-180gb': 9 }), 800).gpu, {}, 'GPU claims are never proven');
  });

  test('a challenge proves the claim it was sized for, or what its largest matrix can test', () => {
    const defaults = resolveChallengeOptions();
    const hardware = { cpu: { model: 'x', cores: 8 }, memoryGiB: 32, diskGiB: 100, gpus: [] };
    // The agent measures ~830 here: its challenge is sized below the largest matrix and proves the claim.
    const honest = sizeChallenge(defaults, { benchmarks: { cpuMopsPerCore: 830, gpu: {} }, hardware });
    assert.ok(honest.n < defaults.maxN);
    assert.equal(honest.provesMops, 830);
    // A claim past what 2048² can be 10 s of work for proves only that (about 3,400 Mops).
    const huge = sizeChallenge(defaults, { benchmarks: { cpuMopsPerCore: 1e6, gpu: {} }, hardware });
    assert.equal(huge.n, defaults.maxN);
    assert.equal(huge.provesMops, mostProvableMops(defaults));
    assert.ok(huge.provesMops > 3000 && huge.provesMops < 4000, String(huge.provesMops));
  });
});

for (const store of ['pglite', 'postgres'] as const satisfies readonly StoreKind[]) {
  describe(`proven benchmarks and an audit schedule nobody can read, on ${store}`, () => {
    let net: TestNetwork;
    let requester: GridworkClient;
    const raws: RawProvider[] = [];
    const connect = async (identity?: Identity) => {
      const raw = await RawProvider.connect(net.coordinator.url, identity);
      raws.push(raw);
      return raw;
    };

    before(async () => {
      net = await startTestNetwork({ store, coordinator: { challenges: CHALLENGES } });
      requester = await net.fundedClient('100');
    });
    after(async () => {
      for (const r of raws) r.close();
      await net?.close();
    });

    const db = () => internalsOf(net.coordinator).db;
    const challengeRow = (id: string) => db().selectFrom('capacity_challenges').selectAll().where('id', '=', id).executeTakeFirst();
    const challengeWhen = (id: string, state: string) =>
      until(
        () => challengeRow(id),
        (c) => c?.state === state,
        { timeoutMs: WAIT_MS, what: `challenge ${id} ${state}` },
      );
    /** The last event committed so far. */
    const lastEvent = async () =>
      BigInt((await db().selectFrom('events').select('position').orderBy('position', 'desc').limit(1).executeTakeFirst())?.position ?? 0);
    /**
     * Waits until the subscribers that move a score (a verdict's proven fault, the reputation
     * counters, the matching index) have handled every event committed, and none came meanwhile:
     * reputations read from the database are then the ones the index scores with.
     */
    const settled = async () => {
      const { bus } = internalsOf(net.coordinator);
      for (;;) {
        const last = await lastEvent();
        for (const name of ['verification', 'reputation', 'audit-counts', 'market-index']) await bus.reached(name, last);
        if ((await lastEvent()) === last) return;
      }
    };
    /** Waits until the provider's counters include its challenges' verdicts, and everything they set off is handled. */
    const countedWhen = async (id: string, passed: number, failed: number) => {
      await until(
        () => db().selectFrom('providers').select(['challenges_passed', 'challenges_failed']).where('id', '=', id).executeTakeFirst(),
        (p) => p?.challenges_passed === passed && p.challenges_failed === failed,
        { timeoutMs: WAIT_MS, what: `${passed} passed and ${failed} failed challenges counted` },
      );
      await settled();
    };

    /** The throughput the order book scores each candidate of `spec` by, once the index has caught up. */
    async function throughputSeen(spec: JobSpec): Promise<Map<string, number>> {
      await settled();
      const explained = await requester.explain(spec);
      const listed = new Map((await requester.providers({ all: true })).map((p) => [p.id, p.reputation]));
      const seen = new Map<string, number>();
      for (const b of explained.best) {
        const reputation = listed.get(b.providerId);
        assert.ok(reputation !== undefined, `${b.providerId} is listed`);
        seen.set(b.providerId, Number(parseCredits(b.pricePerHour)) / (b.score * (0.5 + 0.5 * reputation)));
      }
      return seen;
    }
    const near = (actual: number | undefined, expected: number, what: string) =>
      assert.ok(actual !== undefined && Math.abs(actual - expected) <= expected * 1e-9, `${what}: throughput ${actual}, expected ${expected}`);

    test('a hello claiming an absurd benchmark is refused with PROTOCOL_ERROR naming the field, and registers nothing', async () => {
      const cases: [string, RegExp, HelloOptions][] = [
        ['10^12 Mops per core', /\/benchmarks\/cpuMopsPerCore/, { region: 'absurd', cpuMopsPerCore: 1e12 }],
        ['a GPU 5,000 times an RTX 4090', /\/benchmarks\/gpu/, { region: 'absurd', cpuMopsPerCore: 100, gpu: { 'h100-80gb': 5000 }, gpus: 1 }],
      ];
      for (const [what, field, o] of cases) {
        const raw = await connect();
        const answer = await hello(raw, o);
        assert.equal(answer.type, 'error', `${what}: was welcomed`);
        assert.equal(answer.code, 'PROTOCOL_ERROR', what);
        assert.match(String(answer.message), field, what);
        await until(
          async () => raw.closed,
          (closed) => closed,
          { what: `${what}: the socket closed` },
        );
        const row = await db().selectFrom('providers').select('id').where('id', '=', raw.id).executeTakeFirst();
        assert.equal(row, undefined, `${what}: no provider was registered`);
      }
      // The bounds themselves are allowed.
      const atBounds = await connect();
      const welcome = await hello(atBounds, {
        region: 'at-bounds',
        cpuMopsPerCore: BENCHMARK_LIMITS.cpuMopsPerCore,
        gpu: { 'h100-80gb': BENCHMARK_LIMITS.gpu },
        gpus: 1,
      });
      assert.equal(welcome.type, 'welcome', JSON.stringify(welcome));
      atBounds.close();
    });

    test('a fresh unstaked key claiming the largest benchmark at 25 times the price is challenged at once, scores as the floor, and loses the job to the honest provider', async () => {
      const region = 'contested';
      const honest = await net.addProvider({ attributes: { region }, benchmarks: { cpuMopsPerCore: 100, gpu: {} }, pricing: fixedPricing(HONEST_ASKS) });
      const attacker = await connect();
      const welcomedAt = Date.now();
      const welcome = await hello(attacker, { region, cpuMopsPerCore: BENCHMARK_LIMITS.cpuMopsPerCore, asks: ATTACKER_ASKS });
      assert.equal(welcome.type, 'welcome', JSON.stringify(welcome));
      assert.equal((await requester.providers()).find((p) => p.id === attacker.id)?.stake, '0', 'unstaked');

      // Its claim is challenged within seconds of its hello, not hours.
      const issued = (await attacker.next((m) => m.type === 'challenge.issue', 'the attacker’s challenge, soon after hello', PROMPT_MS)) as IssueMessage;
      const challengeId = issued.challenge.challengeId;
      const row = await challengeRow(challengeId);
      assert.ok(row && row.issued_at.getTime() - welcomedAt < PROMPT_MS, 'issued within seconds of the hello');
      assert.equal(row.claimed_mops, BENCHMARK_LIMITS.cpuMopsPerCore, 'sized for the claim it would prove');

      // Unproven, its claim counts as the floor: the honest provider ranks first.
      await until(
        () => throughputSeen(cpuSpec('explain', region)),
        (seen) => seen.has(honest.id) && seen.has(attacker.id),
        { timeoutMs: WAIT_MS, what: 'both providers as candidates' },
      );
      const explained = await requester.explain(cpuSpec('explain', region));
      assert.equal(explained.best[0]?.providerId, honest.id, JSON.stringify(explained.best));
      near((await throughputSeen(cpuSpec('explain', region))).get(attacker.id), 1, 'the attacker, unproven');

      // A job goes to the honest provider.
      const job = await requester.submit(cpuSpec('contested-job', region), { baseDir: fixturesDir });
      const done = await requester.wait(job.id, { signal: AbortSignal.timeout(WAIT_MS) });
      assert.equal(done.state, 'succeeded');
      assert.equal(done.tasks[0]?.providerId, honest.id);
      assert.ok(!attacker.messages.some((m) => m.type === 'lease.assign'), 'the attacker was assigned nothing');

      // It has no machine that could answer in time: the challenge fails as missed…
      const failed = await challengeWhen(challengeId, 'failed');
      assert.match(failed?.reason ?? '', /^missed-deadline/);
      await countedWhen(attacker.id, 0, 1);
      // …and its claim still counts as nothing more than the floor.
      near((await throughputSeen(cpuSpec('explain', region))).get(attacker.id), 1, 'the attacker, after failing');
      const again = await requester.submit(cpuSpec('contested-again', region), { baseDir: fixturesDir });
      const doneAgain = await requester.wait(again.id, { signal: AbortSignal.timeout(WAIT_MS) });
      assert.equal(doneAgain.tasks[0]?.providerId, honest.id);
      assert.ok(!attacker.messages.some((m) => m.type === 'lease.assign'), 'the attacker was assigned nothing');
      await honest.close();
      attacker.close();
    });

    test('an honest claim counts as soon as its challenge passes, and a claim raised later only as far as it was proven', async () => {
      const region = 'proving';
      const spec = cpuSpec('explain', region);
      const raw = await connect();
      const welcome = await hello(raw, { region, cpuMopsPerCore: 100 });
      assert.equal(welcome.type, 'welcome', JSON.stringify(welcome));
      const issued = (await raw.next((m) => m.type === 'challenge.issue', 'a challenge soon after hello', PROMPT_MS)) as IssueMessage;

      // Not answered yet: the claim counts as the floor.
      const before = await until(
        () => throughputSeen(spec),
        (seen) => seen.has(raw.id),
        { timeoutMs: WAIT_MS, what: 'the provider as a candidate' },
      );
      near(before.get(raw.id), 1, 'unproven');

      // Answered by the agent's own solver: passed, and the claim counts at once.
      const sent: Promise<unknown>[] = [];
      const warnings: string[] = [];
      const responder = new ChallengeResponder(
        raw.identity,
        honestSolver,
        (report) => void sent.push(raw.report(report)),
        (obj, msg) => void warnings.push(`${msg}: ${JSON.stringify(obj)}`),
      );
      responder.issue(issued.challenge);
      const open = await raw.next((m) => m.type === 'challenge.open' && m.challengeId === issued.challenge.challengeId, 'the reveal');
      responder.open(String(open.challengeId), String(open.openSeed));
      await challengeWhen(issued.challenge.challengeId, 'passed');
      await Promise.all(sent);
      assert.deepEqual(warnings, []);
      await countedWhen(raw.id, 1, 0);
      near((await throughputSeen(spec)).get(raw.id), 100, 'proven');

      // The same key comes back claiming twice as much: challenged at once; it does not answer, and what was proven still stands.
      raw.close();
      const back = await connect(raw.identity);
      assert.equal((await hello(back, { region, cpuMopsPerCore: 200 })).type, 'welcome');
      const reissued = (await back.next((m) => m.type === 'challenge.issue', 'a challenge of the raised claim', PROMPT_MS)) as IssueMessage;
      assert.equal((await challengeRow(reissued.challenge.challengeId))?.claimed_mops, 200);
      await challengeWhen(reissued.challenge.challengeId, 'failed');
      await countedWhen(raw.id, 1, 1);
      const raised = await until(
        () => throughputSeen(spec),
        (seen) => seen.has(back.id),
        { timeoutMs: WAIT_MS, what: 'the provider back as a candidate' },
      );
      near(raised.get(back.id), 100, 'raised, counted only as far as proven');

      // Back with a claim within what was proven: it counts in full.
      back.close();
      const lower = await connect(raw.identity);
      assert.equal((await hello(lower, { region, cpuMopsPerCore: 50 })).type, 'welcome');
      const seen = await until(
        () => throughputSeen(spec),
        (s) => s.has(lower.id),
        { timeoutMs: WAIT_MS, what: 'the provider back again' },
      );
      near(seen.get(lower.id), 50, 'a lower claim, within what was proven');
      lower.close();
    });

    test('GPU benchmark claims count as the floor: price decides between GPU providers', async () => {
      const region = 'gpus';
      const boaster = await connect();
      // A CPU claim of 1 is the floor already: nothing to prove, no challenge (and no verdict that would move reputations mid-test).
      const boast = await hello(boaster, {
        region,
        cpuMopsPerCore: 1,
        gpu: { 'h100-80gb': BENCHMARK_LIMITS.gpu },
        gpus: 1,
        asks: { ...HONEST_ASKS, gpuHour: { 'h100-80gb': '10.00' } },
      });
      assert.equal(boast.type, 'welcome', JSON.stringify(boast));
      const modest = await connect();
      const plain = await hello(modest, {
        region,
        cpuMopsPerCore: 1,
        gpu: { 'h100-80gb': 1 },
        gpus: 1,
        asks: { ...HONEST_ASKS, gpuHour: { 'h100-80gb': '1.00' } },
      });
      assert.equal(plain.type, 'welcome', JSON.stringify(plain));
      const spec = gpuSpec('explain-gpu', region);
      const seen = await until(
        () => throughputSeen(spec),
        (s) => s.has(boaster.id) && s.has(modest.id),
        { timeoutMs: WAIT_MS, what: 'both GPU providers as candidates' },
      );
      near(seen.get(boaster.id), 1, 'a GPU claimed 1,000 times an RTX 4090');
      near(seen.get(modest.id), 1, 'a GPU claimed as an RTX 4090');
      const explained = await requester.explain(spec);
      assert.equal(explained.best[0]?.providerId, modest.id, JSON.stringify(explained.best));
      boaster.close();
      modest.close();
    });

    test('/v1/providers/me tells a provider its past audits and nothing of when it will be audited', async () => {
      const raw = await connect();
      assert.equal((await hello(raw, { region: 'me', cpuMopsPerCore: 100 })).type, 'welcome');
      const path = '/v1/providers/me';
      const res = await fetch(new URL(path, net.coordinator.url), { headers: signRequest(raw.identity, 'GET', path) });
      assert.equal(res.status, 200);
      const text = await res.text();
      const record = JSON.parse(text) as { audits: Record<string, unknown> };
      assert.deepEqual(Object.keys(record.audits).sort(), ['failed', 'lastPassedAt', 'passed', 'streak']);
      assert.doesNotMatch(text, /probation/i);
      raw.close();
    });
  });
}
