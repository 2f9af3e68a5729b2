/** Row types of every table, for Kysely. Table ownership: see each module's header. */
import type { ColumnType, Generated, JSONColumnType } from 'kysely';
import type { Asks, Benchmarks, FileRef, Hardware, InputSet, JobSpec } from '@gridwork/protocol';

type Timestamp = ColumnType<Date, Date | string | undefined, Date | string>;
/** A timestamp column with a database default (now()). */
type TimestampDefault = ColumnType<Date, Date | string | undefined, Date | string>;
type Int8 = ColumnType<bigint, bigint | number, bigint | number>;
/** An int8 column with a database default. */
type Int8Default = ColumnType<bigint, bigint | number | undefined, bigint | number>;

export interface AccountsTable {
  id: string;
  created_at: TimestampDefault;
}

export interface RequestNoncesTable {
  account_id: string;
  nonce: string;
  seen_at: Timestamp;
}

export interface ProvidersTable {
  id: string;
  name: string;
  state: 'online' | 'draining' | 'offline';
  runtime: string;
  slots: number;
  hardware: JSONColumnType<Hardware>;
  attributes: JSONColumnType<Record<string, string>>;
  instance: string;
  last_seen_at: Timestamp;
  /** Highest provider→coordinator seq applied (exactly-once). */
  in_seq: Int8;
  /** Highest coordinator→provider seq issued. */
  out_seq: Int8;
  created_at: TimestampDefault;
  asks: JSONColumnType<Asks> | null;
  benchmarks: JSONColumnType<Benchmarks> | null;
  bids: Generated<boolean>;
  leases_completed: Generated<number>;
  leases_faulted: Generated<number>;
  /** Capacity challenges (verify/): passed, failed, failed in a row, and provider time they took. */
  challenges_passed: Generated<number>;
  challenges_failed: Generated<number>;
  challenge_fail_streak: Generated<number>;
  challenge_busy_ms: Int8Default;
  /** Proven faults (a commitment that does not match, a failed audit). */
  faults_proven: Generated<number>;
  /** Audits and canaries (verify/verification.ts): passed, failed, passed in a row, last pass, stake lost. */
  audits_passed: Generated<number>;
  audits_failed: Generated<number>;
  audit_streak: Generated<number>;
  last_audit_passed_at: Timestamp | null;
  stake_slashed: Int8Default;
  /** The agent's service ingress (hello), if it runs services. */
  ingress_url: string | null;
  /** Set when an unproven registration expired offline (providers/provider-service.ts): listed and matched nowhere until its next hello. */
  expired_at: Generated<Date | null>;
}

/** One capacity challenge and its verdict (verify/capacity-challenges.ts). */
export interface CapacityChallengesTable {
  id: string;
  provider_id: string;
  seed: string;
  /** The secret behind the open commitment; revealed to the provider once its roots arrive. */
  open_seed: string;
  n: number;
  memory_blocks: number;
  rows_to_open: number;
  blocks_to_open: number;
  state: 'issued' | 'committed' | 'passed' | 'failed';
  issued_at: Timestamp;
  deadline_at: Timestamp;
  matrix_root: string | null;
  memory_root: string | null;
  committed_at: Timestamp | null;
  open_deadline_at: Timestamp | null;
  ended_at: Timestamp | null;
  reason: string | null;
  busy_ms: Int8 | null;
  /**
   * The CPU benchmark claim (Mops per core) this challenge was sized for and proves when it
   * passes; null for challenges issued before it was recorded (they prove nothing).
   */
  claimed_mops: number | null;
}

export interface ProviderOutboxTable {
  provider_id: string;
  seq: Int8;
  message: JSONColumnType<Record<string, unknown>>;
}

export interface BlobsTable {
  digest: string;
  size: Int8;
  created_at: TimestampDefault;
}

export interface JobsTable {
  id: string;
  owner: string;
  name: string;
  kind: string;
  state: string;
  spec: JSONColumnType<JobSpec>;
  bundle_manifest: string | null;
  error: string | null;
  created_at: Timestamp;
  updated_at: Timestamp;
  budget: Int8Default;
  max_per_hour: Int8Default;
  low_balance_since: Timestamp | null;
  idempotency_key: string | null;
  request_digest: string | null;
  /** Who the job is for: a requester's work, or a check the protocol runs and pays for (verify/). */
  purpose: ColumnType<JobPurpose, JobPurpose | undefined, JobPurpose>;
  /** Providers the job's tasks must not be placed on (an audit never goes to the audited provider). */
  exclude_providers: ColumnType<string[], string | undefined, string>;
  /** The one provider the job's tasks may go to (a canary is aimed at its target). */
  only_provider: string | null;
}

export type JobPurpose = 'work' | 'audit' | 'canary' | 'referee' | 'dispute';
export type VerificationState = 'pending' | 'verified' | 'disputed' | 'failed';

/** A check of one lease's result (verify/verification.ts). */
export interface VerificationsTable {
  id: string;
  kind: 'audit' | 'canary' | 'referee' | 'dispute';
  state: 'open' | 'passed' | 'failed' | 'abandoned';
  /** The lease whose result is checked. */
  lease_id: string;
  provider_id: string;
  /** The job that re-executes the task. */
  check_job_id: string | null;
  /** The output digest the check must reproduce. */
  expected_digest: string | null;
  /** Who opened it: the coordinator, or the requester who disputes (with a bond). */
  opened_by: string | null;
  bond: Int8Default;
  /** A referee check settles a disagreement found by its parent. */
  parent_id: string | null;
  /** How it ended: which side the evidence was on. */
  outcome: string | null;
  detail: string | null;
  created_at: TimestampDefault;
  ended_at: Timestamp | null;
  /** A segment check of checkpointed work: re-run from checkpoint `segment_from` to `segment_to`. */
  segment_from: number | null;
  segment_to: number | null;
}

/** A checkpoint a lease's task wrote (lifecycle): what a requeued task resumes from, and a commitment. */
export interface CheckpointsTable {
  lease_id: string;
  task_id: string;
  step: number;
  path: string;
  digest: string;
  size: Int8;
  /** The lease's run time when it was written: what a lost lease is paid up to. */
  usage_ms: Int8;
  signature: string;
  created_at: TimestampDefault;
}

/** A cluster member's publication of one exchange round (lifecycle): the latest per (job, round, rank). */
export interface ClusterExchangeTable {
  job_id: string;
  round: number;
  rank: number;
  lease_id: string;
  digest: string;
  size: Int8;
  created_at: TimestampDefault;
}

/** Which member leases were sent a complete round (each once). */
export interface ClusterDeliveriesTable {
  lease_id: string;
  round: number;
}

export interface JobBlobsTable {
  job_id: string;
  digest: string;
  role: 'bundle' | 'input' | 'output' | 'checkpoint' | 'exchange';
}

export interface TasksTable {
  id: string;
  job_id: string;
  idx: number;
  state: string;
  attempts: number;
  inputs: JSONColumnType<InputSet[]>;
  lease_id: string | null;
  provider_id: string | null;
  exit_code: number | null;
  duration_ms: number | null;
  error: string | null;
  outputs: JSONColumnType<FileRef[]>;
  output_digest: string | null;
  started_at: Timestamp | null;
  finished_at: Timestamp | null;
  queued_at: Timestamp;
}

export interface LeasesTable {
  id: string;
  task_id: string;
  job_id: string;
  provider_id: string;
  state: string;
  created_at: Timestamp;
  started_at: Timestamp | null;
  ended_at: Timestamp | null;
  exit_code: number | null;
  error: string | null;
  price_per_hour: Int8Default;
  usage_ms: Int8Default;
  charged: Int8Default;
  gpus: ColumnType<number[], string | undefined, string>;
  cpu_milli: Int8Default;
  mem_milli: Int8Default;
  /** Audit randomness (L2 commit–reveal): the secret seed, and its hash sent with the assignment. */
  audit_seed: string | null;
  audit_commitment: string | null;
  /** The provider's signed result commitment (hex Merkle root over outputs, Ed25519 signature). */
  outputs_root: string | null;
  commitment_signature: string | null;
  /** The proven fault that ended the lease, if one did. */
  fault: string | null;
  /** The result's verification (completed leases only). */
  verification: VerificationState | null;
  /** Set while the lease's earnings are pending (its audit window is open); null once paid or refunded. */
  settle_at: Timestamp | null;
  /** A service replica: the secret the agent's ingress accepts for it, and its last reported health. */
  service_token: string | null;
  service_health: 'healthy' | 'unhealthy' | null;
  /** Log bytes the provider sent for this lease (stored up to MAX_STORED_LEASE_LOG_BYTES). */
  log_bytes: Int8Default;
}

export interface TaskLogsTable {
  id: ColumnType<bigint, never, never>;
  job_id: string;
  task_idx: number;
  lease_id: string;
  stream: string;
  data: string;
  ts: Timestamp;
}

export interface LedgerTransactionsTable {
  id: ColumnType<bigint, never, never>;
  kind: string;
  idempotency_key: string;
  request_digest: string | null;
  memo: JSONColumnType<Record<string, unknown>>;
  created_at: TimestampDefault;
}

export interface LedgerPostingsTable {
  id: ColumnType<bigint, never, never>;
  tx_id: Int8;
  account: string;
  amount: Int8;
}

export interface LedgerBalancesTable {
  account: string;
  balance: Int8;
}

export interface StakeUnbondingsTable {
  id: ColumnType<bigint, never, never>;
  account_id: string;
  amount: Int8;
  release_at: Timestamp;
  released_at: Timestamp | null;
}

/** The domain event log (transactional outbox), written only through a unit of work. */
export interface EventsTable {
  position: Int8;
  type: string;
  job_id: string | null;
  provider_id: string | null;
  data: JSONColumnType<Record<string, unknown>>;
  at: TimestampDefault;
}

export interface EventHeadTable {
  id: number;
  position: Int8;
}

/** `ordered`: positions are given out under the `event_head` lock (while replicas of the previous release may read; migration 0015). */
export interface EventLogTable {
  id: number;
  ordered: boolean;
}

export interface BusPositionsTable {
  subscriber: string;
  position: Int8;
}

/** How far retention's walk through ended jobs has come, per table (lifecycle/retention.ts). */
export interface RetentionMarksTable {
  name: string;
  ended_at: Timestamp;
  job_id: string;
}

/** Capacity of each provider and what its active leases hold: the guard against overbooking. */
export interface ProviderCapacityTable {
  provider_id: string;
  slots: number;
  cpu_milli: Int8;
  mem_milli: Int8;
  used_slots: Generated<number>;
  used_cpu_milli: Int8Default;
  used_mem_milli: Int8Default;
}

export interface LeaseGpusTable {
  provider_id: string;
  gpu: number;
  lease_id: string;
}

export interface BlobOwnersTable {
  digest: string;
  account_id: string;
  uploaded_at: Timestamp;
}

export interface CoordinatorLeaderTable {
  id: number;
  epoch: Int8;
  holder: string;
  since: Timestamp;
}

export interface Database {
  coordinator_leader: CoordinatorLeaderTable;
  events: EventsTable;
  capacity_challenges: CapacityChallengesTable;
  event_head: EventHeadTable;
  event_log: EventLogTable;
  bus_positions: BusPositionsTable;
  retention_marks: RetentionMarksTable;
  provider_capacity: ProviderCapacityTable;
  lease_gpus: LeaseGpusTable;
  blob_owners: BlobOwnersTable;
  ledger_transactions: LedgerTransactionsTable;
  ledger_postings: LedgerPostingsTable;
  ledger_balances: LedgerBalancesTable;
  stake_unbondings: StakeUnbondingsTable;
  accounts: AccountsTable;
  request_nonces: RequestNoncesTable;
  providers: ProvidersTable;
  provider_outbox: ProviderOutboxTable;
  blobs: BlobsTable;
  jobs: JobsTable;
  verifications: VerificationsTable;
  checkpoints: CheckpointsTable;
  cluster_exchange: ClusterExchangeTable;
  cluster_deliveries: ClusterDeliveriesTable;
  job_blobs: JobBlobsTable;
  tasks: TasksTable;
  leases: LeasesTable;
  task_logs: TaskLogsTable;
}
