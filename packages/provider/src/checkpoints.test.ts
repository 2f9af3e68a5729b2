import assert from 'node:assert/strict';
import { mkdtemp, readdir, readFile, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { GridworkError } from '@gridwork/protocol';
import { deliverRound } from './checkpoints.ts';

let inDir = '';
const DIGEST = 'a'.repeat(64);
const fetchedTo: string[] = [];
const download = async (file: { path: string }, dest: string) => {
  fetchedTo.push(path.join(dest, file.path));
  await writeFile(path.join(dest, file.path), 'round data');
};

before(async () => {
  inDir = await mkdtemp(path.join(os.tmpdir(), 'gw-rounds-'));
});
after(async () => {
  await rm(inDir, { recursive: true, force: true });
});

describe('deliverRound', () => {
  test('puts every rank of a round, then its complete marker, into the agent directory', async () => {
    await deliverRound(
      inDir,
      3,
      [
        { rank: 0, digest: DIGEST, size: 10 },
        { rank: 1, digest: DIGEST, size: 10 },
      ],
      download,
    );
    assert.deepEqual((await readdir(path.join(inDir, 'round-3'))).sort(), ['complete', 'rank-0.json', 'rank-1.json']);
    assert.equal(await readFile(path.join(inDir, 'round-3', 'rank-1.json'), 'utf8'), 'round data');
  });

  test('a round or rank that is not a number, or a malformed digest, names no file at all', async () => {
    fetchedTo.length = 0;
    const bad: [unknown, { rank: unknown; digest: string; size: unknown }[]][] = [
      ['1/../../../../tmp/pwned', [{ rank: 0, digest: DIGEST, size: 1 }]],
      [0, [{ rank: 0, digest: DIGEST, size: 1 }]],
      [1.5, [{ rank: 0, digest: DIGEST, size: 1 }]],
      [2, [{ rank: '../../x', digest: DIGEST, size: 1 }]],
      [2, [{ rank: -1, digest: DIGEST, size: 1 }]],
      [2, [{ rank: 0, digest: '../x', size: 1 }]],
      [2, [{ rank: 0, digest: DIGEST, size: -5 }]],
    ];
    for (const [round, files] of bad) {
      await assert.rejects(deliverRound(inDir, round as number, files as { rank: number; digest: string; size: number }[], download), (err: unknown) => {
        assert.ok(err instanceof GridworkError && err.code === 'PROTOCOL_ERROR', String(err));
        return true;
      });
    }
    assert.deepEqual(fetchedTo, []);
    assert.deepEqual(await readdir(inDir), ['round-3']);
  });
});
