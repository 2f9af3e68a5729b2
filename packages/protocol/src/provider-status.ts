/**
 * What a provider reads about itself (`GET /v1/providers/me`: trust record, stake, audits,
 * challenges, checks) and what opening a dispute answers. Types only: the coordinator builds
 * them (verify/provider-record.ts, verify/verification.ts), the SDK and CLI read them.
 */
/**
 * `POST /v1/jobs/:id/tasks/:index/dispute`: the dispute opened. The bond (credits) left the
 * requester's available balance; a referee provider re-runs the task (`checkJobId`). Upheld,
 * the bond comes back with the task's refund and a share of the provider's slash; dismissed,
 * the bond pays the provider. The task's `verification` in the job view follows it.
 */
export interface DisputeView {
  id: string;
  jobId: string;
  taskIndex: number;
  state: 'open';
  bond: string;
  checkJobId: string | null;
}

/** One capacity challenge (trust L1) of a provider, newest first. */
export interface ProviderChallengeEntry {
  id: string;
  state: 'issued' | 'committed' | 'passed' | 'failed';
  issuedAt: string;
  endedAt: string | null;
  n: number;
  memoryBytes: number;
  busyMs: number | null;
  reason: string | null;
}

/** A check of a result: one of this provider's (`checked`), or one it ran for another provider (`checker`). */
export interface ProviderCheckEntry {
  id: string;
  kind: 'audit' | 'canary' | 'referee' | 'dispute';
  role: 'checked' | 'checker';
  state: 'open' | 'passed' | 'failed' | 'abandoned';
  outcome: string | null;
  detail: string | null;
  createdAt: string;
}

/**
 * `GET /v1/providers/me` (signed by the provider's key): what a provider may read about
 * itself — its history, never the audit schedule ahead of it. Money fields are decimal credit
 * strings.
 */
export interface ProviderStatus {
  id: string;
  name: string;
  state: 'online' | 'draining' | 'offline';
  reputation: number;
  /** False after too many failed capacity challenges in a row: no work until one passes. */
  eligible: boolean;
  leases: { completed: number; faulted: number };
  faultsProven: number;
  challenges: {
    passed: number;
    failed: number;
    failedInARow: number;
    meanIntervalMs: number;
    /** Provider time all its challenges took so far. */
    busyMs: number;
    /** Expected share of its time challenges take. */
    share: number;
    recent: ProviderChallengeEntry[];
  };
  /** Bonded stake: what a proven fault is slashed from first. */
  stake: string;
  /** Stake on its way out (still slashable until released). */
  unbonding: string;
  /** Stake lost to slashing so far. */
  slashed: string;
  audits: {
    passed: number;
    failed: number;
    /** Passed in a row since the last failure. */
    streak: number;
    lastPassedAt: string | null;
    // Past audits only. Nothing here says when its tasks will be audited: not the audit rate (1
    // while on probation), nor how many passes end probation. A provider that knew when it was
    // watched would know when to start cheating.
  };
  /** Result checks it was the subject or the checker of, newest first. */
  recentChecks: ProviderCheckEntry[];
}
