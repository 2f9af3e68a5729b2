import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { leafHash, MerkleTree, outputsRoot, toHex, verifyMerkleProof } from './merkle.ts';
import { sha256Bytes } from './node/hash.ts';

const h = sha256Bytes;
const leaves = (n: number) => Array.from({ length: n }, (_, i) => leafHash(h, new TextEncoder().encode(`leaf ${i}`)));

describe('MerkleTree', () => {
  it('proves every leaf of trees of every size from 1 to 33, and nothing else', () => {
    for (let n = 1; n <= 33; n++) {
      const ls = leaves(n);
      const tree = new MerkleTree(h, ls);
      for (let i = 0; i < n; i++) {
        const proof = tree.proof(i);
        assert.ok(verifyMerkleProof(h, tree.rootHex, ls[i] as Uint8Array, i, n, proof), `leaf ${i} of ${n}`);
        // The same proof does not prove another leaf, another index, or a tree of another size.
        assert.equal(verifyMerkleProof(h, tree.rootHex, ls[(i + 1) % n] as Uint8Array, i, n, proof), n === 1);
        if (n > 1) assert.equal(verifyMerkleProof(h, tree.rootHex, ls[i] as Uint8Array, (i + 1) % n, n, proof), false);
        if (proof.length > 0) {
          const bad = [...proof];
          bad[0] = toHex(h(new Uint8Array([1])));
          assert.equal(verifyMerkleProof(h, tree.rootHex, ls[i] as Uint8Array, i, n, bad), false);
          assert.equal(verifyMerkleProof(h, tree.rootHex, ls[i] as Uint8Array, i, n, proof.slice(1)), false);
        }
      }
    }
  });

  it('gives different roots to different leaf lists (no duplicated-last-leaf collision)', () => {
    const ls = leaves(3);
    const a = new MerkleTree(h, ls).rootHex;
    const b = new MerkleTree(h, [...ls, ls[2] as Uint8Array]).rootHex;
    assert.notEqual(a, b);
    assert.notEqual(new MerkleTree(h, []).rootHex, new MerkleTree(h, leaves(1)).rootHex);
  });

  it('refuses proofs for indices outside the tree', () => {
    const ls = leaves(4);
    const tree = new MerkleTree(h, ls);
    assert.throws(() => tree.proof(4), RangeError);
    assert.equal(verifyMerkleProof(h, tree.rootHex, ls[0] as Uint8Array, -1, 4, tree.proof(0)), false);
    assert.equal(verifyMerkleProof(h, tree.rootHex, ls[0] as Uint8Array, 4, 4, tree.proof(0)), false);
  });
});

describe('outputsRoot', () => {
  const a = { path: 'a.txt', digest: 'a'.repeat(64), size: 1 };
  const b = { path: 'b/c.txt', digest: 'b'.repeat(64), size: 2 };
  it('does not depend on the order outputs are listed in', () => {
    assert.equal(outputsRoot(h, [a, b]), outputsRoot(h, [b, a]));
  });
  it('changes with any path, digest or size', () => {
    const root = outputsRoot(h, [a, b]);
    assert.notEqual(outputsRoot(h, [a, { ...b, size: 3 }]), root);
    assert.notEqual(outputsRoot(h, [a, { ...b, digest: 'c'.repeat(64) }]), root);
    assert.notEqual(outputsRoot(h, [a, { ...b, path: 'b/d.txt' }]), root);
    assert.notEqual(outputsRoot(h, [a]), root);
  });
  it('refuses a path listed twice', () => {
    assert.throws(() => outputsRoot(h, [a, { ...a, size: 9 }]), /twice/);
  });
});
