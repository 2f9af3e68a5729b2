/**
 * The coordinator's check of a capacity challenge's opened rows (trust layer L1), in O(n²):
 * every opened row must be in the committed Merkle tree at its index, and must agree with A·B
 * under Freivalds' test — with a fresh secret vector r, row_i · r must equal (A·(B·r))_i, where
 * A·(B·r) costs two matrix–vector products. A few rows are also recomputed exactly (O(n²) each).
 * Pure: given the same inputs and r, the same verdict.
 */
import { challengeMatrices, dot, type HashFn, matVec, type OpenedRow, productRow, verifyMerkleProof, wordsLeaf } from '@gridwork/protocol';

export interface MatrixOpening {
  seed: string;
  n: number;
  matrixRoot: string;
  /** The rows that had to be opened (from `openedIndices`). */
  expected: readonly number[];
  rows: readonly OpenedRow[];
  /** How many of the opened rows to recompute exactly. */
  exactRows: number;
}

export type MatrixVerdict = { ok: true } | { ok: false; verdict: 'bad-proof' | 'wrong-product'; detail: string };

/** `r` must be secret from the provider and uniformly random (crypto); callers draw it fresh per check. */
export function checkMatrixOpening(hash: HashFn, o: MatrixOpening, r: Int32Array): MatrixVerdict {
  const { n } = o;
  if (r.length !== n) throw new RangeError('r must have n entries');
  const byIndex = new Map<number, OpenedRow>();
  for (const row of o.rows) byIndex.set(row.index, row);
  for (const i of o.expected) {
    const row = byIndex.get(i);
    if (!row) return { ok: false, verdict: 'bad-proof', detail: `row ${i} was not opened` };
    if (row.values.length !== n) return { ok: false, verdict: 'bad-proof', detail: `row ${i} has ${row.values.length} values, not ${n}` };
    if (!verifyMerkleProof(hash, o.matrixRoot, wordsLeaf(hash, Int32Array.from(row.values)), i, n, row.proof)) {
      return { ok: false, verdict: 'bad-proof', detail: `row ${i} is not the committed row` };
    }
  }
  const { a, b } = challengeMatrices(o.seed, n);
  const abr = matVec(a, matVec(b, r, n), n);
  for (const i of o.expected) {
    const row = byIndex.get(i) as OpenedRow;
    if (dot(row.values, r) !== abr[i]) return { ok: false, verdict: 'wrong-product', detail: `row ${i} fails Freivalds' check` };
  }
  for (const i of o.expected.slice(0, o.exactRows)) {
    const want = productRow(a, b, n, i);
    const got = (byIndex.get(i) as OpenedRow).values;
    for (let j = 0; j < n; j++) if (got[j] !== want[j]) return { ok: false, verdict: 'wrong-product', detail: `row ${i} differs from A·B at column ${j}` };
  }
  return { ok: true };
}
