/**
 * Which providers are connected, as the matching index sees them. A provider is connected when
 * its row is online (a hello on any replica made it so; the replica holding its socket declares it
 * offline when it goes silent) — except one whose socket closed since its last hello, one paused
 * (its channel keeps failing), and one
 * that was online when this replica started but that nobody has vouched for since: that may be a
 * provider that died with the previous process. Those are confirmed as soon as some replica
 * flushes a heartbeat of theirs (checked every `confirmEveryMs` until none is left), or by their
 * next hello. A provider that becomes connected wakes the scheduler.
 */
import type { Logger } from 'pino';
import type { Market } from './market.ts';

export class MarketPresence {
  private timer: NodeJS.Timeout | undefined;
  private confirming = false;
  private closed = false;
  private readonly updating = new Set<Promise<unknown>>();

  constructor(
    private readonly market: Market,
    /** What a provider that became connected wakes (the scheduler). */
    private readonly scheduler: { kick(): Promise<void> },
    private readonly log?: Logger,
  ) {
    market.onAvailable = () => void scheduler.kick();
  }

  /** Starts confirming the providers online at start (call after `market.load()`). */
  start(confirmEveryMs: number): void {
    this.timer = setInterval(() => {
      if (this.confirming) return;
      this.confirming = true;
      const check = this.market
        .confirmPresence()
        .then((waiting) => {
          if (waiting === 0) this.stop();
          return this.scheduler.kick();
        })
        .catch((err) => this.log?.warn({ err }, 'market presence: could not confirm providers online at start'))
        .finally(() => {
          this.confirming = false;
          this.updating.delete(check);
        });
      this.updating.add(check);
    }, confirmEveryMs);
    this.timer.unref();
  }

  stop(): void {
    clearInterval(this.timer);
  }

  /**
   * For good: the coordinator is shutting down. Resolves once the updates and the check under way
   * are done (they read the database, which closes next); sockets closing from now on change nothing.
   */
  async close(): Promise<void> {
    this.closed = true;
    this.stop();
    await Promise.all(this.updating);
  }

  /** A socket of this replica, welcomed at `welcomedAt`, said hello (true) or closed (false). */
  setConnected(providerId: string, connected: boolean, welcomedAt: number): void {
    if (this.closed) return;
    const update = this.market
      .setConnected(providerId, connected, welcomedAt)
      .then(() => (connected ? this.scheduler.kick() : undefined))
      .catch((err) => this.log?.error({ err, providerId }, 'market presence update failed'))
      .finally(() => this.updating.delete(update));
    this.updating.add(update);
  }
}
