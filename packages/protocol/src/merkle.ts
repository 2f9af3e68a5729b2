/**
 * Binary Merkle trees: what a provider commits to (a task's outputs, a capacity challenge's
 * result rows and memory blocks) and the inclusion proofs it opens later. Isomorphic: the hash
 * function is passed in (sha256 from `@gridwork/protocol/node` on Node).
 *
 * Construction (fixed, part of the protocol): leaf = H(0x00 ‖ data), node = H(0x01 ‖ left ‖ right);
 * a level with an odd count carries its last node up unchanged (no duplication, so two different
 * leaf lists never share a root: the CVE-2012-2459 shape of Bitcoin's tree is impossible), and the
 * empty tree's root is H(0x02). The tags keep a leaf from ever being read as an inner node.
 * A proof is the list of sibling hashes from the leaf up, skipping levels where the node was
 * carried; the verifier recomputes the path from the index and the leaf count.
 */
import { canonicalJson } from './canonical-json.ts';
import type { FileRef } from './api.ts';

/** A cryptographic hash of bytes (32 bytes out): sha256 on every Gridwork participant. */
export type HashFn = (data: Uint8Array) => Uint8Array;

const LEAF = 0;
const NODE = 1;
const EMPTY = 2;

export function toHex(bytes: Uint8Array): string {
  let s = '';
  for (const b of bytes) s += (b < 16 ? '0' : '') + b.toString(16);
  return s;
}

export function fromHex(hex: string): Uint8Array {
  if (!/^(?:[0-9a-f]{2})*$/.test(hex)) throw new TypeError('not lowercase hex');
  const out = new Uint8Array(hex.length / 2);
  for (let i = 0; i < out.length; i++) out[i] = Number.parseInt(hex.slice(2 * i, 2 * i + 2), 16);
  return out;
}

function tagged(tag: number, ...parts: Uint8Array[]): Uint8Array {
  let len = 1;
  for (const p of parts) len += p.length;
  const buf = new Uint8Array(len);
  buf[0] = tag;
  let at = 1;
  for (const p of parts) {
    buf.set(p, at);
    at += p.length;
  }
  return buf;
}

export function leafHash(hash: HashFn, data: Uint8Array): Uint8Array {
  return hash(tagged(LEAF, data));
}

function nodeHash(hash: HashFn, left: Uint8Array, right: Uint8Array): Uint8Array {
  return hash(tagged(NODE, left, right));
}

/** A tree built once over leaf hashes; gives its root and inclusion proofs. */
export class MerkleTree {
  /** levels[0] = leaf hashes, last level = [root] (empty tree: no levels). */
  private readonly levels: Uint8Array[][];
  readonly root: Uint8Array;

  constructor(hash: HashFn, leafHashes: readonly Uint8Array[]) {
    this.levels = [];
    if (leafHashes.length === 0) {
      this.root = hash(new Uint8Array([EMPTY]));
      return;
    }
    let level = [...leafHashes];
    this.levels.push(level);
    while (level.length > 1) {
      const next: Uint8Array[] = [];
      for (let i = 0; i + 1 < level.length; i += 2) next.push(nodeHash(hash, level[i] as Uint8Array, level[i + 1] as Uint8Array));
      if (level.length % 2 === 1) next.push(level[level.length - 1] as Uint8Array);
      this.levels.push(next);
      level = next;
    }
    this.root = level[0] as Uint8Array;
  }

  get rootHex(): string {
    return toHex(this.root);
  }

  get size(): number {
    return this.levels[0]?.length ?? 0;
  }

  /** Sibling hashes (hex) from leaf `index` up to the root. */
  proof(index: number): string[] {
    if (!Number.isInteger(index) || index < 0 || index >= this.size) throw new RangeError(`leaf ${index} is not in a tree of ${this.size}`);
    const out: string[] = [];
    let i = index;
    for (let l = 0; l < this.levels.length - 1; l++) {
      const level = this.levels[l] as Uint8Array[];
      const sibling = i ^ 1;
      if (sibling < level.length) out.push(toHex(level[sibling] as Uint8Array));
      i >>= 1;
    }
    return out;
  }
}

/** Whether `leaf` (a leaf hash) sits at `index` of a `count`-leaf tree with this root. */
export function verifyMerkleProof(hash: HashFn, rootHex: string, leaf: Uint8Array, index: number, count: number, proof: readonly string[]): boolean {
  if (!Number.isInteger(index) || !Number.isInteger(count) || index < 0 || index >= count) return false;
  let node = leaf;
  let i = index;
  let width = count;
  let used = 0;
  while (width > 1) {
    const sibling = i ^ 1;
    if (sibling < width) {
      const s = proof[used++];
      if (s === undefined || !/^[0-9a-f]{64}$/.test(s)) return false;
      node = i % 2 === 0 ? nodeHash(hash, node, fromHex(s)) : nodeHash(hash, fromHex(s), node);
    }
    i >>= 1;
    width = Math.ceil(width / 2);
  }
  return used === proof.length && toHex(node) === rootHex;
}

const utf8 = new TextEncoder();

/** The leaf of one output file: H(0x00 ‖ canonical JSON of [path, digest, size]). */
export function outputLeaf(hash: HashFn, f: FileRef): Uint8Array {
  return leafHash(hash, utf8.encode(canonicalJson([f.path, f.digest, f.size])));
}

/**
 * The root a provider commits to over a task's outputs: leaves sorted by path (UTF-16 code unit
 * order, as JavaScript compares strings). Two outputs with one path cannot both be meant: refused.
 */
export function outputsRoot(hash: HashFn, outputs: readonly FileRef[]): string {
  const sorted = [...outputs].sort((a, b) => (a.path < b.path ? -1 : a.path > b.path ? 1 : 0));
  for (let i = 1; i < sorted.length; i++) {
    if ((sorted[i] as FileRef).path === (sorted[i - 1] as FileRef).path) throw new TypeError(`output path listed twice: ${(sorted[i] as FileRef).path}`);
  }
  return new MerkleTree(
    hash,
    sorted.map((f) => outputLeaf(hash, f)),
  ).rootHex;
}
