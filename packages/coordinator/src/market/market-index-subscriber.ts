/**
 * Keeps the matching index in step with committed changes: leases placed elsewhere (another
 * replica's scheduler) take capacity, ended leases give it back, providers whose row changed
 * (online, offline, asks, drain, stake, reputation) are reloaded, and so is a provider whose
 * capacity challenge ended (`provider.challenged`: a pass proves its claim, and its score changes
 * at once, not when the reputation counters catch up); a hello on any replica
 * (`provider.online`) makes a provider connected here, and a socket closed on any replica
 * (`provider.disconnected`) makes it not, unless it said hello again since; a paused one
 * (`provider.paused`: its channel keeps failing) is out until its pause ends. Not durable: at start the
 * index is rebuilt from the database, so it begins at the head.
 */
import type { Subscriber } from '../bus/bus.ts';
import type { StoredEvent } from '../core/events.ts';
import type { Market } from './market.ts';

export const MARKET_INDEX = 'market-index';

export function marketIndexSubscriber(market: Market): Subscriber {
  return {
    name: MARKET_INDEX,
    types: [
      'lease.placed',
      'lease.ended',
      'provider.online',
      'provider.disconnected',
      'provider.paused',
      'provider.offline',
      'provider.changed',
      'provider.challenged',
    ],
    async handle(events) {
      const reload = new Set<string>();
      const presence: StoredEvent[] = [];
      for (const e of events) {
        if (e.type === 'lease.placed') {
          market.book.reserve(e.leaseId, e.providerId, { cpu: e.cpuMilli / 1000, memoryGiB: e.memMilli / 1000 }, e.gpus, e.endsAt);
        } else if (e.type === 'lease.ended') {
          market.book.release(e.leaseId);
        } else if (e.type === 'provider.online' || e.type === 'provider.disconnected' || e.type === 'provider.paused') {
          presence.push(e);
        } else if (e.type === 'provider.offline' || e.type === 'provider.changed' || e.type === 'provider.challenged') {
          reload.add(e.providerId);
        }
      }
      if (presence.length > 0) await market.presenceChanged(presence);
      if (reload.size > 0) await market.refreshProviders(reload);
    },
  };
}
