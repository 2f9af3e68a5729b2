/**
 * Job states the SDK needs at run time, without loading the protocol's schemas (TypeBox): a
 * CLI command such as `gridwork job status` must start in tens of milliseconds. A test checks
 * this list against @gridwork/protocol's TERMINAL_JOB_STATES.
 */
import type { JobState } from '@gridwork/protocol';

export const TERMINAL_JOB_STATES: readonly JobState[] = ['succeeded', 'failed', 'cancelled'];

/**
 * States in which a job's results are all in: it has ended, or it is `verifying` (every task
 * succeeded; results stay pending, open to audits and disputes, until each task's
 * `verification.pendingUntil`). `verifying` is not terminal: a result an audit or a dispute
 * proves wrong runs again inside the job, on another provider (the job is `matching` or `running`
 * again; the task lists the refuted attempt in `refuted`), or, with no retries left, fails the job.
 * What `wait()` returns at by default.
 */
export const RESULTS_READY_STATES: readonly JobState[] = ['verifying', ...TERMINAL_JOB_STATES];
