/**
 * Result commitments (trust layer L2): what a provider signs when a task ends — how it ended,
 * how long it ran, and a Merkle root over its outputs (merkle.ts `outputsRoot`) — bound to the
 * coordinator's audit commitment for that lease (hash of an audit seed it revealed to no one),
 * so the provider commits before it can know whether or how the task will be audited.
 */
import { canonicalJson } from './canonical-json.ts';
import type { LeaseEnd } from './wire.ts';

export interface LeaseCommitmentFields {
  leaseId: string;
  outcome: LeaseEnd;
  durationMs: number;
  /** hex Merkle root over the outputs (sorted by path). */
  outputsRoot: string;
  /** The coordinator's hash(audit seed) from the assignment; '' when it sent none. */
  auditCommitment: string;
}

/** The exact text a provider signs (Ed25519) for `lease.finished`. */
export function leaseCommitmentMessage(c: LeaseCommitmentFields): string {
  return canonicalJson({ v: 1, type: 'lease.commitment', ...c });
}

export interface CheckpointCommitmentFields {
  leaseId: string;
  step: number;
  /** sha256 of the checkpoint file (its blob digest). */
  digest: string;
  usageMs: number;
  /** The coordinator's hash(audit seed) from the assignment; '' when it sent none. */
  auditCommitment: string;
}

/** The exact text a provider signs (Ed25519) for `lease.checkpoint`. */
export function checkpointMessage(c: CheckpointCommitmentFields): string {
  return canonicalJson({ v: 1, type: 'lease.checkpoint', ...c });
}

/** Checkpoint files are named `step-<N>` with any extension; the step, or null for any other name. */
export function checkpointStep(name: string): number | null {
  const m = /^step-(\d{1,10})(\.[A-Za-z0-9._-]+)?$/.exec(name);
  if (!m) return null;
  const n = Number(m[1]);
  return n <= 2_147_483_647 ? n : null;
}
