/** A task's wall-time limit: what the lifecycle tells the provider, and how long the market and the overdue sweep count its capacity as taken. */
import type { JobSpec } from '@gridwork/protocol';

/** A task's wall-time limit in ms (the spec's timeoutSeconds; default 1 h, 7 days for a service). */
export function limitMsOf(spec: JobSpec): number {
  return (spec.timeoutSeconds ?? (spec.kind === 'service' ? 7 * 24 * 3600 : 3600)) * 1000;
}
