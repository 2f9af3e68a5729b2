/**
 * How big a capacity challenge is and how long a provider gets: sized from what the provider
 * claims (its benchmark class and memory), so an honest provider finishes well inside the
 * deadline and one that overstates its hardware cannot. Also the expected share of provider time
 * challenges take at a given rate. Pure functions and the options (with defaults).
 *
 * The deadline tolerates load (an honest agent also runs tasks), so it catches gross lies, not
 * fine ones: with the defaults (10 s of matrix work at the claimed speed, slack 4, 5 s of latency,
 * a 128 MiB probe) a provider overstating its CPU class by more than about 5.6× misses it
 * ((4 × (10 + 2.7) + 5) / 10). More work per challenge tightens that at the same slack; the
 * overhead stays small (≈ 13 s per 6 h ≈ 0.06% of the provider's time).
 */
import type { Benchmarks, Hardware } from '@gridwork/protocol';
import { MEMORY_BLOCK_BYTES } from '@gridwork/protocol';

export interface ChallengeOptions {
  /** Mean time between two challenges of one connected provider (a Poisson process). @default 6 hours */
  meanIntervalMs?: number;
  /** Matrix work per challenge, in milliseconds at the provider's claimed CPU speed. @default 10_000 */
  workMs?: number;
  /** The deadline is `slack` × the expected time at the claimed speed, plus `latencyMs`. @default 4 */
  slack?: number;
  /** Allowance for the network and the provider's other work, added to every deadline and to the opening window. @default 5000 */
  latencyMs?: number;
  /** Smallest matrix side. @default 32 */
  minN?: number;
  /** Largest matrix side (a row opened is n words on the wire). @default 2048 */
  maxN?: number;
  /** Share of the claimed memory the probe fills. @default 0.25 */
  memoryShare?: number;
  /** Cap on the probe's size in bytes (filling and hashing it costs the provider ~20–50 ms per MiB). @default 128 MiB */
  maxMemoryBytes?: number;
  /** Result rows opened per challenge. @default 16 */
  rowsToOpen?: number;
  /** Memory blocks opened per challenge. @default 16 */
  blocksToOpen?: number;
  /** Opened rows also recomputed exactly (O(n²) each) besides the Freivalds check of all of them. @default 2 */
  exactRows?: number;
  /** Failed challenges in a row after which a provider gets no work until it passes one. @default 3 */
  maxConsecutiveFailures?: number;
  /**
   * Challenge a provider as soon as it says hello when no passed challenge proved its CPU claim
   * yet. Either way the market scores an unproven claim as the floor; off, the Poisson schedule
   * proves claims, hours later. Off by default: a full-size challenge of every provider that
   * connects (a core for `workMs`, up to `maxMemoryBytes`) at once starves a small machine of
   * CPU; a network that wants claims proven at once turns it on (the demo does, with small
   * challenges). @default false
   */
  proveOnHello?: boolean;
}

export type ChallengeConfig = Required<ChallengeOptions>;

export function resolveChallengeOptions(o: ChallengeOptions = {}): ChallengeConfig {
  return {
    meanIntervalMs: o.meanIntervalMs ?? 6 * 3600_000,
    workMs: o.workMs ?? 10_000,
    slack: o.slack ?? 4,
    latencyMs: o.latencyMs ?? 5000,
    minN: o.minN ?? 32,
    maxN: o.maxN ?? 2048,
    memoryShare: o.memoryShare ?? 0.25,
    maxMemoryBytes: o.maxMemoryBytes ?? 128 * 1024 * 1024,
    rowsToOpen: o.rowsToOpen ?? 16,
    blocksToOpen: o.blocksToOpen ?? 16,
    exactRows: o.exactRows ?? 2,
    maxConsecutiveFailures: o.maxConsecutiveFailures ?? 3,
    proveOnHello: o.proveOnHello ?? false,
  };
}

/**
 * Matrix multiply-adds per benchmark op: the benchmark (benchmark.ts) times a bare imul+add
 * chain; a row-major product also loads and stores, measured at ~0.25 of that here.
 */
export const MACS_PER_BENCHMARK_OP = 0.25;
/** Memory fill and leaf hashing, bytes per millisecond, conservative (~190 MB/s measured fill alone). */
export const MEMORY_BYTES_PER_MS = 50_000;

export interface ChallengeSize {
  n: number;
  memoryBlocks: number;
  /** Expected provider time at the claimed speed (matrix + memory). */
  expectedMs: number;
  /** The roots must arrive within this long of the challenge being issued. */
  deadlineMs: number;
  /**
   * The CPU claim (Mops per core) this challenge proves if it passes, recorded with it
   * (`capacity_challenges.claimed_mops`): the claim itself, unless the matrix hit `maxN` before it
   * reached `workMs` of work at the claimed speed. Then the deadline still assumes the claimed
   * speed, but the work is only what `maxN` holds, and a passed challenge proves no more than the
   * claim at which that is `workMs` of work (about 3,400 Mops at the defaults).
   */
  provesMops: number;
}

/** The largest CPU claim a challenge of side `maxN` is `workMs` of work for. */
export function mostProvableMops(config: Pick<ChallengeConfig, 'maxN' | 'workMs'>): number {
  return config.maxN ** 3 / (config.workMs * 1000 * MACS_PER_BENCHMARK_OP);
}

/**
 * Sizes a challenge from the claimed CPU class. GPU providers are sized from the same CPU claim
 * until the agent has a GPU kernel for the product; the protocol does not change with it. (So a
 * GPU benchmark claim is never proven, and the market does not count one: market.ts.)
 */
export function sizeChallenge(config: ChallengeConfig, claimed: { benchmarks: Benchmarks | null; hardware: Hardware }): ChallengeSize {
  const mops = Math.max(claimed.benchmarks?.cpuMopsPerCore ?? 1, 1);
  const macsPerMs = mops * 1000 * MACS_PER_BENCHMARK_OP;
  const side = Math.cbrt(config.workMs * macsPerMs);
  const n = Math.max(config.minN, Math.min(config.maxN, Math.floor(side / 8) * 8));
  const memoryBytes = Math.min(config.maxMemoryBytes, claimed.hardware.memoryGiB * 1024 ** 3 * config.memoryShare);
  const memoryBlocks = Math.max(config.blocksToOpen, Math.floor(memoryBytes / MEMORY_BLOCK_BYTES));
  const expectedMs = n ** 3 / macsPerMs + (memoryBlocks * MEMORY_BLOCK_BYTES) / MEMORY_BYTES_PER_MS;
  const provesMops = n < config.maxN ? mops : Math.min(mops, mostProvableMops(config));
  return { n, memoryBlocks, expectedMs, deadlineMs: Math.ceil(config.slack * expectedMs + config.latencyMs), provesMops };
}

/** Share of a provider's time that challenges take: time per challenge over the mean interval. */
export function challengeShare(busyMsPerChallenge: number, meanIntervalMs: number): number {
  return busyMsPerChallenge / meanIntervalMs;
}
