/**
 * The agent's side of capacity challenges (trust layer L1): computes C = A·B and the memory
 * probe for a seeded challenge, commits to Merkle roots over C's rows and the memory blocks,
 * keeps both in memory until the coordinator reveals which rows and blocks to open, then opens
 * them with proofs. The work yields to the event loop every few milliseconds, so leases,
 * heartbeats and reports go on meanwhile, and stops at the deadline (a late answer is worth
 * nothing). Owns nothing durable: an agent restart forgets open challenges (they count as missed).
 */
import {
  type CapacityChallenge,
  challengeMatrices,
  committedMessage,
  fillMemory,
  MEMORY_BLOCK_WORDS,
  MerkleTree,
  multiplyRows,
  type OpenedBlock,
  type OpenedRow,
  openCommitmentOf,
  openedIndices,
  openedMessage,
  memoryParent,
  wordsLeaf,
} from '@gridwork/protocol';
import { type Identity, sha256Bytes, signBytes } from '@gridwork/protocol/node';

/** Work done between two yields to the event loop. */
const SLICE_MS = 8;
/** How long a solved challenge waits for its opening after the commit deadline (the coordinator's opening window is shorter). */
const KEEP_AFTER_DEADLINE_MS = 120_000;

export interface SolvedChallenge {
  challenge: CapacityChallenge;
  c: Int32Array;
  memory: Int32Array;
  rows: MerkleTree;
  blocks: MerkleTree;
}

/**
 * How an agent answers challenges. The honest one computes; tests of the coordinator's checks
 * give an agent a solver that cheats in one precise way (a wrong product, a skipped buffer).
 */
export interface ChallengeSolver {
  /** Computes and commits; null when the deadline passed first. */
  solve(challenge: CapacityChallenge, giveUpAt: number): Promise<SolvedChallenge | null>;
}

const yieldNow = () => new Promise<void>((resolve) => setImmediate(resolve));

export const honestSolver: ChallengeSolver = {
  async solve(challenge, giveUpAt) {
    const { n, seed, memoryBlocks } = challenge;
    const { a, b } = challengeMatrices(seed, n);
    const c = new Int32Array(n * n);
    let row = 0;
    while (row < n) {
      const sliceEnd = performance.now() + SLICE_MS;
      while (row < n && performance.now() < sliceEnd) {
        multiplyRows(a, b, c, n, row, row + 1);
        row++;
      }
      if (Date.now() > giveUpAt) return null;
      await yieldNow();
    }
    const memory = new Int32Array(memoryBlocks * MEMORY_BLOCK_WORDS);
    let block = 0;
    while (block < memoryBlocks) {
      const sliceEnd = performance.now() + SLICE_MS;
      while (block < memoryBlocks && performance.now() < sliceEnd) {
        const to = Math.min(memoryBlocks, block + 64);
        fillMemory(memory, seed, block, to);
        block = to;
      }
      if (Date.now() > giveUpAt) return null;
      await yieldNow();
    }
    const rowLeaves: Uint8Array[] = [];
    for (let i = 0; i < n; i++) rowLeaves.push(wordsLeaf(sha256Bytes, c.subarray(i * n, (i + 1) * n)));
    const blockLeaves: Uint8Array[] = [];
    for (let i = 0; i < memoryBlocks; i++) {
      blockLeaves.push(wordsLeaf(sha256Bytes, memory.subarray(i * MEMORY_BLOCK_WORDS, (i + 1) * MEMORY_BLOCK_WORDS)));
      if (i % 4096 === 4095) {
        if (Date.now() > giveUpAt) return null;
        await yieldNow();
      }
    }
    return { challenge, c, memory, rows: new MerkleTree(sha256Bytes, rowLeaves), blocks: new MerkleTree(sha256Bytes, blockLeaves) };
  },
};

export type ChallengeReport =
  | { type: 'challenge.committed'; challengeId: string; matrixRoot: string; memoryRoot: string; signature: string }
  | { type: 'challenge.opened'; challengeId: string; rows: OpenedRow[]; blocks: OpenedBlock[]; signature: string };

/** Challenges in progress or waiting to be opened, and the signed reports that answer them. */
export class ChallengeResponder {
  private readonly solved = new Map<string, SolvedChallenge>();
  private readonly started = new Set<string>();

  constructor(
    private readonly identity: Identity,
    private readonly solver: ChallengeSolver,
    private readonly send: (report: ChallengeReport) => void,
    private readonly warn: (obj: object, msg: string) => void,
  ) {}

  /** Starts computing (once per challenge); the commitment is sent when done, unless the deadline passed. */
  issue(challenge: CapacityChallenge): void {
    if (this.started.has(challenge.challengeId)) return;
    if (this.started.size > 1000) this.started.clear();
    this.started.add(challenge.challengeId);
    const giveUpAt = Date.now() + challenge.deadlineMs;
    void this.solver
      .solve(challenge, giveUpAt)
      .then((done) => {
        if (!done) return this.warn({ challengeId: challenge.challengeId }, 'capacity challenge not finished before its deadline');
        // Only the latest challenge is kept (the coordinator has at most one open per provider),
        // and not past the time its opening could still count: the buffer may be large.
        this.solved.clear();
        this.solved.set(challenge.challengeId, done);
        setTimeout(() => this.solved.delete(challenge.challengeId), challenge.deadlineMs + KEEP_AFTER_DEADLINE_MS).unref();
        const matrixRoot = done.rows.rootHex;
        const memoryRoot = done.blocks.rootHex;
        this.send({
          type: 'challenge.committed',
          challengeId: challenge.challengeId,
          matrixRoot,
          memoryRoot,
          signature: signBytes(this.identity, committedMessage(challenge.challengeId, matrixRoot, memoryRoot)),
        });
      })
      .catch((err: unknown) => this.warn({ challengeId: challenge.challengeId, err: (err as Error).message }, 'capacity challenge failed'));
  }

  /** Opens the rows and blocks the revealed secret picks; refuses a secret that does not match the commitment. */
  open(challengeId: string, openSeed: string): void {
    const done = this.solved.get(challengeId);
    if (!done) {
      this.warn({ challengeId }, 'asked to open a challenge this agent does not hold');
      return;
    }
    this.solved.delete(challengeId);
    const ch = done.challenge;
    if (openCommitmentOf(sha256Bytes, openSeed) !== ch.openCommitment) {
      this.warn({ challengeId }, 'coordinator revealed a secret that does not match its commitment');
      return;
    }
    const picked = openedIndices(sha256Bytes, ch, openSeed, done.rows.rootHex, done.blocks.rootHex);
    const rows: OpenedRow[] = picked.rows.map((i) => ({ index: i, values: Array.from(done.c.subarray(i * ch.n, (i + 1) * ch.n)), proof: done.rows.proof(i) }));
    const wanted = new Set<number>();
    for (const i of picked.blocks) {
      wanted.add(i);
      if (i > 0) {
        wanted.add(i - 1);
        wanted.add(memoryParent(i, done.memory.subarray((i - 1) * MEMORY_BLOCK_WORDS, i * MEMORY_BLOCK_WORDS)));
      }
    }
    const blocks: OpenedBlock[] = [...wanted]
      .sort((x, y) => x - y)
      .map((i) => ({ index: i, words: Array.from(done.memory.subarray(i * MEMORY_BLOCK_WORDS, (i + 1) * MEMORY_BLOCK_WORDS)), proof: done.blocks.proof(i) }));
    this.send({ type: 'challenge.opened', challengeId, rows, blocks, signature: signBytes(this.identity, openedMessage(challengeId, rows, blocks)) });
  }
}
