/**
 * Capacity challenges (trust layer L1): the arithmetic both sides must agree on bit for bit —
 * the seeded generator, the matrix product, the memory fill, Freivalds' check, and which rows and
 * blocks get opened. Integer-only (Math.imul, 32-bit wrap-around: Z/2^32), never Math.exp/log/pow,
 * so every engine computes the same bits. The protocol and why it is sound are described in
 * packages/coordinator/src/verify/capacity-challenges.ts.
 */
import { canonicalJson } from './canonical-json.ts';
import { fromHex, type HashFn, leafHash, toHex, verifyMerkleProof } from './merkle.ts';

/** Words per memory block (1 KiB). */
export const MEMORY_BLOCK_WORDS = 256;
export const MEMORY_BLOCK_BYTES = MEMORY_BLOCK_WORDS * 4;

/** What the coordinator sends: everything the provider needs to compute, and nothing it could use to skip. */
export interface CapacityChallenge {
  challengeId: string;
  /** 32 hex chars: A and B and the memory buffer are derived from it. */
  seed: string;
  /** A and B are n×n. */
  n: number;
  /** Blocks of MEMORY_BLOCK_BYTES in the memory probe. */
  memoryBlocks: number;
  /** How many result rows / memory blocks will be opened. */
  rowsToOpen: number;
  blocksToOpen: number;
  /** sha256 (hex) of the secret that picks the opened rows, revealed after the roots arrive. */
  openCommitment: string;
  /** The roots must arrive within this long of the coordinator sending the challenge. */
  deadlineMs: number;
}

/** xoshiro128** seeded by splitmix32: a small, fast generator in 32-bit integer arithmetic only. */
export class SeededRandom {
  private s0: number;
  private s1: number;
  private s2: number;
  private s3: number;

  constructor(seedHex: string) {
    const bytes = fromHex(seedHex.padEnd(32, '0').slice(0, 32));
    let x = 0;
    const mix = () => {
      x = (x + 0x9e3779b9) | 0;
      let z = x;
      z = Math.imul(z ^ (z >>> 16), 0x85ebca6b);
      z = Math.imul(z ^ (z >>> 13), 0xc2b2ae35);
      return (z ^ (z >>> 16)) | 0;
    };
    const word = (i: number) => ((bytes[i] as number) | ((bytes[i + 1] as number) << 8) | ((bytes[i + 2] as number) << 16) | ((bytes[i + 3] as number) << 24)) | 0;
    x = word(0) ^ word(4) ^ word(8) ^ word(12);
    this.s0 = mix() ^ word(0);
    this.s1 = mix() ^ word(4);
    this.s2 = mix() ^ word(8);
    this.s3 = mix() ^ word(12);
    if ((this.s0 | this.s1 | this.s2 | this.s3) === 0) this.s0 = 1;
  }

  /** The next 32 random bits as a signed int32. */
  next(): number {
    const result = Math.imul(rotl(Math.imul(this.s1, 5), 7), 9);
    const t = this.s1 << 9;
    this.s2 ^= this.s0;
    this.s3 ^= this.s1;
    this.s1 ^= this.s2;
    this.s0 ^= this.s3;
    this.s2 ^= t;
    this.s3 = rotl(this.s3, 11);
    return result | 0;
  }

  /** Uniform in [0, bound) (bound ≤ 2^31), by rejection: no modulo bias. */
  below(bound: number): number {
    const limit = 2 ** 32 - (2 ** 32 % bound);
    for (;;) {
      const v = this.next() >>> 0;
      if (v < limit) return v % bound;
    }
  }

  fill(out: Int32Array): Int32Array {
    for (let i = 0; i < out.length; i++) out[i] = this.next();
    return out;
  }
}

function rotl(x: number, k: number): number {
  return (x << k) | (x >>> (32 - k));
}

/** A and B of a challenge, row-major, from the seed (A first, then B, from one stream). */
export function challengeMatrices(seed: string, n: number): { a: Int32Array; b: Int32Array } {
  const rng = new SeededRandom(seed);
  const a = rng.fill(new Int32Array(n * n));
  const b = rng.fill(new Int32Array(n * n));
  return { a, b };
}

/** Rows [from, to) of C = A·B over Z/2^32, written into `c`. */
export function multiplyRows(a: Int32Array, b: Int32Array, c: Int32Array, n: number, from: number, to: number): void {
  for (let i = from; i < to; i++) {
    const row = i * n;
    for (let j = 0; j < n; j++) c[row + j] = 0;
    for (let k = 0; k < n; k++) {
      const aik = a[row + k] as number;
      const bk = k * n;
      for (let j = 0; j < n; j++) c[row + j] = ((c[row + j] as number) + Math.imul(aik, b[bk + j] as number)) | 0;
    }
  }
}

/** Row i of A·B (the coordinator's exact recomputation of one opened row: O(n²)). */
export function productRow(a: Int32Array, b: Int32Array, n: number, i: number): Int32Array {
  const c = new Int32Array(n);
  const row = i * n;
  for (let k = 0; k < n; k++) {
    const aik = a[row + k] as number;
    const bk = k * n;
    for (let j = 0; j < n; j++) c[j] = ((c[j] as number) + Math.imul(aik, b[bk + j] as number)) | 0;
  }
  return c;
}

/** M·v over Z/2^32 for a row-major n×n M: O(n²). */
export function matVec(m: Int32Array, v: Int32Array, n: number): Int32Array {
  const out = new Int32Array(n);
  for (let i = 0; i < n; i++) {
    let s = 0;
    const row = i * n;
    for (let j = 0; j < n; j++) s = (s + Math.imul(m[row + j] as number, v[j] as number)) | 0;
    out[i] = s;
  }
  return out;
}

export function dot(x: ArrayLike<number>, y: Int32Array): number {
  let s = 0;
  for (let j = 0; j < y.length; j++) s = (s + Math.imul(x[j] as number, y[j] as number)) | 0;
  return s;
}

const littleEndian = new Uint8Array(new Uint32Array([1]).buffer)[0] === 1;

/** Little-endian bytes of 32-bit words (the byte form every leaf is hashed over). */
export function wordBytes(words: Int32Array): Uint8Array {
  if (littleEndian) return new Uint8Array(words.buffer, words.byteOffset, words.byteLength);
  const out = new Uint8Array(words.length * 4);
  const view = new DataView(out.buffer);
  for (let i = 0; i < words.length; i++) view.setInt32(i * 4, words[i] as number, true);
  return out;
}

/** Leaf hash of a row of C or a memory block. */
export function wordsLeaf(hash: HashFn, words: Int32Array): Uint8Array {
  return leafHash(hash, wordBytes(words));
}

/**
 * The memory probe's buffer: block 0 from the seed, then each block mixes the previous one with a
 * block chosen by the previous block's content (scrypt's ROMix shape): producing block i needs
 * earlier blocks at unpredictable places, so a provider that did not keep the buffer cannot
 * recompute an opened block quickly. Writes block `i` into `out` given its inputs.
 */
export function memoryBlock(out: Int32Array, i: number, prev: Int32Array | null, other: Int32Array | null, seed: string): void {
  if (i === 0 || !prev || !other) {
    const rng = new SeededRandom(`${seed.slice(0, 24)}6d656d30`);
    rng.fill(out);
    return;
  }
  let x = (prev[MEMORY_BLOCK_WORDS - 1] as number) ^ i;
  for (let w = 0; w < MEMORY_BLOCK_WORDS; w++) {
    x = Math.imul(x ^ (prev[w] as number) ^ (x >>> 15), 0x85ebca6b);
    x = (x + (other[w] as number)) | 0;
    x = Math.imul(x ^ (x >>> 13), 0xc2b2ae35);
    x ^= x >>> 16;
    out[w] = x;
  }
}

/** Which earlier block block i (≥ 1) mixes in: chosen by block i−1's first word. */
export function memoryParent(i: number, prev: Int32Array): number {
  return ((prev[0] as number) >>> 0) % i;
}

/** Fills a whole memory buffer (blocks × MEMORY_BLOCK_WORDS words) for `seed`, blocks [from, to). */
export function fillMemory(buffer: Int32Array, seed: string, from: number, to: number): void {
  for (let i = from; i < to; i++) {
    const out = buffer.subarray(i * MEMORY_BLOCK_WORDS, (i + 1) * MEMORY_BLOCK_WORDS);
    if (i === 0) {
      memoryBlock(out, 0, null, null, seed);
      continue;
    }
    const prev = buffer.subarray((i - 1) * MEMORY_BLOCK_WORDS, i * MEMORY_BLOCK_WORDS);
    const j = memoryParent(i, prev);
    memoryBlock(out, i, prev, buffer.subarray(j * MEMORY_BLOCK_WORDS, (j + 1) * MEMORY_BLOCK_WORDS), seed);
  }
}

/** `count` distinct values in [0, bound), in the order drawn. */
function distinct(rng: SeededRandom, count: number, bound: number): number[] {
  const want = Math.min(count, bound);
  const seen = new Set<number>();
  const out: number[] = [];
  while (out.length < want) {
    const v = rng.below(bound);
    if (!seen.has(v)) {
      seen.add(v);
      out.push(v);
    }
  }
  return out;
}

const utf8 = new TextEncoder();

/**
 * The rows and blocks to open: derived from the coordinator's revealed secret AND the provider's
 * roots, so neither side picks them alone (the coordinator committed to the secret before it saw
 * the roots; the provider committed to the roots before it saw the secret).
 */
export function openedIndices(
  hash: HashFn,
  c: Pick<CapacityChallenge, 'n' | 'memoryBlocks' | 'rowsToOpen' | 'blocksToOpen'>,
  openSeed: string,
  matrixRoot: string,
  memoryRoot: string,
): { rows: number[]; blocks: number[] } {
  const rng = new SeededRandom(toHex(hash(utf8.encode(`${openSeed}:${matrixRoot}:${memoryRoot}`))).slice(0, 32));
  return { rows: distinct(rng, c.rowsToOpen, c.n), blocks: distinct(rng, c.blocksToOpen, c.memoryBlocks) };
}

/** hex sha256 of the open secret, sent with the challenge. */
export function openCommitmentOf(hash: HashFn, openSeed: string): string {
  return toHex(hash(utf8.encode(openSeed)));
}

/** What the provider signs when it commits to its roots. */
export function committedMessage(challengeId: string, matrixRoot: string, memoryRoot: string): string {
  return canonicalJson({ v: 1, type: 'challenge.committed', challengeId, matrixRoot, memoryRoot });
}

export interface OpenedRow {
  index: number;
  values: number[];
  proof: string[];
}

export interface OpenedBlock {
  index: number;
  words: number[];
  proof: string[];
}

/** What the provider signs when it opens rows and blocks. */
export function openedMessage(challengeId: string, rows: readonly OpenedRow[], blocks: readonly OpenedBlock[]): string {
  return canonicalJson({ v: 1, type: 'challenge.opened', challengeId, rows, blocks });
}

/** Checks an opened block list against the memory root: every opened block follows from its parents. Returns a reason, or null. */
export function checkMemoryOpening(hash: HashFn, seed: string, memoryBlocks: number, memoryRoot: string, opened: readonly number[], blocks: readonly OpenedBlock[]): string | null {
  const byIndex = new Map<number, Int32Array>();
  for (const b of blocks) {
    if (b.words.length !== MEMORY_BLOCK_WORDS) return `memory block ${b.index} has ${b.words.length} words`;
    const words = Int32Array.from(b.words);
    if (!verifyMerkleProof(hash, memoryRoot, wordsLeaf(hash, words), b.index, memoryBlocks, b.proof)) return `memory block ${b.index} is not in the committed buffer`;
    byIndex.set(b.index, words);
  }
  const expect = new Int32Array(MEMORY_BLOCK_WORDS);
  for (const i of opened) {
    const got = byIndex.get(i);
    if (!got) return `memory block ${i} was not opened`;
    if (i === 0) memoryBlock(expect, 0, null, null, seed);
    else {
      const prev = byIndex.get(i - 1);
      if (!prev) return `memory block ${i - 1} (parent of ${i}) was not opened`;
      const j = memoryParent(i, prev);
      const other = byIndex.get(j);
      if (!other) return `memory block ${j} (parent of ${i}) was not opened`;
      memoryBlock(expect, i, prev, other, seed);
    }
    for (let w = 0; w < MEMORY_BLOCK_WORDS; w++) if (expect[w] !== got[w]) return `memory block ${i} does not follow from its parents`;
  }
  return null;
}
