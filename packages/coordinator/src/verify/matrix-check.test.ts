import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { describe, it } from 'node:test';
import { challengeMatrices, MerkleTree, multiplyRows, wordsLeaf } from '@gridwork/protocol';
import { sha256Bytes } from '@gridwork/protocol/node';
import { checkMatrixOpening } from './matrix-check.ts';

const SEED = 'fedcba9876543210fedcba9876543210';
const n = 48;
const { a, b } = challengeMatrices(SEED, n);
const honest = new Int32Array(n * n);
multiplyRows(a, b, honest, n, 0, n);

function commit(c: Int32Array) {
  return new MerkleTree(
    sha256Bytes,
    Array.from({ length: n }, (_, i) => wordsLeaf(sha256Bytes, c.subarray(i * n, (i + 1) * n))),
  );
}
const open = (c: Int32Array, tree: MerkleTree, rows: number[]) => rows.map((i) => ({ index: i, values: Array.from(c.subarray(i * n, (i + 1) * n)), proof: tree.proof(i) }));
const freshR = () => new Int32Array(new Uint8Array(randomBytes(4 * n)).buffer);

describe('checkMatrixOpening (Freivalds over opened rows)', () => {
  it('accepts the honest product', () => {
    const tree = commit(honest);
    const rows = [0, 7, 47];
    assert.deepEqual(checkMatrixOpening(sha256Bytes, { seed: SEED, n, matrixRoot: tree.rootHex, expected: rows, rows: open(honest, tree, rows), exactRows: 1 }, freshR()), { ok: true });
  });

  it('catches a wrong row by Freivalds alone (no exact recomputation), over 200 fresh vectors every time', () => {
    const wrong = honest.slice();
    wrong[5 * n + 11] = (wrong[5 * n + 11] as number) + 12345;
    const tree = commit(wrong);
    let caught = 0;
    for (let t = 0; t < 200; t++) {
      const v = checkMatrixOpening(sha256Bytes, { seed: SEED, n, matrixRoot: tree.rootHex, expected: [5], rows: open(wrong, tree, [5]), exactRows: 0 }, freshR());
      if (!v.ok && v.verdict === 'wrong-product') caught++;
    }
    // A difference d with lowest set bit 2^v escapes with probability 2^(v-32): here v = 0.
    assert.equal(caught, 200);
  });

  it('catches a product that is wrong in every row (random C) on any opened row', () => {
    const garbage = new Int32Array(new Uint8Array(randomBytes(4 * n * n)).buffer);
    const tree = commit(garbage);
    const v = checkMatrixOpening(sha256Bytes, { seed: SEED, n, matrixRoot: tree.rootHex, expected: [3], rows: open(garbage, tree, [3]), exactRows: 0 }, freshR());
    assert.equal(v.ok, false);
  });

  it('exact recomputation catches even a high-bit-only error that Freivalds over Z/2^32 may miss', () => {
    const wrong = honest.slice();
    wrong[2 * n] = (wrong[2 * n] as number) ^ (1 << 31);
    const tree = commit(wrong);
    const v = checkMatrixOpening(sha256Bytes, { seed: SEED, n, matrixRoot: tree.rootHex, expected: [2], rows: open(wrong, tree, [2]), exactRows: 1 }, freshR());
    assert.deepEqual(v.ok ? null : v.verdict, 'wrong-product');
  });

  it('refuses rows that are not the committed ones, or missing, or short', () => {
    const tree = commit(honest);
    const other = commit(honest.map((x) => x ^ 1));
    const rows = open(honest, tree, [4]);
    const check = (root: string, r: typeof rows) => checkMatrixOpening(sha256Bytes, { seed: SEED, n, matrixRoot: root, expected: [4], rows: r, exactRows: 0 }, freshR());
    assert.deepEqual(check(other.rootHex, rows), { ok: false, verdict: 'bad-proof', detail: 'row 4 is not the committed row' });
    assert.equal((check(tree.rootHex, []) as { verdict: string }).verdict, 'bad-proof');
    assert.equal((check(tree.rootHex, [{ ...(rows[0] as (typeof rows)[0]), values: (rows[0] as (typeof rows)[0]).values.slice(1) }]) as { verdict: string }).verdict, 'bad-proof');
  });

  it('with k rows opened, a provider that computed half the rows passes rarely (≈ 2^-k)', () => {
    const half = honest.slice();
    for (let i = 0; i < n; i += 2) half[i * n] = (half[i * n] as number) + 1;
    const tree = commit(half);
    let passed = 0;
    const trials = 300;
    for (let t = 0; t < trials; t++) {
      const rows = [...new Set(Array.from({ length: 8 }, () => Math.floor(Math.random() * n)))];
      const v = checkMatrixOpening(sha256Bytes, { seed: SEED, n, matrixRoot: tree.rootHex, expected: rows, rows: open(half, tree, rows), exactRows: 0 }, freshR());
      if (v.ok) passed++;
    }
    assert.ok(passed <= 10, `passed ${passed} of ${trials} (expected about ${trials / 256})`);
  });
});
