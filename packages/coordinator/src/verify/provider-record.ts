/**
 * What a provider may read about itself (`GET /v1/providers/me`): its reputation and what it is
 * made of, its eligibility, and its recent capacity challenges with the share of its time they
 * took. A read-only query; it owns no table.
 */
import type { Db } from '../store/database.ts';
import { isEligible, reputationOfProvider } from '../market/market.ts';
import type { ChallengeConfig } from './challenge-sizing.ts';

export interface ChallengeEntry {
  id: string;
  state: 'issued' | 'committed' | 'passed' | 'failed';
  issuedAt: string;
  endedAt: string | null;
  n: number;
  memoryBytes: number;
  busyMs: number | null;
  reason: string | null;
}

export interface ProviderRecord {
  id: string;
  name: string;
  state: 'online' | 'draining' | 'offline';
  reputation: number;
  /** False after too many failed challenges in a row: no work until one passes. */
  eligible: boolean;
  leases: { completed: number; faulted: number };
  faultsProven: number;
  challenges: {
    passed: number;
    failed: number;
    failedInARow: number;
    meanIntervalMs: number;
    /** Provider time all its challenges took so far. */
    busyMs: number;
    /** Expected share of its time challenges take: mean time per challenge ÷ mean interval. */
    share: number;
    recent: ChallengeEntry[];
  };
}

export async function providerRecord(db: Db, providerId: string, config: ChallengeConfig, recent = 20): Promise<ProviderRecord | null> {
  const p = await db.selectFrom('providers').selectAll().where('id', '=', providerId).executeTakeFirst();
  if (!p) return null;
  const rows = await db.selectFrom('capacity_challenges').selectAll().where('provider_id', '=', providerId).orderBy('issued_at', 'desc').limit(recent).execute();
  const done = p.challenges_passed + p.challenges_failed;
  const busyMs = Number(p.challenge_busy_ms);
  return {
    id: p.id,
    name: p.name,
    state: p.state,
    reputation: reputationOfProvider(p),
    eligible: isEligible(p, config.maxConsecutiveFailures),
    leases: { completed: p.leases_completed, faulted: p.leases_faulted },
    faultsProven: p.faults_proven,
    challenges: {
      passed: p.challenges_passed,
      failed: p.challenges_failed,
      failedInARow: p.challenge_fail_streak,
      meanIntervalMs: config.meanIntervalMs,
      busyMs,
      share: done === 0 ? 0 : busyMs / done / config.meanIntervalMs,
      recent: rows.map((r) => ({
        id: r.id,
        state: r.state,
        issuedAt: r.issued_at.toISOString(),
        endedAt: r.ended_at ? r.ended_at.toISOString() : null,
        n: r.n,
        memoryBytes: r.memory_blocks * 1024,
        busyMs: r.busy_ms === null ? null : Number(r.busy_ms),
        reason: r.reason,
      })),
    },
  };
}
