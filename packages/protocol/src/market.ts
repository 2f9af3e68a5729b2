/**
 * Market payloads: a provider's standing asks (prices per resource-hour, decimal credits),
 * its measured benchmark, and what the coordinator answers to "why does this not match?".
 */
import Type from 'typebox';
import { type Hardware, HARDWARE_LIMITS } from './hardware.ts';

const Decimal = Type.String({ maxLength: 32, pattern: '^(0|[1-9][0-9]*)(\\.[0-9]{1,6})?$' });

export const Asks = Type.Object(
  {
    /** Price of one CPU core for one hour. */
    cpuCoreHour: Decimal,
    /** Price of one GiB of memory for one hour. */
    memoryGiBHour: Decimal,
    /** Price of one GPU of each model for one hour. */
    gpuHour: Type.Record(Type.String({ minLength: 1, maxLength: 64 }), Decimal, { maxProperties: HARDWARE_LIMITS.gpuModels }),
  },
  { additionalProperties: false },
);
export type Asks = Type.Static<typeof Asks>;

/**
 * The largest benchmark figures a hello may claim; the coordinator refuses a hello beyond them
 * (PROTOCOL_ERROR naming the field), as it does hardware beyond HARDWARE_LIMITS.
 *
 * The CPU figure is what the agent's benchmark (provider/src/benchmark.ts) measures: a chain of
 * dependent 32-bit multiply-adds on one core. Each step waits for the one before (an imul's
 * latency is 3–4 cycles), so it cannot beat about one step per cycle: under 10,000 Mops at any
 * clock a CPU has. The agent measured 830 on this project's 2-core EPYC machine; 10^6 leaves
 * three orders of magnitude for faster cores and a better benchmark, and refuses only fantasy
 * (the 10^12 of issue 16). The GPU figure is relative to an RTX 4090 (the agent's nominal table
 * tops out at 9 for a B200).
 *
 * A claim inside the bounds is still only a claim: matching counts it only as far as a passed
 * capacity challenge proved it (the coordinator's market).
 */
export const BENCHMARK_LIMITS = {
  cpuMopsPerCore: 1_000_000,
  gpu: 1000,
} as const;

export const Benchmarks = Type.Object(
  {
    /** Measured integer multiply-add throughput of one core, in millions of ops per second. */
    cpuMopsPerCore: Type.Number({ minimum: 0, maximum: BENCHMARK_LIMITS.cpuMopsPerCore }),
    /** Relative GPU throughput per model (1.0 = an RTX 4090). */
    gpu: Type.Record(Type.String({ maxLength: 64 }), Type.Number({ minimum: 0, maximum: BENCHMARK_LIMITS.gpu }), { maxProperties: HARDWARE_LIMITS.gpuModels }),
  },
  { additionalProperties: false },
);
export type Benchmarks = Type.Static<typeof Benchmarks>;

/** Why a spec matches no provider right now (`gridwork job explain`, `GET /v1/jobs/:id`). */
export interface MatchExplanation {
  matchable: boolean;
  providers: { total: number; online: number };
  /** Providers ruled out by each filter, in the order the filters apply. */
  excluded: {
    offline: number;
    draining: number;
    /** Offer no runtime for the spec's `runtime.kind` (runtimes.ts). */
    runtime: number;
    gpuModel: number;
    gpuVram: number;
    gpuCount: number;
    cpu: number;
    memory: number;
    disk: number;
    region: number;
    reputation: number;
    stake: number;
    price: number;
    busy: number;
  };
  /** Lowest price per hour this order would pay among providers that pass every filter but price. */
  lowestAsk: string | null;
  maxPerHour: string | null;
  /** Providers that fit but are busy: when their earliest running lease reaches its time limit. */
  busyUntil: string | null;
  candidates: number;
  /** The best-ranked providers that can take the order now (lowest score first: price per unit of measured throughput, adjusted by reputation). */
  best: { providerId: string; name: string; pricePerHour: string; score: number }[];
  reasons: string[];
}

export interface MarketClass {
  resourceClass: string;
  unit: string;
  providers: number;
  freeUnits: number;
  min: string;
  median: string;
  max: string;
}

/** One provider as `GET /v1/providers` lists it (`gridwork providers`, the console's network view). */
export interface ProviderListing {
  id: string;
  name: string;
  state: 'online' | 'draining' | 'offline';
  /** Connected to this coordinator right now. */
  connected: boolean;
  hardware: Hardware;
  attributes: Record<string, string>;
  asks: Asks | null;
  benchmarks: Benchmarks | null;
  slots: number;
  /** 0..1: the reputation matching uses (lease history, capacity challenges, proven faults). */
  reputation: number;
  leasesCompleted: number;
  leasesFaulted: number;
  /** Staked credits (decimal string). */
  stake: string;
  lastSeenAt: string;
}
