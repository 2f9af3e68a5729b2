/**
 * Price history of the market: a bounded, in-memory series of the standing asks' min / median
 * per resource class, sampled whenever the network changes (see network-feed.ts). Only for the
 * console's plot: it is lost on restart and starts again from the current book.
 */
import type { MarketClass } from '@gridwork/protocol';

export interface PricePoint {
  /** Milliseconds since the epoch. */
  at: number;
  /** Resource class → prices (credits per unit-hour, decimal strings) and free units. */
  classes: Record<string, { min: string; median: string; max: string; freeUnits: number }>;
}

export class PriceHistory {
  private readonly series: PricePoint[] = [];

  /** @param limit points kept, oldest dropped first. @default 720 */
  constructor(private readonly limit = 720) {}

  /** Appends a point when prices or free capacity differ from the last one. */
  record(summary: readonly MarketClass[], at = Date.now()): void {
    const classes: PricePoint['classes'] = {};
    for (const c of summary) classes[c.resourceClass] = { min: c.min, median: c.median, max: c.max, freeUnits: c.freeUnits };
    const last = this.series.at(-1);
    if (last && JSON.stringify(last.classes) === JSON.stringify(classes)) return;
    this.series.push({ at, classes });
    if (this.series.length > this.limit) this.series.splice(0, this.series.length - this.limit);
  }

  points(): readonly PricePoint[] {
    return this.series;
  }
}
