import assert from 'node:assert/strict';
import { link, mkdir, mkdtemp, open, rm, symlink, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { nestDeep } from './fixtures/deep-tree.ts';
import { removeTaskTree } from '../task-file.ts';
import { diskUsage, MIN_ENTRY_BYTES } from './disk-usage.ts';

let root = '';
before(async () => {
  root = await mkdtemp(path.join(os.tmpdir(), 'gw-du-'));
});
after(async () => {
  await rm(root, { recursive: true, force: true });
});

describe('disk usage', () => {
  test('empty directories use nothing; files count their size, hard links once, across both trees', async () => {
    const a = path.join(root, 'a');
    const b = path.join(root, 'b');
    await mkdir(a);
    await mkdir(b);
    assert.equal(await diskUsage([a, b]), 0);
    await writeFile(path.join(a, 'f'), Buffer.alloc(100_000));
    await link(path.join(a, 'f'), path.join(b, 'same-inode'));
    const usage = await diskUsage([a, b]);
    assert.ok(usage >= 100_000 && usage < 100_000 + 2 * 8192, String(usage));
  });

  test('a sparse file counts with its apparent size; empty files and symlinks at least one block', async () => {
    const dir = path.join(root, 'sparse');
    await mkdir(dir);
    const fh = await open(path.join(dir, 'holes'), 'w');
    await fh.truncate(50 * 2 ** 20);
    await fh.close();
    await writeFile(path.join(dir, 'empty'), '');
    await symlink('/etc/passwd', path.join(dir, 'link'));
    assert.equal(await diskUsage([dir]), 50 * 2 ** 20 + 2 * MIN_ENTRY_BYTES);
  });

  test('a directory whose name is not UTF-8 is measured with everything in it', async () => {
    const dir = path.join(root, 'bytes');
    await mkdir(dir);
    const hidden = Buffer.concat([Buffer.from(dir), Buffer.from('/x'), Buffer.from([0xff])]);
    await mkdir(hidden);
    await writeFile(Buffer.concat([hidden, Buffer.from('/big')]), Buffer.alloc(200_000, 1));
    assert.ok((await diskUsage([dir])) >= 200_000);
  });

  test('a tree nested deeper than a path can name measures as unbounded', async () => {
    const dir = path.join(root, 'deep');
    await mkdir(dir);
    nestDeep(dir);
    assert.equal(await diskUsage([dir]), Number.POSITIVE_INFINITY);
    await removeTaskTree(dir);
  });

  test('the walk stops once past the given limit', async () => {
    const dir = path.join(root, 'many');
    await mkdir(dir);
    for (let i = 0; i < 50; i++) await writeFile(path.join(dir, `f${i}`), Buffer.alloc(10_000));
    const full = await diskUsage([dir]);
    const partial = await diskUsage([dir], 50_000);
    assert.ok(partial > 50_000 && partial < full, `${partial} ${full}`);
  });
});
