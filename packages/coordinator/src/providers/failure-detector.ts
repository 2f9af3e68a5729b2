/**
 * The heartbeat failure detector: every interval it asks the provider service to declare
 * offline the providers silent for `misses` intervals, and closes their sockets; twice per
 * timeout it writes what this replica heard to `last_seen_at` (heartbeats live in memory).
 *
 * After a (re)start, providers reconnect with backoff (at most RECONNECT_MAX_BACKOFF_MS apart):
 * none is judged before it has had the time to find us again. And if this process itself
 * stalled (a long GC, an overloaded host), heartbeats may be waiting unread in its sockets: a
 * sweep that fires far too late judges nobody, and the grace starts over.
 */
import { RECONNECT_MAX_BACKOFF_MS } from '@gridwork/protocol';
import type { Logger } from 'pino';
import type { Db } from '../store/database.ts';
import { asLeader } from '../leader/fence.ts';
import type { ProviderService } from './provider-service.ts';

export interface FailureDetectorOptions {
  /** How often providers heartbeat. */
  intervalMs: number;
  /** Missed heartbeats before a provider is declared offline. */
  misses: number;
}

export class FailureDetector {
  private timer: NodeJS.Timeout | undefined;
  private flushTimer: NodeJS.Timeout | undefined;
  private flushing: Promise<unknown> | undefined;
  private sweeping: Promise<void> | undefined;

  constructor(
    private readonly deps: {
      providers: ProviderService;
      db: Db;
      log: Logger;
      disconnect: (providerId: string, reason: string) => void;
      /** The leader's current term while this replica leads, else null. */
      epoch: () => bigint | null;
    },
    private readonly options: FailureDetectorOptions,
  ) {}

  start(): void {
    const { intervalMs, misses } = this.options;
    const timeoutMs = intervalMs * misses;
    const graceMs = timeoutMs + RECONNECT_MAX_BACKOFF_MS * 1.25; // the backoff has ±25% jitter
    let since = new Date();
    let lastTick = Date.now();
    // Heartbeats are kept in memory (liveness.ts); last_seen_at is written for all at once, twice
    // per timeout, on a timer of its own (a long sweep must not hold it up: other replicas judge by it).
    const flushMs = timeoutMs / 2;
    this.flushTimer = setInterval(() => {
      this.flushing ??= this.deps.providers.liveness
        .flush(this.deps.db)
        .catch((err) => this.deps.log.warn({ err }, 'liveness flush failed'))
        .finally(() => {
          this.flushing = undefined;
        });
    }, flushMs);
    this.flushTimer.unref();
    this.timer = setInterval(() => {
      const now = Date.now();
      if (now - lastTick > 2 * intervalMs) since = new Date(now);
      lastTick = now;
      if (now - since.getTime() < graceMs || this.sweeping) return;
      this.sweeping = (async () => {
        // Providers nobody holds are judged by the leader alone, with room for two late flushes, and
        // under its term's fence (a leader deposed meanwhile judges only its own sockets, next time).
        const epoch = this.deps.epoch();
        const sweep = () => this.deps.providers.sweep(timeoutMs, since, epoch !== null ? timeoutMs + 2 * flushMs + intervalMs : null);
        const lost = await (epoch !== null ? asLeader(epoch, sweep) : sweep());
        for (const id of lost) this.deps.disconnect(id, 'missed heartbeats');
      })()
        .catch((err) => this.deps.log.error({ err }, 'provider sweep failed'))
        .finally(() => {
          this.sweeping = undefined;
        });
    }, intervalMs);
    this.timer.unref();
  }

  async stop(): Promise<void> {
    clearInterval(this.timer);
    clearInterval(this.flushTimer);
    await this.sweeping;
    await this.flushing;
    // What was heard since the last flush, for whoever judges these providers next.
    await this.deps.providers.liveness.flush(this.deps.db).catch((err) => this.deps.log.warn({ err }, 'liveness flush failed'));
  }
}
