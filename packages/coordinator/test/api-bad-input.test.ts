/**
 * Bad input at every door of a real coordinator (PGlite and PostgreSQL): malformed and
 * oversized bodies, strict validation, blobs that lie about their digest, signatures that do
 * not hold, replays, other people's jobs, and a provider WebSocket that misbehaves. Each must
 * be refused with the right status and stable code, and must change nothing.
 */
import { internalsOf } from '@gridwork/coordinator/internal';
import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import { existsSync, readdirSync } from 'node:fs';
import { mkdir, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { canonicalJson, type ErrorBody, GridworkError, type JobSpec, type JobView, newId, parseCredits } from '@gridwork/protocol';
import { generateIdentity, type Identity, sha256Hex, signBytes, signRequest } from '@gridwork/protocol/node';
import { type GridworkClient, packBundle } from '@gridwork/sdk';
import { startTestNetwork, type TestNetwork, until, uploadTinyBundle } from '@gridwork/testkit';
import pg from 'pg';
import WebSocket from 'ws';

const MAX_JSON = 64 * 1024;
const MAX_BLOB = 1024 * 1024;

interface Res {
  status: number;
  body: unknown;
  text: string;
}

function assertError(res: Res, status: number, code: string, message?: RegExp): ErrorBody['error'] {
  assert.equal(res.status, status, `expected HTTP ${status} ${code}, got ${res.status}: ${res.text.slice(0, 300)}`);
  const body = res.body as ErrorBody;
  assert.equal(typeof body, 'object', `body is JSON: ${res.text.slice(0, 200)}`);
  assert.equal(body.error.code, code, `code: ${res.text.slice(0, 300)}`);
  assert.equal(typeof body.error.message, 'string');
  assert.ok(body.error.message.length > 0);
  if (message) assert.match(body.error.message, message);
  return body.error;
}

/** A spec that no test provider can take (64 cores): jobs of the HTTP tests stay unplaced. */
function spec(name: string, overrides: Partial<JobSpec> = {}): JobSpec {
  return {
    version: 1,
    name,
    kind: 'batch',
    runtime: { kind: 'bundle', path: '.', command: ['true'] },
    resources: { cpu: 64, memoryGiB: 1 },
    price: { maxPerHour: '1.00', budget: '1.00' },
    ...overrides,
  };
}

const ASKS = { cpuCoreHour: '0.01', memoryGiBHour: '0.001', gpuHour: {} };

/** A valid hello of `identity` (asks signed over {asks, instance}), with `extra` fields replaced. */
function hello(identity: Identity, name: string, extra: Record<string, unknown> = {}) {
  const instance = randomBytes(12).toString('base64url').slice(0, 16);
  return {
    type: 'hello',
    protocol: 1,
    instance,
    name,
    agentVersion: '0.1.0',
    runtime: 'process',
    slots: 1,
    hardware: { cpu: { model: 'x', cores: 4 }, memoryGiB: 8, diskGiB: 100, gpus: [] },
    attributes: {},
    asks: ASKS,
    asksSignature: signBytes(identity, canonicalJson({ asks: ASKS, instance })),
    benchmarks: { cpuMopsPerCore: 100, gpu: {} },
    bids: false,
    lastApplied: 0,
    running: [],
    ...extra,
  };
}

type Msg = Record<string, unknown> & { type: string };

/** A provider speaking the wire protocol by hand over a real WebSocket. */
class RawProvider {
  readonly messages: Msg[] = [];
  private waiters: { match: (m: Msg) => boolean; resolve: (m: Msg) => void; timer: NodeJS.Timeout }[] = [];
  private heartbeat: NodeJS.Timeout | undefined;
  closed: Promise<{ code: number; reason: string }>;

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
          w.resolve(m);
        }
      }
    });
    this.closed = new Promise((resolve) => ws.on('close', (code, reason) => resolve({ code, reason: reason.toString() })));
    this.closed.then(() => clearInterval(this.heartbeat));
  }

  static connect(
    baseUrl: string,
    identity: Identity = generateIdentity(),
    headers = signRequest(identity, 'GET', '/v1/providers/connect'),
  ): Promise<RawProvider> {
    const ws = new WebSocket(`${baseUrl.replace(/^http/, 'ws')}/v1/providers/connect`, { headers });
    return new Promise((resolve, reject) => {
      ws.once('open', () => resolve(new RawProvider(identity, ws)));
      ws.once('unexpected-response', (_req, res) => {
        let text = '';
        res.on('data', (c: Buffer) => {
          text += c.toString();
        });
        res.on('end', () => reject(Object.assign(new Error(`upgrade refused: HTTP ${res.statusCode}`), { status: res.statusCode, text })));
      });
      ws.once('error', reject);
    });
  }

  send(m: Record<string, unknown>): void {
    this.ws.send(JSON.stringify(m));
  }

  /** The first message (already received or future) matching `match`. */
  next(match: (m: Msg) => boolean, what: string, timeoutMs = 15_000): Promise<Msg> {
    const seen = this.messages.find(match);
    if (seen) return Promise.resolve(seen);
    return this.waitNew(match, what, timeoutMs);
  }

  /** The next message received from now on matching `match`. */
  waitNew(match: (m: Msg) => boolean, what: string, timeoutMs = 15_000): Promise<Msg> {
    return new Promise((resolve, reject) => {
      const waiter = {
        match,
        resolve: (m: Msg) => {
          clearTimeout(waiter.timer);
          resolve(m);
        },
        timer: setTimeout(() => {
          this.waiters.splice(this.waiters.indexOf(waiter), 1);
          reject(new Error(`timed out waiting for ${what}; got ${JSON.stringify(this.messages).slice(0, 1000)}`));
        }, timeoutMs),
      };
      this.waiters.push(waiter);
    });
  }

  async hello(name: string, extra: Record<string, unknown> = {}): Promise<Msg> {
    this.send(hello(this.identity, name, extra));
    const welcome = await this.next((m) => m.type === 'welcome' || m.type === 'error', 'welcome');
    assert.equal(welcome.type, 'welcome', JSON.stringify(welcome));
    this.heartbeat = setInterval(() => this.send({ type: 'heartbeat', running: [] }), Number(welcome.heartbeatIntervalMs) / 2);
    return welcome;
  }

  /** Stops waiting (e.g. for the loser of a race): pending waits just never resolve. */
  stopWaiting(): void {
    for (const w of this.waiters) clearTimeout(w.timer);
    this.waiters = [];
  }

  async close(): Promise<void> {
    clearInterval(this.heartbeat);
    this.stopWaiting();
    if (this.ws.readyState !== WebSocket.CLOSED) {
      this.ws.close();
      await this.closed;
    }
  }
}

for (const store of ['pglite', 'postgres'] as const) {
  describe(`API bad input (${store})`, () => {
    let net: TestNetwork;
    let url: string;
    const alice = generateIdentity();
    const mallory = generateIdentity();
    let aliceClient: GridworkClient;
    /** A one-file bundle alice uploaded: raw submits of hers name it. */
    let tinyBundle: { manifest: string };
    const raw: RawProvider[] = [];

    async function send(
      method: string,
      path: string,
      init: { headers?: Record<string, string>; body?: string | Uint8Array | ReadableStream<Uint8Array> } = {},
    ): Promise<Res> {
      const res = await fetch(`${url}${path}`, {
        method,
        ...(init.headers ? { headers: init.headers } : {}),
        ...(init.body === undefined ? {} : { body: init.body }),
        ...(init.body instanceof ReadableStream ? { duplex: 'half' } : {}),
      } as RequestInit);
      const text = await res.text();
      let body: unknown = text;
      try {
        body = JSON.parse(text);
      } catch {}
      return { status: res.status, body, text };
    }

    /** A properly signed request; `json` may be a string to send verbatim. */
    function signed(id: Identity, method: string, path: string, json?: unknown): Promise<Res> {
      if (json === undefined) return send(method, path, { headers: signRequest(id, method, path) });
      const body = typeof json === 'string' ? json : JSON.stringify(json);
      return send(method, path, { headers: { 'content-type': 'application/json', ...signRequest(id, method, path, body) }, body });
    }

    async function jobCount(): Promise<number> {
      const r = await internalsOf(net.coordinator)
        .db.selectFrom('jobs')
        .select((eb) => eb.fn.countAll<string>().as('n'))
        .executeTakeFirstOrThrow();
      return Number(r.n);
    }

    async function missing(digest: string): Promise<boolean> {
      const r = await signed(alice, 'POST', '/v1/blobs/missing', { digests: [digest] });
      assert.equal(r.status, 200, r.text);
      return (r.body as { missing: string[] }).missing.includes(digest);
    }

    /** Nothing of this digest on disk: neither the blob nor a leftover temporary file. */
    function blobFilesOf(digest: string): string[] {
      const dir = join(net.coordinator.config.dataDir, 'blobs', digest.slice(0, 2));
      return existsSync(dir) ? readdirSync(dir).filter((f) => f.startsWith(digest)) : [];
    }

    /** Submits a bad body as alice and checks the refusal and that no job appeared. */
    async function refusedSubmit(body: unknown, status: number, code: string, message: RegExp): Promise<void> {
      const before = await jobCount();
      const res = await signed(alice, 'POST', '/v1/jobs', body);
      assertError(res, status, code, message);
      assert.equal(await jobCount(), before, 'no job was created');
    }

    before(async () => {
      net = await startTestNetwork({ store, coordinator: { maxJsonBytes: MAX_JSON, maxBlobBytes: MAX_BLOB, heartbeatIntervalMs: 2000 } });
      url = net.coordinator.url;
      aliceClient = await net.fundedClient('100', alice);
      tinyBundle = await uploadTinyBundle(aliceClient);
    });

    after(async () => {
      await Promise.all(raw.map((p) => p.close()));
      const schema = net?.coordinator.config.databaseSchema;
      await net?.close();
      if (store === 'postgres' && schema && schema !== 'public') {
        const c = new pg.Client({ connectionString: net.coordinator.config.databaseUrl });
        await c.connect();
        await c.query(`drop schema if exists ${schema} cascade`);
        await c.end();
      }
    });

    describe('happy path', () => {
      it('GET /healthz answers 200 without a signature', async () => {
        const res = await send('GET', '/healthz');
        assert.equal(res.status, 200);
        assert.equal((res.body as { ok: boolean }).ok, true);
      });

      it('GET /openapi.json is an OpenAPI 3 document with the job spec schema under /v1/jobs', async () => {
        const res = await send('GET', '/openapi.json');
        assert.equal(res.status, 200);
        const doc = res.body as { openapi: string; paths: Record<string, Record<string, any>> };
        assert.match(doc.openapi, /^3\./);
        const post = doc.paths['/v1/jobs']?.post;
        assert.ok(post, 'POST /v1/jobs is documented');
        const body = post.requestBody.content['application/json'].schema;
        assert.deepEqual(body.required.slice().sort(), ['inputs', 'spec']);
        const jobSpec = body.properties.spec;
        assert.equal(jobSpec.additionalProperties, false);
        assert.ok(jobSpec.properties.resources.properties.cpu, 'spec.resources.cpu is in the schema');
        assert.ok(jobSpec.properties.runtime.properties.command, 'spec.runtime.command is in the schema');
        assert.ok(doc.paths['/v1/jobs/{id}']?.get, 'GET /v1/jobs/{id} is documented');
      });

      it('GridworkClient.submit of a tiny bundle is accepted', async () => {
        const dir = join(net.dir, 'tiny-job');
        await mkdir(join(dir, 'work'), { recursive: true });
        await writeFile(join(dir, 'work', 'main.mjs'), 'console.log("hello from gridwork");\n');
        const job = await aliceClient.submit(spec('tiny-bundle', { runtime: { kind: 'bundle', path: './work', command: ['node', 'main.mjs'] } }), {
          baseDir: dir,
        });
        assert.match(job.id, /^job_[a-z2-7]{16}$/);
        assert.ok(['pending', 'matching'].includes(job.state), job.state);
        assert.equal(job.owner, alice.publicKey);
        assert.equal(job.tasks.length, 1);
        assert.equal(job.tasks[0]?.state, 'queued');
        const listed = await aliceClient.list();
        assert.deepEqual(
          listed.map((j) => j.id),
          [job.id],
        );
        const again = await aliceClient.get(job.id);
        assert.equal(again.name, 'tiny-bundle');
      });
    });

    describe('bodies', () => {
      it('malformed JSON → 400 BAD_REQUEST', async () => {
        const before = await jobCount();
        const res = await signed(alice, 'POST', '/v1/jobs', '{"spec": {"version": 1,');
        assertError(res, 400, 'BAD_REQUEST', /malformed JSON/);
        assert.equal(await jobCount(), before);
      });

      it('unknown top-level field → 400 VALIDATION_FAILED naming it', async () => {
        await refusedSubmit({ spec: spec('extra-field'), inputs: [], priority: 9 }, 400, 'VALIDATION_FAILED', /priority/);
      });

      it('unknown field inside the spec → 400 INVALID_SPEC naming spec.resources.colour', async () => {
        const s = spec('colour');
        await refusedSubmit({ spec: { ...s, resources: { ...s.resources, colour: 'red' } }, inputs: [] }, 400, 'INVALID_SPEC', /spec\.resources\.colour/);
      });

      it('wrong type (cpu "2") is not coerced → 400 INVALID_SPEC naming spec.resources.cpu', async () => {
        await refusedSubmit(
          { spec: { ...spec('cpu-string'), resources: { cpu: '2', memoryGiB: 1 } }, inputs: [] },
          400,
          'INVALID_SPEC',
          /spec\.resources\.cpu.*number/,
        );
      });

      it('negative cpu → 400 INVALID_SPEC', async () => {
        await refusedSubmit({ spec: spec('cpu-negative', { resources: { cpu: -1, memoryGiB: 1 } }), inputs: [] }, 400, 'INVALID_SPEC', /spec\.resources\.cpu/);
      });

      it('absurd memory → 400 INVALID_SPEC', async () => {
        await refusedSubmit(
          { spec: spec('memory-absurd', { resources: { cpu: 1, memoryGiB: 1e12 } }), inputs: [] },
          400,
          'INVALID_SPEC',
          /spec\.resources\.memoryGiB/,
        );
      });

      it('body over maxJsonBytes → 413 PAYLOAD_TOO_LARGE', async () => {
        const before = await jobCount();
        const big = JSON.stringify({
          spec: { ...spec('too-big'), runtime: { kind: 'container', image: 'x', command: ['true', 'x'.repeat(MAX_JSON)] } },
          inputs: [],
        });
        assert.ok(Buffer.byteLength(big) > MAX_JSON);
        assertError(await signed(alice, 'POST', '/v1/jobs', big), 413, 'PAYLOAD_TOO_LARGE', /larger than the limit/);
        assert.equal(await jobCount(), before);
      });

      it('body over maxJsonBytes sent chunked (no content-length) → 413 PAYLOAD_TOO_LARGE', async () => {
        const before = await jobCount();
        const big = Buffer.from(JSON.stringify({ spec: spec('too-big-chunked'), inputs: [], pad: 'x'.repeat(2 * MAX_JSON) }));
        const headers = { 'content-type': 'application/json', ...signRequest(alice, 'POST', '/v1/jobs', big) };
        const stream = new ReadableStream<Uint8Array>({
          start(c) {
            for (let i = 0; i < big.length; i += 16 * 1024) c.enqueue(big.subarray(i, i + 16 * 1024));
            c.close();
          },
        });
        assertError(await send('POST', '/v1/jobs', { headers, body: stream }), 413, 'PAYLOAD_TOO_LARGE');
        assert.equal(await jobCount(), before);
      });

      it('submit referencing a blob never uploaded → 409 BLOB_MISSING', async () => {
        const ghost = sha256Hex(randomBytes(32));
        await refusedSubmit(
          { spec: spec('ghost-bundle', { runtime: { kind: 'bundle', path: './w', command: ['node', 'x.mjs'] } }), bundle: { manifest: ghost }, inputs: [] },
          409,
          'BLOB_MISSING',
          new RegExp(ghost),
        );
      });
    });

    describe('blobs', () => {
      it('bytes that do not match the digest in the path → 400 DIGEST_MISMATCH; the digest stays missing', async () => {
        const claimed = sha256Hex('what I promised');
        const headers = { 'content-type': 'application/octet-stream', ...signRequest(alice, 'PUT', `/v1/blobs/${claimed}`, { digest: claimed }) };
        const res = await send('PUT', `/v1/blobs/${claimed}`, { headers, body: Buffer.from('what I sent instead') });
        assertError(res, 400, 'DIGEST_MISMATCH', new RegExp(`not ${claimed}`));
        assert.equal(await missing(claimed), true);
        assert.deepEqual(blobFilesOf(claimed), []);
      });

      it('blob over maxBlobBytes (content-length) → 413 PAYLOAD_TOO_LARGE; not stored', async () => {
        const bytes = randomBytes(MAX_BLOB + 1);
        const digest = sha256Hex(bytes);
        const headers = { 'content-type': 'application/octet-stream', ...signRequest(alice, 'PUT', `/v1/blobs/${digest}`, { digest }) };
        assertError(await send('PUT', `/v1/blobs/${digest}`, { headers, body: bytes }), 413, 'PAYLOAD_TOO_LARGE', new RegExp(`${MAX_BLOB}`));
        assert.equal(await missing(digest), true);
        assert.deepEqual(blobFilesOf(digest), []);
      });

      it('blob over maxBlobBytes streamed chunked → 413 PAYLOAD_TOO_LARGE; not stored', async () => {
        const bytes = randomBytes(MAX_BLOB + 64 * 1024);
        const digest = sha256Hex(bytes);
        const headers = { 'content-type': 'application/octet-stream', ...signRequest(alice, 'PUT', `/v1/blobs/${digest}`, { digest }) };
        const stream = new ReadableStream<Uint8Array>({
          start(c) {
            for (let i = 0; i < bytes.length; i += 64 * 1024) c.enqueue(bytes.subarray(i, i + 64 * 1024));
            c.close();
          },
        });
        assertError(await send('PUT', `/v1/blobs/${digest}`, { headers, body: stream }), 413, 'PAYLOAD_TOO_LARGE');
        assert.equal(await missing(digest), true);
        assert.deepEqual(blobFilesOf(digest), []);
      });

      it('blob with a wrong content-type → 415 UNSUPPORTED_MEDIA_TYPE; not stored', async () => {
        const bytes = Buffer.from('plain text is not how blobs travel');
        const digest = sha256Hex(bytes);
        const headers = { 'content-type': 'text/plain', ...signRequest(alice, 'PUT', `/v1/blobs/${digest}`, { digest }) };
        assertError(await send('PUT', `/v1/blobs/${digest}`, { headers, body: bytes }), 415, 'UNSUPPORTED_MEDIA_TYPE', /octet-stream/);
        assert.equal(await missing(digest), true);
      });

      it('a correct upload is stored (control for the cases above)', async () => {
        const bytes = Buffer.from(`a real blob ${randomBytes(8).toString('hex')}`);
        const digest = sha256Hex(bytes);
        assert.equal(await missing(digest), true);
        const headers = { 'content-type': 'application/octet-stream', ...signRequest(alice, 'PUT', `/v1/blobs/${digest}`, { digest }) };
        const res = await send('PUT', `/v1/blobs/${digest}`, { headers, body: bytes });
        assert.equal(res.status, 201, res.text);
        assert.equal(await missing(digest), false);
        assert.equal(blobFilesOf(digest).length, 1);
      });
    });

    describe('authentication', () => {
      it('unsigned request → 401 UNAUTHENTICATED', async () => {
        const before = await jobCount();
        const body = JSON.stringify({ spec: spec('unsigned'), inputs: [] });
        assertError(await send('POST', '/v1/jobs', { headers: { 'content-type': 'application/json' }, body }), 401, 'UNAUTHENTICATED', /x-gridwork-signature/);
        assertError(await send('GET', '/v1/jobs'), 401, 'UNAUTHENTICATED');
        assert.equal(await jobCount(), before);
      });

      it('body changed after signing → 401 BAD_SIGNATURE', async () => {
        const before = await jobCount();
        const signedBody = JSON.stringify({ spec: spec('as-signed'), inputs: [] });
        const sentBody = JSON.stringify({ spec: spec('as-tampered'), inputs: [] });
        const headers = { 'content-type': 'application/json', ...signRequest(alice, 'POST', '/v1/jobs', signedBody) };
        assertError(await send('POST', '/v1/jobs', { headers, body: sentBody }), 401, 'BAD_SIGNATURE', /signature does not verify/);
        assert.equal(await jobCount(), before);
      });

      it('a signature by another key (forged key header) → 401 BAD_SIGNATURE', async () => {
        const headers = { ...signRequest(mallory, 'GET', '/v1/jobs'), 'x-gridwork-key': alice.publicKey };
        assertError(await send('GET', '/v1/jobs', { headers }), 401, 'BAD_SIGNATURE');
      });

      it('a request signed for another path → 401 BAD_SIGNATURE', async () => {
        const headers = signRequest(alice, 'GET', '/v1/providers');
        assertError(await send('GET', '/v1/jobs', { headers }), 401, 'BAD_SIGNATURE');
      });

      it('stale timestamp → 401 STALE_REQUEST', async () => {
        const before = await jobCount();
        const body = JSON.stringify({ spec: spec('stale'), inputs: [] });
        const headers = { 'content-type': 'application/json', ...signRequest(alice, 'POST', '/v1/jobs', body, Date.now() - 10 * 60_000) };
        assertError(await send('POST', '/v1/jobs', { headers, body }), 401, 'STALE_REQUEST', /timestamp/);
        const future = signRequest(alice, 'GET', '/v1/jobs', undefined, Date.now() + 10 * 60_000);
        assertError(await send('GET', '/v1/jobs', { headers: future }), 401, 'STALE_REQUEST');
        assert.equal(await jobCount(), before);
      });

      it('replayed POST with identical headers → 409 REPLAYED_REQUEST; no second job', async () => {
        const body = JSON.stringify({ spec: spec('replayed-once'), bundle: tinyBundle, inputs: [] });
        const headers = { 'content-type': 'application/json', ...signRequest(alice, 'POST', '/v1/jobs', body) };
        const before = await jobCount();
        const first = await send('POST', '/v1/jobs', { headers, body });
        assert.equal(first.status, 201, first.text);
        const second = await send('POST', '/v1/jobs', { headers, body });
        assertError(second, 409, 'REPLAYED_REQUEST', /nonce/);
        assert.equal(await jobCount(), before + 1);
        const mine = await aliceClient.list();
        assert.equal(mine.filter((j) => j.name === 'replayed-once').length, 1);
      });

      it('replayed GET → 409 REPLAYED_REQUEST', async () => {
        const headers = signRequest(alice, 'GET', '/v1/jobs');
        const first = await send('GET', '/v1/jobs', { headers });
        assert.equal(first.status, 200, first.text);
        assertError(await send('GET', '/v1/jobs', { headers }), 409, 'REPLAYED_REQUEST');
      });
    });

    describe("someone else's job", () => {
      let job: JobView;
      let manifest: string;

      before(async () => {
        const dir = join(net.dir, 'private-job');
        await mkdir(join(dir, 'work'), { recursive: true });
        await writeFile(join(dir, 'work', 'secret.mjs'), 'console.log("alice only");\n');
        job = await aliceClient.submit(spec('private', { runtime: { kind: 'bundle', path: './work', command: ['node', 'secret.mjs'] } }), { baseDir: dir });
        manifest = (await packBundle(join(dir, 'work'))).manifestDigest;
        // Let the scheduler settle it (no provider fits: it waits in 'matching'), so that any
        // later change could only come from the requests under test.
        const submitted = job.id;
        job = await until(
          () => aliceClient.get(submitted),
          (j) => j.state === 'matching',
          { what: 'the job to wait for a match' },
        );
      });

      it('the owner can read it (control)', async () => {
        const res = await signed(alice, 'GET', `/v1/jobs/${job.id}/blobs/${manifest}`);
        assert.equal(res.status, 200);
        assert.equal(sha256Hex(res.text), manifest);
        assert.equal((await signed(alice, 'GET', `/v1/jobs/${job.id}`)).status, 200);
      });

      for (const [what, method, suffix] of [
        ['GET job', 'GET', ''],
        ['cancel', 'POST', '/cancel'],
        ['events', 'GET', '/events'],
        ['logs', 'GET', '/logs'],
        ['blob download', 'GET', '/blobs/MANIFEST'],
      ] as const) {
        it(`${what} by another account → 404 JOB_NOT_FOUND, as for a job that does not exist; the job is untouched`, async () => {
          const before = await aliceClient.get(job.id);
          const res = await signed(mallory, method, `/v1/jobs/${job.id}${suffix.replace('MANIFEST', manifest)}`);
          assertError(res, 404, 'JOB_NOT_FOUND', new RegExp(`${job.id} does not exist`));
          assert.doesNotMatch(res.text, /alice only/);
          assert.deepEqual(await aliceClient.get(job.id), before);
        });
      }

      it('the job is not in the other account’s list', async () => {
        const res = await signed(mallory, 'GET', '/v1/jobs');
        assert.equal(res.status, 200);
        assert.deepEqual((res.body as { jobs: unknown[] }).jobs, []);
      });

      it('unknown job id → 404 JOB_NOT_FOUND', async () => {
        const ghost = newId('job');
        assertError(await signed(alice, 'GET', `/v1/jobs/${ghost}`), 404, 'JOB_NOT_FOUND', new RegExp(ghost));
        assertError(await signed(alice, 'POST', `/v1/jobs/${ghost}/cancel`), 404, 'JOB_NOT_FOUND');
      });

      it('malformed job id → 400 VALIDATION_FAILED naming the param', async () => {
        assertError(await signed(alice, 'GET', '/v1/jobs/not-a-job-id'), 400, 'VALIDATION_FAILED', /params id/);
        assertError(await signed(alice, 'GET', `/v1/jobs/${job.id}/blobs/not-a-digest`), 400, 'VALIDATION_FAILED', /digest/);
      });

      it('unknown route → 404 NOT_FOUND', async () => {
        assertError(await signed(alice, 'GET', '/v1/nowhere'), 404, 'NOT_FOUND', /\/v1\/nowhere/);
        const before = await aliceClient.get(job.id);
        assertError(await signed(alice, 'DELETE', `/v1/jobs/${job.id}`), 404, 'NOT_FOUND');
        assert.deepEqual(await aliceClient.get(job.id), before);
      });
    });

    describe('provider WebSocket', () => {
      it('a provider reconnecting with work that is no longer its lease is told to stop it', async () => {
        const id = generateIdentity();
        const h = hello(id, 'stale-work');
        const first = await RawProvider.connect(url, id);
        first.send(h);
        await first.next((m) => m.type === 'welcome', 'welcome');
        first.ws.close();
        await first.closed;
        // Same agent instance, back after an outage, still running something the coordinator
        // does not (or no longer) count as its lease.
        const second = await RawProvider.connect(url, id);
        second.send({ ...h, running: ['lease_aaaaaaaaaaaaaaaa'] });
        await second.next((m) => m.type === 'welcome', 'welcome');
        const cancel = await second.next((m) => m.type === 'lease.cancel', 'a cancel of the stale work');
        assert.equal(cancel.leaseId, 'lease_aaaaaaaaaaaaaaaa');
        assert.match(String(cancel.reason), /no longer held/);
        second.send({ type: 'ack', seq: cancel.seq });
        second.ws.close();
        await second.closed;
      });

      it('an unsigned upgrade is refused with HTTP 401', async () => {
        const err = (await RawProvider.connect(url, generateIdentity(), {}).then(
          () => assert.fail('upgrade accepted'),
          (e: unknown) => e,
        )) as { status: number; text: string };
        assert.equal(err.status, 401);
        assert.equal(JSON.parse(err.text).error.code, 'UNAUTHENTICATED');
      });

      it('an upgrade signed for another path is refused with HTTP 401', async () => {
        const id = generateIdentity();
        const err = (await RawProvider.connect(url, id, signRequest(id, 'GET', '/v1/providers')).then(
          () => assert.fail('upgrade accepted'),
          (e: unknown) => e,
        )) as { status: number; text: string };
        assert.equal(err.status, 401);
        assert.equal(JSON.parse(err.text).error.code, 'BAD_SIGNATURE');
      });

      it('a message before hello gets PROTOCOL_ERROR and the socket is closed', async () => {
        const p = await RawProvider.connect(url);
        raw.push(p);
        p.send({ type: 'heartbeat', running: [] });
        const err = await p.next((m) => m.type === 'error', 'error');
        assert.equal(err.code, 'PROTOCOL_ERROR');
        assert.match(String(err.message), /hello/);
        const closed = await p.closed;
        assert.equal(closed.code, 4002);
        const row = await internalsOf(net.coordinator).db.selectFrom('providers').select('id').where('id', '=', p.identity.publicKey).executeTakeFirst();
        assert.equal(row, undefined, 'no provider was registered');
      });

      it('a non-JSON message gets PROTOCOL_ERROR', async () => {
        const p = await RawProvider.connect(url);
        raw.push(p);
        p.ws.send('{not json');
        const err = await p.next((m) => m.type === 'error', 'error');
        assert.equal(err.code, 'PROTOCOL_ERROR');
        assert.equal((await p.closed).code, 4002);
      });

      it('a hello of the wrong shape is refused and registers nothing', async () => {
        const cases: [string, string, RegExp, (id: Identity) => Record<string, unknown>][] = [
          ['slots 0', 'PROTOCOL_ERROR', /invalid message/, (id) => hello(id, 'bad-slots', { slots: 0 })],
          ['unknown field', 'PROTOCOL_ERROR', /invalid message/, (id) => hello(id, 'bad-extra', { root: true })],
          [
            'cores as a string',
            'PROTOCOL_ERROR',
            /invalid message/,
            (id) => hello(id, 'bad-hw', { hardware: { cpu: { model: 'x', cores: '4' }, memoryGiB: 8, diskGiB: 100, gpus: [] } }),
          ],
          ['protocol 2', 'PROTOCOL_ERROR', /invalid message/, (id) => hello(id, 'bad-protocol', { protocol: 2 })],
          ['no asks', 'PROTOCOL_ERROR', /invalid message/, (id) => ({ ...hello(id, 'bad-no-asks'), asks: undefined })],
          ['asks signed by another key', 'BAD_SIGNATURE', /asks/, () => hello(generateIdentity(), 'bad-asks-signature')],
        ];
        for (const [what, code, message, make] of cases) {
          const p = await RawProvider.connect(url);
          raw.push(p);
          p.send(make(p.identity));
          const err = await p.next((m) => m.type === 'error' || m.type === 'welcome', `refusal of ${what}`);
          assert.equal(err.type, 'error', `${what}: was welcomed`);
          assert.equal(err.code, code, what);
          assert.match(String(err.message), message, what);
          assert.equal((await p.closed).code, 4002, what);
          const row = await internalsOf(net.coordinator).db.selectFrom('providers').select('id').where('id', '=', p.identity.publicKey).executeTakeFirst();
          assert.equal(row, undefined, `${what}: no provider was registered`);
        }
      });

      it('lease.finished from a provider that does not own the lease → NOT_LEASE_OWNER, nothing changes; the owner then completes it exactly once', async () => {
        const a = await RawProvider.connect(url);
        const b = await RawProvider.connect(url);
        raw.push(a, b);
        const wa = await a.hello('raw-a');
        const wb = await b.hello('raw-b');
        assert.equal(wa.providerId, a.identity.publicKey);
        assert.equal(wb.lastApplied, 0);

        const job = await aliceClient.submitPrepared({ spec: spec('contested', { resources: { cpu: 1, memoryGiB: 1 } }), bundle: tinyBundle, inputs: [] });
        const isAssign = (m: Msg) => m.type === 'lease.assign' && (m.lease as { jobId: string }).jobId === job.id;
        const first = await Promise.race([
          a.next(isAssign, 'assign to a').then((m) => ({ m, owner: a, other: b })),
          b.next(isAssign, 'assign to b').then((m) => ({ m, owner: b, other: a })),
        ]);
        const { owner, other } = first;
        other.stopWaiting();
        const assign = first.m as Msg & { seq: number; lease: { leaseId: string; jobId: string; taskIndex: number } };
        assert.equal(assign.lease.taskIndex, 0);
        assert.ok(!other.messages.some(isAssign), 'only one provider got the lease');
        const leaseId = assign.lease.leaseId;
        owner.send({ type: 'ack', seq: assign.seq });
        const leaseRow = () => internalsOf(net.coordinator).db.selectFrom('leases').selectAll().where('id', '=', leaseId).executeTakeFirstOrThrow();
        await until(leaseRow, (l) => l.state === 'starting', { what: 'the acked lease to be starting' });

        const jobBefore = await aliceClient.get(job.id);
        assert.equal(jobBefore.state, 'running');
        assert.equal(jobBefore.tasks[0]?.state, 'assigned');
        assert.equal(jobBefore.tasks[0]?.providerId, owner.identity.publicKey);
        const leaseBefore = await leaseRow();

        // The other provider claims the lease finished.
        const forged = { seq: 1, type: 'lease.finished', leaseId, outcome: { kind: 'exited', exitCode: 0 }, durationMs: 1, outputs: [] };
        other.send(forged);
        const refusal = await other.next((m) => m.type === 'error', 'NOT_LEASE_OWNER');
        assert.equal(refusal.code, 'NOT_LEASE_OWNER');
        assert.match(String(refusal.message), new RegExp(leaseId));
        // The seq is consumed (acked) so the other provider's stream goes on.
        await other.next((m) => m.type === 'ack' && m.seq === 1, 'ack of the refused report');
        assert.deepEqual(await aliceClient.get(job.id), jobBefore);
        assert.deepEqual(await leaseRow(), leaseBefore);
        assert.equal(other.ws.readyState, WebSocket.OPEN, 'a refused report does not end the connection');

        // The owner uploads an output, starts and finishes the lease.
        const output = Buffer.from(`result of ${leaseId}\n`);
        const digest = createHash('sha256').update(output).digest('hex');
        const put = await send('PUT', `/v1/blobs/${digest}`, {
          headers: { 'content-type': 'application/octet-stream', ...signRequest(owner.identity, 'PUT', `/v1/blobs/${digest}`, { digest }) },
          body: output,
        });
        assert.equal(put.status, 201, put.text);

        owner.send({ seq: 1, type: 'lease.started', leaseId });
        await owner.next((m) => m.type === 'ack' && m.seq === 1, 'ack 1');
        const finished = {
          seq: 2,
          type: 'lease.finished',
          leaseId,
          outcome: { kind: 'exited', exitCode: 0 },
          durationMs: 42,
          outputs: [{ path: 'out.txt', digest, size: output.length }],
        };
        owner.send(finished);
        await owner.next((m) => m.type === 'ack' && m.seq === 2, 'ack 2');
        const done = await until(
          () => aliceClient.get(job.id),
          (j) => j.state === 'succeeded',
          { what: 'the job to succeed' },
        );
        assert.equal(done.tasks[0]?.state, 'succeeded');
        assert.equal(done.tasks[0]?.durationMs, 42);
        assert.deepEqual(done.tasks[0]?.outputs, finished.outputs);
        assert.equal((await leaseRow()).state, 'completed');

        // A duplicate seq is acked again but not applied again, even with a different payload.
        const acksBefore = owner.messages.filter((m) => m.type === 'ack' && m.seq === 2).length;
        owner.send(finished);
        await owner.waitNew((m) => m.type === 'ack' && m.seq === 2, 'ack of the duplicate');
        owner.send({ ...finished, outcome: { kind: 'exited', exitCode: 3 }, outputs: [] });
        await owner.waitNew((m) => m.type === 'ack' && m.seq === 2, 'ack of the second duplicate');
        assert.equal(owner.messages.filter((m) => m.type === 'ack' && m.seq === 2).length, acksBefore + 2);
        assert.ok(!owner.messages.some((m) => m.type === 'error'), JSON.stringify(owner.messages.filter((m) => m.type === 'error')));
        const after = await aliceClient.get(job.id);
        assert.deepEqual(after, done);
        assert.equal(after.tasks[0]?.outputs.length, 1);
        const outputLinks = await internalsOf(net.coordinator)
          .db.selectFrom('job_blobs')
          .selectAll()
          .where('job_id', '=', job.id)
          .where('role', '=', 'output')
          .execute();
        assert.equal(outputLinks.length, 1);
        const provider = await internalsOf(net.coordinator)
          .db.selectFrom('providers')
          .select('in_seq')
          .where('id', '=', owner.identity.publicKey)
          .executeTakeFirstOrThrow();
        assert.equal(provider.in_seq, 2n);

        // The requester can fetch the output; the refused provider cannot.
        const dl = await signed(alice, 'GET', `/v1/jobs/${job.id}/blobs/${digest}`);
        assert.equal(dl.status, 200);
        assert.equal(dl.text, output.toString());
        assertError(await signed(other.identity, 'GET', `/v1/jobs/${job.id}/blobs/${digest}`), 404, 'JOB_NOT_FOUND');
      });
    });
    describe('provider reports sent back to back', () => {
      it('a run of reports gets every answer it would get one by one: a refused one among them, the others applied in order; a gap applies what precedes it', async () => {
        const p = await RawProvider.connect(url);
        raw.push(p);
        await p.hello('raw-runner', { attributes: { region: 'runners' } });
        const job = await aliceClient.submitPrepared({
          spec: spec('run-of-reports', { resources: { cpu: 1, memoryGiB: 1 }, placement: { regions: ['runners'] } }),
          bundle: tinyBundle,
          inputs: [],
        });
        const assign = (await p.next((m) => m.type === 'lease.assign' && (m.lease as { jobId: string }).jobId === job.id, 'the assignment')) as Msg & {
          seq: number;
          lease: { leaseId: string };
        };
        const leaseId = assign.lease.leaseId;
        // All in one go, as an agent with several leases sends them: an ack, a start, a report on a lease
        // that does not exist (refused, consumed), the finish.
        p.send({ type: 'ack', seq: assign.seq });
        p.send({ seq: 1, type: 'lease.started', leaseId });
        p.send({ seq: 2, type: 'lease.service', leaseId: 'lease_aaaaaaaaaaaaaaaa', health: 'healthy' });
        p.send({ seq: 3, type: 'lease.finished', leaseId, outcome: { kind: 'exited', exitCode: 0 }, durationMs: 7, outputs: [] });
        await p.next((m) => m.type === 'ack' && m.seq === 3, 'ack 3');
        assert.deepEqual(
          p.messages.filter((m) => m.type === 'ack').map((m) => m.seq),
          [1, 2, 3],
          'every report acked once, in order',
        );
        const errors = p.messages.filter((m) => m.type === 'error');
        assert.deepEqual(
          errors.map((m) => m.code),
          ['LEASE_NOT_FOUND'],
        );
        const done = await until(
          () => aliceClient.get(job.id),
          (j) => j.state === 'succeeded',
          { what: 'the job to succeed' },
        );
        assert.equal(done.tasks[0]?.durationMs, 7);
        const db = internalsOf(net.coordinator).db;
        const inSeq = async () => (await db.selectFrom('providers').select('in_seq').where('id', '=', p.identity.publicKey).executeTakeFirstOrThrow()).in_seq;
        assert.equal(await inSeq(), 3n);
        assert.equal(p.ws.readyState, WebSocket.OPEN);

        // A duplicate, a new report and then a gap, in one go: the first two are answered, the gap closes the socket.
        p.send({ seq: 3, type: 'lease.started', leaseId });
        p.send({ seq: 4, type: 'provider.state', state: 'online' });
        p.send({ seq: 6, type: 'provider.state', state: 'draining' });
        const closed = await p.closed;
        assert.equal(closed.code, 4002);
        assert.deepEqual(
          p.messages.filter((m) => m.type === 'ack').map((m) => m.seq),
          [1, 2, 3, 3, 4],
        );
        assert.match(String(p.messages.find((m) => m.type === 'error' && m.code === 'PROTOCOL_ERROR')?.message), /sequence gap at 6/);
        assert.equal(await inSeq(), 4n);
        const state = await db.selectFrom('providers').select('state').where('id', '=', p.identity.publicKey).executeTakeFirstOrThrow();
        assert.equal(state.state, 'online', 'nothing after the gap was applied');
      });
    });

    describe('whose data a job may use, and idempotent submits', () => {
      const rejectsWith = (p: Promise<unknown>, code: string) => assert.rejects(p, (e: unknown) => e instanceof GridworkError && e.code === code);

      it("outputs a provider did not upload during its lease (someone else's digest) do not count: the lease is lost, nothing succeeds", async () => {
        const p = await RawProvider.connect(url);
        raw.push(p);
        await p.hello('raw-claimer', { attributes: { region: 'claimers' } });
        const secret = Buffer.from(`alice's data ${randomBytes(4).toString('hex')}\n`);
        const digest = createHash('sha256').update(secret).digest('hex');
        await aliceClient.uploadBlob(secret, digest);
        const job = await aliceClient.submitPrepared({
          spec: spec('claimed-output', { resources: { cpu: 1, memoryGiB: 1 }, placement: { regions: ['claimers'] }, maxRetries: 0 }),
          bundle: tinyBundle,
          inputs: [],
        });
        const assign = await p.next((m) => m.type === 'lease.assign' && (m.lease as { jobId: string }).jobId === job.id, 'the assignment');
        const leaseId = (assign.lease as { leaseId: string }).leaseId;
        p.send({ type: 'ack', seq: assign.seq });
        p.send({ seq: 1, type: 'lease.started', leaseId });
        p.send({
          seq: 2,
          type: 'lease.finished',
          leaseId,
          outcome: { kind: 'exited', exitCode: 0 },
          durationMs: 5,
          outputs: [{ path: 'stolen.txt', digest, size: secret.length }],
        });
        await p.next((m) => m.type === 'ack' && m.seq === 2, 'ack 2');
        const ended = await until(
          () => aliceClient.get(job.id),
          (j) => j.state === 'failed',
          { what: 'the job to fail' },
        );
        assert.match(ended.tasks[0]?.error ?? '', /upload/);
        assert.deepEqual(ended.tasks[0]?.outputs, []);
        assertError(await signed(p.identity, 'GET', `/v1/jobs/${job.id}/blobs/${digest}`), 404, 'JOB_NOT_FOUND');
      });

      it('a digest another account uploaded is no input or bundle of yours until you upload its bytes', async () => {
        const bob = generateIdentity();
        const bobClient = await net.fundedClient('10', bob);
        const bobBundle = await uploadTinyBundle(bobClient);
        const data = Buffer.from(`alice's input ${randomBytes(4).toString('hex')}\n`);
        const digest = createHash('sha256').update(data).digest('hex');
        await aliceClient.uploadBlob(data, digest);
        const inputs = [{ name: 'data', shard: false, files: [{ path: 'x.txt', digest, size: data.length }] }];
        const withInput = spec('borrowed-input', { inputs: [{ name: 'data', path: 'x.txt' }] });
        await rejectsWith(bobClient.submitPrepared({ spec: withInput, bundle: bobBundle, inputs }), 'BLOB_MISSING');
        const aliceOnly = await uploadTinyBundle(aliceClient, `alice only ${randomBytes(4).toString('hex')}`);
        await rejectsWith(bobClient.submitPrepared({ spec: spec('borrowed-bundle'), bundle: aliceOnly, inputs: [] }), 'BLOB_MISSING');
        const missing = await signed(bob, 'POST', '/v1/blobs/missing', { digests: [digest] });
        assert.deepEqual(JSON.parse(missing.text).missing, [digest], 'the blob exists, but bob has not uploaded it');
        await bobClient.uploadBlob(data, digest);
        const accepted = await bobClient.submitPrepared({ spec: withInput, bundle: bobBundle, inputs });
        assert.equal(accepted.owner, bob.publicKey);
      });

      it('a submit retried with its idempotency key returns the same job and holds the budget once; another request under that key is refused', async () => {
        const before = parseCredits((await aliceClient.balance()).available);
        const key = `submit-${randomBytes(6).toString('hex')}`;
        const request = { spec: spec('idempotent-submit'), bundle: tinyBundle, inputs: [] };
        const first = await aliceClient.submitPrepared(request, { idempotencyKey: key });
        const again = await aliceClient.submitPrepared(request, { idempotencyKey: key });
        assert.equal(again.id, first.id);
        const after = parseCredits((await aliceClient.balance()).available);
        assert.equal(before - after, parseCredits('1.00'), 'one budget held');
        await rejectsWith(aliceClient.submitPrepared({ ...request, spec: spec('another-job') }, { idempotencyKey: key }), 'IDEMPOTENCY_CONFLICT');
      });

      it('a container job is accepted (it waits for a provider offering containers), but not with a bundle beside it', async () => {
        const container = { ...spec('container-job'), runtime: { kind: 'container' as const, image: 'example/app:1', command: ['true'] } };
        await rejectsWith(aliceClient.submitPrepared({ spec: container, bundle: tinyBundle, inputs: [] }), 'VALIDATION_FAILED');
        const job = await aliceClient.submitPrepared({ spec: container, inputs: [] });
        assert.notEqual(job.state, 'failed', 'it waits for a provider');
        await aliceClient.cancel(job.id);
      });
    });
  });
}
