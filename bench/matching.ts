/**
 * G1: matching ≥ 200k placements/s per core at 10k providers.
 * G2: per-placement cost grows ≤ 1.5× per 10× providers (1k → 10k → 100k).
 *
 * The in-memory order book only (no database, no network), single-threaded. A placement is
 * `match` + `reserve`; to hold the book in a steady state, the oldest leases are released
 * whenever the busiest resource (slots, cores or GPUs) is above 60 % in use, so the book
 * stays busy the way a real market is, with the cheapest providers the most loaded. The
 * time of failed matches and of releases is inside the figure: placements/s = successful
 * placements ÷ all the time spent.
 *
 *   node --import tsx bench/matching.ts [--sizes 1000,10000,100000] [--seconds 3] [--seed 42]
 */
import { type BookProvider, type Order, OrderBook } from '@gridwork/coordinator';
import { makeOrder, makeProvider, machineInfo, printTable, progress, rng, round, type SimOrder, type SimProvider, yesNo } from './lib/common.ts';

const args = new Map<string, string>();
for (let i = 2; i < process.argv.length; i += 2) args.set(String(process.argv[i]).replace(/^--/, ''), String(process.argv[i + 1]));
const SIZES = (args.get('sizes') ?? '1000,10000,100000').split(',').map(Number);
const MEASURE_S = Number(args.get('seconds') ?? 3);
const FILL_CAP_S = Number(args.get('fill-seconds') ?? 20);
const SEED = Number(args.get('seed') ?? 42);
const TARGET_UTIL = 0.6;

const G1_GOAL = 200_000;
const G2_GOAL = 1.5;

function toBook(p: SimProvider): BookProvider {
  return {
    id: p.id,
    name: p.name,
    state: 'online',
    connected: true,
    hardware: p.hardware,
    attributes: p.attributes,
    asks: p.asks,
    benchmarks: p.benchmarks,
    slots: p.slots,
    reputation: p.reputation,
    stake: p.stake,
  };
}

function toOrder(o: SimOrder): Order {
  return {
    resources: o.resources,
    regions: o.regions,
    minReputation: o.minReputation,
    maxPerHour: BigInt(Math.round(o.maxPerHour * 1e6)),
  };
}

interface Result {
  providers: number;
  buildMs: number;
  fillPlacements: number;
  fillMs: number;
  attempts: number;
  placements: number;
  seconds: number;
  nsPerPlacement: number;
  nsPerAttempt: number;
  placementsPerSec: number;
  matchedFraction: number;
  util: { slots: number; cores: number; gpus: number };
  liveLeases: number;
}

function runSize(n: number): Result {
  const r = rng(SEED + n);
  const providers: SimProvider[] = [];
  for (let i = 0; i < n; i++) providers.push(makeProvider(r, i));
  let totalSlots = 0;
  let totalCores = 0;
  let totalGpus = 0;
  for (const p of providers) {
    totalSlots += p.slots;
    totalCores += p.hardware.cpu.cores;
    totalGpus += p.hardware.gpus.length;
  }
  const book = new OrderBook();
  const t0 = performance.now();
  for (const p of providers) book.upsertProvider(toBook(p));
  const buildMs = performance.now() - t0;

  // A fixed, pre-generated order stream (cycled), so generating orders is not timed.
  const orders: Order[] = [];
  const or = rng(SEED * 7 + 1);
  for (let i = 0; i < 8192; i++) orders.push(toOrder(makeOrder(or)));

  // Live leases, oldest first (a FIFO in a growable array with a head index).
  const liveId: string[] = [];
  const liveCores: number[] = [];
  const liveGpus: number[] = [];
  let head = 0;
  let usedSlots = 0;
  let usedCores = 0;
  let usedGpus = 0;
  let seq = 0;
  let k = 0;

  const busy = () => usedSlots / totalSlots > TARGET_UTIL || usedCores / totalCores > TARGET_UTIL || (totalGpus > 0 && usedGpus / totalGpus > TARGET_UTIL);

  /** One attempt: match, reserve, then release the oldest leases while over the target. */
  const step = (): boolean => {
    const order = orders[k++ & 8191] as Order;
    const m = book.match(order);
    let ok = false;
    if (m) {
      const id = `l${seq++}`;
      book.reserve(id, m.providerId, order.resources, m.gpus);
      liveId.push(id);
      liveCores.push(order.resources.cpu);
      liveGpus.push(m.gpus.length);
      usedSlots++;
      usedCores += order.resources.cpu;
      usedGpus += m.gpus.length;
      ok = true;
    }
    while (busy() && head < liveId.length) {
      book.release(liveId[head] as string);
      usedSlots--;
      usedCores -= liveCores[head] as number;
      usedGpus -= liveGpus[head] as number;
      head++;
    }
    if (head > 1 << 16) {
      liveId.splice(0, head);
      liveCores.splice(0, head);
      liveGpus.splice(0, head);
      head = 0;
    }
    return ok;
  };

  // Fill to the target utilisation, then keep going a while so the book reaches steady state.
  const fillStart = performance.now();
  let fillPlacements = 0;
  let fillAttempts = 0;
  const fillBudget = Math.max(50_000, 3 * n);
  while (fillAttempts < fillBudget && performance.now() - fillStart < FILL_CAP_S * 1000) {
    for (let i = 0; i < 1000; i++) if (step()) fillPlacements++;
    fillAttempts += 1000;
  }
  const fillMs = performance.now() - fillStart;

  let attempts = 0;
  let placements = 0;
  const start = process.hrtime.bigint();
  const deadline = start + BigInt(Math.round(MEASURE_S * 1e9));
  let now = start;
  while (now < deadline) {
    for (let i = 0; i < 1000; i++) if (step()) placements++;
    attempts += 1000;
    now = process.hrtime.bigint();
  }
  const ns = Number(now - start);
  return {
    providers: n,
    buildMs,
    fillPlacements,
    fillMs,
    attempts,
    placements,
    seconds: ns / 1e9,
    nsPerPlacement: ns / Math.max(1, placements),
    nsPerAttempt: ns / attempts,
    placementsPerSec: placements / (ns / 1e9),
    matchedFraction: placements / attempts,
    util: { slots: usedSlots / totalSlots, cores: usedCores / totalCores, gpus: totalGpus ? usedGpus / totalGpus : 0 },
    liveLeases: liveId.length - head,
  };
}

const results: Result[] = [];
for (const n of SIZES) {
  progress(`matching: ${n} providers…`);
  const res = runSize(n);
  progress(`  ${Math.round(res.placementsPerSec)} placements/s, ${Math.round(res.nsPerPlacement)} ns/placement (build ${Math.round(res.buildMs)} ms, fill ${Math.round(res.fillMs)} ms)`);
  results.push(res);
}

const at = (n: number) => results.find((r) => r.providers === n);
const r10k = at(10_000);
const g1Met = r10k ? r10k.placementsPerSec >= G1_GOAL : false;
const growth: { from: number; to: number; ratio: number }[] = [];
for (let i = 1; i < results.length; i++) {
  const a = results[i - 1] as Result;
  const b = results[i] as Result;
  // Normalised to a 10× step, so other size lists still compare against the goal.
  const steps = Math.log10(b.providers / a.providers);
  growth.push({ from: a.providers, to: b.providers, ratio: (b.nsPerPlacement / a.nsPerPlacement) ** (1 / steps) });
}
const g2Met = growth.length > 0 && growth.every((g) => g.ratio <= G2_GOAL);

printTable('Order book matching, single thread (match + reserve, steady-state releases included)', [
  ['providers', 'placements/s', 'ns/placement', 'ns/attempt', 'matched', 'util slots/cores/gpus', 'live leases', 'build ms', 'G1 goal (10k)'],
  ...results.map((r) => [
    r.providers,
    Math.round(r.placementsPerSec),
    Math.round(r.nsPerPlacement),
    Math.round(r.nsPerAttempt),
    `${round(r.matchedFraction * 100, 1)}%`,
    `${round(r.util.slots * 100)}/${round(r.util.cores * 100)}/${round(r.util.gpus * 100)}%`,
    r.liveLeases,
    Math.round(r.buildMs),
    r.providers === 10_000 ? `≥ ${G1_GOAL} → ${yesNo(g1Met)}` : '',
  ]),
]);
printTable('Growth of per-placement cost (G2: ≤ 1.5× per 10× providers)', [
  ['step', 'ratio (per 10×)', 'goal', 'result'],
  ...growth.map((g) => [`${g.from} → ${g.to}`, round(g.ratio, 3), `≤ ${G2_GOAL}`, yesNo(g.ratio <= G2_GOAL)]),
]);
console.log('');
console.log(
  JSON.stringify({
    bench: 'matching',
    machine: machineInfo(),
    seed: SEED,
    measureSeconds: MEASURE_S,
    targetUtilisation: TARGET_UTIL,
    results: results.map((r) => ({
      providers: r.providers,
      placementsPerSec: Math.round(r.placementsPerSec),
      nsPerPlacement: Math.round(r.nsPerPlacement),
      nsPerAttempt: Math.round(r.nsPerAttempt),
      matchedFraction: round(r.matchedFraction, 4),
      utilisation: { slots: round(r.util.slots, 3), cores: round(r.util.cores, 3), gpus: round(r.util.gpus, 3) },
      liveLeases: r.liveLeases,
      buildMs: Math.round(r.buildMs),
      attempts: r.attempts,
    })),
    growth: growth.map((g) => ({ from: g.from, to: g.to, ratioPer10x: round(g.ratio, 3) })),
    goals: {
      G1: { goal: `>= ${G1_GOAL} placements/s per core at 10k providers`, value: r10k ? Math.round(r10k.placementsPerSec) : null, met: g1Met },
      G2: { goal: `per-placement cost grows <= ${G2_GOAL}x per 10x providers`, value: growth.map((g) => round(g.ratio, 3)), met: g2Met },
    },
  }),
);
