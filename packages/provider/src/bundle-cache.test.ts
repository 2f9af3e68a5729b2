import assert from 'node:assert/strict';
import { mkdtemp, readFile, readdir, rm, stat, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { sha256Hex } from '@gridwork/protocol/node';
import { BundleCache } from './bundle-cache.ts';

describe('bundle cache', () => {
  let root: string;
  before(async () => {
    root = await mkdtemp(join(tmpdir(), 'gw-bundle-cache-'));
  });
  after(() => rm(root, { recursive: true, force: true }));

  /** A download that writes `content` and counts its calls. */
  function source(content: string) {
    const calls = { n: 0 };
    const download = async (path: string) => {
      calls.n++;
      await writeFile(path, content);
    };
    return { calls, download, digest: sha256Hex(content) };
  }

  test('each lease gets its own copy; the file is downloaded once, also by leases asking at the same time', async () => {
    const cache = new BundleCache(join(root, 'c1'));
    const s = source('print("hello")\n');
    await Promise.all([1, 2, 3].map((i) => cache.place(s.digest, 16, join(root, `lease-${i}`, 'task.py'), s.download)));
    await cache.place(s.digest, 16, join(root, 'lease-4', 'task.py'), s.download);
    assert.equal(s.calls.n, 1, 'one download for four leases');
    for (const i of [1, 2, 3, 4]) assert.equal(await readFile(join(root, `lease-${i}`, 'task.py'), 'utf8'), 'print("hello")\n');
    // A task that rewrites its copy changes nothing for the next lease.
    await writeFile(join(root, 'lease-1', 'task.py'), 'tampered');
    await cache.place(s.digest, 16, join(root, 'lease-5', 'task.py'), s.download);
    assert.equal(await readFile(join(root, 'lease-5', 'task.py'), 'utf8'), 'print("hello")\n');
    assert.equal(s.calls.n, 1);
  });

  test('it holds at most maxBytes, least recently used out first', async () => {
    const cache = new BundleCache(join(root, 'c2'), 25);
    const [a, b, c] = ['a'.repeat(10), 'b'.repeat(10), 'c'.repeat(10)].map(source) as [
      ReturnType<typeof source>,
      ReturnType<typeof source>,
      ReturnType<typeof source>,
    ];
    await cache.place(a.digest, 10, join(root, 'x', 'a'), a.download);
    await cache.place(b.digest, 10, join(root, 'x', 'b'), b.download);
    await cache.place(a.digest, 10, join(root, 'y', 'a'), a.download); // a is used again: b is now the oldest
    await cache.place(c.digest, 10, join(root, 'x', 'c'), c.download);
    assert.equal(cache.size, 20);
    assert.deepEqual((await readdir(join(root, 'c2'))).sort(), [a.digest, c.digest].sort(), 'b was evicted');
    await cache.place(b.digest, 10, join(root, 'z', 'b'), b.download);
    assert.deepEqual([a.calls.n, b.calls.n, c.calls.n], [1, 2, 1]);
  });

  test('a lease waiting on another lease’s download that fails (cancelled, refused) downloads for itself; a file larger than the cache is not kept', async () => {
    const cache = new BundleCache(join(root, 'c4'), 100);
    const s = source('model weights');
    let failFirst!: (err: Error) => void;
    let began!: () => void;
    const downloading = new Promise<void>((r) => {
      began = r;
    });
    const first = cache.place(s.digest, 13, join(root, 'l1', 'm'), () => {
      began();
      return new Promise<void>((_, reject) => {
        failFirst = reject;
      });
    });
    await downloading;
    const second = cache.place(s.digest, 13, join(root, 'l2', 'm'), s.download);
    await new Promise((r) => setImmediate(r)); // (usually) the second lease now waits on the first's download
    failFirst(new Error('This operation was aborted'));
    await assert.rejects(first, /aborted/);
    await second;
    assert.equal(await readFile(join(root, 'l2', 'm'), 'utf8'), 'model weights');
    // Whether it joined the first lease's download or came after it failed, the second lease gets its file, fetched by itself.
    assert.equal(s.calls.n, 1, 'the second lease downloaded it itself');
    assert.equal((await stat(join(root, 'c4', s.digest))).mode & 0o777, 0o444, 'read-only in the cache');
    const big = source('x'.repeat(200));
    await cache.place(big.digest, 200, join(root, 'l3', 'big'), big.download);
    await cache.place(big.digest, 200, join(root, 'l4', 'big'), big.download);
    assert.equal(big.calls.n, 2);
    assert.equal(cache.size, 13);
  });

  test('a failed download caches nothing, and a name that is not a digest bypasses the cache', async () => {
    const cache = new BundleCache(join(root, 'c3'));
    const d = sha256Hex('x');
    await assert.rejects(
      cache.place(d, 1, join(root, 'f', 'x'), async () => {
        throw new Error('DIGEST_MISMATCH');
      }),
      /DIGEST_MISMATCH/,
    );
    assert.equal(cache.size, 0);
    const s = source('ok');
    await cache.place(d, 1, join(root, 'f', 'x'), s.download);
    assert.equal(s.calls.n, 1, 'retried after the failure');
    const odd = source('odd');
    await cache.place('../../etc/passwd', 3, join(root, 'g', 'odd'), odd.download);
    await cache.place('../../etc/passwd', 3, join(root, 'g', 'odd'), odd.download);
    assert.equal(odd.calls.n, 2, 'not cached under a name it does not control');
    assert.deepEqual(await readdir(join(root, 'c3')), [d]);
  });
});
