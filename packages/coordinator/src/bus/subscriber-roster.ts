/**
 * A bus that remembers who subscribed through it, for retention (lifecycle/retention.ts): the
 * durable subscribers this process runs — each resumes from its stored position, or from 0 when
 * it has stored none yet, so the events after it must stay — and the subscribers attached now,
 * whose positions live only in memory. Delivery itself is the wrapped bus's.
 */
import type { StoredEvent } from '../core/events.ts';
import type { Bus, LocalProgress, Subscriber } from './bus.ts';

export class SubscriberRoster implements Bus, LocalProgress {
  private readonly durableNames = new Set<string>();
  private readonly attachedNames = new Set<string>();

  constructor(private readonly bus: Bus & LocalProgress) {}

  publish(events: readonly StoredEvent[]): void {
    this.bus.publish(events);
  }

  async subscribe(sub: Subscriber, options?: { after?: bigint }): Promise<() => void> {
    // Listed before it reads its stored position: a sweep meanwhile must already count it.
    const known = this.durableNames.has(sub.name);
    if (sub.durable) this.durableNames.add(sub.name);
    let off: () => void;
    try {
      off = await this.bus.subscribe(sub, options);
    } catch (err) {
      if (!known) this.durableNames.delete(sub.name);
      throw err;
    }
    this.attachedNames.add(sub.name);
    return () => {
      this.attachedNames.delete(sub.name);
      off();
    };
  }

  head(): bigint {
    return this.bus.head();
  }

  reached(name: string, position: bigint): Promise<void> {
    return this.bus.reached(name, position);
  }

  close(): Promise<void> {
    return this.bus.close();
  }

  /** Every durable subscriber this process has registered (one that unsubscribed included: it resumes from its position). */
  durable(): string[] {
    return [...this.durableNames];
  }

  /** The subscribers attached now, durable or not. */
  attached(): string[] {
    return [...this.attachedNames];
  }
}
