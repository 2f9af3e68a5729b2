import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { mkdtemp, readFile, readdir, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { BundleCache } from './bundle-cache.ts';

const digestOf = (s: string) => createHash('sha256').update(s).digest('hex');

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
    return { calls, download, digest: digestOf(content) };
  }

  test('each lease gets its own copy; the file is downloaded once, also by leases asking at the same time', async () => {
    const cache = new BundleCache(join(root, 'c1'));
    const s = source('print("hello")\n');
    await Promise.all([1, 2, 3].map((i) => cache.place(s.digest, join(root, `lease-${i}`, 'task.py'), s.download)));
    await cache.place(s.digest, join(root, 'lease-4', 'task.py'), s.download);
    assert.equal(s.calls.n, 1, 'one download for four leases');
    for (const i of [1, 2, 3, 4]) assert.equal(await readFile(join(root, `lease-${i}`, 'task.py'), 'utf8'), 'print("hello")\n');
    // A task that rewrites its copy changes nothing for the next lease.
    await writeFile(join(root, 'lease-1', 'task.py'), 'tampered');
    await cache.place(s.digest, join(root, 'lease-5', 'task.py'), s.download);
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
    await cache.place(a.digest, join(root, 'x', 'a'), a.download);
    await cache.place(b.digest, join(root, 'x', 'b'), b.download);
    await cache.place(a.digest, join(root, 'y', 'a'), a.download); // a is used again: b is now the oldest
    await cache.place(c.digest, join(root, 'x', 'c'), c.download);
    assert.equal(cache.size, 20);
    assert.deepEqual((await readdir(join(root, 'c2'))).sort(), [a.digest, c.digest].sort(), 'b was evicted');
    await cache.place(b.digest, join(root, 'z', 'b'), b.download);
    assert.deepEqual([a.calls.n, b.calls.n, c.calls.n], [1, 2, 1]);
  });

  test('a failed download caches nothing, and a name that is not a digest bypasses the cache', async () => {
    const cache = new BundleCache(join(root, 'c3'));
    const d = digestOf('x');
    await assert.rejects(
      cache.place(d, join(root, 'f', 'x'), async () => {
        throw new Error('DIGEST_MISMATCH');
      }),
      /DIGEST_MISMATCH/,
    );
    assert.equal(cache.size, 0);
    const s = source('ok');
    await cache.place(d, join(root, 'f', 'x'), s.download);
    assert.equal(s.calls.n, 1, 'retried after the failure');
    const odd = source('odd');
    await cache.place('../../etc/passwd', join(root, 'g', 'odd'), odd.download);
    await cache.place('../../etc/passwd', join(root, 'g', 'odd'), odd.download);
    assert.equal(odd.calls.n, 2, 'not cached under a name it does not control');
    assert.deepEqual(await readdir(join(root, 'c3')), [d]);
  });
});
