/**
 * The matching index: providers' standing asks and free capacity, in memory, rebuilt from the
 * database at start and kept current from committed changes. An order is matched by walking
 * the pools that can serve it (one per GPU model, one for CPU-only work) in order of unit
 * score, evaluating the exact score of at most `probe` fitting providers per pool — never a
 * scan of every provider. Full providers leave their pools and come back when capacity frees.
 *
 * Score = price per hour ÷ measured throughput ÷ reputation factor (lower is better); ties go
 * to the lower provider id, so matching is deterministic.
 *
 * Pools are per workload kind too (runtimes.ts): a provider is listed in the pools of each kind
 * it offers a runtime for, so a container order walks only providers that run containers, however
 * many cheaper bundle-only providers there are.
 */
import type { Asks, Benchmarks, Hardware, MarketClass, MatchExplanation, Resources, RuntimeKind, WorkloadKind } from '@gridwork/protocol';
import { formatCredits, RUNTIMES, runtimeNameFor } from '@gridwork/protocol';
import { baseHourlyMilli, milli, milliN, type ParsedAsks, parseAsks } from './order-price.ts';
import { SortedList } from './sorted-list.ts';

export interface BookProvider {
  id: string;
  name: string;
  state: 'online' | 'draining' | 'offline';
  connected: boolean;
  hardware: Hardware;
  attributes: Record<string, string>;
  asks: Asks | null;
  benchmarks: Benchmarks | null;
  slots: number;
  /** 0..1, from lease history. */
  reputation: number;
  stake: bigint;
  /** Runtimes it offers. @default ['sandbox'] (runs bundles only) */
  runtimes?: readonly RuntimeKind[] | undefined;
}

export interface Order {
  resources: Resources;
  /** The spec's `runtime.kind`: only providers offering a runtime for it fit. @default 'bundle' */
  workload?: WorkloadKind | undefined;
  regions?: readonly string[] | undefined;
  minReputation?: number | undefined;
  minStake?: bigint | undefined;
  /** µc per hour. */
  maxPerHour: bigint;
  /** Providers the order must not go to (a check never runs on the provider it checks). */
  excludeProviders?: readonly string[] | undefined;
  /** The one provider the order may go to (a canary is aimed at its target). */
  onlyProvider?: string | undefined;
}

export interface Match {
  providerId: string;
  pricePerHour: bigint;
  /** Indices of the GPUs reserved for the lease. */
  gpus: number[];
  score: number;
}

interface Entry {
  p: BookProvider;
  asks: ParsedAsks | null;
  freeCpuMilli: number;
  freeMemMilli: number;
  freeSlots: number;
  /**
   * Free GPUs: where the indices are 0…n-1 (n ≤ 30, the usual case) a bit per index in
   * `freeBits` and `freeSet` null; otherwise the set of free indices.
   */
  freeBits: number;
  freeSet: Set<number> | null;
  /** Number of GPUs in the hardware list. */
  nGpus: number;
  /** Free GPUs, counted. */
  nFree: number;
  modelOf: Map<number, string>;
  /** Its GPU models, each once, and the free GPUs of each (an entry is listed in a GPU pool only while it has one free). */
  models: string[];
  freeN: number[];
  /** GPU index → position in `models`: by index where `freeSet` is null, else in the map. */
  modelAtBit: number[];
  modelAt: Map<number, number>;
  /** Pools this provider belongs to, with its unit score in each, the model (position in `models`, -1 for CPU) and whether it is listed there now. */
  pools: Pool[];
  units: number[];
  poolModel: number[];
  listed: boolean[];
  /** What its listings were last brought in line with (see `sync`); -1 when unknown. */
  sig: number;
  /** Workload kinds it offers a runtime for. */
  workloads: Set<WorkloadKind>;
  /** Time limit of its earliest-ending active lease (for explain); null until there is one. */
  leaseEnds: Map<string, number> | null;
  /** Replaced or removed: reservations that point here look the provider up again. */
  gone: boolean;
  /** The provider's id and reputation, and its reputation factor (the walk reads them here, not from `p`). */
  id: string;
  reputation: number;
  repF: number;
  /**
   * The last match that visited it (an entry listed in several pools is evaluated once per
   * match). Only an entry with GPUs of several models can be met twice in one walk (a walk
   * covers one workload, one GPU class and each region once), so only those are stamped.
   */
  visited: number;
  multiModel: boolean;
  /**
   * The matcher's shortcut, worked out at upsert: the asks per CPU core and GiB as plain numbers,
   * or -1 where they are too large for exact arithmetic in doubles (`quote` is used then).
   */
  cpuHourN: number;
  memHourN: number;
  /** max(CPU benchmark, 1e-6): the throughput of a CPU-only order. */
  cpuPerf: number;
  /**
   * For a provider whose GPUs are all of one model, with distinct indices and an ask for that
   * model small enough for doubles: what `quote` and `score` need, without maps. Otherwise null
   * and `quote` is used.
   */
  gpu: GpuShortcut | null;
}

interface GpuShortcut {
  /** The GPU indices ascending (the order a lease takes them in), and the VRAM of each. */
  index: number[];
  vram: number[];
  minVramGiB: number;
  /** µc per GPU-hour. */
  each: number;
  /** The model's benchmark, unclamped (the score takes the mean over a lease's GPUs, then clamps). */
  perf: number;
}

interface Reservation {
  providerId: string;
  /** The entry it is applied to (null when the provider is not in the book). */
  entry: Entry | null;
  cpuMilli: number;
  memMilli: number;
  gpus: number[];
}

/** Candidates named by explain, best first. */
const EXPLAIN_BEST = 5;
/** Entries visited per pool and order, fitting or not: the bound that keeps matching O(1) in providers. */
const MAX_VISIT = 64;
/**
 * Bounds under which a price is worked out exactly in doubles: asks up to 2^28 µc (268 credits)
 * an hour, orders up to 2^22 thousandths of a core or GiB and 2^16 GPUs, so every product stays
 * below 2^50 and every sum a safe integer (a rounded-up thousandth is then exact, see `ceilMilli`).
 */
const FAST_ASK = 2 ** 28;
const FAST_MILLI = 2 ** 22;
const FAST_GPUS = 2 ** 16;
/** Cached pool lists (one per distinct workload, class, models and regions); cleared past this. */
const LOOK_IN_CACHE = 1024;

/**
 * ⌈a / 1000⌉ for an integer 0 ≤ a < 2^50: the double quotient is within 2^-13 of the true one,
 * and a true quotient that is not a whole number is at least 1/1000 from one, so the ceiling is exact.
 */
const ceilMilli = (a: number): number => Math.ceil(a / 1000);
const safeAsk = (x: bigint): number => (x >= 0n && x <= BigInt(FAST_ASK) ? Number(x) : -1);
/** `milliN` without the bigint on the way (the same number; it throws where `milli` does). */
const milliF = (units: number): number => {
  const x = Math.ceil(Math.round(units * 1e6) / 1000);
  return Number.isFinite(x) ? x + 0 : milliN(units);
};

/** Whether `index` is one of the entry's GPUs by bit (an integer 0…n-1). */
const hasBit = (e: Entry, index: number): boolean => Number.isInteger(index) && index >= 0 && index < e.nGpus;
/** Whether the entry has GPU `index` free (what `freeGpus.has(index)` was). */
function isFree(e: Entry, index: number): boolean {
  return e.freeSet === null ? hasBit(e, index) && ((e.freeBits >>> index) & 1) === 1 : e.freeSet.has(index);
}

/**
 * The free GPUs `quote` picks on an entry with a GPU shortcut (one model): the lowest indices
 * with enough VRAM; fewer than `count` where it has not that many.
 */
function pickGpus(e: Entry, g: GpuShortcut, count: number, minVramGiB: number | undefined): number[] {
  const out: number[] = [];
  if (e.freeSet === null) {
    // Indices 0…n-1: the lowest free bits, and g.vram is by index.
    let bits = e.freeBits;
    while (bits !== 0 && out.length < count) {
      const k = 31 - Math.clz32(bits & -bits);
      bits &= bits - 1;
      if (minVramGiB === undefined || !((g.vram[k] as number) < minVramGiB)) out.push(k);
    }
    return out;
  }
  for (let j = 0; j < g.index.length && out.length < count; j++) {
    const index = g.index[j] as number;
    if (e.freeSet.has(index) && (minVramGiB === undefined || !((g.vram[j] as number) < minVramGiB))) out.push(index);
  }
  return out;
}

/**
 * Pools are split by region and, for GPUs, by how many GPUs of the model are free (at least
 * 1, 2, 4 or 8), so the first entries of the pools an order looks in usually fit it.
 */
const GPU_CLASSES = [1, 2, 4, 8] as const;
/** How many of GPU_CLASSES `free` GPUs reach (0–4). */
const classesReached = (free: number): number => (free >= 8 ? 4 : free >= 4 ? 3 : free >= 2 ? 2 : free >= 1 ? 1 : 0);
/** Models whose classes fit in `Entry.sig` (3 bits each after 2). */
const SIG_MODELS = 9;
interface Pool {
  key: string;
  workload: WorkloadKind;
  /** null for the CPU pool of a region. */
  model: string | null;
  region: string;
  cls: number;
  /** Entries that can serve the pool's smallest order now, by (unit score, id). */
  list: SortedList<Entry>;
  /** Unit score of the first entry, worked out by `match` before it orders the pools. */
  head: number;
}
const poolKey = (workload: WorkloadKind, model: string | null, region: string, cls: number): string =>
  `${workload}/${model === null ? `cpu@${region}` : `gpu:${model}@${region}#${cls}`}`;
const byId = (a: Entry, b: Entry): number => (a.id < b.id ? -1 : a.id > b.id ? 1 : 0);
const byHead = (a: Pool, b: Pool): number => a.head - b.head;
/**
 * The cache of the pools an order looks in, as a tree from (workload, GPU class): one step per
 * model of the order's list, then `regions`, then one step per region; `pools` at the end.
 * Looking an order up builds no string.
 */
interface LookIn {
  next: Map<string, LookIn> | null;
  regions: LookIn | null;
  pools: Pool[] | null;
}
const lookIn = (): LookIn => ({ next: null, regions: null, pools: null });
function step(node: LookIn, key: string): LookIn {
  node.next ??= new Map();
  let n = node.next.get(key);
  if (!n) {
    n = lookIn();
    node.next.set(key, n);
  }
  return n;
}
const DEFAULT_RUNTIMES: readonly RuntimeKind[] = ['sandbox'];
/** Memory a CPU-only order typically asks per core: weights memory price in the CPU pool's order. */
const TYPICAL_GIB_PER_CORE = 4n;

export function reputationFactor(reputation: number): number {
  return 0.5 + 0.5 * reputation;
}

export class OrderBook {
  private readonly entries = new Map<string, Entry>();
  private readonly pools = new Map<string, Pool>();
  private readonly reservations = new Map<string, Reservation>();
  private readonly gpuPools: Pool[] = [];
  private readonly cpuPools: Pool[] = [];
  /** The pools an order looks in, by workload, GPU class, models and regions (cleared when a pool is added). */
  private readonly lookIn = new Map<WorkloadKind, LookIn[]>();
  /** Pool lists in `lookIn`. */
  private looked = 0;
  /** Scratch for ordering a GPU order's pools. */
  private readonly sorted: Pool[] = [];
  /** Numbers the matches, for `Entry.visited`. */
  private matches = 0;

  /** The pool, registered in the index the first time it is seen. */
  private declare(workload: WorkloadKind, model: string | null, region: string, cls: number): Pool {
    const key = poolKey(workload, model, region, cls);
    let pool = this.pools.get(key);
    if (!pool) {
      pool = { key, workload, model, region, cls, list: new SortedList<Entry>(byId), head: 0 };
      this.pools.set(key, pool);
      (model === null ? this.cpuPools : this.gpuPools).push(pool);
      this.forget();
    }
    return pool;
  }

  constructor(private readonly probe = 8) {}

  get size(): number {
    return this.entries.size;
  }

  /** Whether any provider could take any work right now (connected, online, a free slot). */
  hasFreeCapacity(): boolean {
    for (const e of this.entries.values()) if (this.listable(e)) return true;
    return false;
  }

  upsertProvider(p: BookProvider): void {
    const old = this.entries.get(p.id);
    if (old) {
      this.unlist(old);
      old.gone = true;
    }
    const asks = p.asks ? parseAsks(p.asks) : null;
    const models: string[] = [];
    const freeN: number[] = [];
    for (const g of p.hardware.gpus) {
      const m = models.indexOf(g.model);
      if (m >= 0) freeN[m] = (freeN[m] as number) + 1;
      else {
        models.push(g.model);
        freeN.push(1);
      }
    }
    const freeGpus = new Set(p.hardware.gpus.map((g) => g.index));
    const nGpus = p.hardware.gpus.length;
    // Indices 0…n-1, each once: free GPUs as bits.
    let bits = nGpus <= 30 && freeGpus.size === nGpus;
    for (const g of p.hardware.gpus) bits &&= Number.isInteger(g.index) && g.index >= 0 && g.index < nGpus;
    const modelAtBit: number[] = [];
    if (bits) for (const g of p.hardware.gpus) modelAtBit[g.index] = models.indexOf(g.model);
    // The fields a match walk reads first come first (one cache line, usually).
    const e: Entry = {
      freeCpuMilli: milliN(p.hardware.cpu.cores),
      freeMemMilli: milliN(p.hardware.memoryGiB),
      multiModel: models.length > 1,
      visited: 0,
      p,
      nFree: freeGpus.size,
      id: p.id,
      reputation: p.reputation,
      repF: reputationFactor(p.reputation),
      gpu: null,
      cpuHourN: asks ? safeAsk(asks.cpuCoreHour) : -1,
      memHourN: asks ? safeAsk(asks.memoryGiBHour) : -1,
      cpuPerf: Math.max(p.benchmarks?.cpuMopsPerCore ?? 1, 1e-6),
      asks,
      freeSlots: p.slots,
      freeBits: bits ? 2 ** nGpus - 1 : 0,
      freeSet: bits ? null : freeGpus,
      nGpus,
      modelOf: new Map(p.hardware.gpus.map((g) => [g.index, g.model])),
      models,
      freeN,
      modelAtBit,
      modelAt: new Map(bits ? [] : p.hardware.gpus.map((g) => [g.index, models.indexOf(g.model)])),
      pools: [],
      units: [],
      poolModel: [],
      listed: [],
      sig: -1,
      workloads: new Set((p.runtimes ?? DEFAULT_RUNTIMES).map((k) => RUNTIMES[k].runs)),
      leaseEnds: old?.leaseEnds ?? null,
      gone: false,
    };
    if (e.cpuHourN < 0 || e.memHourN < 0) e.cpuHourN = e.memHourN = -1;
    const first = p.hardware.gpus[0];
    if (asks && first && models.length === 1 && freeGpus.size === nGpus && p.hardware.gpus.every((g) => Number.isSafeInteger(g.index))) {
      const each = asks.gpuHour.get(first.model);
      const n = each === undefined ? -1 : safeAsk(each);
      if (n >= 0) {
        const byIndex = [...p.hardware.gpus].sort((a, b) => a.index - b.index);
        e.gpu = {
          index: byIndex.map((g) => g.index),
          vram: byIndex.map((g) => g.vramGiB),
          minVramGiB: Math.min(...byIndex.map((g) => g.vramGiB)),
          each: n,
          perf: p.benchmarks?.gpu[first.model] ?? 1,
        };
      }
    }
    this.entries.set(p.id, e);
    // Re-apply reservations of leases that are still running there.
    for (const r of this.reservations.values()) {
      if (r.providerId !== p.id) continue;
      r.entry = e;
      this.take(e, r);
    }
    if (asks) {
      const pools = new Map<Pool, number>();
      const cpuMops = Math.max(p.benchmarks?.cpuMopsPerCore ?? 1, 1e-6);
      const rep = reputationFactor(p.reputation);
      const region = p.attributes.region ?? '';
      for (const workload of e.workloads) {
        pools.set(this.declare(workload, null, region, 0), Number(asks.cpuCoreHour + TYPICAL_GIB_PER_CORE * asks.memoryGiBHour) / cpuMops / rep);
        for (const g of p.hardware.gpus) {
          const price = asks.gpuHour.get(g.model);
          if (price === undefined) continue;
          const perf = Math.max(p.benchmarks?.gpu[g.model] ?? 1, 1e-6);
          const count = p.hardware.gpus.filter((x) => x.model === g.model).length;
          for (const cls of GPU_CLASSES) if (cls <= count) pools.set(this.declare(workload, g.model, region, cls), Number(price) / perf / rep);
        }
      }
      for (const [pool, unit] of pools) {
        e.pools.push(pool);
        e.units.push(unit);
        e.poolModel.push(pool.model === null ? -1 : models.indexOf(pool.model));
        e.listed.push(false);
      }
    }
    this.sync(e);
  }

  removeProvider(id: string): void {
    const e = this.entries.get(id);
    if (!e) return;
    this.unlist(e);
    e.gone = true;
    this.entries.delete(id);
  }

  private listable(e: Entry): boolean {
    return e.p.connected && e.p.state === 'online' && e.freeSlots > 0 && e.asks !== null;
  }

  /**
   * Brings the entry's pool listings in line with its capacity and state: it is listed in a pool
   * while it can serve the pool's smallest order. What decides that (listable; CPU and memory
   * left; the GPU classes each model reaches) is summed up in `sig`, so a change that moves no
   * listing (most reservations) touches no pool.
   */
  private sync(e: Entry): void {
    const listable = this.listable(e);
    const cpu = listable && e.freeCpuMilli > 0 && e.freeMemMilli > 0;
    let sig = -1;
    if (e.models.length <= SIG_MODELS) {
      sig = 0;
      if (listable) {
        sig = cpu ? 3 : 1;
        for (let m = 0; m < e.models.length; m++) sig |= classesReached(e.freeN[m] as number) << (2 + 3 * m);
      }
      if (sig === e.sig) return;
    }
    e.sig = sig;
    for (let i = 0; i < e.pools.length; i++) {
      const pool = e.pools[i] as Pool;
      const m = e.poolModel[i] as number;
      // Every order asks for some CPU and memory (a job spec's are above 0): without both left, no GPU pool either.
      const should = cpu && (m < 0 || (e.freeN[m] as number) >= pool.cls);
      if (should === e.listed[i]) continue;
      if (should) pool.list.insert(e, e.units[i] as number);
      else pool.list.delete(e, e.units[i] as number);
      e.listed[i] = should;
    }
  }

  private unlist(e: Entry): void {
    for (let i = 0; i < e.pools.length; i++) {
      if (e.listed[i]) (e.pools[i] as Pool).list.delete(e, e.units[i] as number);
      e.listed[i] = false;
    }
    e.sig = -1;
  }

  private take(e: Entry, r: Reservation): void {
    e.freeCpuMilli -= r.cpuMilli;
    e.freeMemMilli -= r.memMilli;
    e.freeSlots -= 1;
    for (const g of r.gpus) {
      let m: number | undefined;
      if (e.freeSet === null) {
        if (!hasBit(e, g) || ((e.freeBits >>> g) & 1) === 0) continue;
        e.freeBits &= ~(1 << g);
        m = e.modelAtBit[g];
      } else {
        if (!e.freeSet.delete(g)) continue;
        m = e.modelAt.get(g);
      }
      e.nFree--;
      if (m !== undefined) e.freeN[m] = (e.freeN[m] as number) - 1;
    }
  }

  /** Records that `leaseId` holds these resources (from a match, or rebuilt from the database). */
  reserve(leaseId: string, providerId: string, resources: Resources, gpus: number[], endsAt?: number): void {
    if (this.reservations.has(leaseId)) return;
    const e = this.entries.get(providerId) ?? null;
    const r: Reservation = { providerId, entry: e, cpuMilli: milliF(resources.cpu), memMilli: milliF(resources.memoryGiB), gpus };
    this.reservations.set(leaseId, r);
    if (!e) return;
    this.take(e, r);
    if (endsAt !== undefined) {
      e.leaseEnds ??= new Map();
      e.leaseEnds.set(leaseId, endsAt);
    }
    this.sync(e);
  }

  /** Releases every reservation held on a provider (before reloading them from the database). */
  releaseProvider(providerId: string): void {
    for (const [leaseId, r] of this.reservations) if (r.providerId === providerId) this.release(leaseId);
  }

  release(leaseId: string): void {
    const r = this.reservations.get(leaseId);
    if (!r) return;
    this.reservations.delete(leaseId);
    const e = r.entry !== null && !r.entry.gone ? r.entry : this.entries.get(r.providerId);
    if (!e) return;
    e.freeCpuMilli += r.cpuMilli;
    e.freeMemMilli += r.memMilli;
    e.freeSlots += 1;
    for (const g of r.gpus) {
      let m: number | undefined;
      if (e.freeSet === null) {
        if (!hasBit(e, g) || ((e.freeBits >>> g) & 1) === 1) continue;
        e.freeBits |= 1 << g;
        m = e.modelAtBit[g];
      } else {
        if (e.freeSet.has(g)) continue;
        m = e.modelAt.get(g);
        if (m === undefined) continue;
        e.freeSet.add(g);
      }
      e.nFree++;
      if (m !== undefined) e.freeN[m] = (e.freeN[m] as number) + 1;
    }
    e.leaseEnds?.delete(leaseId);
    this.sync(e);
  }

  /**
   * The provider's price for the order and the GPUs it would use (ignoring filters; with
   * `useFree`, only free GPUs). A lease's GPUs are all of one model (a task's workers expect
   * identical devices): the model with the best score per GPU among those allowed, then the
   * lower price, then the model name; within it, the lowest indices.
   */
  private quote(
    e: Entry,
    order: Order,
    useFree: boolean,
    cpuMilli = milli(order.resources.cpu),
    memMilli = milli(order.resources.memoryGiB),
  ): { price: bigint; gpus: number[] } | null {
    if (!e.asks) return null;
    const base = baseHourlyMilli(e.asks, cpuMilli, memMilli);
    const gpu = order.resources.gpu;
    if (!gpu || gpu.count <= 0) return { price: base, gpus: [] };
    let best: { price: bigint; gpus: number[]; unit: number; model: string } | null = null;
    const byModel = new Map<string, number[]>();
    for (const g of e.p.hardware.gpus) {
      if (useFree && !isFree(e, g.index)) continue;
      if (gpu.models?.length && !gpu.models.includes(g.model)) continue;
      if (gpu.minVramGiB !== undefined && g.vramGiB < gpu.minVramGiB) continue;
      const list = byModel.get(g.model);
      if (list) list.push(g.index);
      else byModel.set(g.model, [g.index]);
    }
    for (const [model, indices] of byModel) {
      const each = e.asks.gpuHour.get(model);
      if (each === undefined || indices.length < gpu.count) continue;
      const price = base + each * BigInt(gpu.count);
      const unit = Number(price) / Math.max(e.p.benchmarks?.gpu[model] ?? 1, 1e-6);
      if (!best || unit < best.unit || (unit === best.unit && (price < best.price || (price === best.price && model < best.model)))) {
        best = { price, gpus: indices.sort((a, b) => a - b).slice(0, gpu.count), unit, model };
      }
    }
    return best ? { price: best.price, gpus: best.gpus } : null;
  }

  private fitsStatic(e: Entry, order: Order): boolean {
    const r = order.resources;
    if (!e.workloads.has(order.workload ?? 'bundle')) return false;
    if (r.diskGiB !== undefined && r.diskGiB > e.p.hardware.diskGiB) return false;
    if (order.regions?.length && !order.regions.includes(e.p.attributes.region ?? '')) return false;
    if (order.minReputation !== undefined && e.p.reputation < order.minReputation) return false;
    if (order.minStake !== undefined && e.p.stake < order.minStake) return false;
    if (order.excludeProviders?.includes(e.p.id)) return false;
    if (order.onlyProvider !== undefined && order.onlyProvider !== e.p.id) return false;
    return true;
  }

  /** Throughput is that of the GPUs the order would get (their mean), or of one CPU core. */
  private score(e: Entry, gpus: readonly number[], price: bigint): number {
    let perf: number;
    if (gpus.length > 0) {
      let sum = 0;
      for (const i of gpus) sum += e.p.benchmarks?.gpu[e.modelOf.get(i) ?? ''] ?? 1;
      perf = Math.max(sum / gpus.length, 1e-6);
    } else perf = Math.max(e.p.benchmarks?.cpuMopsPerCore ?? 1, 1e-6);
    return Number(price) / perf / reputationFactor(e.p.reputation);
  }

  /** The pools an order looks in, in the order they were declared (cached; the caller must not change it). */
  private poolsFor(order: Order, gpuCount: number): Pool[] {
    const workload = order.workload ?? 'bundle';
    const regions = order.regions?.length ? order.regions : null;
    const models = gpuCount > 0 && order.resources.gpu?.models?.length ? order.resources.gpu.models : null;
    let cls = 0;
    let at = 0;
    if (gpuCount > 0) {
      cls = 1;
      at = 1;
      for (let i = 0; i < GPU_CLASSES.length; i++) {
        const c = GPU_CLASSES[i] as number;
        if (c <= gpuCount) {
          cls = c;
          at = i + 1;
        }
      }
    }
    let byClass = this.lookIn.get(workload);
    if (!byClass) {
      byClass = [];
      this.lookIn.set(workload, byClass);
    }
    let node = byClass[at];
    if (!node) {
      node = lookIn();
      byClass[at] = node;
    }
    if (models) for (const m of models) node = step(node, m);
    node.regions ??= lookIn();
    node = node.regions;
    if (regions) for (const r of regions) node = step(node, r);
    if (node.pools) return node.pools;
    const pools =
      cls > 0
        ? this.gpuPools.filter(
            (k) => k.workload === workload && k.cls === cls && (!models || models.includes(k.model as string)) && (!regions || regions.includes(k.region)),
          )
        : this.cpuPools.filter((k) => k.workload === workload && (!regions || regions.includes(k.region)));
    if (++this.looked > LOOK_IN_CACHE) this.forget();
    else node.pools = pools;
    return pools;
  }

  /** Empties the cache of the pools orders look in. */
  private forget(): void {
    this.lookIn.clear();
    this.looked = 0;
  }

  /**
   * Best provider for the order right now, or null. Does not reserve. `bids` (from an auction
   * window) replace a bidder's standing price when lower.
   */
  match(order: Order, bids?: ReadonlyMap<string, bigint>): Match | null {
    const gpu = order.resources.gpu;
    const gpuCount = gpu && gpu.count > 0 ? gpu.count : 0;
    let pools = this.poolsFor(order, gpuCount);
    // For GPU orders a provider's exact score is at least `count ×` its unit score in the pool
    // (the CPU and memory part only adds to the price): once that bound passes the best score
    // found, nothing further in the pool can win. Pools are taken best-first so the bound bites early.
    if (gpuCount > 0 && pools.length > 1) {
      const sorted = this.sorted;
      sorted.length = 0;
      let plain = true;
      for (const pool of pools) {
        const head = pool.list.firstKey() ?? Number.POSITIVE_INFINITY;
        pool.head = head;
        plain &&= head > Number.NEGATIVE_INFINITY;
        sorted.push(pool);
      }
      // A stable insertion sort: what Array.prototype.sort gives with `byHead` when no head is
      // NaN or -Infinity (two +Infinity heads compare as NaN, which both take as "not before").
      if (plain) {
        for (let i = 1; i < sorted.length; i++) {
          const pool = sorted[i] as Pool;
          let j = i;
          while (j > 0 && pool.head - (sorted[j - 1] as Pool).head < 0) {
            sorted[j] = sorted[j - 1] as Pool;
            j--;
          }
          sorted[j] = pool;
        }
      } else sorted.sort(byHead);
      pools = sorted;
    }
    const cpuNeed = milliF(order.resources.cpu);
    const memNeed = milliF(order.resources.memoryGiB);
    // Prices in doubles where they are exact (see FAST_ASK); otherwise `quote`, in bigints.
    const fast = cpuNeed >= 0 && cpuNeed <= FAST_MILLI && memNeed >= 0 && memNeed <= FAST_MILLI && Number.isInteger(gpuCount) && gpuCount <= FAST_GPUS;
    const maxN = Number(order.maxPerHour);
    const minVram = gpu?.minVramGiB;
    const disk = order.resources.diskGiB;
    const minRep = order.minReputation;
    const minStake = order.minStake;
    const exclude = order.excludeProviders?.length ? order.excludeProviders : null;
    const only = order.onlyProvider;
    const probe = this.probe;
    const stamp = ++this.matches;
    // The best so far: with `bestGpus` null, it came by the shortcut and its price is `bestN`.
    let bestE: Entry | null = null;
    let bestScore = 0;
    let bestN = 0;
    let bestPrice = 0n;
    let bestGpus: number[] | null = null;
    for (const pool of pools) {
      const runs = pool.list.runs();
      const keyRuns = pool.list.keyRuns();
      let probed = 0;
      let visited = 0;
      walk: for (let c = 0; c < runs.length; c++) {
        const run = runs[c] as readonly Entry[];
        const units = keyRuns[c] as readonly number[];
        for (let i = 0; i < run.length; i++) {
          if (probed >= probe || visited++ >= MAX_VISIT) break walk;
          if (gpuCount > 0 && bestE !== null && gpuCount * (units[i] as number) > bestScore) break walk;
          const e = run[i] as Entry;
          if (gpuCount > 0 && e.multiModel) {
            if (e.visited === stamp) continue;
            e.visited = stamp;
          }
          if (e.freeCpuMilli < cpuNeed || e.freeMemMilli < memNeed) continue;
          // fitsStatic, less what the pool already guarantees (the workload and the region).
          if (disk !== undefined && disk > e.p.hardware.diskGiB) continue;
          if (minRep !== undefined && e.reputation < minRep) continue;
          if (minStake !== undefined && e.p.stake < minStake) continue;
          if (exclude?.includes(e.id)) continue;
          if (only !== undefined && only !== e.id) continue;
          let score: number;
          let priceN = 0;
          let price = 0n;
          let gpus: number[] | null = null;
          const g = e.gpu;
          if (fast && e.cpuHourN >= 0 && (gpuCount === 0 || g !== null)) {
            let perf: number;
            if (g !== null && gpuCount > 0) {
              // One model, which the order's model list let in with the pool: count and VRAM are left.
              if (e.nFree < gpuCount) continue;
              if (minVram !== undefined && !(g.minVramGiB >= minVram) && pickGpus(e, g, gpuCount, minVram).length < gpuCount) continue;
              priceN = ceilMilli(e.cpuHourN * cpuNeed) + ceilMilli(e.memHourN * memNeed) + g.each * gpuCount;
              let sum = 0;
              for (let k = 0; k < gpuCount; k++) sum += g.perf;
              perf = Math.max(sum / gpuCount, 1e-6);
            } else {
              priceN = ceilMilli(e.cpuHourN * cpuNeed) + ceilMilli(e.memHourN * memNeed);
              perf = e.cpuPerf;
            }
            if (priceN > maxN) continue;
            score = priceN / perf / e.repF;
          } else {
            if (gpuCount > 0 && this.freeAllowed(e, gpu?.models) < gpuCount) continue;
            const q = this.quote(e, order, true, BigInt(cpuNeed), BigInt(memNeed));
            if (!q || q.price > order.maxPerHour) continue;
            price = q.price;
            gpus = q.gpus;
            score = this.score(e, q.gpus, q.price);
          }
          probed++;
          if (bestE === null || score < bestScore || (score === bestScore && e.id < bestE.id)) {
            bestE = e;
            bestScore = score;
            bestN = priceN;
            bestPrice = price;
            bestGpus = gpus;
          }
        }
      }
    }
    let best: Match | null = null;
    if (bestE !== null) {
      const g = bestE.gpu;
      best =
        bestGpus !== null
          ? { providerId: bestE.p.id, pricePerHour: bestPrice, gpus: bestGpus, score: bestScore }
          : {
              providerId: bestE.p.id,
              pricePerHour: BigInt(bestN),
              gpus: g !== null && gpuCount > 0 ? pickGpus(bestE, g, gpuCount, minVram) : [],
              score: bestScore,
            };
    }
    if (bids) {
      const cpuMilli = BigInt(cpuNeed);
      const memMilli = BigInt(memNeed);
      for (const [providerId, bid] of bids) {
        const e = this.entries.get(providerId);
        if (!e || !this.listable(e) || e.freeCpuMilli < cpuNeed || e.freeMemMilli < memNeed || !this.fitsStatic(e, order)) continue;
        const q = this.quote(e, order, true, cpuMilli, memMilli);
        if (!q || bid > q.price || bid > order.maxPerHour) continue; // a bid only ever undercuts the standing ask
        const score = this.score(e, q.gpus, bid);
        if (!best || score < best.score || (score === best.score && e.p.id < best.providerId)) best = { providerId, pricePerHour: bid, gpus: q.gpus, score };
      }
    }
    return best;
  }

  /** Free GPUs of the allowed models (all models without a list): fewer than the order's count rules the entry out. */
  private freeAllowed(e: Entry, models: readonly string[] | undefined): number {
    if (!models?.length) return e.nFree;
    let n = 0;
    for (const m of models) {
      const i = e.models.indexOf(m);
      if (i >= 0) n += e.freeN[i] as number;
    }
    return n;
  }

  /** Why an order does (not) match: every provider is checked here, since this is for people. */
  explain(order: Order): MatchExplanation {
    const ex: MatchExplanation['excluded'] = {
      offline: 0,
      draining: 0,
      runtime: 0,
      gpuModel: 0,
      gpuVram: 0,
      gpuCount: 0,
      cpu: 0,
      memory: 0,
      disk: 0,
      region: 0,
      reputation: 0,
      stake: 0,
      price: 0,
      busy: 0,
    };
    const r = order.resources;
    const workload = order.workload ?? 'bundle';
    let online = 0;
    let offering = 0;
    let offeringOnline = 0;
    let lowest: bigint | null = null;
    let busyUntil: number | null = null;
    let candidates = 0;
    const ranked: { providerId: string; name: string; price: bigint; score: number }[] = [];
    for (const e of this.entries.values()) {
      if (e.workloads.has(workload)) offering++;
      if (!e.p.connected || e.p.state === 'offline') {
        ex.offline++;
        continue;
      }
      online++;
      if (e.workloads.has(workload)) offeringOnline++;
      if (e.p.state === 'draining') {
        ex.draining++;
        continue;
      }
      if (!e.workloads.has(workload)) {
        ex.runtime++;
        continue;
      }
      const gpu = r.gpu;
      if (gpu && gpu.count > 0) {
        const byModel = e.p.hardware.gpus.filter((g) => !gpu.models?.length || gpu.models.includes(g.model));
        if (byModel.length === 0) {
          ex.gpuModel++;
          continue;
        }
        const byVram = byModel.filter((g) => gpu.minVramGiB === undefined || g.vramGiB >= gpu.minVramGiB);
        if (byVram.length === 0) {
          ex.gpuVram++;
          continue;
        }
        const perModel = new Map<string, number>();
        for (const g of byVram) perModel.set(g.model, (perModel.get(g.model) ?? 0) + 1);
        if (Math.max(...perModel.values()) < gpu.count) {
          ex.gpuCount++;
          continue;
        }
      }
      if (milli(r.cpu) > milli(e.p.hardware.cpu.cores)) {
        ex.cpu++;
        continue;
      }
      if (milli(r.memoryGiB) > milli(e.p.hardware.memoryGiB)) {
        ex.memory++;
        continue;
      }
      if (r.diskGiB !== undefined && r.diskGiB > e.p.hardware.diskGiB) {
        ex.disk++;
        continue;
      }
      if (order.regions?.length && !order.regions.includes(e.p.attributes.region ?? '')) {
        ex.region++;
        continue;
      }
      if (order.minReputation !== undefined && e.p.reputation < order.minReputation) {
        ex.reputation++;
        continue;
      }
      if (order.minStake !== undefined && e.p.stake < order.minStake) {
        ex.stake++;
        continue;
      }
      const q = this.quote(e, order, false);
      if (!q) {
        ex.price++; // the provider asks nothing for the GPU model it has
        continue;
      }
      if (lowest === null || q.price < lowest) lowest = q.price;
      if (q.price > order.maxPerHour) {
        ex.price++;
        continue;
      }
      const free = this.quote(e, order, true);
      if (e.freeSlots <= 0 || e.freeCpuMilli < milliN(r.cpu) || e.freeMemMilli < milliN(r.memoryGiB) || !free) {
        ex.busy++;
        for (const t of e.leaseEnds?.values() ?? []) if (busyUntil === null || t < busyUntil) busyUntil = t;
        continue;
      }
      candidates++;
      ranked.push({ providerId: e.p.id, name: e.p.name, price: free.price, score: this.score(e, free.gpus, free.price) });
    }
    // The best-ranked candidates, as matching would take them (lower score wins).
    ranked.sort((a, b) => a.score - b.score || (a.price < b.price ? -1 : a.price > b.price ? 1 : 0));
    const best = ranked.slice(0, EXPLAIN_BEST).map((c) => ({ providerId: c.providerId, name: c.name, pricePerHour: formatCredits(c.price), score: c.score }));
    const reasons: string[] = [];
    const total = this.entries.size;
    if (total === 0) reasons.push('no provider has registered with this coordinator');
    else if (online === 0) reasons.push('no provider is online');
    // Said outright: no price, region or patience changes this; only a provider with that runtime does.
    else if (offering === 0) reasons.push(`no provider offers ${runtimeNameFor(workload)}`);
    else if (offeringOnline === 0) reasons.push(`no provider that offers ${runtimeNameFor(workload)} is online`);
    const named: [keyof typeof ex, string][] = [
      ['draining', 'draining (shutting down)'],
      ['runtime', `do not offer ${runtimeNameFor(workload)}`],
      ['gpuModel', 'have no GPU of an allowed model'],
      ['gpuVram', 'have no GPU with enough VRAM'],
      ['gpuCount', 'have too few matching GPUs'],
      ['cpu', 'have too few CPU cores'],
      ['memory', 'have too little memory'],
      ['disk', 'have too little disk'],
      ['region', 'are outside the allowed regions'],
      ['reputation', 'are below the minimum reputation'],
      ['stake', 'have less stake than required'],
      ['price', 'ask more than the max price'],
      ['busy', 'are busy'],
    ];
    for (const [k, text] of named) if (ex[k] > 0) reasons.push(`${ex[k]} provider(s) ${text}`);
    if (lowest !== null && lowest > order.maxPerHour)
      reasons.push(`the lowest ask is ${formatCredits(lowest)}/h, above the max price ${formatCredits(order.maxPerHour)}/h`);
    if (candidates > 0) reasons.unshift(`${candidates} provider(s) can take this order now`);
    return {
      matchable: candidates > 0,
      providers: { total, online },
      excluded: ex,
      lowestAsk: lowest === null ? null : formatCredits(lowest),
      maxPerHour: formatCredits(order.maxPerHour),
      busyUntil: busyUntil === null ? null : new Date(busyUntil).toISOString(),
      candidates,
      best,
      reasons,
    };
  }

  /** Current asks by resource class: min / median / max and free units among online providers. */
  summary(): MarketClass[] {
    const classes = new Map<string, { unit: string; prices: bigint[]; free: number; providers: number }>();
    const add = (key: string, unit: string, price: bigint, free: number) => {
      let c = classes.get(key);
      if (!c) {
        c = { unit, prices: [], free: 0, providers: 0 };
        classes.set(key, c);
      }
      c.prices.push(price);
      c.free += free;
      c.providers++;
    };
    for (const e of this.entries.values()) {
      if (!e.asks || !e.p.connected || e.p.state !== 'online') continue;
      add('cpu', 'core-hour', e.asks.cpuCoreHour, Number(e.freeCpuMilli) / 1000);
      add('memory', 'GiB-hour', e.asks.memoryGiBHour, Number(e.freeMemMilli) / 1000);
      const models = new Map<string, number>();
      for (const g of e.p.hardware.gpus) models.set(g.model, (models.get(g.model) ?? 0) + (isFree(e, g.index) ? 1 : 0));
      for (const [model, free] of models) {
        const price = e.asks.gpuHour.get(model);
        if (price !== undefined) add(`gpu:${model}`, 'GPU-hour', price, free);
      }
    }
    return [...classes.entries()]
      .sort(([a], [b]) => (a < b ? -1 : 1))
      .map(([resourceClass, c]) => {
        const sorted = [...c.prices].sort((a, b) => (a < b ? -1 : a > b ? 1 : 0));
        return {
          resourceClass,
          unit: c.unit,
          providers: c.providers,
          freeUnits: Math.round(c.free * 1000) / 1000,
          min: formatCredits(sorted[0] as bigint),
          median: formatCredits(sorted[(sorted.length - 1) >> 1] as bigint),
          max: formatCredits(sorted[sorted.length - 1] as bigint),
        };
      });
  }
}
