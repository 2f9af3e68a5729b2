/**
 * Which providers have a live connection to this coordinator. Presence is not a committed
 * state change (it belongs to one replica's sockets), so it reaches the matching index
 * directly, and a provider that just connected wakes the scheduler.
 */
import type { Logger } from 'pino';
import type { Scheduler } from '../scheduler/scheduler.ts';
import type { Market } from './market.ts';

export class MarketPresence {
  constructor(
    private readonly market: Market,
    private readonly scheduler: Scheduler,
    private readonly log?: Logger,
  ) {}

  setConnected(providerId: string, connected: boolean): void {
    this.market
      .setConnected(providerId, connected)
      .then(() => (connected ? this.scheduler.kick() : undefined))
      .catch((err) => this.log?.error({ err, providerId }, 'market presence update failed'));
  }
}
