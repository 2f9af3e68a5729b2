/**
 * Job states the SDK needs at run time, without loading the protocol's schemas (TypeBox): a
 * CLI command such as `gridwork job status` must start in tens of milliseconds. A test checks
 * this list against @gridwork/protocol's TERMINAL_JOB_STATES.
 */
import type { JobState } from '@gridwork/protocol';

export const TERMINAL_JOB_STATES: readonly JobState[] = ['succeeded', 'failed', 'cancelled'];
