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
  freeGpus: Set<number>;
  /** Free GPUs per model (an entry is listed in a GPU pool only while it has one free). */
  freeByModel: Map<string, number>;
  modelOf: Map<number, string>;
  /** Pools the entry is listed in right now. */
  listed: Set<string>;
  /** Pools this provider belongs to, with its unit score in each. */
  pools: Map<string, number>;
  /** Workload kinds it offers a runtime for. */
  workloads: Set<WorkloadKind>;
  /** Time limit of its earliest-ending active lease (for explain). */
  leaseEnds: Map<string, number>;
  /** The last match that visited it (an entry listed in several pools is evaluated once per match). */
  visited: number;
}

interface Reservation {
  providerId: string;
  cpuMilli: number;
  memMilli: number;
  gpus: number[];
}

/** Candidates named by explain, best first. */
const EXPLAIN_BEST = 5;
/** Entries visited per pool and order, fitting or not: the bound that keeps matching O(1) in providers. */
const MAX_VISIT = 64;

/**
 * Pools are split by region and, for GPUs, by how many GPUs of the model are free (at least
 * 1, 2, 4 or 8), so the first entries of the pools an order looks in usually fit it.
 */
const GPU_CLASSES = [1, 2, 4, 8] as const;
interface PoolKey {
  key: string;
  workload: WorkloadKind;
  /** null for the CPU pool of a region. */
  model: string | null;
  region: string;
  cls: number;
}
const poolKey = (workload: WorkloadKind, model: string | null, region: string, cls: number): string =>
  `${workload}/${model === null ? `cpu@${region}` : `gpu:${model}@${region}#${cls}`}`;
const DEFAULT_RUNTIMES: readonly RuntimeKind[] = ['sandbox'];
/** Memory a CPU-only order typically asks per core: weights memory price in the CPU pool's order. */
const TYPICAL_GIB_PER_CORE = 4n;

export function reputationFactor(reputation: number): number {
  return 0.5 + 0.5 * reputation;
}

export class OrderBook {
  private readonly entries = new Map<string, Entry>();
  /** pool → entries that can serve the pool's smallest order now, sorted by (unit score, id). */
  private readonly pools = new Map<string, SortedList<Entry>>();
  private readonly reservations = new Map<string, Reservation>();
  private readonly keys = new Map<string, PoolKey>();
  private readonly gpuPools: PoolKey[] = [];
  private readonly cpuPools: PoolKey[] = [];
  /** Numbers the matches, for `Entry.visited`. */
  private matches = 0;

  /** The key of a pool, registered in the index the first time it is seen. */
  private declare(workload: WorkloadKind, model: string | null, region: string, cls: number): string {
    const key = poolKey(workload, model, region, cls);
    if (!this.keys.has(key)) {
      const k = { key, workload, model, region, cls };
      this.keys.set(key, k);
      (model === null ? this.cpuPools : this.gpuPools).push(k);
    }
    return key;
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
    if (old) this.unlist(old);
    const asks = p.asks ? parseAsks(p.asks) : null;
    const freeByModel = new Map<string, number>();
    for (const g of p.hardware.gpus) freeByModel.set(g.model, (freeByModel.get(g.model) ?? 0) + 1);
    const e: Entry = {
      p,
      asks,
      freeCpuMilli: milliN(p.hardware.cpu.cores),
      freeMemMilli: milliN(p.hardware.memoryGiB),
      freeSlots: p.slots,
      freeGpus: new Set(p.hardware.gpus.map((g) => g.index)),
      freeByModel,
      modelOf: new Map(p.hardware.gpus.map((g) => [g.index, g.model])),
      listed: new Set(),
      pools: new Map(),
      workloads: new Set((p.runtimes ?? DEFAULT_RUNTIMES).map((k) => RUNTIMES[k].runs)),
      leaseEnds: old?.leaseEnds ?? new Map(),
      visited: 0,
    };
    this.entries.set(p.id, e);
    // Re-apply reservations of leases that are still running there.
    for (const r of this.reservations.values()) if (r.providerId === p.id) this.take(e, r);
    if (asks) {
      const cpuMops = Math.max(p.benchmarks?.cpuMopsPerCore ?? 1, 1e-6);
      const rep = reputationFactor(p.reputation);
      const region = p.attributes.region ?? '';
      for (const workload of e.workloads) {
        e.pools.set(this.declare(workload, null, region, 0), Number(asks.cpuCoreHour + TYPICAL_GIB_PER_CORE * asks.memoryGiBHour) / cpuMops / rep);
        for (const g of p.hardware.gpus) {
          const price = asks.gpuHour.get(g.model);
          if (price === undefined) continue;
          const perf = Math.max(p.benchmarks?.gpu[g.model] ?? 1, 1e-6);
          const count = p.hardware.gpus.filter((x) => x.model === g.model).length;
          for (const cls of GPU_CLASSES) if (cls <= count) e.pools.set(this.declare(workload, g.model, region, cls), Number(price) / perf / rep);
        }
      }
    }
    this.sync(e);
  }

  removeProvider(id: string): void {
    const e = this.entries.get(id);
    if (!e) return;
    this.unlist(e);
    this.entries.delete(id);
  }

  private listable(e: Entry): boolean {
    return e.p.connected && e.p.state === 'online' && e.freeSlots > 0 && e.asks !== null;
  }

  /** Whether the entry can serve the smallest order of a pool right now. */
  private serves(e: Entry, pool: string): boolean {
    if (!this.listable(e)) return false;
    const k = this.keys.get(pool) as PoolKey;
    if (k.model === null) return e.freeCpuMilli > 0 && e.freeMemMilli > 0;
    return (e.freeByModel.get(k.model) ?? 0) >= k.cls;
  }

  private poolList(pool: string): SortedList<Entry> {
    let list = this.pools.get(pool);
    if (!list) {
      list = new SortedList<Entry>((a, b) => {
        const d = (a.pools.get(pool) as number) - (b.pools.get(pool) as number);
        return d !== 0 ? d : a.p.id < b.p.id ? -1 : a.p.id > b.p.id ? 1 : 0;
      });
      this.pools.set(pool, list);
    }
    return list;
  }

  /** Brings the entry's pool listings in line with its capacity and state. */
  private sync(e: Entry): void {
    for (const pool of e.pools.keys()) {
      const should = this.serves(e, pool);
      if (should && !e.listed.has(pool)) {
        this.poolList(pool).insert(e);
        e.listed.add(pool);
      } else if (!should && e.listed.has(pool)) {
        this.poolList(pool).delete(e);
        e.listed.delete(pool);
      }
    }
  }

  private unlist(e: Entry): void {
    for (const pool of e.listed) this.poolList(pool).delete(e);
    e.listed.clear();
  }

  private take(e: Entry, r: Reservation): void {
    e.freeCpuMilli -= r.cpuMilli;
    e.freeMemMilli -= r.memMilli;
    e.freeSlots -= 1;
    for (const g of r.gpus) {
      if (!e.freeGpus.delete(g)) continue;
      const m = e.modelOf.get(g);
      if (m !== undefined) e.freeByModel.set(m, (e.freeByModel.get(m) ?? 1) - 1);
    }
  }

  /** Records that `leaseId` holds these resources (from a match, or rebuilt from the database). */
  reserve(leaseId: string, providerId: string, resources: Resources, gpus: number[], endsAt?: number): void {
    if (this.reservations.has(leaseId)) return;
    const r: Reservation = { providerId, cpuMilli: milliN(resources.cpu), memMilli: milliN(resources.memoryGiB), gpus };
    this.reservations.set(leaseId, r);
    const e = this.entries.get(providerId);
    if (!e) return;
    this.take(e, r);
    if (endsAt !== undefined) e.leaseEnds.set(leaseId, endsAt);
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
    const e = this.entries.get(r.providerId);
    if (!e) return;
    e.freeCpuMilli += r.cpuMilli;
    e.freeMemMilli += r.memMilli;
    e.freeSlots += 1;
    for (const g of r.gpus) {
      if (e.freeGpus.has(g) || !e.modelOf.has(g)) continue;
      e.freeGpus.add(g);
      const m = e.modelOf.get(g) as string;
      e.freeByModel.set(m, (e.freeByModel.get(m) ?? 0) + 1);
    }
    e.leaseEnds.delete(leaseId);
    this.sync(e);
  }

  /**
   * The provider's price for the order and the GPUs it would use (ignoring filters; with
   * `useFree`, only free GPUs). A lease's GPUs are all of one model (a task's workers expect
   * identical devices): the model with the best score per GPU among those allowed, then the
   * lower price, then the model name; within it, the lowest indices.
   */
  private quote(e: Entry, order: Order, useFree: boolean, cpuMilli = milli(order.resources.cpu), memMilli = milli(order.resources.memoryGiB)): { price: bigint; gpus: number[] } | null {
    if (!e.asks) return null;
    const base = baseHourlyMilli(e.asks, cpuMilli, memMilli);
    const gpu = order.resources.gpu;
    if (!gpu || gpu.count <= 0) return { price: base, gpus: [] };
    let best: { price: bigint; gpus: number[]; unit: number; model: string } | null = null;
    const byModel = new Map<string, number[]>();
    for (const g of e.p.hardware.gpus) {
      if (useFree && !e.freeGpus.has(g.index)) continue;
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

  /** Unit score of a pool's first entry (Infinity for an empty pool). */
  private headScore(pool: string): number {
    const head = this.pools.get(pool)?.first();
    return head ? (head.pools.get(pool) as number) : Number.POSITIVE_INFINITY;
  }

  /**
   * Best provider for the order right now, or null. Does not reserve. `bids` (from an auction
   * window) replace a bidder's standing price when lower.
   */
  match(order: Order, bids?: ReadonlyMap<string, bigint>): Match | null {
    const gpu = order.resources.gpu;
    const regions = order.regions?.length ? order.regions : null;
    const workload = order.workload ?? 'bundle';
    let pools: string[];
    if (gpu && gpu.count > 0) {
      let cls = 1;
      for (const c of GPU_CLASSES) if (c <= gpu.count) cls = c;
      pools = this.gpuPools
        .filter(
          (k) =>
            k.workload === workload && k.cls === cls && (!gpu.models?.length || gpu.models.includes(k.model as string)) && (!regions || regions.includes(k.region)),
        )
        .map((k) => k.key);
    } else {
      pools = this.cpuPools.filter((k) => k.workload === workload && (!regions || regions.includes(k.region))).map((k) => k.key);
    }
    const cpuMilli = milli(order.resources.cpu);
    const memMilli = milli(order.resources.memoryGiB);
    const cpuNeed = Number(cpuMilli);
    const memNeed = Number(memMilli);
    let best = null as Match | null;
    const stamp = ++this.matches;
    const freeAllowed = (e: Entry): number => {
      if (!gpu?.models?.length) return e.freeGpus.size;
      let n = 0;
      for (const m of gpu.models) n += e.freeByModel.get(m) ?? 0;
      return n;
    };
    // For GPU orders a provider's exact score is at least `count ×` its unit score in the pool
    // (the CPU and memory part only adds to the price): once that bound passes the best score
    // found, nothing further in the pool can win. Pools are taken best-first so the bound bites early.
    const gpuCount = gpu && gpu.count > 0 ? gpu.count : 0;
    if (gpuCount > 0) pools.sort((a, b) => this.headScore(a) - this.headScore(b));
    for (const pool of pools) {
      const arr = this.pools.get(pool);
      if (!arr) continue;
      let probed = 0;
      let visited = 0;
      arr.each((e) => {
        if (probed >= this.probe || visited++ >= MAX_VISIT) return false;
        if (gpuCount > 0 && best && gpuCount * (e.pools.get(pool) as number) > best.score) return false;
        if (e.visited === stamp) return true;
        e.visited = stamp;
        if (e.freeCpuMilli < cpuNeed || e.freeMemMilli < memNeed) return true;
        if (gpu && gpu.count > 0 && freeAllowed(e) < gpu.count) return true;
        if (!this.fitsStatic(e, order)) return true;
        const q = this.quote(e, order, true, cpuMilli, memMilli);
        if (!q || q.price > order.maxPerHour) return true;
        probed++;
        const score = this.score(e, q.gpus, q.price);
        if (!best || score < best.score || (score === best.score && e.p.id < best.providerId))
          best = { providerId: e.p.id, pricePerHour: q.price, gpus: q.gpus, score };
        return true;
      });
    }
    for (const [providerId, bid] of bids ?? []) {
      const e = this.entries.get(providerId);
      if (!e || !this.listable(e) || e.freeCpuMilli < cpuNeed || e.freeMemMilli < memNeed || !this.fitsStatic(e, order)) continue;
      const q = this.quote(e, order, true, cpuMilli, memMilli);
      if (!q || bid > q.price || bid > order.maxPerHour) continue; // a bid only ever undercuts the standing ask
      const score = this.score(e, q.gpus, bid);
      if (!best || score < best.score || (score === best.score && e.p.id < best.providerId)) best = { providerId, pricePerHour: bid, gpus: q.gpus, score };
    }
    return best;
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
        for (const t of e.leaseEnds.values()) if (busyUntil === null || t < busyUntil) busyUntil = t;
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
      for (const g of e.p.hardware.gpus) models.set(g.model, (models.get(g.model) ?? 0) + (e.freeGpus.has(g.index) ? 1 : 0));
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
