/**
 * What an order costs per hour on one provider, from the provider's standing asks. CPU and
 * memory are priced per thousandth of a unit and rounded up, so a provider never receives less
 * than it asked; GPUs are whole devices.
 */
import { type Asks, parseCredits, type Resources } from '@gridwork/protocol';

export interface ParsedAsks {
  cpuCoreHour: bigint;
  memoryGiBHour: bigint;
  gpuHour: Map<string, bigint>;
}

export function parseAsks(asks: Asks): ParsedAsks {
  return {
    cpuCoreHour: parseCredits(asks.cpuCoreHour, { field: 'asks.cpuCoreHour' }),
    memoryGiBHour: parseCredits(asks.memoryGiBHour, { field: 'asks.memoryGiBHour' }),
    gpuHour: new Map(Object.entries(asks.gpuHour).map(([m, p]) => [m, parseCredits(p, { field: `asks.gpuHour.${m}` })])),
  };
}

const ceilDiv = (a: bigint, b: bigint) => (a + b - 1n) / b;

/** Thousandths of a unit, rounded up (0.5 cores → 500). */
export function milli(units: number): bigint {
  return BigInt(Math.ceil(Math.round(units * 1e6) / 1000));
}

/** Thousandths of a unit as a plain number (capacity arithmetic: the order book and the database guard agree). */
export const milliN = (units: number): number => Number(milli(units));

/** Price per hour of the non-GPU part of an order. */
export function baseHourly(asks: ParsedAsks, r: Resources): bigint {
  return baseHourlyMilli(asks, milli(r.cpu), milli(r.memoryGiB));
}

/** The same from the order's thousandths of a core and of a GiB (worked out once per order). */
export function baseHourlyMilli(asks: ParsedAsks, cpuMilli: bigint, memMilli: bigint): bigint {
  return ceilDiv(asks.cpuCoreHour * cpuMilli, 1000n) + ceilDiv(asks.memoryGiBHour * memMilli, 1000n);
}
