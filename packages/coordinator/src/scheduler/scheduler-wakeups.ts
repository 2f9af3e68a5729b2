/**
 * Wakes the scheduler when work or capacity appears: a job submitted or topped up, a task back
 * in the queue, a lease ended, a provider online or changed. It first waits for the matching
 * index to have seen the same events, so the pass matches against fresh capacity.
 */
import type { LocalProgress, Subscriber } from '../bus/bus.ts';
import type { StoredEvent } from '../core/events.ts';
import type { Scheduler } from './scheduler.ts';

export const SCHEDULER = 'scheduler';

export function schedulerWakeups(scheduler: Scheduler, progress: LocalProgress, index: string): Subscriber {
  return {
    name: SCHEDULER,
    types: ['job.submitted', 'job.topped-up', 'job.funding', 'task.requeued', 'lease.ended', 'provider.online', 'provider.changed'],
    async handle(events) {
      await progress.reached(index, (events[events.length - 1] as StoredEvent).position);
      await scheduler.kick();
    },
  };
}
