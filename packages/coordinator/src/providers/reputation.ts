/**
 * Reputation from history: every lease a provider finished (completed, or failed by the
 * workload itself) counts for it, every lease it lost counts against it; capacity challenges
 * (`provider.challenged`: passed, failed, failures in a row, time taken) and proven faults
 * (`provider.fault`) are counted here too, and so are verification's verdicts on a provider's
 * results (`provider.audited`: passed, failed, passes in a row, when it last passed). A durable
 * subscriber: its position commits with the counters, so each event counts exactly once, across
 * restarts. The score itself is `reputationOf` in market/market.ts.
 */
import type { Subscriber } from '../bus/bus.ts';
import type { DomainEventType } from '../core/events.ts';
import { lockForCounters } from './counter-locks.ts';

/** Events in a row at the end of a batch: `reset` when the run restarted in it, `add` since. */
type Streak = { reset: boolean; add: number } | null;
const RESTARTED: Streak = { reset: true, add: 0 };
const longer = (s: Streak): Streak => (s ? { reset: s.reset, add: s.add + 1 } : { reset: false, add: 1 });

interface Tally {
  completed: number;
  faulted: number;
  passed: number;
  failed: number;
  /** Failures in a row at the end of the batch (null: no challenge ended in it); `reset` when one passed. */
  streak: Streak;
  busyMs: number;
  proven: number;
  audits: { passed: number; failed: number; at: Date | null; streak: Streak };
}

/** Leases, capacity challenges and proven faults. */
export function reputationSubscriber(): Subscriber {
  return counters('reputation', ['lease.ended', 'provider.challenged', 'provider.fault']);
}

/**
 * Verification's verdicts, under a name of their own: the previous release runs `reputation`
 * without `provider.audited`, and a replica of it that handled a batch would store that
 * subscriber's position past verdicts it does not count (a rolling upgrade). No older replica
 * runs this one, so its position passes a verdict only once it is counted. A new one starts at
 * the oldest event kept: no earlier release wrote any verdict.
 */
export function auditCountsSubscriber(): Subscriber {
  return counters('audit-counts', ['provider.audited']);
}

function counters(name: string, types: DomainEventType[]): Subscriber {
  return {
    name,
    durable: true,
    types,
    async handle(events, uow) {
      if (!uow) throw new Error(`${name} is a durable subscriber`);
      const tally = new Map<string, Tally>();
      const of = (id: string) => {
        let t = tally.get(id);
        if (!t) {
          t = { completed: 0, faulted: 0, passed: 0, failed: 0, streak: null, busyMs: 0, proven: 0, audits: { passed: 0, failed: 0, at: null, streak: null } };
          tally.set(id, t);
        }
        return t;
      };
      for (const e of events) {
        if (e.type === 'lease.ended') {
          if (e.outcome !== 'completed' && e.outcome !== 'failed' && e.outcome !== 'lost') continue;
          const t = of(e.providerId);
          if (e.outcome === 'lost') t.faulted++;
          else t.completed++;
        } else if (e.type === 'provider.challenged') {
          const t = of(e.providerId);
          t.busyMs += e.busyMs;
          if (e.verdict === 'passed') {
            t.passed++;
            t.streak = RESTARTED;
          } else {
            t.failed++;
            t.streak = longer(t.streak);
          }
        } else if (e.type === 'provider.fault') {
          of(e.providerId).proven++;
        } else if (e.type === 'provider.audited') {
          const a = of(e.providerId).audits;
          if (e.passed) {
            a.passed++;
            a.at = e.at;
            a.streak = longer(a.streak);
          } else {
            a.failed++;
            a.streak = RESTARTED;
          }
        }
      }
      // The first rows this unit locks (after its own position): waiting for them holds up nobody.
      await lockForCounters(uow.trx, [...tally.keys()], { wait: true });
      for (const [providerId, t] of [...tally].sort(([a], [b]) => (a < b ? -1 : 1))) {
        await uow.trx
          .updateTable('providers')
          .set((eb) => ({
            leases_completed: eb('leases_completed', '+', t.completed),
            leases_faulted: eb('leases_faulted', '+', t.faulted),
            challenges_passed: eb('challenges_passed', '+', t.passed),
            challenges_failed: eb('challenges_failed', '+', t.failed),
            challenge_busy_ms: eb('challenge_busy_ms', '+', BigInt(t.busyMs)),
            faults_proven: eb('faults_proven', '+', t.proven),
            audits_passed: eb('audits_passed', '+', t.audits.passed),
            audits_failed: eb('audits_failed', '+', t.audits.failed),
            // The latest verdict's time in log order, even if a replica's clock put an earlier one
            // later: backtracking re-audits what ended after it, so earlier only re-audits more.
            ...(t.audits.at === null ? {} : { last_audit_passed_at: t.audits.at }),
            ...(t.audits.streak === null ? {} : { audit_streak: t.audits.streak.reset ? t.audits.streak.add : eb('audit_streak', '+', t.audits.streak.add) }),
            ...(t.streak === null ? {} : { challenge_fail_streak: t.streak.reset ? t.streak.add : eb('challenge_fail_streak', '+', t.streak.add) }),
          }))
          .where('id', '=', providerId)
          .execute();
        uow.emit({ type: 'provider.changed', providerId, what: 'reputation' });
      }
    },
  };
}
