/**
 * A list kept sorted by a numeric key, then by a tie-break comparator, stored as chunks of at
 * most CHUNK items: insert and delete cost O(log n + CHUNK) instead of moving the whole array,
 * and iteration is in order. The order book keeps one per pool, with tens of thousands of
 * providers in each.
 *
 * Keys live in arrays of numbers beside the items, so a search reads contiguous memory and
 * calls the tie-break only where two keys are equal (or not comparable: NaN): the order is that
 * of the comparator `(a, b) => (d = key(a) - key(b)) !== 0 ? d : tie(a, b)`.
 */
const CHUNK = 256;

export class SortedList<T> {
  private items: T[][] = [];
  private keys: number[][] = [];
  private count = 0;

  constructor(private readonly tie: (a: T, b: T) => number) {}

  get size(): number {
    return this.count;
  }

  private compare(ka: number, a: T, kb: number, b: T): number {
    const d = ka - kb;
    return d !== 0 ? d : this.tie(a, b);
  }

  /** Index of the first chunk whose last item is ≥ (key, item) (or the last chunk). */
  private chunkFor(key: number, item: T): number {
    let lo = 0;
    let hi = this.items.length - 1;
    while (lo < hi) {
      const mid = (lo + hi) >> 1;
      const c = this.items[mid] as T[];
      const k = this.keys[mid] as number[];
      if (this.compare(k[k.length - 1] as number, c[c.length - 1] as T, key, item) < 0) lo = mid + 1;
      else hi = mid;
    }
    return lo;
  }

  /** Index in chunk `ci` of the first item ≥ (key, item). */
  private lowerBound(ci: number, key: number, item: T): number {
    const c = this.items[ci] as T[];
    const k = this.keys[ci] as number[];
    let lo = 0;
    let hi = c.length;
    while (lo < hi) {
      const mid = (lo + hi) >> 1;
      if (this.compare(k[mid] as number, c[mid] as T, key, item) < 0) lo = mid + 1;
      else hi = mid;
    }
    return lo;
  }

  first(): T | undefined {
    return this.items[0]?.[0];
  }

  /** Key of the first item (undefined when empty). */
  firstKey(): number | undefined {
    return this.keys[0]?.[0];
  }

  insert(item: T, key: number): void {
    if (this.items.length === 0) {
      this.items.push([item]);
      this.keys.push([key]);
      this.count = 1;
      return;
    }
    const ci = this.chunkFor(key, item);
    const chunk = this.items[ci] as T[];
    const keys = this.keys[ci] as number[];
    const i = this.lowerBound(ci, key, item);
    chunk.splice(i, 0, item);
    keys.splice(i, 0, key);
    this.count++;
    if (chunk.length > 2 * CHUNK) {
      this.items.splice(ci, 1, chunk.slice(0, CHUNK), chunk.slice(CHUNK));
      this.keys.splice(ci, 1, keys.slice(0, CHUNK), keys.slice(CHUNK));
    }
  }

  /** Removes the item that compares equal to (key, item) (key and tie-break must make items unique). */
  delete(item: T, key: number): boolean {
    if (this.items.length === 0) return false;
    const ci = this.chunkFor(key, item);
    const chunk = this.items[ci] as T[];
    const keys = this.keys[ci] as number[];
    const i = this.lowerBound(ci, key, item);
    if (i >= chunk.length || this.compare(keys[i] as number, chunk[i] as T, key, item) !== 0) return false;
    chunk.splice(i, 1);
    keys.splice(i, 1);
    this.count--;
    if (chunk.length === 0) {
      this.items.splice(ci, 1);
      this.keys.splice(ci, 1);
    }
    return true;
  }

  /**
   * The items in order, as consecutive runs, and their keys in runs of the same lengths
   * (read-only: the list owns them). The order book's match loop walks these directly.
   */
  runs(): readonly (readonly T[])[] {
    return this.items;
  }

  keyRuns(): readonly (readonly number[])[] {
    return this.keys;
  }

  *[Symbol.iterator](): IterableIterator<T> {
    for (const chunk of this.items) yield* chunk;
  }

  /** Visits items in order, with their keys, until `visit` returns false. */
  each(visit: (item: T, key: number) => boolean): void {
    for (let c = 0; c < this.items.length; c++) {
      const chunk = this.items[c] as T[];
      const keys = this.keys[c] as number[];
      for (let i = 0; i < chunk.length; i++) if (!visit(chunk[i] as T, keys[i] as number)) return;
    }
  }
}
