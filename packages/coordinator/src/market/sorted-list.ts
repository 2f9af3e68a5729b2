/**
 * A list kept sorted by a comparator, stored as chunks of at most CHUNK items: insert and
 * delete cost O(log n + CHUNK) instead of moving the whole array, and iteration is in order.
 * The order book keeps one per pool, with tens of thousands of providers in each.
 */
const CHUNK = 256;

export class SortedList<T> {
  private chunks: T[][] = [];
  private count = 0;

  constructor(private readonly compare: (a: T, b: T) => number) {}

  get size(): number {
    return this.count;
  }

  /** Index of the first chunk whose last item is ≥ item (or the last chunk). */
  private chunkFor(item: T): number {
    let lo = 0;
    let hi = this.chunks.length - 1;
    while (lo < hi) {
      const mid = (lo + hi) >> 1;
      const c = this.chunks[mid] as T[];
      if (this.compare(c[c.length - 1] as T, item) < 0) lo = mid + 1;
      else hi = mid;
    }
    return lo;
  }

  private static lowerBound<T>(arr: T[], item: T, compare: (a: T, b: T) => number): number {
    let lo = 0;
    let hi = arr.length;
    while (lo < hi) {
      const mid = (lo + hi) >> 1;
      if (compare(arr[mid] as T, item) < 0) lo = mid + 1;
      else hi = mid;
    }
    return lo;
  }

  first(): T | undefined {
    return this.chunks[0]?.[0];
  }

  insert(item: T): void {
    if (this.chunks.length === 0) {
      this.chunks.push([item]);
      this.count = 1;
      return;
    }
    const ci = this.chunkFor(item);
    const chunk = this.chunks[ci] as T[];
    chunk.splice(SortedList.lowerBound(chunk, item, this.compare), 0, item);
    this.count++;
    if (chunk.length > 2 * CHUNK) this.chunks.splice(ci, 1, chunk.slice(0, CHUNK), chunk.slice(CHUNK));
  }

  /** Removes the item that compares equal to `item` (the comparator must make items unique). */
  delete(item: T): boolean {
    if (this.chunks.length === 0) return false;
    const ci = this.chunkFor(item);
    const chunk = this.chunks[ci] as T[];
    const i = SortedList.lowerBound(chunk, item, this.compare);
    if (i >= chunk.length || this.compare(chunk[i] as T, item) !== 0) return false;
    chunk.splice(i, 1);
    this.count--;
    if (chunk.length === 0) this.chunks.splice(ci, 1);
    return true;
  }

  *[Symbol.iterator](): IterableIterator<T> {
    for (const chunk of this.chunks) yield* chunk;
  }

  /** Visits items in order until `visit` returns false (no generator: this is the hot path). */
  each(visit: (item: T) => boolean): void {
    for (const chunk of this.chunks) {
      for (let i = 0; i < chunk.length; i++) if (!visit(chunk[i] as T)) return;
    }
  }
}
