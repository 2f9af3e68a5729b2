import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import type { Asks, Benchmarks, Hardware, Resources } from '@gridwork/protocol';
import { formatCredits, parseCredits } from '@gridwork/protocol';
import fc from 'fast-check';
import { type BookProvider, type Order, OrderBook, reputationFactor } from './order-book.ts';

const C = (credits: string): bigint => parseCredits(credits);

interface GpuSpec {
  model: string;
  vramGiB?: number;
}

interface ProviderOptions {
  cores?: number;
  memoryGiB?: number;
  diskGiB?: number;
  gpus?: GpuSpec[];
  cpu?: string;
  mem?: string;
  gpuHour?: Record<string, string>;
  asks?: Asks | null;
  benchmarks?: Benchmarks | null;
  cpuMops?: number;
  gpuPerf?: Record<string, number>;
  reputation?: number;
  stake?: bigint;
  region?: string;
  state?: BookProvider['state'];
  connected?: boolean;
  slots?: number;
}

function hardware(o: ProviderOptions): Hardware {
  return {
    cpu: { model: 'test-cpu', cores: o.cores ?? 8 },
    memoryGiB: o.memoryGiB ?? 32,
    diskGiB: o.diskGiB ?? 500,
    gpus: (o.gpus ?? []).map((g, index) => ({ index, uuid: `GPU-${index}`, model: g.model, name: g.model, vramGiB: g.vramGiB ?? 80 })),
  };
}

function provider(id: string, o: ProviderOptions = {}): BookProvider {
  const asks: Asks | null = o.asks !== undefined ? o.asks : { cpuCoreHour: o.cpu ?? '0.02', memoryGiBHour: o.mem ?? '0.004', gpuHour: o.gpuHour ?? {} };
  const benchmarks: Benchmarks | null =
    o.benchmarks !== undefined
      ? o.benchmarks
      : o.cpuMops !== undefined || o.gpuPerf !== undefined
        ? { cpuMopsPerCore: o.cpuMops ?? 1, gpu: o.gpuPerf ?? {} }
        : null;
  return {
    id,
    name: `name-${id}`,
    state: o.state ?? 'online',
    connected: o.connected ?? true,
    hardware: hardware(o),
    attributes: o.region === undefined ? {} : { region: o.region },
    asks,
    benchmarks,
    slots: o.slots ?? 4,
    reputation: o.reputation ?? 1,
    stake: o.stake ?? 0n,
  };
}

function book(...providers: BookProvider[]): OrderBook {
  const b = new OrderBook();
  for (const p of providers) b.upsertProvider(p);
  return b;
}

const small: Resources = { cpu: 1, memoryGiB: 1 };
const cpuOrder = (over: Partial<Order> = {}): Order => ({ resources: small, maxPerHour: C('100'), ...over });

describe('OrderBook: scoring', () => {
  test('the cheapest provider wins among equal CPU providers, at its own price', () => {
    const b = book(provider('a', { cpu: '0.03' }), provider('b', { cpu: '0.02' }), provider('c', { cpu: '0.05' }));
    const m = b.match(cpuOrder());
    assert.ok(m);
    assert.equal(m.providerId, 'b');
    assert.equal(m.pricePerHour, C('0.024')); // 1 core × 0.02 + 1 GiB × 0.004
    assert.deepEqual(m.gpus, []);
    assert.equal(m.score, 24_000);
  });

  test('price scales with the order: fractional cores and memory are rounded up per thousandth', () => {
    const b = book(provider('a', { cpu: '0.000001', mem: '0.000001' }));
    // 0.5 cores → 500 thousandths × 1 µc / 1000 = 0.5 µc → rounded up to 1 µc; same for memory.
    const m = b.match(cpuOrder({ resources: { cpu: 0.5, memoryGiB: 0.5 } }));
    assert.equal(m?.pricePerHour, 2n);
    const m2 = b.match(cpuOrder({ resources: { cpu: 3, memoryGiB: 10 } }));
    assert.equal(m2?.pricePerHour, 13n);
  });

  test('performance matters: a pricier provider 3× faster beats a cheap slow one, 2× faster does not', () => {
    const cheapSlow = provider('cheap', { cpu: '0.02', cpuMops: 100 }); // 0.024/100 = 240 µc per Mops
    const fast3 = provider('fast', { cpu: '0.05', cpuMops: 300 }); // 0.054/300 = 180
    const m = book(cheapSlow, fast3).match(cpuOrder());
    assert.equal(m?.providerId, 'fast');
    assert.equal(m?.pricePerHour, C('0.054'));
    assert.equal(m?.score, 54_000 / 300);

    const fast2 = provider('fast', { cpu: '0.05', cpuMops: 200 }); // 0.054/200 = 270
    assert.equal(book(cheapSlow, fast2).match(cpuOrder())?.providerId, 'cheap');
  });

  test('reputation factor is 0.5 + 0.5·reputation and divides the score', () => {
    assert.equal(reputationFactor(0), 0.5);
    assert.equal(reputationFactor(0.5), 0.75);
    assert.equal(reputationFactor(1), 1);
    // a: 24000 / 0.6 = 40000; b: 34000 / 1 = 34000 → b wins though it asks more.
    const a = provider('a', { cpu: '0.02', reputation: 0.2 });
    const b = provider('b', { cpu: '0.03', reputation: 1 });
    const m = book(a, b).match(cpuOrder());
    assert.equal(m?.providerId, 'b');
    // With a better reputation a wins again: 24000 / 0.8 = 30000 < 34000.
    const m2 = book(provider('a', { cpu: '0.02', reputation: 0.6 }), b).match(cpuOrder());
    assert.equal(m2?.providerId, 'a');
    assert.equal(m2?.score, 24_000 / 0.8);
  });

  test('equal scores go to the lower provider id, whatever the insertion order', () => {
    const ids = ['p-c', 'p-a', 'p-d', 'p-b'];
    for (const order of [ids, [...ids].reverse()]) {
      const b = book(...order.map((id) => provider(id)));
      assert.equal(b.match(cpuOrder())?.providerId, 'p-a');
    }
  });
});

describe('OrderBook: GPU orders', () => {
  const gpuOrder = (over: Partial<Order> = {}): Order => ({
    resources: { cpu: 1, memoryGiB: 1, gpu: { count: 2, models: ['a100-80gb', 'h100-80gb'], minVramGiB: 60 } },
    maxPerHour: C('100'),
    ...over,
  });
  const population = () =>
    book(
      // wrong model, very cheap
      provider('a-rtx', {
        gpus: [
          { model: 'rtx-4090', vramGiB: 24 },
          { model: 'rtx-4090', vramGiB: 24 },
        ],
        gpuHour: { 'rtx-4090': '0.1' },
      }),
      // allowed model name, but too little VRAM
      provider('b-vram', {
        gpus: [
          { model: 'a100-80gb', vramGiB: 40 },
          { model: 'a100-80gb', vramGiB: 40 },
        ],
        gpuHour: { 'a100-80gb': '0.2' },
      }),
      // only one allowed GPU
      provider('c-count', { gpus: [{ model: 'a100-80gb' }, { model: 'rtx-4090', vramGiB: 24 }], gpuHour: { 'a100-80gb': '0.3', 'rtx-4090': '0.1' } }),
      // mixed: one a100 (1.0) and two h100s (2.0 each): the only usable pair is the h100s
      provider('d-mixed', {
        gpus: [{ model: 'h100-80gb' }, { model: 'a100-80gb' }, { model: 'h100-80gb' }, { model: 'rtx-4090', vramGiB: 24 }],
        gpuHour: { 'h100-80gb': '2', 'a100-80gb': '1', 'rtx-4090': '0.05' },
      }),
      // two h100s: 5.0 for the pair
      provider('e-h100', { gpus: [{ model: 'h100-80gb' }, { model: 'h100-80gb' }], gpuHour: { 'h100-80gb': '2.5' } }),
      // CPU only
      provider('f-cpu', { cpu: '0.001' }),
    );

  test('only providers with enough GPUs of one allowed model and VRAM match; a lease never mixes models', () => {
    const b = population();
    const m = b.match(gpuOrder());
    assert.ok(m);
    assert.equal(m.providerId, 'd-mixed');
    // Its h100 pair (4.0), not h100 + a100 (3.0): a lease's GPUs are all one model.
    assert.deepEqual([...m.gpus].sort(), [0, 2]);
    assert.equal(m.pricePerHour, C('0.024') + C('4'));

    // Reserving those leaves d-mixed one usable GPU: the next order goes to e-h100.
    b.reserve('l1', m.providerId, gpuOrder().resources, m.gpus);
    const m2 = b.match(gpuOrder());
    assert.equal(m2?.providerId, 'e-h100');
    assert.deepEqual([...(m2?.gpus ?? [])].sort(), [0, 1]);
    assert.equal(m2?.pricePerHour, C('0.024') + C('5'));
    b.reserve('l2', 'e-h100', gpuOrder().resources, m2?.gpus ?? []);
    assert.equal(b.match(gpuOrder()), null);

    // A one-GPU h100 order finds no free h100 left anywhere; a one-GPU a100 order goes to the
    // cheapest a100 with enough VRAM (c-count at 0.3, before d-mixed's remaining a100 at 1.0).
    assert.equal(b.match(gpuOrder({ resources: { cpu: 1, memoryGiB: 1, gpu: { count: 1, models: ['h100-80gb'] } } })), null);
    const one = b.match(gpuOrder({ resources: { cpu: 1, memoryGiB: 1, gpu: { count: 1, models: ['a100-80gb'], minVramGiB: 60 } } }));
    assert.equal(one?.providerId, 'c-count');
    assert.deepEqual(one?.gpus, [0]);

    b.release('l1');
    assert.equal(b.match(gpuOrder())?.providerId, 'd-mixed');
  });

  test('without a VRAM floor the cheaper small-VRAM provider wins; without a model list any model does', () => {
    const b = population();
    const noVram = b.match(gpuOrder({ resources: { cpu: 1, memoryGiB: 1, gpu: { count: 2, models: ['a100-80gb'] } } }));
    assert.equal(noVram?.providerId, 'b-vram');
    assert.deepEqual([...(noVram?.gpus ?? [])].sort(), [0, 1]);
    const anyModel = b.match(gpuOrder({ resources: { cpu: 1, memoryGiB: 1, gpu: { count: 2 } } }));
    // a-rtx: 0.2 for two; c-count: rtx 0.1 + a100 0.3 = 0.4; d-mixed: 0.05 + 1 = 1.05
    assert.equal(anyModel?.providerId, 'a-rtx');
    assert.equal(anyModel?.pricePerHour, C('0.224'));
  });

  test('a provider gets no GPU work for a model it asks nothing for', () => {
    const b = book(provider('x', { gpus: [{ model: 'l4' }], gpuHour: {} }));
    assert.equal(b.match(gpuOrder({ resources: { cpu: 1, memoryGiB: 1, gpu: { count: 1 } } })), null);
    // ...but it can still take CPU work.
    assert.equal(b.match(cpuOrder())?.providerId, 'x');
  });

  test('throughput in the score is that of the GPUs the order would use, not of other GPUs on the machine', () => {
    // x has a fast h100 and a slow t4; the order wants a t4. y has a t4 too and asks less for it.
    const x = provider('x', {
      gpus: [{ model: 'h100-80gb' }, { model: 't4', vramGiB: 16 }],
      gpuHour: { 'h100-80gb': '3', t4: '0.3' },
      gpuPerf: { 'h100-80gb': 3, t4: 0.3 },
    });
    const y = provider('y', { gpus: [{ model: 't4', vramGiB: 16 }], gpuHour: { t4: '0.25' }, gpuPerf: { t4: 0.3 } });
    const m = book(x, y).match(gpuOrder({ resources: { cpu: 1, memoryGiB: 1, gpu: { count: 1, models: ['t4'] } } }));
    assert.equal(m?.providerId, 'y');
    assert.equal(m?.pricePerHour, C('0.274'));

    // A faster GPU of the wanted model does win over a cheaper slow one.
    const fast = provider('fast', { gpus: [{ model: 'h100-80gb' }], gpuHour: { 'h100-80gb': '3' }, gpuPerf: { 'h100-80gb': 3 } });
    const slow = provider('slow', { gpus: [{ model: 'a100-80gb' }], gpuHour: { 'a100-80gb': '1.5' }, gpuPerf: { 'a100-80gb': 1 } });
    assert.equal(book(fast, slow).match(gpuOrder({ resources: { cpu: 1, memoryGiB: 1, gpu: { count: 1 } } }))?.providerId, 'fast');
  });
});

describe('OrderBook: filters', () => {
  test('regions: only providers in an allowed region (a provider with no region is outside every list)', () => {
    const b = book(
      provider('a', { cpu: '0.01' }),
      provider('b', { cpu: '0.02', region: 'us' }),
      provider('c', { cpu: '0.03', region: 'eu' }),
      provider('d', { cpu: '0.04', region: 'ap' }),
    );
    assert.equal(b.match(cpuOrder())?.providerId, 'a');
    assert.equal(b.match(cpuOrder({ regions: ['eu'] }))?.providerId, 'c');
    assert.equal(b.match(cpuOrder({ regions: ['ap', 'eu'] }))?.providerId, 'c');
    assert.equal(b.match(cpuOrder({ regions: ['sa'] })), null);
    assert.equal(b.match(cpuOrder({ regions: [] }))?.providerId, 'a'); // empty list = anywhere
  });

  test('minReputation and minStake', () => {
    const b = book(
      provider('a', { cpu: '0.01', reputation: 0.3, stake: C('1000') }),
      provider('b', { cpu: '0.02', reputation: 0.9, stake: C('5') }),
      provider('c', { cpu: '0.03', reputation: 0.8, stake: C('100') }),
    );
    assert.equal(b.match(cpuOrder({ minReputation: 0.5 }))?.providerId, 'b');
    assert.equal(b.match(cpuOrder({ minReputation: 0.8 }))?.providerId, 'b');
    assert.equal(b.match(cpuOrder({ minReputation: 0.95 })), null);
    assert.equal(b.match(cpuOrder({ minStake: C('100') }))?.providerId, 'a');
    assert.equal(b.match(cpuOrder({ minStake: C('100'), minReputation: 0.5 }))?.providerId, 'c');
    assert.equal(b.match(cpuOrder({ minStake: C('2000') })), null);
  });

  test('hardware: cores, memory and disk the machine does not have', () => {
    const b = book(
      provider('a', { cpu: '0.01', cores: 2, memoryGiB: 4, diskGiB: 10 }),
      provider('b', { cpu: '0.02', cores: 16, memoryGiB: 64, diskGiB: 1000 }),
    );
    assert.equal(b.match(cpuOrder({ resources: { cpu: 2, memoryGiB: 4, diskGiB: 10 } }))?.providerId, 'a');
    assert.equal(b.match(cpuOrder({ resources: { cpu: 2.5, memoryGiB: 1 } }))?.providerId, 'b');
    assert.equal(b.match(cpuOrder({ resources: { cpu: 1, memoryGiB: 4.5 } }))?.providerId, 'b');
    assert.equal(b.match(cpuOrder({ resources: { cpu: 1, memoryGiB: 1, diskGiB: 11 } }))?.providerId, 'b');
    assert.equal(b.match(cpuOrder({ resources: { cpu: 17, memoryGiB: 1 } })), null);
  });

  test('maxPerHour excludes providers that ask more; a price equal to the max is accepted', () => {
    const b = book(provider('a', { cpu: '0.05', cpuMops: 1000 }), provider('b', { cpu: '0.03' }));
    // a scores best (fast) as long as it is affordable.
    assert.equal(b.match(cpuOrder())?.providerId, 'a');
    assert.equal(b.match(cpuOrder({ maxPerHour: C('0.054') }))?.providerId, 'a');
    assert.equal(b.match(cpuOrder({ maxPerHour: C('0.053999') }))?.providerId, 'b');
    assert.equal(b.match(cpuOrder({ maxPerHour: C('0.034') }))?.providerId, 'b');
    assert.equal(b.match(cpuOrder({ maxPerHour: C('0.033999') })), null);
  });

  test('disconnected, draining, offline and ask-less providers never match', () => {
    const others = [
      provider('a-disconnected', { cpu: '0.001', connected: false }),
      provider('b-draining', { cpu: '0.001', state: 'draining' }),
      provider('c-offline', { cpu: '0.001', state: 'offline' }),
      provider('d-noasks', { asks: null }),
      provider('e-noslots', { cpu: '0.001', slots: 0 }),
    ];
    const b = book(...others);
    assert.equal(b.match(cpuOrder()), null);
    assert.equal(b.match(cpuOrder(), new Map(others.map((p) => [p.id, 1n]))), null); // not even with bids
    b.upsertProvider(provider('z-online', { cpu: '0.5' }));
    assert.equal(b.match(cpuOrder())?.providerId, 'z-online');

    // State changes arrive as upserts: going offline leaves the pools, coming back rejoins them.
    b.upsertProvider(provider('z-online', { cpu: '0.5', state: 'draining' }));
    assert.equal(b.match(cpuOrder()), null);
    b.upsertProvider(provider('b-draining', { cpu: '0.001' }));
    assert.equal(b.match(cpuOrder())?.providerId, 'b-draining');
    b.removeProvider('b-draining');
    assert.equal(b.match(cpuOrder()), null);
    assert.equal(b.size, 5);
  });
});

describe('OrderBook: capacity', () => {
  const order = cpuOrder({ resources: { cpu: 2, memoryGiB: 4 } });

  test('a GPU provider whose CPU is all taken leaves the GPU pools: a GPU order finds the provider that fits, however many such providers are cheaper', () => {
    // 100 cheap providers with free GPUs but every core reserved (by CPU-only leases), one dearer that fits: a walk
    // that met the cheap ones first gave up at its visit bound and matched nothing.
    const stuck = Array.from({ length: 100 }, (_, i) =>
      provider(`cheap-${String(i).padStart(3, '0')}`, { cores: 2, gpus: [{ model: 'a100' }], gpuHour: { a100: '1' } }),
    );
    const b = book(...stuck, provider('dear', { cores: 2, gpus: [{ model: 'a100' }], gpuHour: { a100: '5' } }));
    for (const p of stuck) b.reserve(`cpu-${p.id}`, p.id, { cpu: 2, memoryGiB: 1 }, []);
    const gpuOrder = cpuOrder({ resources: { cpu: 1, memoryGiB: 1, gpu: { count: 1 } } });
    assert.equal(b.match(gpuOrder)?.providerId, 'dear');
    b.release('cpu-cheap-042');
    assert.equal(b.match(gpuOrder)?.providerId, 'cheap-042', 'back in the pool once it has a core again');
  });

  test('reserve until a provider is full, then orders go elsewhere; release brings it back', () => {
    const b = book(provider('cheap', { cpu: '0.01', cores: 4, memoryGiB: 64 }), provider('dear', { cpu: '0.05', cores: 64, memoryGiB: 256 }));
    assert.equal(b.match(order)?.providerId, 'cheap');
    b.reserve('l1', 'cheap', order.resources, []);
    assert.equal(b.match(order)?.providerId, 'cheap');
    b.reserve('l2', 'cheap', order.resources, []);
    assert.equal(b.match(order)?.providerId, 'dear');
    // A smaller order does not fit either: no CPU left at all.
    assert.equal(b.match(cpuOrder({ resources: { cpu: 0.5, memoryGiB: 1 } }))?.providerId, 'dear');
    b.reserve('l2', 'cheap', order.resources, []); // same lease again: no double count
    b.release('l1');
    assert.equal(b.match(order)?.providerId, 'cheap');
    b.release('l1'); // twice: no double release
    b.reserve('l3', 'cheap', order.resources, []);
    assert.equal(b.match(order)?.providerId, 'dear');
  });

  test('memory and slots are capacity too', () => {
    const b = book(provider('cheap', { cpu: '0.01', cores: 64, memoryGiB: 6, slots: 10 }), provider('dear', { cpu: '0.05', cores: 64, memoryGiB: 256 }));
    b.reserve('l1', 'cheap', order.resources, []);
    assert.equal(b.match(order)?.providerId, 'dear'); // 2 GiB left, 4 wanted
    assert.equal(b.match(cpuOrder({ resources: { cpu: 1, memoryGiB: 2 } }))?.providerId, 'cheap');

    const s = book(provider('cheap', { cpu: '0.01', slots: 1 }), provider('dear', { cpu: '0.05' }));
    s.reserve('l1', 'cheap', small, []);
    assert.equal(s.match(cpuOrder())?.providerId, 'dear');
    s.release('l1');
    assert.equal(s.match(cpuOrder())?.providerId, 'cheap');
  });

  test('an upsert of a provider keeps its reservations; reservations made before it registers apply', () => {
    const b = book(provider('cheap', { cpu: '0.01', cores: 4 }), provider('dear', { cpu: '0.05', cores: 64 }));
    b.reserve('l1', 'cheap', { cpu: 4, memoryGiB: 1 }, []);
    assert.equal(b.match(order)?.providerId, 'dear');
    b.upsertProvider(provider('cheap', { cpu: '0.009', cores: 4 }));
    assert.equal(b.match(order)?.providerId, 'dear');
    b.release('l1');
    assert.equal(b.match(order)?.providerId, 'cheap');
    assert.equal(b.match(order)?.pricePerHour, C('0.018') + C('0.016'));

    // Rebuilt from the database: the lease is known before the provider is loaded.
    const r = new OrderBook();
    r.reserve('l9', 'late', { cpu: 3, memoryGiB: 1 }, [0]);
    r.upsertProvider(provider('late', { cores: 4, gpus: [{ model: 'l4' }], gpuHour: { l4: '0.5' } }));
    assert.equal(r.match(order), null);
    assert.equal(r.match(cpuOrder({ resources: { cpu: 1, memoryGiB: 1, gpu: { count: 1 } } })), null);
    assert.equal(r.match(cpuOrder({ resources: { cpu: 1, memoryGiB: 1 } }))?.providerId, 'late');
    r.release('l9');
    assert.equal(r.match(cpuOrder({ resources: { cpu: 1, memoryGiB: 1, gpu: { count: 1 } } }))?.providerId, 'late');
  });
});

describe('OrderBook: auction bids', () => {
  // a: standing 0.054/h; b: standing 0.034/h.
  const a = provider('a', { cpu: '0.05' });
  const b = provider('b', { cpu: '0.03' });

  test('a bid below the bidder’s standing ask undercuts the others and wins at the bid price', () => {
    const bk = book(a, b);
    assert.equal(bk.match(cpuOrder())?.providerId, 'b');
    const m = bk.match(cpuOrder(), new Map([['a', C('0.02')]]));
    assert.equal(m?.providerId, 'a');
    assert.equal(m?.pricePerHour, C('0.02'));
    assert.equal(m?.score, 20_000);
    // The standing winner may bid too.
    const m2 = bk.match(
      cpuOrder(),
      new Map([
        ['a', C('0.02')],
        ['b', C('0.01')],
      ]),
    );
    assert.equal(m2?.providerId, 'b');
    assert.equal(m2?.pricePerHour, C('0.01'));
  });

  test('a bid above the bidder’s own standing ask, above maxPerHour, or from an unknown provider is ignored', () => {
    const bk = book(a, b);
    const above = bk.match(cpuOrder(), new Map([['a', C('0.06')]]));
    assert.equal(above?.providerId, 'b');
    assert.equal(above?.pricePerHour, C('0.034'));
    // b bids above its own ask: its standing price stands.
    assert.equal(bk.match(cpuOrder(), new Map([['b', C('0.04')]]))?.pricePerHour, C('0.034'));
    const max = cpuOrder({ maxPerHour: C('0.04') });
    assert.equal(bk.match(max, new Map([['a', C('0.045')]]))?.providerId, 'b');
    assert.equal(bk.match(max, new Map([['a', C('0.025')]]))?.providerId, 'a');
    assert.equal(bk.match(cpuOrder(), new Map([['ghost', 1n]]))?.providerId, 'b');
    // A bid equal to the standing ask is allowed (nothing to undercut, but not above).
    assert.equal(bk.match(cpuOrder(), new Map([['a', C('0.054')]]))?.providerId, 'b');
  });

  test('bids reach providers beyond the probe, but never above their own standing ask', () => {
    // With a probe of 1 only the best unit score (b) is evaluated from the pool, though a
    // would be cheaper for this memory-light order: a 0.01 + 0.5 × 0.02 = 0.02, b 0.03 + 0.5 × 0.001 = 0.0305.
    const bk = new OrderBook(1);
    bk.upsertProvider(provider('a', { cpu: '0.01', mem: '0.02' }));
    bk.upsertProvider(provider('b', { cpu: '0.03', mem: '0.001' }));
    const o = cpuOrder({ resources: { cpu: 1, memoryGiB: 0.5 } });
    assert.equal(bk.match(o)?.providerId, 'b');
    assert.equal(bk.match(o)?.pricePerHour, C('0.0305'));
    // a bids above its own ask (though below b's price): ignored.
    assert.equal(bk.match(o, new Map([['a', C('0.025')]]))?.providerId, 'b');
    // a bids at or below its ask: considered, and wins.
    assert.equal(bk.match(o, new Map([['a', C('0.02')]]))?.providerId, 'a');
    assert.equal(bk.match(o, new Map([['a', C('0.015')]]))?.pricePerHour, C('0.015'));
  });

  test('bids respect filters and capacity', () => {
    const bk = book(a, provider('b', { cpu: '0.03', region: 'eu' }));
    assert.equal(bk.match(cpuOrder({ regions: ['eu'] }), new Map([['a', 1n]]))?.providerId, 'b');
    bk.reserve('l1', 'a', { cpu: 8, memoryGiB: 1 }, []);
    assert.equal(bk.match(cpuOrder(), new Map([['a', 1n]]))?.providerId, 'b');
  });
});

describe('OrderBook: explain', () => {
  const gpu = { count: 2, models: ['a100-80gb'], minVramGiB: 60 };
  const resources: Resources = { cpu: 4, memoryGiB: 16, diskGiB: 100, gpu };
  const order = (maxPerHour: string): Order => ({ resources, regions: ['eu'], minReputation: 0.5, minStake: C('100'), maxPerHour: C(maxPerHour) });
  const a100x2 = [{ model: 'a100-80gb' }, { model: 'a100-80gb' }];
  // Passes every filter: 2× a100 at `price` each, cpu 0.01, memory 0.001 → base 0.04 + 0.016 = 0.056.
  const good = (id: string, price: string, extra: ProviderOptions = {}) =>
    provider(id, { gpus: a100x2, cpu: '0.01', mem: '0.001', gpuHour: { 'a100-80gb': price }, region: 'eu', reputation: 0.9, stake: C('500'), ...extra });

  function population(): OrderBook {
    return book(
      good('off-1', '1', { connected: false }),
      good('off-2', '1', { state: 'offline' }),
      good('drain-1', '1', { state: 'draining' }),
      good('model-1', '1', { gpus: [{ model: 'rtx-4090' }, { model: 'rtx-4090' }] }),
      good('model-2', '1', { gpus: [] }),
      good('model-3', '1', { gpus: [{ model: 'h100-80gb' }, { model: 'h100-80gb' }, { model: 'h100-80gb' }] }),
      good('vram-1', '1', {
        gpus: [
          { model: 'a100-80gb', vramGiB: 40 },
          { model: 'a100-80gb', vramGiB: 40 },
        ],
      }),
      good('count-1', '1', { gpus: [{ model: 'a100-80gb' }] }),
      good('count-2', '1', { gpus: [{ model: 'a100-80gb' }, { model: 'a100-80gb', vramGiB: 40 }] }),
      good('cpu-1', '1', { cores: 2 }),
      good('mem-1', '1', { memoryGiB: 8 }),
      good('disk-1', '1', { diskGiB: 50 }),
      good('region-1', '1', { region: 'us' }),
      good('region-2', '1', { region: undefined }),
      good('rep-1', '1', { reputation: 0.4 }),
      good('stake-1', '1', { stake: C('99') }),
      good('price-1', '6'),
      good('price-2', '7'),
      good('busy-1', '1'),
      good('busy-2', '1.5'),
      good('ok-1', '2'),
      good('ok-2', '2.5'),
      good('ok-3', '3'),
    );
  }
  const T1 = Date.parse('2030-01-01T10:00:00.000Z');
  const T2 = Date.parse('2030-01-01T09:30:00.000Z');

  test('counts each filter, lowest ask, busy-until and candidates', () => {
    const b = population();
    b.reserve('busy-lease-1', 'busy-1', { cpu: 1, memoryGiB: 1 }, [0], T1);
    b.reserve('busy-lease-2', 'busy-2', { cpu: 1, memoryGiB: 1 }, [1], T2);
    b.reserve('busy-lease-3', 'busy-2', { cpu: 1, memoryGiB: 1 }, [], T1);
    const ex = b.explain(order('10'));
    assert.deepEqual(ex.excluded, {
      offline: 2,
      draining: 1,
      runtime: 0,
      gpuModel: 3,
      gpuVram: 1,
      gpuCount: 2,
      cpu: 1,
      memory: 1,
      disk: 1,
      region: 2,
      reputation: 1,
      stake: 1,
      price: 2,
      busy: 2,
    });
    assert.deepEqual(ex.providers, { total: 23, online: 21 });
    assert.equal(ex.candidates, 3);
    assert.equal(ex.matchable, true);
    assert.equal(ex.lowestAsk, '2.056'); // busy-1: 0.056 + 2 × 1
    assert.equal(ex.maxPerHour, '10');
    assert.equal(ex.busyUntil, new Date(T2).toISOString());
    assert.equal(ex.reasons[0], '3 provider(s) can take this order now');
    assert.ok(ex.reasons.includes('2 provider(s) are busy'));
    assert.ok(ex.reasons.includes('3 provider(s) have no GPU of an allowed model'));
    assert.ok(ex.reasons.includes('1 provider(s) have no GPU with enough VRAM'));
    assert.ok(ex.reasons.includes('2 provider(s) ask more than the max price'));
    assert.ok(!ex.reasons.some((r) => r.startsWith('the lowest ask')));
    // explain agrees with match about who can take it, and names the candidates best first.
    assert.equal(b.match(order('10'))?.providerId, 'ok-1');
    assert.equal(ex.best.length, 3);
    assert.equal(ex.best[0]?.providerId, 'ok-1');
    for (let i = 1; i < ex.best.length; i++) assert.ok((ex.best[i - 1]?.score ?? 0) <= (ex.best[i]?.score ?? 0), 'ranked by score');

    // Releasing the busy leases frees them; busyUntil goes away.
    b.release('busy-lease-1');
    b.release('busy-lease-2');
    const ex2 = b.explain(order('10'));
    assert.equal(ex2.excluded.busy, 0);
    assert.equal(ex2.candidates, 5);
    assert.equal(ex2.busyUntil, null);
    assert.equal(b.match(order('10'))?.providerId, 'busy-1');
    assert.equal(ex2.best[0]?.providerId, 'busy-1');
  });

  test('a max price below the lowest ask says so, and nothing is matchable', () => {
    const b = population();
    const ex = b.explain(order('2'));
    assert.equal(ex.matchable, false);
    assert.equal(ex.candidates, 0);
    assert.equal(ex.excluded.price, 7); // price-1/2, busy-1/2 (not busy now), ok-1/2/3
    assert.equal(ex.lowestAsk, '2.056');
    assert.equal(ex.maxPerHour, '2');
    assert.ok(ex.reasons.includes('the lowest ask is 2.056/h, above the max price 2/h'), ex.reasons.join('; '));
    assert.ok(!ex.reasons.some((r) => r.includes('can take this order now')));
    assert.equal(b.match(order('2')), null);
    // A max price exactly at the lowest ask: exactly one candidate.
    const ex2 = b.explain(order('2.056'));
    assert.equal(ex2.candidates, 1);
    assert.equal(ex2.matchable, true);
    assert.equal(b.match(order('2.056'))?.providerId, 'busy-1');
  });

  test('an empty book and a book with nobody online', () => {
    const empty = new OrderBook().explain(order('10'));
    assert.equal(empty.matchable, false);
    assert.deepEqual(empty.providers, { total: 0, online: 0 });
    assert.equal(empty.lowestAsk, null);
    assert.deepEqual(empty.reasons, ['no provider has registered with this coordinator']);

    const off = book(good('a', '1', { connected: false }), good('b', '1', { state: 'offline' })).explain(order('10'));
    assert.deepEqual(off.providers, { total: 2, online: 0 });
    assert.equal(off.excluded.offline, 2);
    assert.equal(off.reasons[0], 'no provider is online');
    assert.equal(off.matchable, false);
  });
});

describe('OrderBook: summary', () => {
  test('min / median / max per class and free units among online providers', () => {
    const b = book(
      provider('a', { cpu: '0.01', mem: '0.002', cores: 4, memoryGiB: 16 }),
      provider('b', { cpu: '0.05', mem: '0.001', cores: 8, memoryGiB: 32, gpus: [{ model: 'l4' }, { model: 'l4' }], gpuHour: { l4: '0.4' } }),
      provider('c', {
        cpu: '0.02',
        mem: '0.003',
        cores: 16,
        memoryGiB: 64,
        gpus: [{ model: 'l4' }, { model: 'h100-80gb' }],
        gpuHour: { l4: '0.3', 'h100-80gb': '2.5' },
      }),
      provider('off', { cpu: '0.0001', mem: '0.0001', cores: 100, connected: false }),
      provider('drain', { cpu: '0.0001', state: 'draining' }),
      provider('none', { asks: null }),
      // has a GPU but asks nothing for it: no gpu:t4 class
      provider('d', { cpu: '0.03', mem: '0.004', cores: 2, memoryGiB: 8, gpus: [{ model: 't4' }], gpuHour: {} }),
      provider('e', { cpu: '0.02', mem: '0.002', cores: 2, memoryGiB: 8, gpus: [{ model: 'l4' }], gpuHour: { l4: '0.35' } }),
    );
    b.reserve('l1', 'c', { cpu: 2.5, memoryGiB: 10.25, gpu: { count: 1 } }, [0]);
    const s = b.summary();
    assert.deepEqual(
      s.map((c) => c.resourceClass),
      ['cpu', 'gpu:h100-80gb', 'gpu:l4', 'memory'],
    );
    const by = new Map(s.map((c) => [c.resourceClass, c]));
    assert.deepEqual(by.get('cpu'), {
      resourceClass: 'cpu',
      unit: 'core-hour',
      providers: 5,
      freeUnits: 4 + 8 + 16 - 2.5 + 2 + 2,
      min: '0.01',
      median: '0.02',
      max: '0.05',
    });
    assert.deepEqual(by.get('memory'), {
      resourceClass: 'memory',
      unit: 'GiB-hour',
      providers: 5,
      freeUnits: 16 + 32 + 64 - 10.25 + 8 + 8,
      min: '0.001',
      median: '0.002',
      max: '0.004',
    });
    assert.deepEqual(by.get('gpu:l4'), { resourceClass: 'gpu:l4', unit: 'GPU-hour', providers: 3, freeUnits: 3, min: '0.3', median: '0.35', max: '0.4' });
    assert.deepEqual(by.get('gpu:h100-80gb'), {
      resourceClass: 'gpu:h100-80gb',
      unit: 'GPU-hour',
      providers: 1,
      freeUnits: 1,
      min: '2.5',
      median: '2.5',
      max: '2.5',
    });
    b.release('l1');
    assert.equal(new Map(b.summary().map((c) => [c.resourceClass, c])).get('gpu:l4')?.freeUnits, 4);
    assert.deepEqual(new OrderBook().summary(), []);
  });
});

// ---------------------------------------------------------------------------------------------
// Properties: match against a brute-force scan of every provider.

const MODELS = ['a', 'b', 'c'] as const;
const PRICES = ['0.001', '0.01', '0.02', '0.05', '0.3', '1', '2.5'];

const arbProvider = (id: string) =>
  fc
    .record({
      cores: fc.integer({ min: 1, max: 16 }),
      memoryGiB: fc.constantFrom(0.5, 2, 7.5, 16, 64),
      diskGiB: fc.constantFrom(10, 100, 1000),
      gpus: fc.array(fc.record({ model: fc.constantFrom(...MODELS), vramGiB: fc.constantFrom(16, 24, 80) }), { maxLength: 4 }),
      asks: fc.option(
        fc.record({
          cpuCoreHour: fc.constantFrom(...PRICES),
          memoryGiBHour: fc.constantFrom(...PRICES),
          gpuHour: fc.dictionary(fc.constantFrom(...MODELS), fc.constantFrom(...PRICES), { maxKeys: 3 }),
        }),
        { freq: 6 },
      ),
      benchmarks: fc.option(
        fc.record({
          cpuMopsPerCore: fc.constantFrom(0, 50, 100, 300),
          gpu: fc.dictionary(fc.constantFrom(...MODELS), fc.constantFrom(0, 0.5, 1, 3), { maxKeys: 3 }),
        }),
        { freq: 3 },
      ),
      reputation: fc.constantFrom(0, 0.25, 0.5, 0.8, 1),
      stake: fc.constantFrom(0n, C('10'), C('100')),
      region: fc.option(fc.constantFrom('eu', 'us'), { freq: 3 }),
      state: fc.constantFrom('online', 'online', 'online', 'draining', 'offline') as fc.Arbitrary<BookProvider['state']>,
      connected: fc.constantFrom(true, true, true, false),
      slots: fc.integer({ min: 0, max: 3 }),
    })
    .map(
      (r): BookProvider => ({
        id,
        name: id,
        state: r.state,
        connected: r.connected,
        hardware: {
          cpu: { model: 'x', cores: r.cores },
          memoryGiB: r.memoryGiB,
          diskGiB: r.diskGiB,
          gpus: r.gpus.map((g, index) => ({ index, uuid: `u${index}`, name: g.model, ...g })),
        },
        attributes: r.region === null ? {} : { region: r.region },
        asks: r.asks,
        benchmarks: r.benchmarks,
        slots: r.slots,
        reputation: r.reputation,
        stake: r.stake,
      }),
    );

const arbPopulation = fc.integer({ min: 0, max: 8 }).chain((n) => fc.tuple(...Array.from({ length: n }, (_, i) => arbProvider(`p${i}`))));

const arbOrder: fc.Arbitrary<Order> = fc
  .record({
    cpu: fc.constantFrom(0.25, 0.5, 1, 2, 4, 8),
    memoryGiB: fc.constantFrom(0.5, 1, 4, 16),
    diskGiB: fc.option(fc.constantFrom(50, 500), { freq: 3 }),
    gpu: fc.option(
      fc.record({
        count: fc.integer({ min: 0, max: 3 }),
        models: fc.option(fc.subarray([...MODELS]), { freq: 2 }),
        minVramGiB: fc.option(fc.constantFrom(20, 40), { freq: 2 }),
      }),
      { freq: 2 },
    ),
    regions: fc.option(fc.subarray(['eu', 'us']), { freq: 2 }),
    minReputation: fc.option(fc.constantFrom(0.3, 0.8), { freq: 3 }),
    minStake: fc.option(fc.constantFrom(C('10'), C('100')), { freq: 3 }),
    maxPerHour: fc.constantFrom(C('0.01'), C('0.1'), C('1'), C('3'), C('1000')),
  })
  .map((r): Order => {
    const resources: Resources = { cpu: r.cpu, memoryGiB: r.memoryGiB };
    if (r.diskGiB !== null) resources.diskGiB = r.diskGiB;
    if (r.gpu !== null) {
      resources.gpu = { count: r.gpu.count };
      if (r.gpu.models !== null) resources.gpu.models = r.gpu.models;
      if (r.gpu.minVramGiB !== null) resources.gpu.minVramGiB = r.gpu.minVramGiB;
    }
    return {
      resources,
      regions: r.regions ?? undefined,
      minReputation: r.minReputation ?? undefined,
      minStake: r.minStake ?? undefined,
      maxPerHour: r.maxPerHour,
    };
  });

/** Exact thousandths, rounded up, as the order book counts capacity. */
const milli = (x: number): bigint => BigInt(Math.ceil(Math.round(x * 1e6) / 1000));

interface Used {
  cpu: bigint;
  mem: bigint;
  slots: number;
  gpus: Set<number>;
}

/** What an independent reading of the rules says about provider p for the order, or null if it cannot take it. */
function bruteQuote(p: BookProvider, used: Used, order: Order): { price: bigint; gpus: number[]; score: number } | null {
  const r = order.resources;
  if (!p.connected || p.state !== 'online' || !p.asks || used.slots >= p.slots) return null;
  if (milli(p.hardware.cpu.cores) - used.cpu < milli(r.cpu) || milli(p.hardware.memoryGiB) - used.mem < milli(r.memoryGiB)) return null;
  if (r.diskGiB !== undefined && r.diskGiB > p.hardware.diskGiB) return null;
  if (order.regions?.length && !order.regions.includes(p.attributes.region ?? '')) return null;
  if (order.minReputation !== undefined && p.reputation < order.minReputation) return null;
  if (order.minStake !== undefined && p.stake < order.minStake) return null;
  const ceil = (a: bigint) => (a + 999n) / 1000n;
  let price = ceil(C(p.asks.cpuCoreHour) * milli(r.cpu)) + ceil(C(p.asks.memoryGiBHour) * milli(r.memoryGiB));
  const gpus: number[] = [];
  let perf = Math.max(p.benchmarks?.cpuMopsPerCore ?? 1, 1e-6);
  const g = r.gpu;
  if (g && g.count > 0) {
    // One model per lease: the model with the best score, then the lower price, then the name.
    const gpuHour = p.asks.gpuHour;
    let chosen: { price: bigint; gpus: number[]; unit: number; model: string; perf: number } | null = null;
    const models = [...new Set(p.hardware.gpus.map((x) => x.model))];
    for (const model of models) {
      if (gpuHour[model] === undefined || (g.models?.length && !g.models.includes(model))) continue;
      const idx = p.hardware.gpus
        .filter((x) => x.model === model && !used.gpus.has(x.index) && (g.minVramGiB === undefined || x.vramGiB >= g.minVramGiB))
        .map((x) => x.index)
        .sort((a, b) => a - b);
      if (idx.length < g.count) continue;
      const total = price + C(gpuHour[model] as string) * BigInt(g.count);
      const mperf = Math.max(p.benchmarks?.gpu[model] ?? 1, 1e-6);
      const unit = Number(total) / mperf;
      if (!chosen || unit < chosen.unit || (unit === chosen.unit && (total < chosen.price || (total === chosen.price && model < chosen.model)))) {
        chosen = { price: total, gpus: idx.slice(0, g.count), unit, model, perf: mperf };
      }
    }
    if (!chosen) return null;
    price = chosen.price;
    gpus.push(...chosen.gpus);
    perf = chosen.perf;
  }
  if (price > order.maxPerHour) return null;
  return { price, gpus, score: Number(price) / perf / reputationFactor(p.reputation) };
}

function bruteBest(ps: readonly BookProvider[], used: Map<string, Used>, order: Order) {
  let best: { id: string; price: bigint; gpus: number[]; score: number } | null = null;
  for (const p of ps) {
    const q = bruteQuote(p, used.get(p.id) ?? { cpu: 0n, mem: 0n, slots: 0, gpus: new Set() }, order);
    if (q && (!best || q.score < best.score || (q.score === best.score && p.id < best.id))) best = { id: p.id, ...q };
  }
  return best;
}

/** The brute force's account of what a match took. */
function use(used: Map<string, Used>, providerId: string, order: Order, gpus: readonly number[]): void {
  let u = used.get(providerId);
  if (!u) {
    u = { cpu: 0n, mem: 0n, slots: 0, gpus: new Set() };
    used.set(providerId, u);
  }
  u.cpu += milli(order.resources.cpu);
  u.mem += milli(order.resources.memoryGiB);
  u.slots++;
  for (const g of gpus) u.gpus.add(g);
}

describe('OrderBook: properties', () => {
  test('match equals a brute-force scan when every pool fits in the probe (≤ 8 providers)', () => {
    fc.assert(
      fc.property(arbPopulation, fc.array(arbOrder, { minLength: 1, maxLength: 12 }), (ps, orders) => {
        const b = book(...ps);
        const used = new Map<string, Used>();
        orders.forEach((order, i) => {
          const m = b.match(order);
          const want = bruteBest(ps, used, order);
          if (want === null) {
            assert.equal(m, null);
            return;
          }
          assert.ok(m, 'match found nothing though a provider fits');
          assert.equal(m.providerId, want.id);
          assert.equal(m.pricePerHour, want.price);
          assert.deepEqual(m.gpus, want.gpus);
          assert.equal(m.score, want.score);
          // Take it, so later orders see less capacity.
          b.reserve(`l${i}`, m.providerId, order.resources, m.gpus);
          use(used, m.providerId, order, m.gpus);
        });
      }),
      { numRuns: 400 },
    );
  });

  test('random match/reserve/release/upsert sequences never over-allocate a provider', () => {
    type Cmd = { kind: 'take'; order: Order } | { kind: 'release'; pick: number } | { kind: 'upsert'; who: number };
    const arbCmd: fc.Arbitrary<Cmd> = fc.oneof(
      { weight: 4, arbitrary: arbOrder.map((order) => ({ kind: 'take' as const, order })) },
      { weight: 2, arbitrary: fc.nat().map((pick) => ({ kind: 'release' as const, pick })) },
      { weight: 1, arbitrary: fc.nat().map((who) => ({ kind: 'upsert' as const, who })) },
    );
    fc.assert(
      fc.property(arbPopulation, fc.array(arbCmd, { maxLength: 40 }), (ps, cmds) => {
        const b = book(...ps);
        const leases = new Map<string, { providerId: string; resources: Resources; gpus: number[] }>();
        let next = 0;
        for (const cmd of cmds) {
          if (cmd.kind === 'take') {
            const m = b.match(cmd.order);
            if (!m) continue;
            const id = `l${next++}`;
            b.reserve(id, m.providerId, cmd.order.resources, m.gpus);
            leases.set(id, { providerId: m.providerId, resources: cmd.order.resources, gpus: m.gpus });
          } else if (cmd.kind === 'release') {
            const ids = [...leases.keys()];
            if (ids.length === 0) continue;
            const id = ids[cmd.pick % ids.length] as string;
            b.release(id);
            leases.delete(id);
          } else if (ps.length > 0) {
            b.upsertProvider(ps[cmd.who % ps.length] as BookProvider);
          }
          for (const p of ps) {
            const mine = [...leases.values()].filter((l) => l.providerId === p.id);
            const cpu = mine.reduce((s, l) => s + milli(l.resources.cpu), 0n);
            const mem = mine.reduce((s, l) => s + milli(l.resources.memoryGiB), 0n);
            assert.ok(cpu <= milli(p.hardware.cpu.cores), `${p.id}: ${cpu} cpu-milli reserved of ${p.hardware.cpu.cores} cores`);
            assert.ok(mem <= milli(p.hardware.memoryGiB), `${p.id}: memory over-allocated`);
            assert.ok(mine.length <= p.slots, `${p.id}: ${mine.length} leases in ${p.slots} slots`);
            const gpus = mine.flatMap((l) => l.gpus);
            assert.equal(new Set(gpus).size, gpus.length, `${p.id}: a GPU is reserved twice`);
            for (const g of gpus) assert.ok(g < p.hardware.gpus.length);
          }
          // Free capacity as the book reports it is never negative and never above the hardware.
          const cpuClass = b.summary().find((c) => c.resourceClass === 'cpu');
          const online = ps.filter((p) => p.asks && p.connected && p.state === 'online');
          const totalCores = online.reduce((s, p) => s + p.hardware.cpu.cores, 0);
          if (cpuClass) {
            assert.ok(cpuClass.freeUnits >= 0 && cpuClass.freeUnits <= totalCores, `free cpu ${cpuClass.freeUnits} of ${totalCores}`);
            const reserved =
              [...leases.values()].filter((l) => online.some((p) => p.id === l.providerId)).reduce((s, l) => s + Number(milli(l.resources.cpu)), 0) / 1000;
            assert.equal(cpuClass.freeUnits, Math.round((totalCores - reserved) * 1000) / 1000);
          }
        }
        // Everything released: the book is as new.
        for (const id of leases.keys()) b.release(id);
        const fresh = book(...ps);
        assert.deepEqual(b.summary(), fresh.summary());
      }),
      { numRuns: 300 },
    );
  });

  test('a matched price is positive, within maxPerHour, and the matched provider passes explain', () => {
    fc.assert(
      fc.property(arbPopulation, arbOrder, (ps, order) => {
        const m = book(...ps).match(order);
        if (m) {
          assert.ok(m.pricePerHour > 0n && m.pricePerHour <= order.maxPerHour);
          assert.equal(C(formatCredits(m.pricePerHour)), m.pricePerHour);
        }
        const ex = book(...ps).explain(order);
        assert.equal(ex.matchable, m !== null);
        assert.equal(ex.candidates, ps.filter((p) => bruteQuote(p, { cpu: 0n, mem: 0n, slots: 0, gpus: new Set() }, order) !== null).length);
      }),
    );
  });
});

describe('OrderBook: runtimes', () => {
  const withRuntimes = (id: string, runtimes: BookProvider['runtimes'], o: ProviderOptions = {}): BookProvider => ({ ...provider(id, o), runtimes });

  test('a container order goes only to a provider offering the container runtime, however many cheaper bundle providers there are', () => {
    const cheap = Array.from({ length: 100 }, (_, i) => withRuntimes(`cheap-${String(i).padStart(3, '0')}`, ['sandbox'], { cpu: '0.01' }));
    const b = book(...cheap, withRuntimes('docker', ['sandbox', 'container'], { cpu: '0.05' }));
    assert.equal(b.match(cpuOrder({ workload: 'container' }))?.providerId, 'docker');
    // A bundle order still takes the cheapest, and a provider without a runtimes list runs bundles.
    assert.equal(b.match(cpuOrder())?.providerId, 'cheap-000');
    assert.equal(book(provider('legacy')).match(cpuOrder({ workload: 'bundle' }))?.providerId, 'legacy');
    assert.equal(book(provider('legacy')).match(cpuOrder({ workload: 'container' })), null);
  });

  test('a container-only provider takes no bundle order; GPU orders are split by runtime too', () => {
    const gpus = { gpus: [{ model: 't4' }], gpuHour: { t4: '0.5' } };
    const b = book(withRuntimes('bundles', ['process'], { ...gpus, cpu: '0.01' }), withRuntimes('containers', ['container'], { ...gpus, cpu: '0.02' }));
    const gpuOrder = (workload: 'bundle' | 'container'): Order => ({ resources: { cpu: 1, memoryGiB: 1, gpu: { count: 1 } }, maxPerHour: C('100'), workload });
    assert.equal(b.match(gpuOrder('container'))?.providerId, 'containers');
    assert.equal(b.match(gpuOrder('bundle'))?.providerId, 'bundles');
    assert.equal(b.match(cpuOrder({ workload: 'bundle' }))?.providerId, 'bundles');
    // Bids are filtered the same way: a bundle-only bidder cannot take a container order.
    assert.equal(b.match(cpuOrder({ workload: 'container' }), new Map([['bundles', 1n]]))?.providerId, 'containers');
  });

  test('explain says when no provider offers the runtime, and counts those that do not', () => {
    const b = book(withRuntimes('a', ['sandbox']), withRuntimes('b', ['process']), provider('c'));
    const ex = b.explain(cpuOrder({ workload: 'container' }));
    assert.equal(ex.matchable, false);
    assert.equal(ex.excluded.runtime, 3);
    assert.ok(ex.reasons.includes('no provider offers the container runtime'), ex.reasons.join('; '));
    assert.ok(ex.reasons.includes('3 provider(s) do not offer the container runtime'));
    assert.equal(b.explain(cpuOrder()).matchable, true);
    assert.equal(b.explain(cpuOrder()).excluded.runtime, 0);

    const offline = book(withRuntimes('a', ['sandbox']), withRuntimes('d', ['container'], { connected: false }));
    assert.ok(offline.explain(cpuOrder({ workload: 'container' })).reasons.includes('no provider that offers the container runtime is online'));
    const ok = book(withRuntimes('a', ['sandbox']), withRuntimes('d', ['sandbox', 'container']));
    const fits = ok.explain(cpuOrder({ workload: 'container' }));
    assert.equal(fits.candidates, 1);
    assert.equal(fits.excluded.runtime, 1);
  });
});

// ---------------------------------------------------------------------------------------------
// The matcher's shortcuts (prices in doubles, free GPUs as bits, cached pool lists) against the
// exact rules: the answers are those of the bigint and set arithmetic they stand in for.

describe('OrderBook: shortcuts agree with the exact rules', () => {
  /** Relabels a provider's GPU indices: reversed, spread out (not 0…n-1), or as they were. */
  const relabel = (p: BookProvider, how: 'same' | 'reverse' | 'sparse'): BookProvider => {
    const n = p.hardware.gpus.length;
    const index = (i: number) => (how === 'reverse' ? n - 1 - i : how === 'sparse' ? 3 * i + 1 : i);
    return { ...p, hardware: { ...p.hardware, gpus: p.hardware.gpus.map((g, i) => ({ ...g, index: index(i) })) } };
  };

  test('match equals a brute-force scan whatever the GPU indices, through reservations and releases', () => {
    const arbRelabelled = fc
      .tuple(arbPopulation, fc.array(fc.constantFrom('same' as const, 'reverse' as const, 'sparse' as const), { minLength: 8, maxLength: 8 }))
      .map(([ps, how]) => ps.map((p, i) => relabel(p, how[i] ?? 'same')));
    fc.assert(
      fc.property(arbRelabelled, fc.array(fc.tuple(arbOrder, fc.boolean()), { minLength: 1, maxLength: 16 }), (ps, steps) => {
        const b = book(...ps);
        const used = new Map<string, Used>();
        const live: { id: string; providerId: string; order: Order; gpus: number[] }[] = [];
        steps.forEach(([order, release], i) => {
          if (release && live.length > 0) {
            const l = live.shift() as (typeof live)[number];
            b.release(l.id);
            const u = used.get(l.providerId) as Used;
            u.cpu -= milli(l.order.resources.cpu);
            u.mem -= milli(l.order.resources.memoryGiB);
            u.slots--;
            for (const g of l.gpus) u.gpus.delete(g);
          }
          const m = b.match(order);
          const want = bruteBest(ps, used, order);
          assert.deepEqual(m && { id: m.providerId, price: m.pricePerHour, gpus: m.gpus, score: m.score }, want);
          if (!m) return;
          b.reserve(`l${i}`, m.providerId, order.resources, m.gpus);
          live.push({ id: `l${i}`, providerId: m.providerId, order, gpus: m.gpus });
          use(used, m.providerId, order, m.gpus);
        });
      }),
      { numRuns: 300 },
    );
  });

  test('GPUs with indices other than 0…n-1 are taken lowest first and come back on release', () => {
    const p = relabel(
      provider('s', { cores: 64, memoryGiB: 256, gpus: [{ model: 'l4' }, { model: 'l4' }, { model: 'l4' }], gpuHour: { l4: '0.3' } }),
      'sparse',
    );
    const b = book(p); // indices 1, 4, 7
    const order = (count: number): Order => ({ resources: { cpu: 1, memoryGiB: 1, gpu: { count } }, maxPerHour: C('100') });
    assert.deepEqual(b.match(order(2))?.gpus, [1, 4]);
    b.reserve('l1', 's', order(2).resources, [1, 4]);
    assert.deepEqual(b.match(order(1))?.gpus, [7]);
    assert.equal(b.match(order(2)), null);
    b.release('l1');
    assert.deepEqual(b.match(order(3))?.gpus, [1, 4, 7]);
    // A reservation rebuilt from the database naming a GPU the provider does not have changes nothing.
    b.reserve('l2', 's', order(1).resources, [2]);
    assert.deepEqual(b.match(order(3))?.gpus, [1, 4, 7]);
  });

  test('prices too large for doubles are exact (asks above 268 credits an hour, orders of thousands of GiB)', () => {
    const b = book(
      provider('big', {
        cores: 64,
        memoryGiB: 8192,
        cpu: '0.000001',
        mem: '999.999999',
        gpus: [{ model: 'h100-80gb' }],
        gpuHour: { 'h100-80gb': '300.000001' },
      }),
    );
    const m = b.match({ resources: { cpu: 1.5, memoryGiB: 5000.25, gpu: { count: 1 } }, maxPerHour: C('100000000') });
    assert.ok(m);
    // ⌈0.000001 × 1500 / 1000⌉ + ⌈999.999999 credits × 5000250 / 1000⌉ µc + the GPU.
    const ceil = (a: bigint) => (a + 999n) / 1000n;
    assert.equal(m.pricePerHour, ceil(1n * 1500n) + ceil(999_999_999n * 5_000_250n) + 300_000_001n);
    assert.equal(m.score, Number(m.pricePerHour));
  });

  test('a pool that appears after orders were matched is looked in (the cached pool lists follow)', () => {
    const b = book(provider('eu', { region: 'eu', gpus: [{ model: 'l4' }], gpuHour: { l4: '0.3' } }));
    const order = (regions: string[], models?: string[]): Order => ({
      resources: { cpu: 1, memoryGiB: 1, gpu: { count: 1, ...(models ? { models } : {}) } },
      regions,
      maxPerHour: C('100'),
    });
    assert.equal(b.match(order(['eu', 'ap']))?.providerId, 'eu');
    assert.equal(b.match(order(['ap']))?.providerId, undefined);
    assert.equal(b.match(order(['ap'], ['t4']))?.providerId, undefined);
    assert.equal(b.match(cpuOrder({ regions: ['ap'] }))?.providerId, undefined);
    b.upsertProvider(provider('ap', { region: 'ap', gpus: [{ model: 't4' }], gpuHour: { t4: '0.1' } }));
    assert.equal(b.match(order(['eu', 'ap']))?.providerId, 'ap');
    assert.equal(b.match(order(['ap']))?.providerId, 'ap');
    assert.equal(b.match(order(['ap'], ['t4']))?.providerId, 'ap');
    assert.equal(b.match(cpuOrder({ regions: ['ap'] }))?.providerId, 'ap');
    // Model and region lists that only differ in how they split into names are different lists.
    assert.equal(b.match(order(['eu'], ['l4']))?.providerId, 'eu');
    assert.equal(b.match(order(['eu'], ['l', '4']))?.providerId, undefined);
    // Many distinct order shapes: the cache is emptied past its bound and answers stay the same.
    for (let i = 0; i < 3000; i++) assert.equal(b.match(order(['eu'], [`x${i}`, 'l4']))?.providerId, 'eu');
    assert.equal(b.match(order(['ap'], ['t4']))?.providerId, 'ap');
  });
});
