/**
 * The typed domain events. Every change to jobs, tasks, leases and providers appends one or
 * more of these to the `events` table in the same transaction as the change (a transactional
 * outbox); the bus delivers them after commit, in position order, to the subscribers listed
 * in `server.ts`. An event says what happened, never what to do; it carries ids and the few
 * facts subscribers need, and a subscriber that needs more reads the committed state.
 */
import type { JobState } from '@gridwork/protocol';

/** How a lease ended, as a typed value (never a string to parse). */
export type LeaseOutcomeKind = 'completed' | 'failed' | 'lost' | 'released' | 'cancelled';

/** Why a workload failed by itself: not retried, the same input would fail again. */
export type FailureReason = 'exit' | 'timeout' | 'limit';

/**
 * A provider's proven fault (not bad luck: evidence it signed or failed to back). A commitment
 * whose root does not match the outputs it lists, a commitment signature that does not verify,
 * or outputs listed that it never uploaded.
 */
export type ProviderFaultKind =
  | 'commitment-mismatch'
  | 'bad-commitment-signature'
  | 'outputs-not-uploaded'
  /** An independent re-execution (and a referee) gave another result (L3). */
  | 'failed-audit'
  /** A known-answer task came back wrong (L4). */
  | 'failed-canary'
  /** A requester's dispute was upheld by a referee (L5). */
  | 'lost-dispute'
  /** As an auditor, it disagreed with a result a referee then confirmed. */
  | 'false-audit'
  /** It answered a capacity challenge with a wrong proof, or missed enough deadlines in a row: it lacks the hardware it claims (L1). */
  | 'failed-capacity';

/** A completed task's result as verification sees it. */
export type VerificationState = 'pending' | 'verified' | 'disputed' | 'failed';

/** The kinds of checks (verify/verification.ts). */
export type CheckKind = 'audit' | 'canary' | 'referee' | 'dispute';

/** How a capacity challenge ended (verify/capacity-challenges.ts). */
export type ChallengeVerdict = 'passed' | 'missed-deadline' | 'bad-signature' | 'bad-proof' | 'wrong-product' | 'bad-memory';

export type DomainEvent =
  | { type: 'job.submitted'; jobId: string; owner: string; tasks: number }
  /** A live state change (pending → matching → running → …) short of the end. */
  | { type: 'job.progressed'; jobId: string; from: JobState; to: JobState }
  | { type: 'job.ended'; jobId: string; owner: string; state: 'succeeded' | 'failed' | 'cancelled'; error: string | null }
  /** The job's budget cannot fund its leases (`low: true`), or can again. */
  | { type: 'job.funding'; jobId: string; low: boolean }
  | { type: 'job.topped-up'; jobId: string; amount: string }
  | { type: 'task.requeued'; jobId: string; taskId: string; index: number; attempts: number; reason: string }
  | { type: 'task.ended'; jobId: string; taskId: string; index: number; state: 'succeeded' | 'failed' | 'cancelled' }
  /** A task wrote a checkpoint (what it resumes from if its provider fails). */
  | { type: 'task.checkpointed'; jobId: string; taskId: string; leaseId: string; step: number }
  /** New log lines of a job's tasks were stored, up to log id `last`. */
  | { type: 'task.logged'; jobId: string; last: string }
  | {
      type: 'lease.placed';
      jobId: string;
      taskId: string;
      leaseId: string;
      providerId: string;
      pricePerHour: string;
      gpus: number[];
      cpuMilli: number;
      memMilli: number;
      /** When its time limit runs out (ms since the epoch; for explain). */
      endsAt: number;
    }
  | { type: 'lease.started'; jobId: string; leaseId: string; providerId: string }
  /** A service replica became healthy (the ingress routes to it) or unhealthy. */
  | { type: 'lease.service'; jobId: string; leaseId: string; providerId: string; health: 'healthy' | 'unhealthy' }
  | {
      type: 'lease.ended';
      jobId: string;
      taskId: string;
      leaseId: string;
      providerId: string;
      outcome: LeaseOutcomeKind;
      reason?: FailureReason;
      /** Set when the lease was lost to a proven fault. */
      fault?: ProviderFaultKind;
      error: string | null;
      charged: string;
    }
  /** A proven fault of a provider on a lease (counts heavily against its reputation). */
  | { type: 'provider.fault'; providerId: string; jobId?: string; leaseId?: string; fault: ProviderFaultKind; detail: string }
  /** A lease's result changed verification state (pending → verified | disputed | failed); `paid` once its earnings moved. */
  | { type: 'lease.verification'; jobId: string; taskId: string; leaseId: string; providerId: string; state: VerificationState; detail: string | null }
  /** A check of a lease's result was opened, or ended. */
  | { type: 'check.opened'; checkId: string; kind: CheckKind; leaseId: string; providerId: string; checkJobId: string | null }
  | { type: 'check.closed'; checkId: string; kind: CheckKind; leaseId: string; providerId: string; state: 'passed' | 'failed' | 'abandoned'; detail: string | null }
  /**
   * A check (audit, canary, dispute, referee) judged a provider's result: it counts for the
   * provider (`passed`) or against it. Counted by reputation (providers/reputation.ts).
   */
  | { type: 'provider.audited'; providerId: string; passed: boolean }
  /** A provider lost stake for a proven fault. */
  | { type: 'provider.slashed'; providerId: string; amount: string; fault: ProviderFaultKind; leaseId: string | null }
  /** A capacity challenge ended; `busyMs` is the provider time it took (issue to last answer). */
  | { type: 'provider.challenged'; providerId: string; challengeId: string; verdict: ChallengeVerdict; detail: string | null; busyMs: number }
  | { type: 'provider.online'; providerId: string; restarted: boolean }
  | { type: 'provider.offline'; providerId: string; reason: string }
  /**
   * The socket of the connection welcomed at `welcomedAt` (ms) closed on some replica. Not a state
   * change (the provider stays online until it misses its heartbeats, in case it reconnects): it
   * tells the other replicas' matching indexes not to count the provider as connected unless it
   * said hello again since.
   */
  | { type: 'provider.disconnected'; providerId: string; welcomedAt: number }
  /** The provider's channel keeps failing: no replica matches it until `until` (ms). Not a state change. */
  | { type: 'provider.paused'; providerId: string; until: number }
  /** Asks, drain state, stake or reputation changed: the matching index reloads the provider. */
  | { type: 'provider.changed'; providerId: string; what: 'asks' | 'state' | 'stake' | 'reputation' | 'capacity' }
  /** A sequenced message waits in the provider's durable outbox. */
  | { type: 'provider.messaged'; providerId: string; seq: number };

export type DomainEventType = DomainEvent['type'];

/** An event as committed: its position in the log and when it was written. */
export type StoredEvent = DomainEvent & { readonly position: bigint; readonly at: Date };

/** The job an event is about, if any (indexed, for per-job streams). */
export function jobOf(e: DomainEvent): string | null {
  return ('jobId' in e && e.jobId) || null;
}

/** The provider an event is about, if any. */
export function providerOf(e: DomainEvent): string | null {
  return 'providerId' in e ? e.providerId : null;
}
