/**
 * The one place where the benchmarks' simulated providers build their reports to the
 * coordinator (provider → coordinator sequenced messages, without `seq`, which the sender adds).
 * When a report's shape changes in packages/protocol/src/wire.ts, only `leaseReport` changes.
 *
 * `lease.finished` is changing shape (exitCode + error string → a typed `outcome`). So that the
 * same benchmark measures before and after that change, the shape is chosen from the protocol's
 * own schema at load time: whichever `ProviderSequenced` the coordinator validates against is
 * the one sent. Once the old shape is gone everywhere, drop `LegacyFinished` and the switch.
 */
import { ProviderSequenced } from '@gridwork/protocol';

type Unsequenced<T> = T extends unknown ? Omit<T, 'seq'> : never;
/** A provider report as the real agent's CoordinatorLink.send() takes it. */
export type Report = Unsequenced<ProviderSequenced>;

/** What a simulated lease reports: it started, or it finished (exit 0 and no outputs unless said). */
export type LeaseEvent = { kind: 'started' } | { kind: 'finished'; durationMs: number; exitCode?: number };

/** `lease.finished` before the typed outcome. */
interface LegacyFinished {
  type: 'lease.finished';
  leaseId: string;
  exitCode: number | null;
  durationMs: number;
  outputs: [];
  error: string | null;
}
/** `lease.finished` with a typed outcome. */
interface OutcomeFinished {
  type: 'lease.finished';
  leaseId: string;
  outcome: { kind: 'exited'; exitCode: number };
  durationMs: number;
  outputs: [];
}

const finishedSchema = (ProviderSequenced as unknown as { anyOf: { properties: Record<string, { const?: unknown }> }[] }).anyOf.find(
  (s) => s.properties.type?.const === 'lease.finished',
);
/** Which `lease.finished` shape the protocol package in use defines. */
export const FINISHED_SHAPE: 'outcome' | 'legacy' = finishedSchema && 'outcome' in finishedSchema.properties ? 'outcome' : 'legacy';

export function leaseReport(leaseId: string, event: LeaseEvent): Report {
  if (event.kind === 'started') return { type: 'lease.started', leaseId };
  const exitCode = event.exitCode ?? 0;
  const durationMs = Math.max(0, Math.round(event.durationMs));
  const msg: LegacyFinished | OutcomeFinished =
    FINISHED_SHAPE === 'outcome'
      ? { type: 'lease.finished', leaseId, outcome: { kind: 'exited', exitCode }, durationMs, outputs: [] }
      : { type: 'lease.finished', leaseId, exitCode, durationMs, outputs: [], error: exitCode === 0 ? null : `exited with code ${exitCode}` };
  return msg as unknown as Report;
}
