/**
 * Capacity challenges (trust layer L1): owns `capacity_challenges`. At random times (a Poisson
 * process per connected provider, mean `meanIntervalMs`) a provider is sent a seeded challenge
 * sized to the hardware it claims (challenge-sizing.ts); its verdict goes out as a
 * `provider.challenged` event, which the reputation subscriber counts.
 *
 * The protocol, over the durable outbox and the sequenced, signed report path:
 *
 *   1. issue    coordinator → provider: seed, n, memory blocks, how many rows/blocks will be
 *               opened, openCommitment = sha256(openSeed) for a secret openSeed, deadlineMs.
 *   2. commit   provider computes C = A·B over Z/2^32 (A, B from the seed) and fills the memory
 *               buffer (a ROMix-like chain of 1 KiB blocks, challenge.ts), and sends Merkle roots
 *               over C's rows and over the blocks, signed, before the deadline.
 *   3. open     coordinator reveals openSeed. The opened rows and blocks are a function of
 *               openSeed AND both roots: the coordinator fixed openSeed before it saw the roots
 *               (the provider checks the reveal against the commitment), the provider fixed the
 *               roots before it knew openSeed, so neither can steer the sample.
 *   4. answer   provider sends the opened rows and blocks with Merkle proofs, signed, within
 *               `latencyMs`. The coordinator checks the proofs, then Freivalds' test on every
 *               opened row — with a fresh secret r, row_i · r = (A·(B·r))_i, O(n²) once for
 *               A·(B·r) and O(n) per row — recomputes `exactRows` rows exactly, and checks that
 *               each opened block follows from its two parent blocks.
 *
 * Why it is sound. The coordinator never sees C, only a root, so no check covers all of C at
 * once; what the protocol proves is that C was committed before the sample was known. A provider
 * that computed a fraction f of the rows correctly (and committed anything else for the rest)
 * passes with probability at most f^k for k opened rows (k = 16: f = 0.9 passes 18% of the time,
 * f = 0.5 one in 65,536), and a provider that committed garbage cannot open correct rows later
 * because each must match the root. Freivalds makes each row's check O(n) instead of O(n²); sending
 * C·r instead would add nothing, because y = A·(B·r) is computable in O(n²) without the product —
 * only rows tied to the root prove work. Over Z/2^32, a wrong row with difference d passes
 * Freivalds with probability 2^(v−32), v the lowest power of two dividing all of d — so a row that
 * is right except in high bits could slip through, but making d divisible by 2^v means knowing
 * the row mod 2^v, i.e. doing the row's work; the `exactRows` recomputed exactly close even that.
 * The memory probe: each block mixes its predecessor with a block picked by the predecessor's
 * content, so a provider that did not keep the buffer must regenerate from scratch (memory-hard,
 * as scrypt) to open a block, and a buffer filled with anything else fails the parent check on
 * every opened block it touches. The deadline (slack × expected time at the claimed speed,
 * plus latency) is what turns "computed it" into "has the claimed hardware": a provider that
 * overstates its benchmark class by more than the slack tolerates (≈ 5.6× at the defaults,
 * challenge-sizing.ts) cannot finish in time, and one short on memory cannot hold the buffer
 * between commit and open. Finer lies about speed are left to what a provider is paid for
 * (metered time) and to audits (L3); the cores a provider claims are not tested (the solver
 * uses one), nor GPUs until the agent has a GPU kernel for the product.
 *
 * A challenge that is not answered in time (offline, restarted, too slow) fails as missed.
 *
 * What a challenge proves is recorded with it: the CPU claim it was sized for (`claimed_mops`,
 * challenge-sizing.ts `provesMops`). The market believes a provider's claim only as far as its
 * latest passed challenge proved it (market.ts `provenBenchmarks`), so a claim is challenged as
 * soon as the provider says hello with it unproven (`proveOnHello`): a fresh key's claim, or a
 * raised one, costs it a challenge within a second or two instead of hours, and until that passes
 * it is scored as the floor. The Poisson schedule goes on after it, to prove the claim again at
 * times nobody can predict.
 */
import { randomBytes } from 'node:crypto';
import {
  type CapacityChallenge,
  checkMemoryOpening,
  committedMessage,
  openCommitmentOf,
  openedIndices,
  openedMessage,
  type ProviderSequenced,
} from '@gridwork/protocol';
import { sha256Bytes, verifyBytes } from '@gridwork/protocol/node';
import type { Logger } from 'pino';
import type { Subscriber } from '../bus/bus.ts';
import type { ChallengeVerdict } from '../core/events.ts';
import type { Units, UnitOfWork } from '../core/unit-of-work.ts';
import { enqueueForProvider } from '../providers/outbox.ts';
import type { CapacityChallengesTable } from '../store/schema.ts';
import type { Selectable } from 'kysely';
import type { ChallengeConfig } from './challenge-sizing.ts';
import { sizeChallenge } from './challenge-sizing.ts';
import { UNPROVEN_PERF } from '../market/market.ts';
import { checkMatrixOpening } from './matrix-check.ts';

/** How long after a deadline an unanswered challenge is failed: answers are judged by when they arrived, and one that arrived in time may still be waiting to be applied. */
const EXPIRY_GRACE_MS = 5000;
/**
 * A hello's challenge (`proveOnHello`) goes out once the provider's connection here is
 * registered (just after the hello commits): looked for after 100 ms, then twice more, each wait
 * three times the last (1.3 s in all). A provider connected to another replica is challenged by
 * that one, and one that left at once is not challenged at all.
 */
const PROVE_POLL_MS = 100;
const PROVE_POLLS = 3;

type Committed = Extract<ProviderSequenced, { type: 'challenge.committed' }>;
type Opened = Extract<ProviderSequenced, { type: 'challenge.opened' }>;
type ChallengeRow = Selectable<CapacityChallengesTable>;

export interface CapacityChallengesDeps {
  units: Units;
  log: Logger;
  config: ChallengeConfig;
  /** Whether a provider has a live connection now (only those are challenged). */
  isConnected: (providerId: string) => boolean;
}

export class CapacityChallenges {
  private readonly next = new Map<string, NodeJS.Timeout>();
  /** Providers whose hello's challenge is waiting to go out (their connection, or an open challenge). */
  private readonly proving = new Map<string, NodeJS.Timeout>();
  private readonly deadlines = new Map<string, NodeJS.Timeout>();
  private readonly inFlight = new Set<Promise<unknown>>();
  private closed = false;

  constructor(private readonly deps: CapacityChallengesDeps) {}

  /** Arms the deadlines of challenges left open by a previous run (they fail if already past). */
  async start(): Promise<void> {
    const open = await this.deps.units.run(async ({ trx }) =>
      trx.selectFrom('capacity_challenges').select(['id', 'deadline_at', 'open_deadline_at', 'state']).where('state', 'in', ['issued', 'committed']).execute(),
    );
    for (const c of open) this.armDeadline(c.id, (c.state === 'committed' ? (c.open_deadline_at ?? c.deadline_at) : c.deadline_at).getTime());
  }

  /**
   * Schedules challenges for providers as they come online (one at once when their claim is not
   * proven, with `proveOnHello`), and stops for those that leave.
   */
  subscriber(): Subscriber {
    return {
      name: 'capacity-challenges',
      types: ['provider.online', 'provider.offline'],
      handle: (events) => {
        for (const e of events) {
          if (e.type === 'provider.online') {
            if (this.deps.config.proveOnHello) this.proveSoon(e.providerId, 0);
            this.schedule(e.providerId);
          } else if (e.type === 'provider.offline') this.unschedule(e.providerId);
        }
      },
    };
  }

  /**
   * The hello's challenge: once the provider is connected here, a challenge if its claim is not
   * proven. If one is still open (issued to an instance that went away), it is tried again when
   * that one has ended.
   */
  private proveSoon(providerId: string, polls: number, delayMs = PROVE_POLL_MS): void {
    if (this.closed) return;
    clearTimeout(this.proving.get(providerId));
    const t = setTimeout(() => {
      this.proving.delete(providerId);
      if (this.closed) return;
      if (!this.deps.isConnected(providerId)) {
        if (polls + 1 < PROVE_POLLS) this.proveSoon(providerId, polls + 1, delayMs * 3);
        return;
      }
      this.track(
        this.issue(providerId, { onlyIfUnproven: true })
          .then((r) => {
            if (r.openUntil !== undefined) this.proveSoon(providerId, 0, Math.max(0, r.openUntil - Date.now()) + EXPIRY_GRACE_MS + PROVE_POLL_MS);
          })
          .catch((err) => this.deps.log.error({ err, providerId }, 'could not issue a capacity challenge')),
      );
    }, delayMs);
    t.unref();
    this.proving.set(providerId, t);
  }

  private schedule(providerId: string): void {
    if (this.closed || this.next.has(providerId)) return;
    // Exponential waiting times make the challenge times a Poisson process: unpredictable.
    const delay = -Math.log(1 - Math.random()) * this.deps.config.meanIntervalMs;
    const t = setTimeout(() => {
      this.next.delete(providerId);
      if (this.closed || !this.deps.isConnected(providerId)) return;
      this.track(this.issue(providerId).catch((err) => this.deps.log.error({ err, providerId }, 'could not issue a capacity challenge')));
      this.schedule(providerId);
    }, Math.min(delay, 2 ** 31 - 1));
    t.unref();
    this.next.set(providerId, t);
  }

  private unschedule(providerId: string): void {
    clearTimeout(this.next.get(providerId));
    this.next.delete(providerId);
    clearTimeout(this.proving.get(providerId));
    this.proving.delete(providerId);
  }

  private track(p: Promise<unknown>): void {
    this.inFlight.add(p);
    void p.finally(() => this.inFlight.delete(p));
  }

  /**
   * Issues a challenge now, unless one is open (`openUntil`: its current deadline) or, with
   * `onlyIfUnproven`, a passed challenge already proved as much of the provider's current claim as
   * a challenge can (or the claim is no more than the floor the market assumes anyway).
   */
  async issue(providerId: string, o: { onlyIfUnproven?: boolean } = {}): Promise<{ id: string | null; openUntil?: number }> {
    const { config } = this.deps;
    const issued = await this.deps.units.run(async (uow) => {
      const { trx } = uow;
      const p = await trx.selectFrom('providers').select(['hardware', 'benchmarks', 'state']).where('id', '=', providerId).forNoKeyUpdate().executeTakeFirst();
      if (!p || p.state === 'offline') return null;
      const open = await trx
        .selectFrom('capacity_challenges')
        .select(['id', 'state', 'deadline_at', 'open_deadline_at'])
        .where('provider_id', '=', providerId)
        .where('state', 'in', ['issued', 'committed'])
        .executeTakeFirst();
      if (open) return { openUntil: (open.state === 'committed' ? (open.open_deadline_at ?? open.deadline_at) : open.deadline_at).getTime() };
      const size = sizeChallenge(config, { benchmarks: p.benchmarks, hardware: p.hardware });
      if (o.onlyIfUnproven) {
        if (size.provesMops <= UNPROVEN_PERF) return null;
        const proof = await latestProof(trx, providerId);
        if (proof !== null && proof >= size.provesMops) return null;
      }
      const id = `chal_${randomBytes(10).toString('hex')}`;
      const seed = randomBytes(16).toString('hex');
      const openSeed = randomBytes(32).toString('hex');
      const now = new Date();
      const deadline = new Date(now.getTime() + size.deadlineMs);
      await trx
        .insertInto('capacity_challenges')
        .values({
          id,
          provider_id: providerId,
          seed,
          open_seed: openSeed,
          n: size.n,
          memory_blocks: size.memoryBlocks,
          rows_to_open: Math.min(config.rowsToOpen, size.n),
          blocks_to_open: Math.min(config.blocksToOpen, size.memoryBlocks),
          state: 'issued',
          issued_at: now,
          deadline_at: deadline,
          claimed_mops: size.provesMops,
        })
        .execute();
      const challenge: CapacityChallenge = {
        challengeId: id,
        seed,
        n: size.n,
        memoryBlocks: size.memoryBlocks,
        rowsToOpen: Math.min(config.rowsToOpen, size.n),
        blocksToOpen: Math.min(config.blocksToOpen, size.memoryBlocks),
        openCommitment: openCommitmentOf(sha256Bytes, openSeed),
        deadlineMs: size.deadlineMs,
      };
      await enqueueForProvider(uow, providerId, { type: 'challenge.issue', challenge });
      return { id, deadline, size };
    });
    if (!issued) return { id: null };
    if ('openUntil' in issued) return { id: null, openUntil: issued.openUntil };
    this.deps.log.info(
      {
        providerId,
        challengeId: issued.id,
        n: issued.size.n,
        memoryBlocks: issued.size.memoryBlocks,
        deadlineMs: issued.size.deadlineMs,
        claimedMops: issued.size.provesMops,
      },
      'capacity challenge issued',
    );
    this.armDeadline(issued.id, issued.deadline.getTime());
    return { id: issued.id };
  }

  /** Step 2: the roots. Within the deadline and signed, they are stored and the secret revealed. */
  async committed(uow: UnitOfWork, providerId: string, msg: Committed, receivedAt = Date.now()): Promise<void> {
    const row = await this.lock(uow, providerId, msg.challengeId);
    if (row?.state !== 'issued') return;
    // Judged by when the roots arrived; the window to open them starts now, as the reveal goes out.
    const arrived = new Date(receivedAt);
    const now = new Date();
    if (arrived > row.deadline_at) return this.end(uow, row, 'missed-deadline', `roots arrived ${arrived.getTime() - row.deadline_at.getTime()} ms after the deadline`);
    if (!verifyBytes(providerId, committedMessage(row.id, msg.matrixRoot, msg.memoryRoot), msg.signature)) {
      return this.end(uow, row, 'bad-signature', 'the commitment signature does not verify');
    }
    const openDeadline = new Date(now.getTime() + this.deps.config.latencyMs);
    await uow.trx
      .updateTable('capacity_challenges')
      .set({ state: 'committed', matrix_root: msg.matrixRoot, memory_root: msg.memoryRoot, committed_at: now, open_deadline_at: openDeadline })
      .where('id', '=', row.id)
      .execute();
    await enqueueForProvider(uow, providerId, { type: 'challenge.open', challengeId: row.id, openSeed: row.open_seed, answerWithinMs: this.deps.config.latencyMs });
    this.armDeadline(row.id, openDeadline.getTime());
  }

  /** Step 4: the opened rows and blocks, checked against the roots, A·B and the memory chain. */
  async opened(uow: UnitOfWork, providerId: string, msg: Opened, receivedAt = Date.now()): Promise<void> {
    const row = await this.lock(uow, providerId, msg.challengeId);
    if (row?.state !== 'committed' || !row.matrix_root || !row.memory_root) return;
    if (row.open_deadline_at && receivedAt > row.open_deadline_at.getTime()) return this.end(uow, row, 'missed-deadline', 'opened rows arrived after the deadline');
    if (!verifyBytes(providerId, openedMessage(row.id, msg.rows, msg.blocks), msg.signature)) {
      return this.end(uow, row, 'bad-signature', 'the opening signature does not verify');
    }
    const shape = { n: row.n, memoryBlocks: row.memory_blocks, rowsToOpen: row.rows_to_open, blocksToOpen: row.blocks_to_open };
    const picked = openedIndices(sha256Bytes, shape, row.open_seed, row.matrix_root, row.memory_root);
    // Freivalds' vector: fresh, uniform over Z/2^32, and never sent anywhere.
    const r = new Int32Array(new Uint8Array(randomBytes(4 * row.n)).buffer);
    const matrix = checkMatrixOpening(
      sha256Bytes,
      { seed: row.seed, n: row.n, matrixRoot: row.matrix_root, expected: picked.rows, rows: msg.rows, exactRows: this.deps.config.exactRows },
      r,
    );
    if (!matrix.ok) return this.end(uow, row, matrix.verdict, matrix.detail);
    const memory = checkMemoryOpening(sha256Bytes, row.seed, row.memory_blocks, row.memory_root, picked.blocks, msg.blocks);
    if (memory) return this.end(uow, row, memory.includes('not in the committed') ? 'bad-proof' : 'bad-memory', memory);
    return this.end(uow, row, 'passed', null);
  }

  private async lock(uow: UnitOfWork, providerId: string, challengeId: string): Promise<ChallengeRow | undefined> {
    const row = await uow.trx.selectFrom('capacity_challenges').selectAll().where('id', '=', challengeId).forNoKeyUpdate().executeTakeFirst();
    if (!row || row.provider_id !== providerId) {
      this.deps.log.warn({ providerId, challengeId }, 'answer to a challenge this provider was not given');
      return undefined;
    }
    return row;
  }

  private async end(uow: UnitOfWork, row: ChallengeRow, verdict: ChallengeVerdict, detail: string | null): Promise<void> {
    const now = new Date();
    const busyMs = Math.max(0, now.getTime() - row.issued_at.getTime());
    await uow.trx
      .updateTable('capacity_challenges')
      .set({ state: verdict === 'passed' ? 'passed' : 'failed', ended_at: now, reason: verdict === 'passed' ? null : `${verdict}: ${detail ?? ''}`, busy_ms: BigInt(busyMs) })
      .where('id', '=', row.id)
      .execute();
    uow.emit({ type: 'provider.challenged', providerId: row.provider_id, challengeId: row.id, verdict, detail, busyMs });
    clearTimeout(this.deadlines.get(row.id));
    this.deadlines.delete(row.id);
    const share = busyMs / this.deps.config.meanIntervalMs;
    const log = { providerId: row.provider_id, challengeId: row.id, verdict, detail, busyMs, n: row.n, memoryBlocks: row.memory_blocks, share };
    if (verdict === 'passed') this.deps.log.info(log, 'capacity challenge passed');
    else this.deps.log.warn(log, 'capacity challenge failed');
  }

  private armDeadline(challengeId: string, at: number): void {
    if (this.closed) return;
    clearTimeout(this.deadlines.get(challengeId));
    const t = setTimeout(
      () => {
        this.deadlines.delete(challengeId);
        this.track(this.expire(challengeId).catch((err) => this.deps.log.error({ err, challengeId }, 'could not expire a capacity challenge')));
      },
      // An answer that arrived in time may still wait its turn to be applied (reports share commits).
      Math.max(0, at - Date.now()) + EXPIRY_GRACE_MS,
    );
    t.unref();
    this.deadlines.set(challengeId, t);
  }

  /** A challenge whose current step is past its deadline fails as missed. */
  private async expire(challengeId: string): Promise<void> {
    if (this.closed) return;
    await this.deps.units.run(async (uow) => {
      const row = await uow.trx.selectFrom('capacity_challenges').selectAll().where('id', '=', challengeId).forNoKeyUpdate().executeTakeFirst();
      if (!row) return;
      const now = new Date();
      if (row.state === 'issued' && now > row.deadline_at) await this.end(uow, row, 'missed-deadline', 'no roots before the deadline');
      else if (row.state === 'committed' && row.open_deadline_at && now > row.open_deadline_at) await this.end(uow, row, 'missed-deadline', 'no opening before the deadline');
    });
  }

  async close(): Promise<void> {
    this.closed = true;
    for (const t of this.proving.values()) clearTimeout(t);
    this.proving.clear();
    for (const t of this.next.values()) clearTimeout(t);
    for (const t of this.deadlines.values()) clearTimeout(t);
    this.next.clear();
    this.deadlines.clear();
    await Promise.allSettled([...this.inFlight]);
  }
}

/**
 * The CPU claim a provider's latest passed challenge was sized for (null: none passed, or only
 * ones from before sizes were recorded). The market reads the same with its providers (market.ts
 * `refreshProviders`).
 */
export async function latestProof(trx: Pick<UnitOfWork['trx'], 'selectFrom'>, providerId: string): Promise<number | null> {
  const row = await trx
    .selectFrom('capacity_challenges')
    .select('claimed_mops')
    .where('provider_id', '=', providerId)
    .where('state', '=', 'passed')
    .orderBy('ended_at', 'desc')
    .limit(1)
    .executeTakeFirst();
  return row?.claimed_mops ?? null;
}
