/**
 * The legal transitions of jobs, tasks and leases. Every state change goes through
 * `assertTransition`, so an illegal one is a bug that fails loudly, never a silent corruption.
 */
import { GridworkError, type JobState, type LeaseState, type TaskState } from '@gridwork/protocol';

export const JOB_TRANSITIONS: Record<JobState, readonly JobState[]> = {
  pending: ['matching', 'running', 'succeeded', 'failed', 'cancelled'],
  matching: ['running', 'succeeded', 'failed', 'cancelled'],
  running: ['matching', 'verifying', 'succeeded', 'failed', 'cancelled'],
  // Back to matching (or running) when a refuted result re-runs inside its job (result-checks.ts).
  verifying: ['matching', 'running', 'succeeded', 'failed', 'cancelled'],
  succeeded: [],
  failed: [],
  cancelled: [],
};

export const TASK_TRANSITIONS: Record<TaskState, readonly TaskState[]> = {
  queued: ['assigned', 'cancelled', 'failed'],
  assigned: ['running', 'queued', 'succeeded', 'failed', 'cancelled'],
  running: ['queued', 'succeeded', 'failed', 'cancelled'],
  // A result refuted while its job is open runs again (result-checks.ts rejectResult).
  succeeded: ['queued'],
  failed: [],
  cancelled: [],
};

export const LEASE_TRANSITIONS: Record<LeaseState, readonly LeaseState[]> = {
  offered: ['starting', 'running', 'completed', 'failed', 'cancelled', 'lost'],
  starting: ['running', 'completed', 'failed', 'cancelled', 'lost'],
  running: ['completed', 'failed', 'cancelled', 'lost'],
  completed: [],
  failed: [],
  cancelled: [],
  lost: [],
};

const tables = { job: JOB_TRANSITIONS, task: TASK_TRANSITIONS, lease: LEASE_TRANSITIONS } as const;
export type Machine = keyof typeof tables;

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
export const TERMINAL_JOB: readonly JobState[] = ['succeeded', 'failed', 'cancelled'];
export const OPEN_TASK_STATES: readonly TaskState[] = ['queued', 'assigned', 'running'];

export function isActiveLease(state: string): boolean {
  return (ACTIVE_LEASE_STATES as readonly string[]).includes(state);
}

export function isTerminalJob(state: string): boolean {
  return (TERMINAL_JOB as readonly string[]).includes(state);
}

/** What a job does when one of its tasks fails: stop the rest at once, or let them finish. */
export type FailurePolicy = 'stop' | 'continue';

/** How many of a job's tasks are in each state. */
export type TaskCounts = Partial<Record<TaskState, number>>;

export function countTasks(tasks: readonly { state: string }[]): TaskCounts {
  const counts: TaskCounts = {};
  for (const t of tasks) counts[t.state as TaskState] = (counts[t.state as TaskState] ?? 0) + 1;
  return counts;
}

/** A job's state follows from how many of its tasks are in each state (explicit cancel aside). */
export function deriveJobState(current: JobState, counts: TaskCounts, policy: FailurePolicy = 'stop'): JobState {
  if (isTerminalJob(current)) return current;
  const n = (s: TaskState) => counts[s] ?? 0;
  const total = Object.values(counts).reduce((a, b) => a + (b ?? 0), 0);
  const open = n('queued') + n('assigned') + n('running') > 0;
  if (n('failed') > 0 && (policy === 'stop' || !open)) return 'failed';
  if (total > 0 && n('succeeded') === total) return 'succeeded';
  if (n('running') + n('assigned') > 0) return 'running';
  if (!open && n('cancelled') > 0) return 'cancelled';
  return current === 'pending' ? 'pending' : 'matching';
}
