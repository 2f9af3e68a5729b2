/**
 * The legal transitions of jobs, tasks and leases. Every state change in the store goes
 * through `assertTransition`, so an illegal one is a bug that fails loudly, never a silent
 * corruption.
 */
import { GridworkError, type JobState, type LeaseState, type TaskState } from '@gridwork/protocol';

const jobTransitions: Record<JobState, readonly JobState[]> = {
  pending: ['matching', 'running', 'succeeded', 'failed', 'cancelled'],
  matching: ['running', 'succeeded', 'failed', 'cancelled'],
  running: ['matching', 'verifying', 'succeeded', 'failed', 'cancelled'],
  verifying: ['succeeded', 'failed', 'cancelled'],
  succeeded: [],
  failed: [],
  cancelled: [],
};

const taskTransitions: Record<TaskState, readonly TaskState[]> = {
  queued: ['assigned', 'cancelled', 'failed'],
  assigned: ['running', 'queued', 'succeeded', 'failed', 'cancelled'],
  running: ['queued', 'succeeded', 'failed', 'cancelled'],
  succeeded: [],
  failed: [],
  cancelled: [],
};

const leaseTransitions: Record<LeaseState, readonly LeaseState[]> = {
  offered: ['starting', 'running', 'completed', 'failed', 'cancelled', 'lost'],
  starting: ['running', 'completed', 'failed', 'cancelled', 'lost'],
  running: ['completed', 'failed', 'cancelled', 'lost'],
  completed: [],
  failed: [],
  cancelled: [],
  lost: [],
};

const tables = { job: jobTransitions, task: taskTransitions, lease: leaseTransitions } as const;
type Machine = keyof typeof tables;

export function canTransition(machine: Machine, from: string, to: string): boolean {
  const allowed = (tables[machine] as Record<string, readonly string[]>)[from];
  return allowed?.includes(to) ?? false;
}

export function assertTransition(machine: Machine, id: string, from: string, to: string): void {
  if (!canTransition(machine, from, to)) {
    throw new GridworkError('INVALID_TRANSITION', `${machine} ${id} cannot go from ${from} to ${to}`);
  }
}

export const ACTIVE_LEASE_STATES: readonly LeaseState[] = ['offered', 'starting', 'running'];

/** A job's state follows from its tasks (explicit cancel aside). */
export function deriveJobState(current: JobState, tasks: readonly { state: string }[]): JobState {
  if (current === 'cancelled' || current === 'succeeded' || current === 'failed') return current;
  if (tasks.some((t) => t.state === 'failed')) return 'failed';
  if (tasks.length > 0 && tasks.every((t) => t.state === 'succeeded')) return 'succeeded';
  if (tasks.some((t) => t.state === 'running' || t.state === 'assigned')) return 'running';
  return current === 'pending' ? 'pending' : 'matching';
}
