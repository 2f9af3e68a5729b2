/**
 * The SDK's uploads against a real coordinator (PGlite and PostgreSQL), seen through a counting
 * proxy: a submit with 2,000 small input files makes a handful of requests, not thousands;
 * large files still travel alone; progress reaches every file; a coordinator without batch
 * uploads (404) gets single uploads; `batchUploads: false` sends every file alone. And the
 * packing plan itself: even batches within the limits.
 */
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { mkdir, writeFile } from 'node:fs/promises';
import { createServer, request, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import type { JobSpec } from '@gridwork/protocol';
import { generateIdentity, startTestNetwork, type TestNetwork, tempDir } from '@gridwork/testkit';
import { GridworkClient } from '../src/index.ts';
import { BATCH_FRAME_HEADER_BYTES, type LocalFile, planUploads } from '../src/files.ts';

/** Forwards to the coordinator, counting requests by method and route; can play a coordinator without batch uploads. */
class CountingProxy {
  readonly counts = new Map<string, number>();
  refuseBatches = false;
  private server: Server | undefined;
  url = '';

  constructor(private readonly target: string) {}

  async start(): Promise<void> {
    const target = new URL(this.target);
    const server = createServer((req, res) => {
      const route = `${req.method} ${
        (req.url ?? '')
          .replace(/[0-9a-f]{64}/, ':digest')
          .replace(/\/jobs\/[^/?]+/, '/jobs/:id')
          .split('?')[0]
      }`;
      this.counts.set(route, (this.counts.get(route) ?? 0) + 1);
      if (this.refuseBatches && route === 'POST /v1/blobs/batch/:digest') {
        req.resume();
        req.on('end', () => {
          res.writeHead(404, { 'content-type': 'application/json' });
          res.end(JSON.stringify({ error: { code: 'NOT_FOUND', message: `no route POST ${req.url}` } }));
        });
        return;
      }
      const upstream = request({ host: target.hostname, port: target.port, method: req.method, path: req.url, headers: req.headers }, (up) => {
        res.writeHead(up.statusCode ?? 502, up.headers);
        up.pipe(res);
      });
      upstream.on('error', (err) => res.destroy(err));
      req.pipe(upstream);
    });
    this.server = server;
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    this.url = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  }

  count(route: string): number {
    return this.counts.get(route) ?? 0;
  }

  total(): number {
    return [...this.counts.values()].reduce((a, b) => a + b, 0);
  }

  reset(): void {
    this.counts.clear();
  }

  close(): Promise<void> {
    this.server?.closeAllConnections();
    return new Promise((resolve) => (this.server ? this.server.close(() => resolve()) : resolve()));
  }
}

/** Writes `n` small files (and `large` files of 300 KiB) under dir/name; returns the spec's input path. */
async function writeInputs(dir: string, name: string, n: number, large = 0): Promise<string> {
  const where = join(dir, name);
  await mkdir(where, { recursive: true });
  const salt = randomBytes(8).toString('hex');
  for (let i = 0; i < n; i += 100) {
    await Promise.all(
      Array.from({ length: Math.min(100, n - i) }, (_, j) =>
        writeFile(join(where, `part-${String(i + j).padStart(5, '0')}.txt`), `${name} ${salt} ${i + j}\n`),
      ),
    );
  }
  for (let i = 0; i < large; i++) await writeFile(join(where, `large-${i}.bin`), randomBytes(300 * 1024));
  return `${name}/*`;
}

async function writeBundle(dir: string): Promise<string> {
  await mkdir(join(dir, 'work'), { recursive: true });
  await writeFile(join(dir, 'work', 'main.mjs'), 'process.exit(0);\n');
  return './work';
}

/** A spec no test provider takes (64 cores): the submit is what these tests look at. */
const specFor = (inputPath: string, bundlePath: string): JobSpec => ({
  version: 1,
  name: 'upload-batch',
  kind: 'batch',
  runtime: { kind: 'bundle', path: bundlePath, command: ['node', 'main.mjs'] },
  inputs: [{ name: 'data', path: inputPath }],
  resources: { cpu: 64, memoryGiB: 1 },
  price: { maxPerHour: '1.00', budget: '1.00' },
});

describe('upload plan', () => {
  const file = (i: number, size: number): LocalFile => ({ path: `f${i}`, absPath: `/f${i}`, digest: `${i}`.padStart(64, '0'), size, executable: false });
  const policy = { smallFileBytes: 256 * 1024, maxFiles: 1000, maxBodyBytes: 4 * 1024 * 1024 };

  test('large files alone; small ones in even batches within the count and byte limits', () => {
    const files = [...Array.from({ length: 2001 }, (_, i) => file(i, 100)), file(9001, 256 * 1024), file(9002, 10 * 1024 * 1024)];
    const units = planUploads(files, policy);
    const singles = units.filter((u) => u.kind === 'single');
    const batches = units.flatMap((u) => (u.kind === 'batch' ? [u] : []));
    assert.deepEqual(
      singles.map((u) => (u.kind === 'single' ? u.file.path : '')),
      ['f9001', 'f9002'],
    );
    assert.deepEqual(
      batches.map((b) => b.files.length),
      [667, 667, 667],
    );
    assert.equal(new Set(batches.flatMap((b) => b.files.map((f) => f.path))).size, 2001, 'every small file once');

    const heavy = Array.from({ length: 100 }, (_, i) => file(i, 200 * 1024));
    const heavyBatches = planUploads(heavy, policy).flatMap((u) => (u.kind === 'batch' ? [u] : []));
    for (const b of heavyBatches) {
      assert.ok(b.bytes <= policy.maxBodyBytes, `batch of ${b.bytes} bytes`);
      assert.equal(
        b.bytes,
        b.files.reduce((n, f) => n + BATCH_FRAME_HEADER_BYTES + f.size, 0),
      );
    }
    assert.equal(
      heavyBatches.reduce((n, b) => n + b.files.length, 0),
      100,
    );
    assert.deepEqual(planUploads([], policy), []);
  });
});

for (const store of ['pglite', 'postgres'] as const) {
  describe(`SDK uploads through a counting proxy (${store})`, () => {
    let net: TestNetwork;
    let proxy: CountingProxy;
    let dir: { path: string; remove: () => Promise<void> };
    let bundle: string;

    before(async () => {
      net = await startTestNetwork({ store });
      proxy = new CountingProxy(net.coordinator.url);
      await proxy.start();
      dir = await tempDir('gridwork-upload-batch-');
      bundle = await writeBundle(dir.path);
    });
    after(async () => {
      await proxy?.close();
      await net?.close();
      await dir?.remove();
    });

    const clientFor = async () => {
      const identity = generateIdentity();
      await net.fundedClient('10', identity);
      return new GridworkClient({ url: proxy.url, identity });
    };

    test('a submit with 2,000 small input files makes a handful of requests; large files go alone', async (t) => {
      const client = await clientFor();
      const inputs = await writeInputs(dir.path, 'many', 2000, 2);
      const progress: { uploaded: number; total: number; bytes: number; totalBytes: number }[] = [];
      proxy.reset();
      const started = performance.now();
      const job = await client.submit(specFor(inputs, bundle), { baseDir: dir.path, onUpload: (p) => progress.push(p) });
      t.diagnostic(
        `submit of 2,003 files: ${Math.round(performance.now() - started)} ms, ${proxy.total()} requests: ${JSON.stringify(Object.fromEntries(proxy.counts))}`,
      );
      assert.equal(job.state === 'pending' || job.state === 'matching', true, job.state);

      // 2,000 inputs + main.mjs in a few batches; the 2 large inputs and the bundle manifest alone.
      assert.equal(proxy.count('POST /v1/blobs/missing'), 1);
      const batches = proxy.count('POST /v1/blobs/batch/:digest');
      assert.ok(batches >= 1 && batches <= 8, `${batches} batch requests`);
      assert.equal(proxy.count('PUT /v1/blobs/:digest'), 3);
      assert.equal(proxy.count('POST /v1/jobs'), 1);
      assert.ok(proxy.total() <= 13, `${proxy.total()} requests for 2,003 files`);

      const last = progress.at(-1);
      assert.deepEqual(last, { uploaded: 2003, total: 2003, bytes: last?.totalBytes, totalBytes: last?.totalBytes });
      for (let i = 1; i < progress.length; i++) {
        assert.ok((progress[i]?.uploaded ?? 0) > (progress[i - 1]?.uploaded ?? 0), 'progress only moves forward');
      }
      assert.ok((last?.totalBytes ?? 0) > 2 * 300 * 1024);

      // Everything is owned: submitting again uploads nothing.
      proxy.reset();
      await client.submit(specFor(inputs, bundle), { baseDir: dir.path });
      assert.equal(proxy.count('POST /v1/blobs/batch/:digest') + proxy.count('PUT /v1/blobs/:digest'), 1, 'only the manifest, which is always sent');
    });

    test('a coordinator without batch uploads (404) gets every file alone', async () => {
      const client = await clientFor();
      const inputs = await writeInputs(dir.path, 'old-coordinator', 30);
      let uploaded = 0;
      proxy.reset();
      proxy.refuseBatches = true;
      try {
        await client.submit(specFor(inputs, bundle), { baseDir: dir.path, onUpload: (p) => (uploaded = p.uploaded) });
      } finally {
        proxy.refuseBatches = false;
      }
      assert.ok(proxy.count('POST /v1/blobs/batch/:digest') >= 1);
      assert.equal(proxy.count('PUT /v1/blobs/:digest'), 30 + 1 + 1, '30 inputs, main.mjs, the manifest');
      assert.equal(uploaded, 31);
    });

    test('batchUploads: false sends every file alone', async () => {
      const client = await clientFor();
      const inputs = await writeInputs(dir.path, 'singles', 30);
      proxy.reset();
      await client.submit(specFor(inputs, bundle), { baseDir: dir.path, batchUploads: false });
      assert.equal(proxy.count('POST /v1/blobs/batch/:digest'), 0);
      assert.equal(proxy.count('PUT /v1/blobs/:digest'), 30 + 1 + 1);
    });
  });
}
