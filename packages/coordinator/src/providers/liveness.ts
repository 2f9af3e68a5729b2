/**
 * When this replica last heard from each provider whose socket it holds (or held), kept in
 * memory: a heartbeat is not a state change and costs no database write. `providers.last_seen_at`
 * is written for all of them at once every flush (one statement), and by hellos and applied
 * reports, which write anyway; it is what other replicas, the listings and the sweep of
 * providers nobody holds go by.
 */
import { sql } from 'kysely';
import type { Db } from '../store/database.ts';

export class Liveness {
  private readonly heardAt = new Map<string, number>();
  private readonly unflushed = new Set<string>();

  /** The provider said something now (or at `at`, ms since the epoch). */
  heard(providerId: string, at = Date.now()): void {
    this.heardAt.set(providerId, at);
    this.unflushed.add(providerId);
  }

  lastHeard(providerId: string): number | undefined {
    return this.heardAt.get(providerId);
  }

  /** Providers last heard before `cutoff` (ms), with when. */
  silentSince(cutoff: number): [string, number][] {
    return [...this.heardAt].filter(([, at]) => at < cutoff);
  }

  /** Judged (offline), or heard by another replica since: this one no longer vouches for it. */
  forget(providerId: string, ifHeardAt: number): void {
    if (this.heardAt.get(providerId) === ifHeardAt) {
      this.heardAt.delete(providerId);
      this.unflushed.delete(providerId);
    }
  }

  /**
   * Writes what was heard since the last flush to `last_seen_at`, in one statement (never moving it
   * back). Rows another transaction holds are skipped and kept for the next flush: waiting for
   * them while holding the others stalled every writer of those providers behind the flush.
   */
  async flush(db: Db): Promise<number> {
    if (this.unflushed.size === 0) return 0;
    const ids = [...this.unflushed];
    this.unflushed.clear();
    const ats = ids.map((id) => new Date(this.heardAt.get(id) ?? Date.now()).toISOString());
    let written: Set<string>;
    try {
      const result = await sql<{ id: string }>`
        with free as (
          select id from providers where id = any(${ids}::text[]) for no key update skip locked
        ), written as (
          update providers p set last_seen_at = v.at
          from (select unnest(${ids}::text[]) as id, unnest(${ats}::timestamptz[]) as at) v
          where p.id = v.id and p.id in (select id from free) and p.last_seen_at < v.at
        )
        select id from free`.execute(db);
      written = new Set(result.rows.map((r) => r.id));
    } catch (err) {
      for (const id of ids) if (this.heardAt.has(id)) this.unflushed.add(id);
      throw err;
    }
    for (const id of ids) if (!written.has(id) && this.heardAt.has(id)) this.unflushed.add(id);
    return written.size;
  }
}
