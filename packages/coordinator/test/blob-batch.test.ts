/**
 * Batch uploads (`POST /v1/blobs/batch/:digest`) against a real coordinator, on PGlite and
 * PostgreSQL: 2,000 small blobs stored and owned in one request and used as a job's inputs by a
 * real provider; every kind of bad batch refused with its code, leaving no blob row, no owner
 * row and no file behind — not even the good blobs that came before the bad frame.
 */
import { internalsOf } from '@gridwork/coordinator/internal';
import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import { existsSync, readdirSync } from 'node:fs';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import type { ErrorBody, JobSpec, JobView } from '@gridwork/protocol';
import { generateIdentity, type Identity, signRequest } from '@gridwork/protocol/node';
import { startTestNetwork, type TestNetwork } from '@gridwork/testkit';
import { installTxCounter, txDelta, txSnapshot } from '../../../bench/lib/txn-counter.ts';

const sha256 = (b: Uint8Array | string) => createHash('sha256').update(b).digest('hex');

interface Blob {
  digest: string;
  bytes: Buffer;
}

const blobOf = (bytes: Buffer | string): Blob => {
  const b = Buffer.isBuffer(bytes) ? bytes : Buffer.from(bytes);
  return { digest: sha256(b), bytes: b };
};

/** One frame: sha256, 4-byte big-endian length, bytes (`length` may lie, for the bad cases). */
function frame(b: Blob, length = b.bytes.length): Buffer {
  const header = Buffer.alloc(36);
  header.write(b.digest, 0, 32, 'hex');
  header.writeUInt32BE(length, 32);
  return Buffer.concat([header, b.bytes]);
}

const bodyOf = (blobs: readonly Blob[]) => Buffer.concat(blobs.map((b) => frame(b)));

/** Distinct small blobs: `n` of them, each `size` bytes or so, unique to this call. */
function smallBlobs(n: number, tag: string, size = 64): Blob[] {
  const salt = randomBytes(8).toString('hex');
  return Array.from({ length: n }, (_, i) => blobOf(`${tag} ${salt} ${i} `.padEnd(size, '.')));
}

interface Res {
  status: number;
  body: unknown;
  text: string;
}

function assertError(res: Res, status: number, code: string, message?: RegExp): void {
  assert.equal(res.status, status, `expected HTTP ${status} ${code}, got ${res.status}: ${res.text.slice(0, 300)}`);
  const body = res.body as ErrorBody;
  assert.equal(body.error.code, code, res.text.slice(0, 300));
  if (message) assert.match(body.error.message, message);
}

installTxCounter();

for (const store of ['pglite', 'postgres'] as const) {
  describe(`batch blob uploads (${store})`, () => {
    let net: TestNetwork;
    let url: string;
    const alice = generateIdentity();

    before(async () => {
      // The job on the batch's blobs runs on one store: the provider's side does not depend on it.
      net = await startTestNetwork({ store, providers: store === 'pglite' ? 1 : 0 });
      url = net.coordinator.url;
      await net.fundedClient('100', alice);
    });
    after(async () => {
      await net?.close();
    });

    async function send(path: string, headers: Record<string, string>, body: Buffer | ReadableStream<Uint8Array>): Promise<Res> {
      const res = await fetch(`${url}${path}`, {
        method: 'POST',
        headers,
        body,
        ...(body instanceof ReadableStream ? { duplex: 'half' } : {}),
      } as RequestInit);
      const text = await res.text();
      let parsed: unknown = text;
      try {
        parsed = JSON.parse(text);
      } catch {}
      return { status: res.status, body: parsed, text };
    }

    /** A batch as the SDK sends it: path and signature name the body's sha256. */
    function postBatch(body: Buffer, id: Identity = alice, signedDigest = sha256(body)): Promise<Res> {
      const path = `/v1/blobs/batch/${signedDigest}`;
      return send(path, { 'content-type': 'application/octet-stream', ...signRequest(id, 'POST', path, { digest: signedDigest }) }, body);
    }

    function signedJson(id: Identity, method: string, path: string, json: unknown): Promise<Res> {
      const body = JSON.stringify(json);
      return fetch(`${url}${path}`, { method, headers: { 'content-type': 'application/json', ...signRequest(id, method, path, body) }, body }).then(
        async (r) => {
          const text = await r.text();
          return { status: r.status, body: JSON.parse(text) as unknown, text };
        },
      );
    }

    const db = () => internalsOf(net.coordinator).db;

    async function rowsOf(digests: readonly string[]): Promise<{ blobs: number; owners: number }> {
      const b = await db()
        .selectFrom('blobs')
        .select((eb) => eb.fn.countAll<string>().as('n'))
        .where('digest', 'in', digests)
        .executeTakeFirstOrThrow();
      const o = await db()
        .selectFrom('blob_owners')
        .select((eb) => eb.fn.countAll<string>().as('n'))
        .where('digest', 'in', digests)
        .executeTakeFirstOrThrow();
      return { blobs: Number(b.n), owners: Number(o.n) };
    }

    /** Files on disk named after these digests: stored blobs or leftover temporary files. */
    function filesOf(digests: readonly string[]): string[] {
      const listings = new Map<string, string[]>();
      const found: string[] = [];
      for (const d of digests) {
        const dir = join(net.coordinator.config.dataDir, 'blobs', d.slice(0, 2));
        let names = listings.get(dir);
        if (!names) {
          names = existsSync(dir) ? readdirSync(dir) : [];
          listings.set(dir, names);
        }
        found.push(...names.filter((f) => f.startsWith(d)));
      }
      return found;
    }

    /** Sends a bad batch; checks the refusal, and that none of `blobs` left a row or a file. */
    async function refused(res: Promise<Res>, blobs: readonly Blob[], status: number, code: string, message?: RegExp): Promise<void> {
      assertError(await res, status, code, message);
      const digests = blobs.map((b) => b.digest);
      assert.deepEqual(await rowsOf(digests), { blobs: 0, owners: 0 }, 'no blob or owner row');
      assert.deepEqual(filesOf(digests), [], 'no file, not even a temporary one');
    }

    it('stores and owns 2,000 small blobs in one request, in one transaction; a job takes them as inputs', async (t) => {
      const inputs = smallBlobs(2000, 'input');
      const script = blobOf(
        "import { readdirSync, readFileSync } from 'node:fs';\n" +
          "const dir = process.env.GRIDWORK_INPUTS + '/data';\n" +
          'const names = readdirSync(dir);\n' +
          "const ok = names.every((n) => readFileSync(dir + '/' + n, 'utf8').startsWith('input '));\n" +
          "console.log('inputs ' + names.length + ' ' + (ok ? 'intact' : 'CORRUPT'));\n" +
          'process.exit(names.length === 2000 && ok ? 0 : 1);\n',
      );
      const manifest = blobOf(JSON.stringify({ files: [{ path: 'main.mjs', digest: script.digest, size: script.bytes.length, executable: false }] }));
      const all = [...inputs, script, manifest];

      const before = txSnapshot();
      const started = performance.now();
      const res = await postBatch(bodyOf(all));
      t.diagnostic(`2,002 blobs in one request: ${Math.round(performance.now() - started)} ms`);
      const tx = txDelta(before, txSnapshot());
      assert.equal(res.status, 200, res.text);
      const stored = (res.body as { stored: { digest: string; size: number; created: boolean }[] }).stored;
      assert.deepEqual(
        stored,
        all.map((b) => ({ digest: b.digest, size: b.bytes.length, created: true })),
      );
      assert.deepEqual(await rowsOf(all.map((b) => b.digest)), { blobs: all.length, owners: all.length });
      // One transaction for the rows (plus the nonce and whatever the coordinator's sweeps did meanwhile),
      // where single uploads took about four writes each.
      assert.ok(tx.commits + tx.implicit - tx.implicitReads <= 10, `writes: ${JSON.stringify(tx)}`);
      const missing = await signedJson(alice, 'POST', '/v1/blobs/missing', { digests: all.map((b) => b.digest) });
      assert.deepEqual(missing.body, { missing: [] });

      const spec: JobSpec = {
        version: 1,
        name: 'batch-inputs',
        kind: 'batch',
        runtime: { kind: 'bundle', path: '.', command: ['node', 'main.mjs'] },
        inputs: [{ name: 'data', path: 'data/*' }],
        resources: { cpu: 1, memoryGiB: 1 },
        price: { maxPerHour: '1.00', budget: '1.00' },
      };
      const files = inputs.map((b, i) => ({ path: `f${String(i).padStart(4, '0')}.txt`, digest: b.digest, size: b.bytes.length }));
      const submitted = await signedJson(alice, 'POST', '/v1/jobs', {
        spec,
        bundle: { manifest: manifest.digest },
        inputs: [{ name: 'data', shard: false, files }],
      });
      // Accepted: the coordinator found every input (and the bundle) uploaded by alice.
      assert.ok(submitted.status === 200 || submitted.status === 201, submitted.text.slice(0, 300));
      if (store !== 'pglite') return;
      const client = net.client(alice);
      const job = await client.wait((submitted.body as JobView).id);
      const lines: string[] = [];
      for await (const l of client.logLines(job.id)) if (l.stream === 'stdout') lines.push(l.line);
      assert.equal(job.state, 'succeeded', `${JSON.stringify(job.tasks[0]?.error)} ${lines.join('\n')}`);
      assert.deepEqual(lines, ['inputs 2000 intact']);
    });

    it('blobs already stored: created is false; another account becomes an owner by sending the bytes', async () => {
      const blobs = smallBlobs(3, 'again');
      assert.equal((await postBatch(bodyOf(blobs))).status, 200);
      const again = await postBatch(bodyOf(blobs));
      assert.equal(again.status, 200, again.text);
      assert.deepEqual(
        (again.body as { stored: { created: boolean }[] }).stored.map((s) => s.created),
        [false, false, false],
      );
      const bob = generateIdentity();
      const mixed = [...blobs.slice(0, 1), ...smallBlobs(1, 'bob')];
      const res = await postBatch(bodyOf(mixed), bob);
      assert.equal(res.status, 200, res.text);
      assert.deepEqual(
        (res.body as { stored: { created: boolean }[] }).stored.map((s) => s.created),
        [false, true],
      );
      assert.deepEqual(await rowsOf([blobs[0]?.digest as string]), { blobs: 1, owners: 2 });
    });

    it('a blob whose bytes do not match its digest → 400 DIGEST_MISMATCH; the whole batch is refused', async () => {
      const good = smallBlobs(5, 'mismatch');
      const liar = { digest: sha256('what I promised'), bytes: Buffer.from('what I sent instead') };
      await refused(postBatch(bodyOf([...good, liar, ...smallBlobs(2, 'after')])), [...good, liar], 400, 'DIGEST_MISMATCH', /not [0-9a-f]{64}/);
    });

    it('a frame cut short (blob or header) → 400 BAD_REQUEST; nothing stored', async () => {
      const good = smallBlobs(3, 'truncated');
      const last = blobOf('the last blob, cut short');
      const cutBlob = Buffer.concat([bodyOf(good), frame(last).subarray(0, 36 + 5)]);
      await refused(postBatch(cutBlob), [...good, last], 400, 'BAD_REQUEST', /truncated/);
      const cutHeader = Buffer.concat([bodyOf(good), frame(last).subarray(0, 20)]);
      await refused(postBatch(cutHeader), [...good, last], 400, 'BAD_REQUEST', /truncated/);
      // A length that claims more than the body holds.
      const liar = Buffer.concat([bodyOf(good), frame(last, last.bytes.length + 100)]);
      await refused(postBatch(liar), [...good, last], 400, 'BAD_REQUEST', /truncated/);
    });

    it('the same digest twice → 400 BAD_REQUEST', async () => {
      const good = smallBlobs(3, 'duplicate');
      await refused(postBatch(bodyOf([...good, good[1] as Blob])), good, 400, 'BAD_REQUEST', /twice/);
    });

    it('an empty batch → 400 BAD_REQUEST', async () => {
      assertError(await postBatch(Buffer.alloc(0)), 400, 'BAD_REQUEST', /empty/);
    });

    it('more than 10,000 blobs → 413 PAYLOAD_TOO_LARGE', async () => {
      const blobs = Array.from({ length: 10_001 }, (_, i) => blobOf(`many ${i} ${randomBytes(4).toString('hex')}`));
      await refused(postBatch(bodyOf(blobs)), blobs, 413, 'PAYLOAD_TOO_LARGE', /10000 blobs/);
    });

    it('a blob over 1 MiB → 413 PAYLOAD_TOO_LARGE', async () => {
      const good = smallBlobs(2, 'big');
      const big = blobOf(randomBytes(1024 * 1024 + 1));
      await refused(postBatch(bodyOf([...good, big])), [...good, big], 413, 'PAYLOAD_TOO_LARGE', /1048576 bytes a blob/);
    });

    it('a body over 16 MiB → 413 PAYLOAD_TOO_LARGE, by its content-length or while it streams', async () => {
      const blobs = Array.from({ length: 17 }, () => blobOf(randomBytes(1024 * 1024 - 36)));
      const body = bodyOf(blobs);
      await refused(postBatch(body), blobs, 413, 'PAYLOAD_TOO_LARGE', /16777216/);
      // Chunked, no content-length: refused once the count passes the limit.
      const digest = sha256(body);
      const path = `/v1/blobs/batch/${digest}`;
      const stream = new ReadableStream<Uint8Array>({
        start(c) {
          for (let i = 0; i < body.length; i += 256 * 1024) c.enqueue(body.subarray(i, i + 256 * 1024));
          c.close();
        },
      });
      await refused(
        send(path, { 'content-type': 'application/octet-stream', ...signRequest(alice, 'POST', path, { digest }) }, stream),
        blobs,
        413,
        'PAYLOAD_TOO_LARGE',
      );
    });

    it('a body other than the signed one → 401 BAD_SIGNATURE; nothing stored', async () => {
      const signedFor = smallBlobs(3, 'signed');
      const sent = smallBlobs(3, 'swapped');
      // Well-formed frames, each blob true to its digest: only the body's digest gives it away.
      await refused(postBatch(bodyOf(sent), alice, sha256(bodyOf(signedFor))), [...signedFor, ...sent], 401, 'BAD_SIGNATURE');
    });

    it('a signature by another key, or none → 401; nothing stored', async () => {
      const blobs = smallBlobs(3, 'forged');
      const body = bodyOf(blobs);
      const digest = sha256(body);
      const path = `/v1/blobs/batch/${digest}`;
      const headers = signRequest(alice, 'POST', path, { digest });
      const forged = { ...headers, 'x-gridwork-signature': signRequest(generateIdentity(), 'POST', path, { digest })['x-gridwork-signature'] as string };
      await refused(send(path, { 'content-type': 'application/octet-stream', ...forged }, body), blobs, 401, 'BAD_SIGNATURE');
      await refused(send(path, { 'content-type': 'application/octet-stream' }, body), blobs, 401, 'UNAUTHENTICATED');
    });

    it('a replayed batch → 409 REPLAYED_REQUEST; nothing written again', async () => {
      const blobs = smallBlobs(3, 'replay');
      const body = bodyOf(blobs);
      const digest = sha256(body);
      const path = `/v1/blobs/batch/${digest}`;
      const headers = { 'content-type': 'application/octet-stream', ...signRequest(alice, 'POST', path, { digest }) };
      assert.equal((await send(path, headers, body)).status, 200);
      const owned = () =>
        db()
          .selectFrom('blob_owners')
          .select(['digest', 'uploaded_at'])
          .where(
            'digest',
            'in',
            blobs.map((b) => b.digest),
          )
          .orderBy('digest')
          .execute();
      const first = await owned();
      assertError(await send(path, headers, body), 409, 'REPLAYED_REQUEST');
      assert.deepEqual(await owned(), first, 'owner rows untouched');
    });

    it('a JSON body → 415 UNSUPPORTED_MEDIA_TYPE', async () => {
      const blobs = smallBlobs(1, 'json');
      const body = bodyOf(blobs);
      const digest = sha256(body);
      const path = `/v1/blobs/batch/${digest}`;
      const json = Buffer.from('{}');
      await refused(
        send(path, { 'content-type': 'application/json', ...signRequest(alice, 'POST', path, { digest }) }, json),
        blobs,
        415,
        'UNSUPPORTED_MEDIA_TYPE',
      );
    });
  });
}
