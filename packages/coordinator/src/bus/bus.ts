/**
 * The bus: how committed domain events reach their subscribers. A unit of work publishes its
 * events after its transaction commits; the bus hands each subscriber every event in position
 * order, at least once, and durable subscribers exactly once (their position commits with
 * their effects). The in-process implementation is the default; a NATS JetStream one (for
 * several coordinator replicas) implements the same interface, so subscribers do not change.
 */
import type { DomainEventType, StoredEvent } from '../core/events.ts';
import type { EventSink, UnitOfWork } from '../core/unit-of-work.ts';

export interface Subscriber {
  /** Unique among subscribers; a durable subscriber's position is stored under it. */
  readonly name: string;
  /** Only these event types are handed over (all when absent); positions advance past the rest. */
  readonly types?: readonly DomainEventType[];
  /**
   * Durable: its position is stored in `bus_positions` in the same transaction as what its
   * handler writes through the unit of work it is given, and after a restart it resumes there.
   * Not durable: it starts at the current head (its state is in memory, rebuilt from the database).
   */
  readonly durable?: boolean;
  /** Handles a batch of events, oldest first. A durable subscriber gets the unit of work its position commits with. */
  handle(events: readonly StoredEvent[], uow?: UnitOfWork): Promise<void> | void;
}

export interface Bus extends EventSink {
  /** Starts delivering to `sub`; `after` (not durable only) starts after that position instead of the head. */
  subscribe(sub: Subscriber, options?: { after?: bigint }): Promise<() => void>;
  /** Stops delivering; resolves when handlers in progress are done. */
  close(): Promise<void>;
}

/**
 * How far this process's own subscribers have got: what a replica knows of itself, which does
 * not cross processes (a durable subscriber of the same name on another replica has a position
 * of its own, and the head here is the last event this replica has heard of). For waits within
 * one process: the scheduler after the matching index, a submit after the scheduler's pass, a
 * job stream's start, retention.
 */
export interface LocalProgress {
  /** The position of the last event this process has published or heard of. */
  head(): bigint;
  /** Resolves once this process's subscriber `name` has handled every event up to `position` (at once if it is gone). */
  reached(name: string, position: bigint): Promise<void>;
}
