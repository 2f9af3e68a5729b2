/**
 * Checks a provider's result commitment (trust layer L2) when a lease ends: the signature over
 * `leaseCommitmentMessage` (outcome, run time, outputs root, the coordinator's audit commitment
 * for the lease) must verify under the provider's key, and the root must be the Merkle root of
 * the outputs the report lists. Either failing is a proven fault: the provider signed (or failed
 * to sign) something that does not match what it delivered. Pure: it reads and writes nothing.
 */
import { type FileRef, type LeaseEnd, leaseCommitmentMessage, outputsRoot } from '@gridwork/protocol';
import { sha256Bytes, verifyBytes } from '@gridwork/protocol/node';
import type { ProviderFaultKind } from '../core/events.ts';

export interface FinishedReport {
  leaseId: string;
  outcome: LeaseEnd;
  durationMs: number;
  outputs: FileRef[];
  commitment?: { outputsRoot: string; signature: string };
}

export type CommitmentCheck = { ok: true } | { ok: false; fault: ProviderFaultKind; detail: string };

export function checkResultCommitment(providerId: string, auditCommitment: string | null, report: FinishedReport): CommitmentCheck {
  const c = report.commitment;
  if (!c) return { ok: true };
  const message = leaseCommitmentMessage({
    leaseId: report.leaseId,
    outcome: report.outcome,
    durationMs: report.durationMs,
    outputsRoot: c.outputsRoot,
    auditCommitment: auditCommitment ?? '',
  });
  if (!verifyBytes(providerId, message, c.signature)) {
    return { ok: false, fault: 'bad-commitment-signature', detail: 'the result commitment signature does not verify for this lease, outcome and root' };
  }
  let root: string;
  try {
    root = outputsRoot(sha256Bytes, report.outputs);
  } catch (err) {
    return { ok: false, fault: 'commitment-mismatch', detail: (err as Error).message };
  }
  if (root !== c.outputsRoot) {
    return { ok: false, fault: 'commitment-mismatch', detail: `committed outputs root ${c.outputsRoot.slice(0, 12)}… is not the root of the ${report.outputs.length} output(s) listed (${root.slice(0, 12)}…)` };
  }
  return { ok: true };
}
