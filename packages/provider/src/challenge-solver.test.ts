import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import {
  type CapacityChallenge,
  challengeMatrices,
  checkMemoryOpening,
  committedMessage,
  openCommitmentOf,
  openedIndices,
  openedMessage,
  productRow,
  verifyMerkleProof,
  wordsLeaf,
} from '@gridwork/protocol';
import { generateIdentity, sha256Bytes, verifyBytes } from '@gridwork/protocol/node';
import { type ChallengeReport, ChallengeResponder, honestSolver } from './challenge-solver.ts';

const SECRET = 'ab'.repeat(32);

function challenge(over: Partial<CapacityChallenge> = {}): CapacityChallenge {
  return {
    challengeId: `chal_${Math.random().toString(16).slice(2)}`,
    seed: '00112233445566778899aabbccddeeff',
    n: 40,
    memoryBlocks: 100,
    rowsToOpen: 6,
    blocksToOpen: 6,
    openCommitment: openCommitmentOf(sha256Bytes, SECRET),
    deadlineMs: 20_000,
    ...over,
  };
}

function responder() {
  const identity = generateIdentity();
  const sent: ChallengeReport[] = [];
  const warnings: string[] = [];
  let notify: () => void = () => {};
  const r = new ChallengeResponder(
    identity,
    honestSolver,
    (m) => {
      sent.push(m);
      notify();
    },
    (_o, msg) => {
      warnings.push(msg);
      notify();
    },
  );
  const next = () => new Promise<void>((resolve) => (notify = resolve));
  return { identity, sent, warnings, r, next };
}

describe('ChallengeResponder with the honest solver', () => {
  it('commits to signed roots, then opens exactly the rows and blocks the secret picks, with valid proofs and the true product', async () => {
    const { identity, sent, r, next } = responder();
    const ch = challenge();
    const committed = next();
    r.issue(ch);
    r.issue(ch); // applied twice (a resent message): computed once
    await committed;
    const c = sent[0];
    assert.ok(c && c.type === 'challenge.committed');
    assert.ok(verifyBytes(identity.publicKey, committedMessage(ch.challengeId, c.matrixRoot, c.memoryRoot), c.signature));

    const opened = next();
    r.open(ch.challengeId, SECRET);
    await opened;
    const o = sent[1];
    assert.ok(o && o.type === 'challenge.opened');
    assert.equal(sent.length, 2);
    assert.ok(verifyBytes(identity.publicKey, openedMessage(ch.challengeId, o.rows, o.blocks), o.signature));
    const picked = openedIndices(sha256Bytes, ch, SECRET, c.matrixRoot, c.memoryRoot);
    assert.deepEqual(
      o.rows.map((x) => x.index),
      picked.rows,
    );
    const { a, b } = challengeMatrices(ch.seed, ch.n);
    for (const row of o.rows) {
      assert.ok(verifyMerkleProof(sha256Bytes, c.matrixRoot, wordsLeaf(sha256Bytes, Int32Array.from(row.values)), row.index, ch.n, row.proof));
      assert.deepEqual(row.values, Array.from(productRow(a, b, ch.n, row.index)));
    }
    assert.equal(checkMemoryOpening(sha256Bytes, ch.seed, ch.memoryBlocks, c.memoryRoot, picked.blocks, o.blocks), null);
  });

  it('opens nothing for a secret that does not match the commitment, nor twice', async () => {
    const { sent, warnings, r, next } = responder();
    const ch = challenge();
    const committed = next();
    r.issue(ch);
    await committed;
    const refused = next();
    r.open(ch.challengeId, 'cd'.repeat(32));
    await refused;
    assert.match(warnings.at(-1) ?? '', /does not match its commitment/);
    r.open(ch.challengeId, SECRET);
    assert.equal(sent.length, 1, 'only the commitment was sent');
  });

  it('gives up at the deadline instead of answering late', async () => {
    const { sent, warnings, r, next } = responder();
    const gaveUp = next();
    r.issue(challenge({ n: 1024, deadlineMs: 0 }));
    await gaveUp;
    assert.match(warnings[0] ?? '', /not finished before its deadline/);
    assert.equal(sent.length, 0);
  });
});
