/**
 * What a provider may read about itself (`GET /v1/providers/me`): its reputation and what it is
 * made of, its eligibility, its recent capacity challenges with the share of its time they
 * took, its stake (bonded, unbonding, lost to slashing), its audit record (past audits only),
 * and the result checks it was the subject or the checker of. Never the audit schedule: not the
 * rate its next task gets (1 on probation) nor how long probation lasts — a provider that knew
 * when it stopped being watched would know when to start cheating.
 * A read-only query; it owns no table.
 */
import { formatCredits } from '@gridwork/protocol';
import { sql } from 'kysely';
import { balancesOf, stakeOf, unbondingOf } from '../ledger/ledger.ts';
import { isEligible, reputationOfProvider } from '../market/market.ts';
import type { Db } from '../store/database.ts';
import type { ChallengeConfig } from './challenge-sizing.ts';
import type { ProviderCheckEntry, ProviderStatus } from '@gridwork/protocol';

export async function providerRecord(db: Db, providerId: string, config: ChallengeConfig, recent = 20): Promise<ProviderStatus | null> {
  const p = await db.selectFrom('providers').selectAll().where('id', '=', providerId).executeTakeFirst();
  if (!p) return null;
  const rows = await db
    .selectFrom('capacity_challenges')
    .selectAll()
    .where('provider_id', '=', providerId)
    .orderBy('issued_at', 'desc')
    .limit(recent)
    .execute();
  const balances = await balancesOf(db, [stakeOf(providerId), unbondingOf(providerId)]);
  const stake = balances.get(stakeOf(providerId)) ?? 0n;
  const checks = await recentChecks(db, providerId, recent);
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
    stake: formatCredits(stake),
    unbonding: formatCredits(balances.get(unbondingOf(providerId)) ?? 0n),
    slashed: formatCredits(p.stake_slashed),
    audits: {
      passed: p.audits_passed,
      failed: p.audits_failed,
      streak: p.audit_streak,
      lastPassedAt: p.last_audit_passed_at ? p.last_audit_passed_at.toISOString() : null,
    },
    recentChecks: checks,
  };
}

/**
 * Checks of the provider's results, and closed checks it ran as the re-executing provider (the
 * check job's task was placed on it), newest first. A provider is never both for one check: a check
 * excludes the checked provider.
 */
async function recentChecks(db: Db, providerId: string, limit: number): Promise<ProviderCheckEntry[]> {
  const rows = await db
    .selectFrom('verifications as v')
    .select(['v.id', 'v.kind', 'v.state', 'v.outcome', 'v.detail', 'v.created_at', 'v.provider_id'])
    .where((eb) =>
      eb.or([
        eb('v.provider_id', '=', providerId),
        // Checks it ran, once closed: an open one would tell it that the work in hand is a check (a canary must not be told).
        eb.and([
          eb('v.state', '!=', 'open'),
          eb.exists(
            eb.selectFrom('tasks as t').select(sql<number>`1`.as('one')).whereRef('t.job_id', '=', 'v.check_job_id').where('t.provider_id', '=', providerId),
          ),
        ]),
      ]),
    )
    .orderBy('v.created_at', 'desc')
    .orderBy('v.id', 'desc')
    .limit(limit)
    .execute();
  return rows.map((r) => ({
    id: r.id,
    kind: r.kind,
    role: r.provider_id === providerId ? 'checked' : 'checker',
    state: r.state,
    outcome: r.outcome,
    detail: r.detail,
    createdAt: r.created_at.toISOString(),
  }));
}
