/**
 * Paths no other suite walked, on PGlite and on PostgreSQL: debit notes (`lease.usage`) that
 * are forged, foreign, late or inflated; money added to a running job, also while it ends;
 * a signed request replayed to a restarted coordinator; `..`, symlinks and hard links around
 * bundles and outputs; and where every micro-credit of a finished, cancelled or failed job
 * went. Real coordinators, real sandboxed provider agents, providers speaking the wire by hand.
 * Conditions are awaited (acks, `until` over committed state), never slept on.
 *
 * Tests named "[HOLE] …" assert what should hold and do not, today: see their comments.
 */
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { existsSync, readdirSync, readFileSync } from 'node:fs';
import { mkdir, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { dirname, isAbsolute, join, relative, resolve, sep } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { fileURLToPath } from 'node:url';
import { type CoordinatorOptions, startCoordinator } from '@gridwork/coordinator';
import { internalsOf, verifyLedger } from '@gridwork/coordinator/internal';
import { canonicalJson, type JobSpec, type JobView, parseCredits } from '@gridwork/protocol';
import { generateIdentity, type Identity, sha256Hex, signBytes, signRequest } from '@gridwork/protocol/node';
import { fixedPricing, type ProviderAgent } from '@gridwork/provider';
import { GridworkClient, GridworkError, type LogEntry, packBundle } from '@gridwork/sdk';
import { postgresUrl, silentLogger, startTestNetwork, type TestNetwork, tempDir, uniqueSchema, until } from '@gridwork/testkit';
import pg from 'pg';
import WebSocket from 'ws';
import { costOf, splitEarnings } from '../src/ledger/lease-economics.ts';

const here = dirname(fileURLToPath(import.meta.url));
const fixturesDir = join(here, 'fixtures');
const untestedDir = join(fixturesDir, 'untested');
const WAIT_MS = 60_000;
const METERING_MS = 500;
/** Escrow far ahead of usage: a provider whose reports come late on a loaded machine is still paid in full. */
const ESCROW_PERIODS = 60;
const RAW_ASKS = { cpuCoreHour: '36', memoryGiBHour: '0', gpuHour: {} };
/** Equal machines: price alone decides (measured benchmarks vary with load). */
const BENCHMARKS = { cpuMopsPerCore: 1000, gpu: {} };

// ---- a provider speaking the wire protocol by hand ---------------------------------------------

type Msg = Record<string, unknown> & { type: string };

class RawProvider {
  readonly messages: Msg[] = [];
  private waiters: { match: (m: Msg) => boolean; resolve: (m: Msg) => void; timer: NodeJS.Timeout }[] = [];
  private heartbeat: NodeJS.Timeout | undefined;
  private seq = 0;
  readonly closed: Promise<{ code: number; reason: string }>;

  private constructor(
    readonly identity: Identity,
    readonly ws: WebSocket,
  ) {
    ws.on('message', (data) => {
      const m = JSON.parse(data.toString()) as Msg;
      this.messages.push(m);
      for (const w of [...this.waiters]) {
        if (w.match(m)) {
          this.waiters.splice(this.waiters.indexOf(w), 1);
          clearTimeout(w.timer);
          w.resolve(m);
        }
      }
    });
    this.closed = new Promise((res) => ws.on('close', (code, reason) => res({ code, reason: reason.toString() })));
    void this.closed.then(() => clearInterval(this.heartbeat));
  }

  static connect(baseUrl: string, identity: Identity = generateIdentity()): Promise<RawProvider> {
    const headers = signRequest(identity, 'GET', '/v1/providers/connect');
    const ws = new WebSocket(`${baseUrl.replace(/^http/, 'ws')}/v1/providers/connect`, { headers });
    return new Promise((res, rej) => {
      ws.once('open', () => res(new RawProvider(identity, ws)));
      ws.once('unexpected-response', (_req, r) => rej(new Error(`upgrade refused: HTTP ${r.statusCode}`)));
      ws.once('error', rej);
    });
  }

  send(m: Record<string, unknown>): void {
    this.ws.send(JSON.stringify(m));
  }

  /** The first message, already received or future, matching `match`. */
  next(match: (m: Msg) => boolean, what: string, timeoutMs = WAIT_MS): Promise<Msg> {
    const seen = this.messages.find(match);
    if (seen) return Promise.resolve(seen);
    return new Promise((res, rej) => {
      const waiter = {
        match,
        resolve: res,
        timer: setTimeout(() => {
          this.waiters.splice(this.waiters.indexOf(waiter), 1);
          rej(new Error(`timed out waiting for ${what}; got ${JSON.stringify(this.messages).slice(-1500)}`));
        }, timeoutMs),
      };
      this.waiters.push(waiter);
    });
  }

  async hello(name: string, region: string): Promise<Msg> {
    const instance = randomBytes(12).toString('base64url');
    this.send({
      type: 'hello',
      protocol: 1,
      instance,
      name,
      agentVersion: '0.1.0',
      runtime: 'process',
      slots: 2,
      hardware: { cpu: { model: 'x', cores: 4 }, memoryGiB: 8, diskGiB: 100, gpus: [] },
      attributes: { region },
      asks: RAW_ASKS,
      asksSignature: signBytes(this.identity, canonicalJson({ asks: RAW_ASKS, instance })),
      benchmarks: BENCHMARKS,
      bids: false,
      lastApplied: 0,
      running: [],
    });
    const welcome = await this.next((m) => m.type === 'welcome' || m.type === 'error', 'welcome');
    assert.equal(welcome.type, 'welcome', JSON.stringify(welcome));
    this.heartbeat = setInterval(() => this.send({ type: 'heartbeat', running: [] }), Number(welcome.heartbeatIntervalMs) / 3);
    return welcome;
  }

  /** Sends a sequenced report with the next seq and resolves with the coordinator's answers to it. */
  async report(body: Record<string, unknown>): Promise<{ seq: number; errors: Msg[] }> {
    const seq = ++this.seq;
    const from = this.messages.length;
    this.send({ seq, ...body });
    const ack = await this.next((m) => m.type === 'ack' && m.seq === seq, `ack of report ${seq} (${String(body.type)})`);
    // The coordinator sends a refusal before the ack of the refused report.
    const upTo = this.messages.indexOf(ack);
    return { seq, errors: this.messages.slice(from, upTo).filter((m) => m.type === 'error') };
  }

  usage(leaseId: string, usageMs: number, signer: Identity = this.identity): Record<string, unknown> {
    return { type: 'lease.usage', leaseId, usageMs, signature: signBytes(signer, canonicalJson({ leaseId, usageMs })) };
  }

  async close(): Promise<void> {
    clearInterval(this.heartbeat);
    for (const w of this.waiters) clearTimeout(w.timer);
    this.waiters = [];
    if (this.ws.readyState !== WebSocket.CLOSED) {
      this.ws.close();
      await this.closed;
    }
  }
}

// ---- helpers ------------------------------------------------------------------------------

function fixtureSpec(name: string, args: string[], region: string, extra: Partial<JobSpec> = {}): JobSpec {
  return {
    version: 1,
    name,
    kind: 'batch',
    runtime: { kind: 'bundle', path: './tasks', command: ['node', 'task.mjs', ...args] },
    resources: { cpu: 1, memoryGiB: 1 },
    price: { maxPerHour: '100', budget: '2' },
    placement: { regions: [region] },
    ...extra,
  };
}

async function rejectsWith(p: Promise<unknown>, code: string, message?: RegExp): Promise<GridworkError> {
  let caught: GridworkError | undefined;
  await assert.rejects(p, (err: unknown) => {
    assert.ok(err instanceof GridworkError, `expected a GridworkError, got ${String(err)}`);
    assert.equal(err.code, code, err.message);
    if (message) assert.match(err.message, message);
    caught = err;
    return true;
  });
  return caught as GridworkError;
}

async function dropSchema(url: string | undefined, schema: string | undefined): Promise<void> {
  if (!url || !schema || schema === 'public') return;
  const c = new pg.Client({ connectionString: url });
  await c.connect();
  try {
    await c.query(`drop schema if exists "${schema}" cascade`);
  } finally {
    await c.end();
  }
}

async function allLogs(client: GridworkClient, jobId: string): Promise<LogEntry[]> {
  const out: LogEntry[] = [];
  for await (const e of client.logs(jobId)) out.push(e);
  return out;
}

/** Host processes whose command line contains `mark` (a task's processes are visible from the host's pid namespace). */
function processesWith(mark: string): number[] {
  const found: number[] = [];
  for (const entry of readdirSync('/proc')) {
    if (!/^\d+$/.test(entry) || Number(entry) === process.pid) continue;
    try {
      if (readFileSync(`/proc/${entry}/cmdline`, 'utf8').includes(mark)) found.push(Number(entry));
    } catch {
      // gone meanwhile
    }
  }
  return found;
}

/** Whether `p` names something strictly below `root` (after resolving every ".."). */
function isInside(root: string, p: string): boolean {
  const r = relative(resolve(root), resolve(p));
  return r !== '' && r !== '..' && !r.startsWith(`..${sep}`) && !isAbsolute(r);
}

for (const store of ['pglite', 'postgres'] as const) {
  describe(`untested paths (${store})`, () => {
    let net: TestNetwork;
    let agent: ProviderAgent;
    let workRoot: string;
    const raw: RawProvider[] = [];
    const leftovers: string[] = [];

    const db = () => internalsOf(net.coordinator).db;
    const cfg = () => net.coordinator.config.economics;

    async function balance(account: string): Promise<bigint> {
      const r = await db().selectFrom('ledger_balances').select('balance').where('account', '=', account).executeTakeFirst();
      return r?.balance ?? 0n;
    }
    const available = (id: string) => balance(`acct:${id}:available`);

    function leaseRow(id: string) {
      return db().selectFrom('leases').selectAll().where('id', '=', id).executeTakeFirstOrThrow();
    }

    async function leasesOf(jobId: string) {
      return db().selectFrom('leases').selectAll().where('job_id', '=', jobId).orderBy('created_at').execute();
    }

    async function txCount(): Promise<number> {
      const r = await db()
        .selectFrom('ledger_transactions')
        .select((eb) => eb.fn.countAll<string>().as('n'))
        .executeTakeFirstOrThrow();
      return Number(r.n);
    }

    /** Postings of the settlement of one lease, by account. */
    async function settlement(leaseId: string): Promise<Map<string, bigint>> {
      const rows = await db()
        .selectFrom('ledger_postings as p')
        .innerJoin('ledger_transactions as t', 't.id', 'p.tx_id')
        .select(['p.account', 'p.amount'])
        .where('t.idempotency_key', '=', `settle:${leaseId}`)
        .execute();
      assert.ok(rows.length > 0, `lease ${leaseId} was settled`);
      const m = new Map<string, bigint>();
      for (const r of rows) m.set(r.account, (m.get(r.account) ?? 0n) + r.amount);
      return m;
    }

    /** No money left anywhere on the way: the job's hold, every lease's escrow and earnings are empty. */
    async function assertNothingStranded(jobId: string): Promise<void> {
      assert.equal(await balance(`job:${jobId}:hold`), 0n, 'the job hold is empty');
      for (const l of await leasesOf(jobId)) {
        assert.equal(await balance(`lease:${l.id}:escrow`), 0n, `escrow of ${l.id} is empty`);
        assert.equal(await balance(`lease:${l.id}:earned`), 0n, `earnings of ${l.id} were paid out`);
      }
    }

    async function assertLedgerBalances(): Promise<void> {
      const audit = await verifyLedger(db());
      assert.equal(audit.total, 0n, 'postings sum to zero');
      assert.deepEqual(audit.mismatched, []);
      assert.deepEqual(audit.negative, []);
    }

    before(async () => {
      net = await startTestNetwork({
        store,
        coordinator: {
          heartbeatIntervalMs: 1000,
          heartbeatMisses: 10,
          economics: { meteringIntervalMs: METERING_MS, escrowPeriods: ESCROW_PERIODS, lowBalanceGraceMs: 120_000 },
        },
      });
      workRoot = join(tmpdir(), `gridwork-tasks-untested-${randomBytes(6).toString('hex')}`);
      agent = await net.addProvider({
        name: 'sandboxed',
        runtime: 'sandbox',
        slots: 2,
        attributes: { region: 'agent' },
        pricing: fixedPricing({ cpuCoreHour: '36', memoryGiBHour: '0' }),
        benchmarks: BENCHMARKS,
        workRoot,
      });
    });

    after(async () => {
      await Promise.all(raw.map((p) => p.close()));
      const url = net?.coordinator.config.databaseUrl;
      const schema = net?.coordinator.config.databaseSchema;
      await net?.close();
      await Promise.all(leftovers.map((p) => rm(p, { recursive: true, force: true })));
      if (store === 'postgres') await dropSchema(url, schema);
    });

    // ---- 1. debit notes over the wire ---------------------------------------------------------

    describe('lease.usage over the wire', () => {
      let owner: RawProvider;
      let stranger: RawProvider;
      let requester: GridworkClient;
      let jobId: string;
      let leaseId: string;

      before(async () => {
        owner = await RawProvider.connect(net.coordinator.url);
        stranger = await RawProvider.connect(net.coordinator.url);
        raw.push(owner, stranger);
        await owner.hello('raw-owner', 'raw-owner');
        await stranger.hello('raw-stranger', 'raw-stranger');
        requester = await net.fundedClient('20');
        const job = await requester.submit(fixtureSpec('metered-by-hand', ['hang'], 'raw-owner'), { baseDir: fixturesDir });
        jobId = job.id;
        const assign = (await owner.next(
          (m) => m.type === 'lease.assign' && (m.lease as { jobId: string }).jobId === jobId,
          'the assignment',
        )) as Msg & { seq: number; lease: { leaseId: string } };
        leaseId = assign.lease.leaseId;
        owner.send({ type: 'ack', seq: assign.seq });
        await until(() => leaseRow(leaseId), (l) => l.state === 'starting', { what: 'the acked lease to be starting' });
        const started = await owner.report({ type: 'lease.started', leaseId });
        assert.deepEqual(started.errors, []);
        const l = await leaseRow(leaseId);
        assert.equal(l.state, 'running');
        assert.equal(l.usage_ms, 0n);
        assert.equal(l.charged, 0n);
      });

      test('a debit note with a bad signature → BAD_SIGNATURE, consumed (acked, seq recorded), nothing charged', async () => {
        const before = await leaseRow(leaseId);
        const txs = await txCount();
        const providerBefore = await db().selectFrom('providers').select('in_seq').where('id', '=', owner.identity.publicKey).executeTakeFirstOrThrow();
        // Signed by another key over the right payload; then the owner's signature over another amount.
        const forged = await owner.report(owner.usage(leaseId, 2_000, generateIdentity()));
        const goodSig = owner.usage(leaseId, 100);
        const tampered = await owner.report({ ...goodSig, usageMs: 200_000 });
        for (const r of [forged, tampered]) {
          assert.equal(r.errors.length, 1, JSON.stringify(r.errors));
          assert.equal(r.errors[0]?.code, 'BAD_SIGNATURE');
          assert.match(String(r.errors[0]?.message), /signature/);
        }
        const providerAfter = await db().selectFrom('providers').select('in_seq').where('id', '=', owner.identity.publicKey).executeTakeFirstOrThrow();
        assert.equal(providerAfter.in_seq, providerBefore.in_seq + 2n, 'both reports were consumed');
        const afterRow = await leaseRow(leaseId);
        assert.equal(afterRow.usage_ms, before.usage_ms);
        assert.equal(afterRow.charged, 0n);
        assert.equal(await balance(`lease:${leaseId}:earned`), 0n);
        assert.equal(await txCount(), txs, 'no ledger transaction');
        assert.equal(owner.ws.readyState, WebSocket.OPEN, 'a refused report does not end the connection');
      });

      test("a debit note for another provider's lease → NOT_LEASE_OWNER, nothing charged (even with the owner's signature)", async () => {
        const before = await leaseRow(leaseId);
        const txs = await txCount();
        const relayed = await stranger.report(owner.usage(leaseId, 3_000)); // the owner's genuine note, sent by someone else
        const own = await stranger.report(stranger.usage(leaseId, 3_000));
        for (const r of [relayed, own]) {
          assert.equal(r.errors.length, 1, JSON.stringify(r.errors));
          assert.equal(r.errors[0]?.code, 'NOT_LEASE_OWNER');
          assert.match(String(r.errors[0]?.message), new RegExp(leaseId));
        }
        const p = await db().selectFrom('providers').select('in_seq').where('id', '=', stranger.identity.publicKey).executeTakeFirstOrThrow();
        assert.equal(p.in_seq, 2n);
        assert.deepEqual(await leaseRow(leaseId), before);
        assert.equal(await txCount(), txs, 'no ledger transaction');
        assert.equal(await available(stranger.identity.publicKey), 0n);
      });

      test('an inflated debit note is charged at most the time since the lease started plus one metering period', async () => {
        const { started_at } = await leaseRow(leaseId);
        assert.ok(started_at);
        const r = await owner.report(owner.usage(leaseId, 10_000_000_000)); // ~116 days
        assert.deepEqual(r.errors, []);
        const ackedAt = Date.now();
        const l = await leaseRow(leaseId);
        const ceiling = BigInt(ackedAt - started_at.getTime() + METERING_MS);
        assert.ok(l.usage_ms <= ceiling, `billed ${l.usage_ms} ms, but only ${ceiling} ms are plausible`);
        assert.ok(l.usage_ms >= BigInt(METERING_MS), `billed ${l.usage_ms} ms: at least the slack of one period is plausible`);
        assert.ok(l.charged > 0n, 'the plausible part was charged');
        assert.ok(l.charged <= costOf(l.price_per_hour, ceiling), `charged ${l.charged} µc for at most ${ceiling} ms`);
        assert.equal(l.charged, costOf(l.price_per_hour, l.usage_ms), 'charged exactly the billed time');
        assert.equal(await balance(`lease:${leaseId}:earned`), l.charged);

        // A second inflated note only adds the time that really passed.
        const again = await owner.report(owner.usage(leaseId, 20_000_000_000));
        assert.deepEqual(again.errors, []);
        const l2 = await leaseRow(leaseId);
        assert.ok(l2.usage_ms <= BigInt(Date.now() - started_at.getTime() + METERING_MS));
        const view = await requester.get(jobId);
        assert.ok(parseCredits(view.money.spent) <= costOf(l2.price_per_hour, BigInt(Date.now() - started_at.getTime() + METERING_MS)));
      });

      test('a debit note on a lease that has ended: no charge and no error', async () => {
        const fin = await owner.report({ type: 'lease.finished', leaseId, outcome: { kind: 'exited', exitCode: 0 }, durationMs: 1, outputs: [] });
        assert.deepEqual(fin.errors, []);
        const done = await until(() => requester.get(jobId), (j) => j.state === 'succeeded', { what: 'the job to succeed' });
        const lease = await leaseRow(leaseId);
        assert.equal(lease.state, 'completed');
        const txs = await txCount();
        const requesterBefore = await available(requester.accountId);
        const ownerBefore = await available(owner.identity.publicKey);
        assert.ok(ownerBefore > 0n, 'the owner was paid for the billed time');

        const late = await owner.report(owner.usage(leaseId, Number(lease.usage_ms) + 60_000));
        assert.deepEqual(late.errors, [], 'a late note is not an error');
        assert.deepEqual(await leaseRow(leaseId), lease);
        assert.equal(await txCount(), txs, 'no ledger transaction');
        assert.equal(await available(requester.accountId), requesterBefore);
        assert.equal(await available(owner.identity.publicKey), ownerBefore);
        assert.deepEqual(await requester.get(jobId), done);
        await assertNothingStranded(jobId);
        // The requester paid exactly what the lease was charged.
        assert.equal(await available(requester.accountId), parseCredits('20') - lease.charged);
        await assertLedgerBalances();
      });

      test('[HOLE] an output path that hides ".." behind a newline is refused, and the SDK never writes outside the results directory', async () => {
        // RelPath (protocol/src/api.ts) rejects "..", "." and leading "/" with a lookahead whose
        // `.*` does not cross a line break, so "x\n/../../../../name" passes it. A provider can
        // report such an output; GridworkClient.results() then joins the path under the target
        // directory and writes the file four levels up, outside it.
        const p = await RawProvider.connect(net.coordinator.url);
        raw.push(p);
        await p.hello('raw-paths', 'raw-paths');
        const c = await net.fundedClient('5');
        const job = await c.submit(fixtureSpec('evil-output', ['hang'], 'raw-paths'), { baseDir: fixturesDir });
        const assign = (await p.next((m) => m.type === 'lease.assign' && (m.lease as { jobId: string }).jobId === job.id, 'assignment')) as Msg & {
          seq: number;
          lease: { leaseId: string };
        };
        const lid = assign.lease.leaseId;
        p.send({ type: 'ack', seq: assign.seq });
        assert.deepEqual((await p.report({ type: 'lease.started', leaseId: lid })).errors, []);
        const bytes = Buffer.from(`planted by ${lid}\n`);
        const digest = sha256Hex(bytes);
        const put = await fetch(`${net.coordinator.url}/v1/blobs/${digest}`, {
          method: 'PUT',
          headers: { 'content-type': 'application/octet-stream', ...signRequest(p.identity, 'PUT', `/v1/blobs/${digest}`, { digest }) },
          body: bytes,
        });
        assert.equal(put.status, 201, await put.text());

        const resultsDir = join(net.dir, 'results', 'evil');
        await mkdir(resultsDir, { recursive: true });
        const name = `gridwork-escaped-${randomBytes(6).toString('hex')}.txt`;
        const evilPath = `x\n/../../../../${name}`;
        const target = join(resultsDir, 'task-0', ...evilPath.split('/'));
        leftovers.push(target);
        assert.ok(!isInside(resultsDir, target), 'the path really points outside the results directory');

        const from = p.messages.length;
        p.send({
          seq: 2,
          type: 'lease.finished',
          leaseId: lid,
          outcome: { kind: 'exited', exitCode: 0 },
          durationMs: 5,
          outputs: [{ path: evilPath, digest, size: bytes.length }],
        });
        const answer = await p.next((m) => p.messages.indexOf(m) >= from && (m.type === 'error' || (m.type === 'ack' && m.seq === 2)), 'the answer to the report');
        const view = await until(
          () => c.get(job.id),
          (j) => answer.type === 'error' || j.state === 'succeeded' || j.state === 'failed',
          { what: 'the report to take effect' },
        );
        const accepted = view.tasks.flatMap((t) => t.outputs).filter((o) => o.path.split('/').some((s) => s === '..' || s === '.'));
        let written: string[] = [];
        if (view.state === 'succeeded') written = await c.results(job.id, resultsDir).catch(() => []);
        const escaped = existsSync(target);
        assert.deepEqual(
          { escaped, outsideWrites: written.filter((w) => !isInside(resultsDir, w)), acceptedPaths: accepted.map((o) => o.path) },
          { escaped: false, outsideWrites: [], acceptedPaths: [] },
          'the coordinator must refuse the output path (and the SDK must not write outside its directory)',
        );
        await c.cancel(job.id).catch(() => {});
      });
    });

    // ---- 2. adding budget to a running job ----------------------------------------------------

    describe('adding budget to a running job', () => {
      /** A running task of `jobId` on the sandboxed agent, with at least one debit note charged. */
      async function runningAndMetered(client: GridworkClient, jobId: string) {
        await until(() => client.get(jobId), (j) => j.tasks[0]?.state === 'running', { what: 'the task to run', timeoutMs: WAIT_MS });
        const [lease] = await leasesOf(jobId);
        assert.ok(lease);
        return until(() => leaseRow(lease.id), (l) => l.usage_ms > 0n, { what: 'a debit note', timeoutMs: WAIT_MS });
      }

      test('the budget grows and the low-balance mark clears once the job is funded again', async () => {
        const c = await net.fundedClient('10');
        // 36 credits/h is 0.01 a second; escrow wants 60 periods (30 s = 0.3) ahead: 0.05 cannot fund it.
        const job = await c.submit(fixtureSpec('top-up', ['hang'], 'agent', { price: { maxPerHour: '100', budget: '0.05' } }), { baseDir: fixturesDir });
        const low = await until(() => c.get(job.id), (j) => j.money.lowBalanceSince !== null, { what: 'the low-balance mark', timeoutMs: WAIT_MS });
        assert.equal(low.state, 'running');
        assert.equal(await available(c.accountId), parseCredits('9.95'));

        const topped = await c.addBudget(job.id, '1');
        assert.equal(topped.money.budget, '1.05');
        assert.equal(topped.money.lowBalanceSince, null, 'the mark is cleared with the top-up');
        assert.equal(await available(c.accountId), parseCredits('8.95'), 'the top-up came from the available balance');
        const [lease] = await leasesOf(job.id);
        assert.ok(lease);
        const usageAtTopUp = (await leaseRow(lease.id)).usage_ms;
        // The next debit notes are funded in full: the mark stays clear and the escrow is topped up ahead.
        const later = await until(() => leaseRow(lease.id), (l) => l.usage_ms > usageAtTopUp + BigInt(2 * METERING_MS), {
          what: 'two more debit notes',
          timeoutMs: WAIT_MS,
        });
        const view = await c.get(job.id);
        assert.equal(view.money.lowBalanceSince, null);
        const escrow = await balance(`lease:${lease.id}:escrow`);
        assert.ok(escrow >= costOf(later.price_per_hour, BigInt(METERING_MS)), `escrow ${escrow} µc covers a period ahead`);

        const cancelled = await c.cancel(job.id);
        assert.equal(cancelled.state, 'cancelled');
        const final = await c.get(job.id);
        assert.equal(final.money.budget, '1.05');
        assert.equal(final.money.held, '0');
        const settled = await leaseRow(lease.id);
        assert.equal(parseCredits(final.money.spent), settled.charged);
        assert.equal(await available(c.accountId), parseCredits('10') - settled.charged, 'deposits − job cost');
        await assertNothingStranded(job.id);
        await assertLedgerBalances();
      });

      test('a top-up racing a cancel lands in the hold and comes back with the release, or is refused with INVALID_TRANSITION', async () => {
        const c = await net.fundedClient('10');
        let accepted = 0;
        let refused = 0;
        const jobs: string[] = [];
        for (let i = 0; i < 3; i++) {
          const job = await c.submit(fixtureSpec(`race-${i}`, ['hang'], 'agent', { price: { maxPerHour: '100', budget: '0.5' } }), { baseDir: fixturesDir });
          jobs.push(job.id);
          await runningAndMetered(c, job.id);
          const [cancel, topUp] = await Promise.allSettled([c.cancel(job.id), c.addBudget(job.id, '0.25')]);
          assert.equal(cancel.status, 'fulfilled', String((cancel as PromiseRejectedResult).reason));
          if (topUp.status === 'fulfilled') accepted++;
          else {
            refused++;
            assert.ok(topUp.reason instanceof GridworkError, String(topUp.reason));
            assert.equal(topUp.reason.code, 'INVALID_TRANSITION', topUp.reason.message);
          }
          const final = await c.get(job.id);
          assert.equal(final.state, 'cancelled');
          assert.equal(final.money.budget, topUp.status === 'fulfilled' ? '0.75' : '0.5');
          assert.equal(final.money.held, '0');
          await assertNothingStranded(job.id);
        }
        // After the end a top-up is always refused, and takes nothing.
        const before = await available(c.accountId);
        await rejectsWith(c.addBudget(jobs[0] as string, '0.25'), 'INVALID_TRANSITION', /ended/);
        assert.equal(await available(c.accountId), before);

        let spent = 0n;
        for (const id of jobs) spent += parseCredits((await c.get(id)).money.spent);
        assert.equal(accepted + refused, 3);
        assert.equal(await available(c.accountId), parseCredits('10') - spent, 'deposits − what the jobs cost: nothing stranded');
        await assertLedgerBalances();
      });

      test('top-ups racing a job that ends by itself: each one is either returned with the release or refused', async () => {
        const c = await net.fundedClient('10');
        const job = await c.submit(fixtureSpec('race-end', ['work', '800'], 'agent', { price: { maxPerHour: '100', budget: '0.5' } }), { baseDir: fixturesDir });
        let accepted = 0;
        let refusal: GridworkError | undefined;
        for (let i = 0; i < 1000 && !refusal; i++) {
          try {
            await c.addBudget(job.id, '0.01');
            accepted++;
          } catch (err) {
            assert.ok(err instanceof GridworkError, String(err));
            refusal = err;
          }
        }
        assert.ok(refusal, 'the job ended while top-ups were still coming');
        assert.equal(refusal.code, 'INVALID_TRANSITION', refusal.message);
        assert.ok(accepted > 0, 'some top-ups landed while the job ran');
        const final = await c.get(job.id);
        assert.equal(final.state, 'succeeded');
        assert.equal(parseCredits(final.money.budget), parseCredits('0.5') + BigInt(accepted) * parseCredits('0.01'));
        assert.equal(final.money.held, '0');
        assert.equal(await available(c.accountId), parseCredits('10') - parseCredits(final.money.spent), 'deposits − job cost');
        await assertNothingStranded(job.id);
        await assertLedgerBalances();
      });
    });

    // ---- 4. "..", symlinks and hard links -----------------------------------------------------

    describe('paths, symlinks and hard links', () => {
      let c: GridworkClient;
      const script = Buffer.from('console.log("fixture: bundle ran");\n');
      const scriptDigest = sha256Hex(script);

      before(async () => {
        c = await net.fundedClient('10');
        await c.uploadBlob(script, scriptDigest);
      });

      /** Uploads a hand-made manifest naming the script under `path`. */
      async function manifestWith(path: string): Promise<string> {
        const bytes = Buffer.from(canonicalJson({ files: [{ path, digest: scriptDigest, size: script.length, executable: false }] }));
        const digest = sha256Hex(bytes);
        await c.uploadBlob(bytes, digest);
        return digest;
      }

      const bundleSpec = (name: string): JobSpec => ({
        ...fixtureSpec(name, [], 'agent', { maxRetries: 0 }),
        runtime: { kind: 'bundle', path: '.', command: ['node', 'run.mjs'] },
      });

      async function jobCount(): Promise<number> {
        const r = await db()
          .selectFrom('jobs')
          .select((eb) => eb.fn.countAll<string>().as('n'))
          .executeTakeFirstOrThrow();
        return Number(r.n);
      }

      test('a manifest entry with ".." or an absolute path is refused at submit', async () => {
        for (const path of ['../run.mjs', 'a/../../run.mjs', '/etc/cron.d/run.mjs', './run.mjs', 'a\\..\\..\\run.mjs']) {
          const manifest = await manifestWith(path);
          const before = await jobCount();
          const held = await available(c.accountId);
          await rejectsWith(c.submitPrepared({ spec: bundleSpec('dotdot'), bundle: { manifest }, inputs: [] }), 'VALIDATION_FAILED', /bundle\.manifest/);
          assert.equal(await jobCount(), before, `${JSON.stringify(path)}: no job`);
          assert.equal(await available(c.accountId), held, `${JSON.stringify(path)}: nothing held`);
        }
      });

      test('[HOLE] a manifest entry hiding ".." behind a newline is refused at submit', async () => {
        // Same RelPath gap as the output path above: "x\n/../../../run.mjs" passes the schema.
        const manifest = await manifestWith('x\n/../../../run.mjs');
        const before = await jobCount();
        const res = await c.submitPrepared({ spec: bundleSpec('dotdot-newline'), bundle: { manifest }, inputs: [] }).then(
          (j) => j,
          (err: unknown) => err,
        );
        if (!(res instanceof GridworkError)) await c.cancel((res as JobView).id).catch(() => {});
        assert.ok(res instanceof GridworkError, `accepted as job ${(res as JobView).id}`);
        assert.equal(res.code, 'VALIDATION_FAILED');
        assert.equal(await jobCount(), before);
      });

      test('an escaping manifest entry that gets past the coordinator is refused by the provider before anything runs', async () => {
        const name = `gridwork-escape-${randomBytes(6).toString('hex')}.mjs`;
        // bundle dir = <workRoot>/<lease>/bundle: four levels up is the temporary directory.
        const path = `x\n/../../../../${name}`;
        const target = join(dirname(workRoot), name);
        leftovers.push(target);
        const manifest = await manifestWith(path);
        const submitted = await c.submitPrepared({ spec: bundleSpec('escape'), bundle: { manifest }, inputs: [] }).catch((err: unknown) => err);
        if (submitted instanceof GridworkError) {
          // Refused at the door (the [HOLE] above is fixed): the strongest outcome.
          assert.equal(submitted.code, 'VALIDATION_FAILED');
          return;
        }
        const job = submitted as JobView;
        const final = await c.wait(job.id, { signal: AbortSignal.timeout(WAIT_MS) });
        assert.equal(final.state, 'failed');
        assert.match(final.tasks[0]?.error ?? '', /escapes its directory/);
        assert.ok(!existsSync(target), `${target} was written`);
        const logs = await allLogs(c, job.id);
        assert.ok(!logs.some((e) => e.stream === 'stdout'), 'the command never ran');
        await assertNothingStranded(job.id);
      });

      test('symlinks out of /outputs are not uploaded; hard links reach only the task’s own files', async (t) => {
        const hostPasswd = sha256Hex(readFileSync('/etc/passwd'));
        const spec: JobSpec = {
          ...fixtureSpec('links', [], 'agent', { maxRetries: 0 }),
          runtime: { kind: 'bundle', path: '.', command: ['node', 'links.mjs'] },
        };
        const done = await c.wait((await c.submit(spec, { baseDir: untestedDir })).id, { signal: AbortSignal.timeout(WAIT_MS) });
        assert.equal(done.state, 'succeeded', done.error ?? '');
        const logs = await allLogs(c, done.id);
        const line = logs
          .filter((e) => e.stream === 'stdout')
          .map((e) => e.data)
          .join('')
          .match(/links: (\{.*\})/);
        assert.ok(line?.[1], 'the workload reported what it tried');
        const tried = JSON.parse(line[1]) as Record<string, string>;
        t.diagnostic(`inside the sandbox: ${line[1]}`);
        // The kernel refuses hard links to anything outside the /outputs mount (EXDEV; EPERM for
        // files of another owner): the task can only link its own files.
        assert.equal(tried.ownHard, 'ok');
        assert.notEqual(tried.passwdHard, 'ok', 'hard link to /etc/passwd');
        assert.notEqual(tried.bundleHard, 'ok', 'hard link to the read-only bundle');
        assert.equal(tried.passwdSymlink, 'ok', 'the symlinks were planted (so not uploading them is the agent’s doing)');
        assert.equal(tried.etcSymlink, 'ok');
        assert.equal(tried.nestedEscape, 'ok');

        const outputs = done.tasks[0]?.outputs ?? [];
        const mine = sha256Hex('mine\n');
        assert.deepEqual(
          outputs.map((o) => [o.path, o.digest]),
          [
            ['own-hardlink.txt', mine],
            ['own.txt', mine],
          ],
        );
        assert.ok(!outputs.some((o) => o.digest === hostPasswd), 'no output carries /etc/passwd');
        const dir = join(net.dir, 'results', 'links');
        const written = await c.results(done.id, dir);
        assert.equal(written.length, 2);
        for (const w of written) {
          assert.ok(isInside(dir, w));
          assert.equal(await readFile(w, 'utf8'), 'mine\n');
        }
      });

      test('a process the task leaves behind cannot swap an output for a symlink while the agent uploads: nothing of the task outlives it', async () => {
        // uploadOutputs checks Dirent.isFile() and then opens the path (following symlinks): only
        // safe if nothing of the task can still rename files in /outputs by then.
        const hostPasswd = sha256Hex(readFileSync('/etc/passwd'));
        const mark = `gwlinger${randomBytes(6).toString('hex')}`;
        const spec: JobSpec = {
          ...fixtureSpec('linger', [], 'agent', { maxRetries: 0 }),
          runtime: { kind: 'bundle', path: '.', command: ['node', 'links.mjs', 'linger', mark] },
        };
        const done = await c.wait((await c.submit(spec, { baseDir: untestedDir })).id, { signal: AbortSignal.timeout(WAIT_MS) });
        const survivors = await until(async () => processesWith(mark), (pids) => pids.length === 0, { timeoutMs: 5000, what: 'the swapper to be gone' }).catch(
          () => processesWith(mark),
        );
        for (const pid of survivors) process.kill(pid, 'SIGKILL');
        assert.equal(done.state, 'succeeded', done.error ?? '');
        const logs = await allLogs(c, done.id);
        assert.match(logs.map((e) => e.data).join(''), /linger: left \d+ swapping/, 'the swapper was running when the task exited');
        assert.deepEqual(survivors, [], 'the swapper was killed with the sandbox');
        const outputs = done.tasks[0]?.outputs ?? [];
        assert.ok(!outputs.some((o) => o.digest === hostPasswd), 'no output carries /etc/passwd');
        // What the task left at its exit is its own: swap.txt, or the swapper's temporary file
        // (killed mid-write, so possibly empty); a symlink at that instant is simply not uploaded.
        for (const o of outputs) {
          assert.ok(['swap.txt', 'file.tmp'].includes(o.path), o.path);
          assert.ok([sha256Hex('mine\n'), sha256Hex('')].includes(o.digest), `${o.path} holds only what the task wrote`);
        }
      });
    });

    // ---- 5. where the money goes ------------------------------------------------------------

    describe('where the money goes', () => {
      async function providerShare(leaseId: string, charged: bigint, providerBefore: bigint): Promise<void> {
        const { feeBps, reserveBps } = cfg();
        const split = splitEarnings(charged, feeBps, reserveBps);
        assert.equal(split.provider + split.fee + split.reserve, charged);
        const s = await settlement(leaseId);
        assert.equal(s.get(`acct:${agent.id}:available`) ?? 0n, split.provider, 'provider: earned − fee − reserve');
        assert.equal(s.get('sys:fees') ?? 0n, split.fee, 'sys:fees got the fee');
        assert.equal(s.get('sys:reserve') ?? 0n, split.reserve, 'sys:reserve got its share');
        assert.equal(await available(agent.id), providerBefore + split.provider);
      }

      test('a successful job: the provider is paid earned − fee − reserve, the requester gets the unspent budget back', async () => {
        const c = await net.fundedClient('10');
        const providerBefore = await available(agent.id);
        const feesBefore = await balance('sys:fees');
        const reserveBefore = await balance('sys:reserve');
        const done = await c.wait((await c.submit(fixtureSpec('paid', ['work', '1200'], 'agent'), { baseDir: fixturesDir })).id, {
          signal: AbortSignal.timeout(WAIT_MS),
        });
        assert.equal(done.state, 'succeeded', done.error ?? '');
        const [lease] = await leasesOf(done.id);
        assert.ok(lease);
        assert.equal(lease.state, 'completed');
        assert.ok(lease.usage_ms >= 1200n, `metered ${lease.usage_ms} ms of a 1.2 s task`);
        assert.equal(lease.charged, costOf(lease.price_per_hour, lease.usage_ms), 'price × metered time');
        await providerShare(lease.id, lease.charged, providerBefore);
        const split = splitEarnings(lease.charged, cfg().feeBps, cfg().reserveBps);
        assert.equal(await balance('sys:fees'), feesBefore + split.fee);
        assert.equal(await balance('sys:reserve'), reserveBefore + split.reserve);
        assert.equal(parseCredits(done.money.spent), lease.charged);
        assert.equal(done.money.held, '0');
        assert.equal(await available(c.accountId), parseCredits('10') - lease.charged, 'the unspent budget came back');
        await assertNothingStranded(done.id);
        await assertLedgerBalances();
      });

      test('a cancelled running job: the provider is paid its metered time, the requester the rest', async () => {
        const c = await net.fundedClient('10');
        const providerBefore = await available(agent.id);
        const job = await c.submit(fixtureSpec('cancelled', ['hang'], 'agent'), { baseDir: fixturesDir });
        await until(() => c.get(job.id), (j) => j.tasks[0]?.state === 'running', { what: 'the task to run', timeoutMs: WAIT_MS });
        const [running] = await leasesOf(job.id);
        assert.ok(running);
        await until(() => leaseRow(running.id), (l) => l.usage_ms > 0n, { what: 'a debit note', timeoutMs: WAIT_MS });
        const cancelled = await c.cancel(job.id);
        assert.equal(cancelled.state, 'cancelled');
        const lease = await leaseRow(running.id);
        assert.equal(lease.state, 'cancelled');
        assert.ok(lease.started_at && lease.ended_at);
        const ranMs = BigInt(lease.ended_at.getTime() - lease.started_at.getTime());
        assert.ok(lease.usage_ms >= ranMs, `billed ${lease.usage_ms} ms of ${ranMs} ms run`);
        assert.ok(lease.usage_ms <= ranMs + BigInt(METERING_MS), `billed ${lease.usage_ms} ms, more than ${ranMs} ms run + one period`);
        assert.equal(lease.charged, costOf(lease.price_per_hour, lease.usage_ms));
        await providerShare(lease.id, lease.charged, providerBefore);
        const final = await c.get(job.id);
        assert.equal(parseCredits(final.money.spent), lease.charged);
        assert.equal(final.money.held, '0');
        assert.equal(await available(c.accountId), parseCredits('10') - lease.charged);
        await assertNothingStranded(job.id);
        await until(async () => agent.runningLeases, (r) => !r.includes(lease.id), { what: 'the task stopped on the provider' });
        await assertLedgerBalances();
      });

      test('a failed job: the provider is paid its metered time only, the requester the rest', async () => {
        const c = await net.fundedClient('10');
        const providerBefore = await available(agent.id);
        const done = await c.wait((await c.submit(fixtureSpec('failing', ['fail', '3'], 'agent'), { baseDir: fixturesDir })).id, {
          signal: AbortSignal.timeout(WAIT_MS),
        });
        assert.equal(done.state, 'failed');
        assert.equal(done.tasks[0]?.exitCode, 3);
        const [lease] = await leasesOf(done.id);
        assert.ok(lease?.started_at && lease.ended_at);
        assert.equal(lease.state, 'failed');
        const ranMs = BigInt(lease.ended_at.getTime() - lease.started_at.getTime());
        // plausibleUsage reads the clock a moment after ended_at was taken: 100 ms of slack for that.
        assert.ok(lease.usage_ms <= ranMs + BigInt(METERING_MS + 100), `billed ${lease.usage_ms} ms, more than ${ranMs} ms run + one period`);
        assert.equal(lease.charged, costOf(lease.price_per_hour, lease.usage_ms));
        await providerShare(lease.id, lease.charged, providerBefore);
        assert.equal(parseCredits(done.money.spent), lease.charged);
        assert.equal(done.money.held, '0');
        assert.equal(await available(c.accountId), parseCredits('10') - lease.charged);
        await assertNothingStranded(done.id);
        await assertLedgerBalances();
      });

      test('after everything: no hold or escrow of any job or lease of this network holds money', async () => {
        const open = await db()
          .selectFrom('ledger_balances')
          .select(['account', 'balance'])
          .where((eb) => eb.or([eb('account', 'like', 'job:%:hold'), eb('account', 'like', 'lease:%:escrow'), eb('account', 'like', 'lease:%:earned')]))
          .where('balance', '!=', 0n)
          .execute();
        // Only jobs still running may hold money; every job of this suite has ended.
        const live = await db().selectFrom('jobs').select(['id', 'state']).where('state', 'not in', ['succeeded', 'failed', 'cancelled']).execute();
        assert.deepEqual(live, []);
        assert.deepEqual(open, []);
        await assertLedgerBalances();
      });
    });
  });

  // ---- 3. replay across a restart -----------------------------------------------------------

  describe(`a signed request replayed to a restarted coordinator (${store})`, () => {
    test('is refused with REPLAYED_REQUEST: mutating nonces are stored in the database', async () => {
      const dir = await tempDir('gridwork-replay-');
      const common: CoordinatorOptions = {
        dataDir: join(dir.path, 'coordinator'),
        port: 0,
        logger: silentLogger(),
        dev: true,
        ...(store === 'postgres' ? { databaseUrl: postgresUrl(), databaseSchema: uniqueSchema('gw_replay') } : { databaseUrl: '' }),
      };
      const alice = generateIdentity();
      let coordinator = await startCoordinator(common);
      try {
        const send = async (method: string, path: string, headers: Record<string, string>, body?: string) => {
          const res = await fetch(`${coordinator.url}${path}`, { method, headers, ...(body === undefined ? {} : { body }) });
          const text = await res.text();
          return { status: res.status, text, body: JSON.parse(text) as { error?: { code: string; message: string } } & Record<string, unknown> };
        };
        const signedHeaders = (method: string, path: string, body: string) => ({ 'content-type': 'application/json', ...signRequest(alice, method, path, body) });

        // A deposit, and a job submitted without an idempotency key (each copy would be a new job).
        const depositBody = JSON.stringify({ amount: '5', idempotencyKey: `replay-${randomBytes(6).toString('hex')}` });
        const depositHeaders = signedHeaders('POST', '/v1/account/deposit', depositBody);
        const first = await send('POST', '/v1/account/deposit', depositHeaders, depositBody);
        assert.equal(first.status, 200, first.text);

        const bundleDir = join(dir.path, 'bundle');
        await mkdir(bundleDir, { recursive: true });
        await writeFile(join(bundleDir, 'x.mjs'), 'console.log(1)\n');
        const spec: JobSpec = {
          version: 1,
          name: 'replayed',
          kind: 'batch',
          runtime: { kind: 'bundle', path: '.', command: ['node', 'x.mjs'] },
          resources: { cpu: 64, memoryGiB: 1 }, // no provider: the job waits
          price: { maxPerHour: '1', budget: '1' },
        };
        const client = () => new GridworkClient({ url: coordinator.url, identity: alice });
        await client().submit(spec, { baseDir: bundleDir }); // uploads the bundle's blobs
        const manifest = (await packBundle(bundleDir)).manifestDigest;
        const submitBody = JSON.stringify({ spec, bundle: { manifest }, inputs: [] });
        const submitHeaders = signedHeaders('POST', '/v1/jobs', submitBody);
        const created = await send('POST', '/v1/jobs', submitHeaders, submitBody);
        assert.equal(created.status, 201, created.text);
        const jobsBefore = (await client().list()).length;
        assert.equal(jobsBefore, 2);
        const balanceBefore = await client().balance();
        assert.equal(balanceBefore.available, '3');

        await coordinator.close();
        coordinator = await startCoordinator(common);

        for (const [path, headers, body] of [
          ['/v1/account/deposit', depositHeaders, depositBody],
          ['/v1/jobs', submitHeaders, submitBody],
        ] as const) {
          const replay = await send('POST', path, headers, body);
          assert.equal(replay.status, 409, `${path}: ${replay.text}`);
          assert.equal(replay.body.error?.code, 'REPLAYED_REQUEST', path);
          assert.match(replay.body.error?.message ?? '', /nonce/);
        }
        assert.equal((await client().list()).length, jobsBefore, 'the replayed submit created no job');
        assert.deepEqual(await client().balance(), balanceBefore, 'the replayed deposit moved nothing');

        // Control: the same request freshly signed is accepted by the restarted coordinator, so it
        // was the stored nonce that refused the replay (the submit makes a third job).
        const again = await send('POST', '/v1/jobs', signedHeaders('POST', '/v1/jobs', submitBody), submitBody);
        assert.equal(again.status, 201, again.text);
        assert.equal((await client().list()).length, jobsBefore + 1);
        const audit = await verifyLedger(internalsOf(coordinator).db);
        assert.equal(audit.total, 0n);
        assert.deepEqual(audit.mismatched, []);
      } finally {
        await coordinator.close();
        await dir.remove();
        if (store === 'postgres') await dropSchema(common.databaseUrl, common.databaseSchema);
      }
    });
  });
}
