/**
 * The job lifecycle: the only writer of `jobs`, `tasks`, `leases` and `task_logs` (and, through
 * capacity.ts, of the capacity that leases hold). Everyone else sends it commands; each is carried
 * out by the part of the lifecycle it concerns:
 *
 *   job-commands.ts   submit · cancel · topUp · failUnfunded · expireQueued · setFunding · awaitMatch
 *   placement.ts      place
 *   lease-reports.ts  acknowledge · start · recordUsage · appendLogs · recordCheckpoint ·
 *                     recordExchange · serviceHealth · finish · lose · fault · release ·
 *                     loseProvider (every active lease of a provider) · declareCapacity
 *   result-checks.ts  openCheck · closeCheck · confirmResult · rejectResult · markDisputed · …
 *   lease-ending.ts   (no command of its own) how a lease ends and what follows: the task
 *                     requeued or ended, the job's state, the lease's money; the row locks
 *
 * Trust (L2): `place` draws a secret audit seed per lease and sends only its hash with the
 * assignment; `finish` stores the provider's signed result commitment; `fault` ends a lease lost
 * to a proven fault, keeping the evidence on the lease.
 *
 * Each command runs inside the caller's unit of work — one transaction, so a provider report's
 * sequence number commits with its effect — checks every transition against the state tables
 * (core/state-machine.ts), moves the money that goes with it (ledger/lease-economics.ts) and
 * appends typed events (core/events.ts). Requeueing a task is part of `lose` and `release`.
 *
 * Row locks are FOR NO KEY UPDATE, never FOR UPDATE: a transaction that inserted a row
 * referencing a job/task/provider holds a KEY SHARE lock on it, and FOR UPDATE conflicts with
 * KEY SHARE (two such transactions deadlocked on PostgreSQL). Lock order: job, task, lease, then
 * the provider's rows (capacity, outbox sequence); a provider report records its sequence
 * number last, so placements and reports take their locks in the same order.
 */
import type { FileRef, InputSet, JobSpec } from '@gridwork/protocol';
import type { EconomicsConfig, LeaseMoney } from '../ledger/lease-economics.ts';
import { resolveVerification, type VerificationConfig } from '../verify/verification-policy.ts';
import type { CheckKind, FailureReason, ProviderFaultKind } from '../core/events.ts';
import { JobCommands } from './job-commands.ts';
import { Placements } from './placement.ts';
import { LeaseReports } from './lease-reports.ts';
import { ResultChecks } from './result-checks.ts';
import { LeaseEnding } from './lease-ending.ts';

/** How a lease ended, as the lifecycle records it. */
export type LeaseOutcome =
  | { kind: 'completed'; durationMs: number; outputs: FileRef[]; commitment?: ResultCommitment }
  /** The workload failed by itself (non-zero exit, time limit, resource limit): deterministic, not retried. */
  | { kind: 'failed'; reason: FailureReason; exitCode: number | null; durationMs: number; error: string; commitment?: ResultCommitment }
  /** The provider failed (crash, lost heartbeat, setup error, a broken report): retried elsewhere. */
  | { kind: 'lost'; error: string; fault?: ProviderFaultKind; commitment?: ResultCommitment }
  /** The provider handed the task back (draining), or the coordinator stopped it (`stop`: a cluster restarting): retried without counting an attempt. */
  | { kind: 'released'; error: string; stop?: boolean }
  | { kind: 'cancelled'; error: string };

/** A provider's signed result commitment (verified by verify/commitments.ts before it gets here). */
export interface ResultCommitment {
  outputsRoot: string;
  signature: string;
}

export interface NewJob {
  owner: string;
  spec: JobSpec;
  bundleManifest: string | null;
  budget: bigint;
  maxPerHour: bigint;
  taskInputs: InputSet[][];
  blobs: ReadonlyMap<string, 'bundle' | 'input'>;
  idempotencyKey?: string;
  /** Digest of the request, so one key reused for another request is refused. */
  requestDigest: string;
}

export interface Placement {
  taskId: string;
  /** The task's job, when the caller knows it (the scheduler does): saves looking it up before the job is locked. */
  jobId?: string;
  providerId: string;
  pricePerHour: bigint;
  gpus: number[];
}

/** A lease, by id, or by the row its caller read (its job known: no look-up before the job is locked). */
export type LeaseKey = string | { id: string; job_id: string };

/** A check of a lease's result: another provider re-executes its task (verify/verification.ts decides what the result means). */
export interface NewCheck {
  kind: CheckKind;
  /** The lease whose result is checked. */
  leaseId: string;
  /** The output digest a faithful re-execution reproduces. */
  expectedDigest: string;
  /** Providers (with everyone of their operator) the check must not run on; the checked provider always is. */
  exclude?: readonly string[];
  /** The one provider the check runs on (a canary's target). */
  only?: string;
  /** A referee check settles a disagreement its parent found. */
  parentId?: string;
  /** A mandatory audit (probation, no stake at risk): paid from the checked result's pending earnings. */
  paidByEarnings?: boolean;
  /** A requester's dispute, with the bond it posted. */
  openedBy?: string;
  bondPosted?: bigint;
  checkId?: string;
  /**
   * Checkpointed work: re-execute one segment, from checkpoint step `from` (null: the start) to
   * step `to` (null: the end, compared on outputs); `expectedDigest` is then the committed digest
   * of checkpoint `to`.
   */
  segment?: Segment;
}

/** One segment of a checkpointed task: from a checkpoint step (null: the start) to the next (null: the end). */
export interface Segment {
  from: number | null;
  to: number | null;
}

export type PlaceResult = { status: 'placed'; leaseId: string } | { status: 'capacity-taken' | 'underfunded' | 'gone' };

export type LeaseRow = LeaseMoney & {
  task_id: string;
  created_at: Date;
  ended_at: Date | null;
  provider_id: string;
  state: string;
  started_at: Date | null;
  cpu_milli: bigint;
  mem_milli: bigint;
  gpus: number[];
  audit_seed: string | null;
  audit_commitment: string | null;
  service_token: string | null;
};

/** The lifecycle's parts, each holding the others (a lease's end may open a check; a check's end may end a job). */
export interface LifecycleParts {
  readonly economics: EconomicsConfig;
  readonly verification: VerificationConfig;
  readonly jobs: JobCommands;
  readonly placement: Placements;
  readonly reports: LeaseReports;
  readonly checks: ResultChecks;
  readonly ending: LeaseEnding;
}

export class Lifecycle {
  // job-commands.ts
  readonly submit: JobCommands['submit'];
  readonly cancel: JobCommands['cancel'];
  readonly topUp: JobCommands['topUp'];
  readonly failUnfunded: JobCommands['failUnfunded'];
  readonly expireQueued: JobCommands['expireQueued'];
  readonly setFunding: JobCommands['setFunding'];
  readonly awaitMatch: JobCommands['awaitMatch'];
  // placement.ts
  readonly place: Placements['place'];
  // lease-reports.ts
  readonly acknowledge: LeaseReports['acknowledge'];
  readonly leaseOf: LeaseReports['leaseOf'];
  readonly start: LeaseReports['start'];
  readonly recordUsage: LeaseReports['recordUsage'];
  readonly appendLogs: LeaseReports['appendLogs'];
  readonly recordCheckpoint: LeaseReports['recordCheckpoint'];
  readonly recordExchange: LeaseReports['recordExchange'];
  readonly serviceHealth: LeaseReports['serviceHealth'];
  readonly finish: LeaseReports['finish'];
  readonly lose: LeaseReports['lose'];
  readonly fault: LeaseReports['fault'];
  readonly release: LeaseReports['release'];
  readonly loseProvider: LeaseReports['loseProvider'];
  readonly declareCapacity: LeaseReports['declareCapacity'];
  // result-checks.ts
  readonly segmentsOf: ResultChecks['segmentsOf'];
  readonly expectation: ResultChecks['expectation'];
  readonly openCheck: ResultChecks['openCheck'];
  readonly closeCheck: ResultChecks['closeCheck'];
  readonly confirmResult: ResultChecks['confirmResult'];
  readonly rejectResult: ResultChecks['rejectResult'];
  readonly markDisputed: ResultChecks['markDisputed'];
  readonly dueResults: ResultChecks['dueResults'];

  constructor(
    economics: EconomicsConfig,
    /** Result verification; off unless given (the coordinator always gives it). */
    verification: VerificationConfig = resolveVerification({ enabled: false }),
  ) {
    const parts = { economics, verification } as { -readonly [K in keyof LifecycleParts]: LifecycleParts[K] };
    parts.jobs = new JobCommands(parts);
    parts.placement = new Placements(parts);
    parts.reports = new LeaseReports(parts);
    parts.checks = new ResultChecks(parts);
    parts.ending = new LeaseEnding(parts);
    this.submit = parts.jobs.submit.bind(parts.jobs);
    this.cancel = parts.jobs.cancel.bind(parts.jobs);
    this.topUp = parts.jobs.topUp.bind(parts.jobs);
    this.failUnfunded = parts.jobs.failUnfunded.bind(parts.jobs);
    this.expireQueued = parts.jobs.expireQueued.bind(parts.jobs);
    this.setFunding = parts.jobs.setFunding.bind(parts.jobs);
    this.awaitMatch = parts.jobs.awaitMatch.bind(parts.jobs);
    this.place = parts.placement.place.bind(parts.placement);
    this.acknowledge = parts.reports.acknowledge.bind(parts.reports);
    this.leaseOf = parts.reports.leaseOf.bind(parts.reports);
    this.start = parts.reports.start.bind(parts.reports);
    this.recordUsage = parts.reports.recordUsage.bind(parts.reports);
    this.appendLogs = parts.reports.appendLogs.bind(parts.reports);
    this.recordCheckpoint = parts.reports.recordCheckpoint.bind(parts.reports);
    this.recordExchange = parts.reports.recordExchange.bind(parts.reports);
    this.serviceHealth = parts.reports.serviceHealth.bind(parts.reports);
    this.finish = parts.reports.finish.bind(parts.reports);
    this.lose = parts.reports.lose.bind(parts.reports);
    this.fault = parts.reports.fault.bind(parts.reports);
    this.release = parts.reports.release.bind(parts.reports);
    this.loseProvider = parts.reports.loseProvider.bind(parts.reports);
    this.declareCapacity = parts.reports.declareCapacity.bind(parts.reports);
    this.segmentsOf = parts.checks.segmentsOf.bind(parts.checks);
    this.expectation = parts.checks.expectation.bind(parts.checks);
    this.openCheck = parts.checks.openCheck.bind(parts.checks);
    this.closeCheck = parts.checks.closeCheck.bind(parts.checks);
    this.confirmResult = parts.checks.confirmResult.bind(parts.checks);
    this.rejectResult = parts.checks.rejectResult.bind(parts.checks);
    this.markDisputed = parts.checks.markDisputed.bind(parts.checks);
    this.dueResults = parts.checks.dueResults.bind(parts.checks);
  }
}
