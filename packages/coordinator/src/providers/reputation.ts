/**
 * Reputation from lease history: every lease a provider finished (completed, or failed by the
 * workload itself) counts for it, every lease it lost counts against it. A durable subscriber:
 * its position commits with the counters, so each lease counts exactly once, across restarts.
 * The score itself is `reputationOf` in market/market.ts.
 */
import type { Subscriber } from '../bus/bus.ts';

export function reputationSubscriber(): Subscriber {
  return {
    name: 'reputation',
    durable: true,
    types: ['lease.ended'],
    async handle(events, uow) {
      if (!uow) throw new Error('reputation is a durable subscriber');
      const tally = new Map<string, { completed: number; faulted: number }>();
      for (const e of events) {
        if (e.type !== 'lease.ended' || (e.outcome !== 'completed' && e.outcome !== 'failed' && e.outcome !== 'lost')) continue;
        const t = tally.get(e.providerId) ?? { completed: 0, faulted: 0 };
        if (e.outcome === 'lost') t.faulted++;
        else t.completed++;
        tally.set(e.providerId, t);
      }
      for (const [providerId, t] of [...tally].sort(([a], [b]) => (a < b ? -1 : 1))) {
        await uow.trx
          .updateTable('providers')
          .set((eb) => ({ leases_completed: eb('leases_completed', '+', t.completed), leases_faulted: eb('leases_faulted', '+', t.faulted) }))
          .where('id', '=', providerId)
          .execute();
        uow.emit({ type: 'provider.changed', providerId, what: 'reputation' });
      }
    },
  };
}
