/**
 * Shared by the benchmarks: a seeded PRNG, a synthetic provider fleet and order mix with
 * realistic variety, percentiles, and the output format (a table for people, then one JSON
 * line for machines — always the last line of stdout).
 */
import { cpus, loadavg } from 'node:os';
import type { Asks, Benchmarks, Hardware, Resources } from '@gridwork/protocol';

/** mulberry32: small, fast, and the same sequence for the same seed on every run. */
export function rng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

export type Rand = () => number;
export const between = (r: Rand, lo: number, hi: number) => lo + r() * (hi - lo);
export const intBetween = (r: Rand, lo: number, hi: number) => lo + Math.floor(r() * (hi - lo + 1));
export function pick<T>(r: Rand, items: readonly T[]): T {
  return items[Math.floor(r() * items.length)] as T;
}
export function weighted<T>(r: Rand, items: readonly (readonly [T, number])[]): T {
  const total = items.reduce((s, [, w]) => s + w, 0);
  let x = r() * total;
  for (const [v, w] of items) {
    x -= w;
    if (x < 0) return v;
  }
  return (items[items.length - 1] as readonly [T, number])[0];
}

/** A 43-character base64url id, the shape of an Ed25519 public key (what provider ids are). */
export function fakeKey(r: Rand): string {
  const alphabet = 'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_';
  let s = '';
  for (let i = 0; i < 43; i++) s += alphabet[Math.floor(r() * 64)];
  return s;
}

/** Decimal credit string with at most 6 fraction digits. */
export const credits = (x: number) => x.toFixed(4);

export interface GpuModel {
  model: string;
  name: string;
  vramGiB: number;
  /** Typical price per GPU-hour in credits. */
  price: number;
  /** Throughput relative to an RTX 4090. */
  perf: number;
  /** Share of GPU providers with this model. */
  share: number;
}

export const GPU_MODELS: readonly GpuModel[] = [
  { model: 'rtx-4090', name: 'NVIDIA GeForce RTX 4090', vramGiB: 24, price: 0.45, perf: 1.0, share: 40 },
  { model: 'l4', name: 'NVIDIA L4', vramGiB: 24, price: 0.35, perf: 0.45, share: 20 },
  { model: 'a100-80gb', name: 'NVIDIA A100 80GB PCIe', vramGiB: 80, price: 1.6, perf: 1.7, share: 25 },
  { model: 'h100-80gb', name: 'NVIDIA H100 80GB HBM3', vramGiB: 80, price: 2.6, perf: 3.0, share: 15 },
];
export const REGIONS = ['eu', 'us', 'asia'] as const;

export interface SimProvider {
  id: string;
  name: string;
  hardware: Hardware;
  attributes: Record<string, string>;
  asks: Asks;
  benchmarks: Benchmarks;
  slots: number;
  reputation: number;
  /** µc */
  stake: bigint;
}

/** One synthetic provider: ~60 % CPU-only, the rest with 1–8 GPUs of one model. */
export function makeProvider(r: Rand, i: number): SimProvider {
  const cores = pick(r, [8, 12, 16, 24, 32, 48, 64]);
  const memoryGiB = Math.min(512, Math.max(32, pick(r, [2, 4, 8]) * cores));
  const hasGpu = r() < 0.4;
  const gpus: Hardware['gpus'] = [];
  const gpuHour: Record<string, string> = {};
  const gpuPerf: Record<string, number> = {};
  if (hasGpu) {
    const m = weighted(
      r,
      GPU_MODELS.map((g) => [g, g.share] as const),
    );
    const count = weighted(r, [
      [1, 35],
      [2, 25],
      [4, 25],
      [8, 15],
    ] as const);
    for (let g = 0; g < count; g++) gpus.push({ index: g, uuid: `GPU-${i}-${g}`, model: m.model, name: m.name, vramGiB: m.vramGiB });
    gpuHour[m.model] = credits(m.price * between(r, 0.7, 1.4));
    gpuPerf[m.model] = Math.round(m.perf * between(r, 0.9, 1.1) * 1000) / 1000;
  }
  return {
    id: fakeKey(r),
    name: `sim-${i}`,
    hardware: { cpu: { model: 'Sim CPU', cores }, memoryGiB, diskGiB: pick(r, [256, 512, 1024, 2048]), gpus },
    attributes: { region: pick(r, REGIONS) },
    asks: { cpuCoreHour: credits(between(r, 0.01, 0.06)), memoryGiBHour: credits(between(r, 0.001, 0.006)), gpuHour },
    benchmarks: { cpuMopsPerCore: Math.round(between(r, 400, 2000)), gpu: gpuPerf },
    slots: intBetween(r, 4, 8),
    reputation: Math.round(between(r, 0.3, 1) * 1000) / 1000,
    stake: BigInt(Math.floor(r() * 1000)) * 1_000_000n,
  };
}

export interface SimOrder {
  resources: Resources;
  regions?: string[];
  minReputation?: number;
  /** credits per hour */
  maxPerHour: number;
}

/**
 * One order: ~60 % CPU-only (1–8 cores, 2–8 GiB per core), ~40 % GPU (1–8 GPUs from a model
 * list, sometimes with a VRAM floor); half restrict regions; max price near the going rate,
 * so a few per cent find no provider at their price.
 */
export function makeOrder(r: Rand): SimOrder {
  const o: SimOrder = { resources: { cpu: 1, memoryGiB: 1 }, maxPerHour: 0 };
  if (r() < 0.6) {
    const cpu = pick(r, [0.5, 1, 1, 2, 2, 4, 8]);
    const memoryGiB = cpu * pick(r, [2, 4, 8]);
    o.resources = { cpu, memoryGiB };
    o.maxPerHour = (cpu * 0.05 + memoryGiB * 0.005) * between(r, 0.8, 2);
  } else {
    const count = weighted(r, [
      [1, 70],
      [2, 18],
      [4, 9],
      [8, 3],
    ] as const);
    const roll = r();
    let models: string[] | undefined;
    if (roll < 0.25) models = undefined;
    else if (roll < 0.6) models = [pick(r, GPU_MODELS).model];
    else models = GPU_MODELS.filter(() => r() < 0.5).map((g) => g.model);
    if (models?.length === 0) models = ['rtx-4090'];
    const top = Math.max(...(models ?? GPU_MODELS.map((g) => g.model)).map((m) => GPU_MODELS.find((g) => g.model === m)?.price ?? 1));
    o.resources = {
      cpu: count * 4,
      memoryGiB: count * 16,
      gpu: { count, ...(models ? { models } : {}), ...(r() < 0.15 ? { minVramGiB: 40 } : {}) },
    };
    o.maxPerHour = count * top * between(r, 0.9, 1.8) + count * 0.5;
  }
  const reg = r();
  if (reg < 0.3) o.regions = [pick(r, REGIONS)];
  else if (reg < 0.5) o.regions = [...REGIONS].filter(() => r() < 0.6).slice(0, 2);
  if (o.regions?.length === 0) delete o.regions;
  if (r() < 0.2) o.minReputation = 0.5;
  return o;
}

export function percentile(sorted: readonly number[], p: number): number {
  if (sorted.length === 0) return Number.NaN;
  const i = Math.min(sorted.length - 1, Math.max(0, Math.ceil((p / 100) * sorted.length) - 1));
  return sorted[i] as number;
}

export function summarize(values: readonly number[]): { n: number; p50: number; p90: number; p99: number; max: number; mean: number } {
  const s = [...values].sort((a, b) => a - b);
  return {
    n: s.length,
    p50: percentile(s, 50),
    p90: percentile(s, 90),
    p99: percentile(s, 99),
    max: s[s.length - 1] ?? Number.NaN,
    mean: s.reduce((a, b) => a + b, 0) / Math.max(1, s.length),
  };
}

export const round = (x: number, digits = 2) => {
  const f = 10 ** digits;
  return Math.round(x * f) / f;
};

/** One line for the table footers: the load the machine was under. */
export function loadNote(): string {
  const [one, five] = loadavg();
  return `load average ${round(one ?? 0, 2)} (1 min), ${round(five ?? 0, 2)} (5 min) on ${cpus().length} cores${(one ?? 0) > cpus().length ? ' — machine busy with other work: figures are pessimistic' : ''}`;
}

/** Prints rows as an aligned text table (first row is the header). */
export function printTable(title: string, rows: (string | number)[][]): void {
  const cells = rows.map((r) => r.map((c) => String(c)));
  const widths: number[] = [];
  for (const r of cells) {
    for (const [i, c] of r.entries()) widths[i] = Math.max(widths[i] ?? 0, c.length);
  }
  const line = (r: string[]) => r.map((c, i) => (i === 0 ? c.padEnd(widths[i] ?? 0) : c.padStart(widths[i] ?? 0))).join('  ');
  console.log(`\n${title}`);
  const [head, ...body] = cells;
  if (head) {
    console.log(line(head));
    console.log(widths.map((w) => '-'.repeat(w)).join('  '));
  }
  for (const r of body) console.log(line(r));
}

export const yesNo = (met: boolean) => (met ? 'MET' : 'MISSED');

export function machineInfo(): Record<string, unknown> {
  const c = cpus();
  // Load average: other work on this shared machine skews every figure; it is recorded with them.
  return {
    node: process.version,
    platform: process.platform,
    arch: process.arch,
    cpu: c[0]?.model ?? 'unknown',
    cores: c.length,
    loadavg: loadavg().map((x) => round(x, 2)),
  };
}

/** Progress goes to stderr so stdout stays: tables, then the JSON line. */
export const progress = (msg: string) => process.stderr.write(`[bench] ${msg}\n`);
