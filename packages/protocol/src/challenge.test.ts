import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import {
  challengeMatrices,
  checkMemoryOpening,
  fillMemory,
  MEMORY_BLOCK_WORDS,
  memoryParent,
  multiplyRows,
  openedIndices,
  productRow,
  SeededRandom,
  wordsLeaf,
} from './challenge.ts';
import { MerkleTree } from './merkle.ts';
import { sha256Bytes } from './node/hash.ts';

const SEED = '0123456789abcdef0123456789abcdef';

describe('SeededRandom', () => {
  it('is a pure function of its seed, bit for bit (golden values)', () => {
    const a = new SeededRandom(SEED);
    const b = new SeededRandom(SEED);
    const xs = Array.from({ length: 5 }, () => a.next());
    assert.deepEqual(xs, Array.from({ length: 5 }, () => b.next()));
    const other = new SeededRandom(`${SEED.slice(0, 31)}0`);
    assert.notDeepEqual(xs, Array.from({ length: 5 }, () => other.next()));
    // Every engine must produce these: integer arithmetic only.
    assert.deepEqual(xs, GOLDEN);
  });
  it('draws below a bound without going out of range', () => {
    const r = new SeededRandom(SEED);
    for (let i = 0; i < 1000; i++) {
      const v = r.below(7);
      assert.ok(v >= 0 && v < 7);
    }
  });
});

/** Recorded once; a change here changes every challenge ever issued. */
const GOLDEN = [-438388345, 1389965170, 803210882, 1121440853, -57686679];

describe('matrix product over Z/2^32', () => {
  it('multiplyRows agrees with productRow row by row', () => {
    const n = 24;
    const { a, b } = challengeMatrices(SEED, n);
    const c = new Int32Array(n * n);
    multiplyRows(a, b, c, n, 0, n);
    for (let i = 0; i < n; i++) assert.deepEqual(Array.from(c.subarray(i * n, (i + 1) * n)), Array.from(productRow(a, b, n, i)));
  });
});

describe('memory probe', () => {
  const blocks = 64;
  const mem = new Int32Array(blocks * MEMORY_BLOCK_WORDS);
  fillMemory(mem, SEED, 0, blocks);
  const block = (i: number) => mem.subarray(i * MEMORY_BLOCK_WORDS, (i + 1) * MEMORY_BLOCK_WORDS);
  const tree = new MerkleTree(
    sha256Bytes,
    Array.from({ length: blocks }, (_, i) => wordsLeaf(sha256Bytes, block(i))),
  );
  const open = (indices: number[], buf = mem, t = tree) => {
    const want = new Set<number>();
    for (const i of indices) {
      want.add(i);
      if (i > 0) {
        want.add(i - 1);
        want.add(memoryParent(i, buf.subarray((i - 1) * MEMORY_BLOCK_WORDS, i * MEMORY_BLOCK_WORDS)));
      }
    }
    return [...want].map((i) => ({ index: i, words: Array.from(buf.subarray(i * MEMORY_BLOCK_WORDS, (i + 1) * MEMORY_BLOCK_WORDS)), proof: t.proof(i) }));
  };

  it('accepts an honest opening', () => {
    const picked = [0, 5, 17, 63];
    assert.equal(checkMemoryOpening(sha256Bytes, SEED, blocks, tree.rootHex, picked, open(picked)), null);
  });

  it('catches a block that does not follow from its parents, even with a valid proof', () => {
    const forged = mem.slice();
    forged[40 * MEMORY_BLOCK_WORDS + 3] = (forged[40 * MEMORY_BLOCK_WORDS + 3] as number) ^ 1;
    const forgedTree = new MerkleTree(
      sha256Bytes,
      Array.from({ length: blocks }, (_, i) => wordsLeaf(sha256Bytes, forged.subarray(i * MEMORY_BLOCK_WORDS, (i + 1) * MEMORY_BLOCK_WORDS))),
    );
    assert.match(checkMemoryOpening(sha256Bytes, SEED, blocks, forgedTree.rootHex, [40], open([40], forged, forgedTree)) ?? '', /does not follow/);
  });

  it('catches a block that is not in the committed buffer', () => {
    const opened = open([9]);
    const first = opened[0] as { words: number[] };
    first.words[0] = (first.words[0] as number) ^ 1;
    assert.match(checkMemoryOpening(sha256Bytes, SEED, blocks, tree.rootHex, [9], opened) ?? '', /not in the committed/);
  });
});

describe('openedIndices', () => {
  it('are distinct, in range, and change with either root or the secret', () => {
    const shape = { n: 100, memoryBlocks: 50, rowsToOpen: 16, blocksToOpen: 16 };
    const x = openedIndices(sha256Bytes, shape, 'aa', 'r1', 'm1');
    assert.equal(new Set(x.rows).size, 16);
    assert.ok(x.rows.every((i) => i >= 0 && i < 100));
    assert.ok(x.blocks.every((i) => i >= 0 && i < 50));
    assert.notDeepEqual(openedIndices(sha256Bytes, shape, 'ab', 'r1', 'm1'), x);
    assert.notDeepEqual(openedIndices(sha256Bytes, shape, 'aa', 'r2', 'm1'), x);
    assert.deepEqual(openedIndices(sha256Bytes, shape, 'aa', 'r1', 'm1'), x);
  });
});
