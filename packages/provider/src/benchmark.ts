/**
 * What the market divides prices by: measured CPU throughput (integer multiply-adds per second
 * on one core, over ~100 ms) and relative GPU throughput per model. GPU figures are nominal
 * (published dense FP16 throughput relative to an RTX 4090) until a GPU kernel benchmark
 * replaces them; they are labelled as such to requesters.
 */
import type { Benchmarks, Hardware } from '@gridwork/protocol';

const NOMINAL_GPU: Record<string, number> = {
  'rtx-3090': 0.45,
  'rtx-4090': 1.0,
  'rtx-5090': 1.3,
  l4: 0.37,
  t4: 0.2,
  a10: 0.45,
  l40s: 1.1,
  'a100-40gb': 1.9,
  'a100-80gb': 1.9,
  'h100-80gb': 4.8,
  'h100-94gb': 4.8,
  'h200-141gb': 4.8,
  'b200-180gb': 9.0,
};

/** Best of several short runs: other load on the machine only ever slows a run down. */
export function measureCpuMops(runs = 5, runMs = 20): number {
  let best = 0;
  let acc = 1 | 0;
  for (let r = 0; r < runs; r++) {
    let ops = 0;
    const start = performance.now();
    let now = start;
    while (now - start < runMs) {
      for (let i = 0; i < 100_000; i++) acc = (Math.imul(acc, 1664525) + 1013904223) | 0;
      ops += 100_000;
      now = performance.now();
    }
    best = Math.max(best, ops / ((now - start) / 1000) / 1e6);
  }
  if (acc === 42) best += 1e-9; // keep the loop from being optimised away
  // Two significant digits: finer differences are noise, and would reorder equal machines.
  return Number(best.toPrecision(2));
}

export function benchmark(hardware: Hardware): Benchmarks {
  const gpu: Record<string, number> = {};
  for (const g of hardware.gpus) gpu[g.model] = NOMINAL_GPU[g.model] ?? 1;
  return { cpuMopsPerCore: measureCpuMops(), gpu };
}
