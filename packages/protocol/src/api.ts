/** REST payloads of the coordinator API (requester side). Bodies are strict: no extra fields. */
import Type from 'typebox';
import { SHA256_PATTERN } from './auth.ts';
import { JobSpec } from './job-spec.ts';
import type { MatchExplanation } from './market.ts';

export const Digest = Type.String({ pattern: SHA256_PATTERN, description: 'hex sha256' });

/**
 * A file path inside a bundle, an input set or an output directory: relative, no "." or ".."
 * segment, no backslash and no control character (a line break once hid ".." from the
 * look-ahead, whose "." stops at line ends).
 */
export const RelPath = Type.String({
  minLength: 1,
  maxLength: 512,
  pattern: '^(?!/)(?!.*(^|/)\\.\\.?(/|$))[^\\\\\\x00-\\x1f\\x7f]+$',
});

export const FileRef = Type.Object({ path: RelPath, digest: Digest, size: Type.Integer({ minimum: 0 }) }, { additionalProperties: false });
export type FileRef = Type.Static<typeof FileRef>;

/** A bundle is a manifest blob (canonical JSON of this shape) naming its files by digest. */
export const BundleManifest = Type.Object(
  {
    files: Type.Array(
      Type.Object({ path: RelPath, digest: Digest, size: Type.Integer({ minimum: 0 }), executable: Type.Boolean() }, { additionalProperties: false }),
      { maxItems: 10000 },
    ),
  },
  { additionalProperties: false },
);
export type BundleManifest = Type.Static<typeof BundleManifest>;

export const InputSet = Type.Object(
  { name: Type.String({ minLength: 1, maxLength: 64 }), shard: Type.Boolean(), files: Type.Array(FileRef, { maxItems: 100000 }) },
  { additionalProperties: false },
);
export type InputSet = Type.Static<typeof InputSet>;

export const SubmitJobRequest = Type.Object(
  {
    spec: JobSpec,
    bundle: Type.Optional(Type.Object({ manifest: Digest }, { additionalProperties: false })),
    inputs: Type.Array(InputSet, { maxItems: 64 }),
    /** One per logical submit: a retried submit with the same key returns the same job; the same key with another request is refused. */
    idempotencyKey: Type.Optional(Type.String({ minLength: 1, maxLength: 128 })),
  },
  { additionalProperties: false },
);
export type SubmitJobRequest = Type.Static<typeof SubmitJobRequest>;

export const JobState = Type.Union(['pending', 'matching', 'running', 'verifying', 'succeeded', 'failed', 'cancelled'].map((s) => Type.Literal(s)));
export type JobState = 'pending' | 'matching' | 'running' | 'verifying' | 'succeeded' | 'failed' | 'cancelled';
export type TaskState = 'queued' | 'assigned' | 'running' | 'succeeded' | 'failed' | 'cancelled';
export type LeaseState = 'offered' | 'starting' | 'running' | 'completed' | 'failed' | 'cancelled' | 'lost';

/** A check of a task's result: an audit, a referee, a canary or a dispute, and how it ended. */
export const CheckView = Type.Object({
  id: Type.String(),
  kind: Type.String(),
  state: Type.String(),
  outcome: Type.Union([Type.String(), Type.Null()]),
  detail: Type.Union([Type.String(), Type.Null()]),
});
export type CheckView = Type.Static<typeof CheckView>;

export const TaskView = Type.Object({
  id: Type.String(),
  index: Type.Integer(),
  state: Type.String(),
  attempts: Type.Integer(),
  leaseId: Type.Union([Type.String(), Type.Null()]),
  providerId: Type.Union([Type.String(), Type.Null()]),
  providerName: Type.Union([Type.String(), Type.Null()]),
  startedAt: Type.Union([Type.String(), Type.Null()]),
  finishedAt: Type.Union([Type.String(), Type.Null()]),
  exitCode: Type.Union([Type.Integer(), Type.Null()]),
  durationMs: Type.Union([Type.Integer(), Type.Null()]),
  error: Type.Union([Type.String(), Type.Null()]),
  outputs: Type.Array(FileRef),
  /** Digest over the task's outputs (sha256 of canonical JSON of the sorted output list). */
  outputDigest: Type.Union([Type.String(), Type.Null()]),
  /** Price per hour of the current or last lease (credits), and what it has cost so far (refuted results not counted). */
  pricePerHour: Type.Union([Type.String(), Type.Null()]),
  cost: Type.String(),
  /**
   * The result's verification (absent until the task has a completed result, or when the job
   * opted out): `pending` while its audit window is open (earnings not yet paid), then
   * `verified` or `failed`; `disputed` while a dispute is decided. `auditSeed` reveals the
   * secret behind the lease's audit commitment once the result is in.
   */
  verification: Type.Optional(
    Type.Object({
      state: Type.Union([Type.Literal('pending'), Type.Literal('verified'), Type.Literal('disputed'), Type.Literal('failed')]),
      pendingUntil: Type.Union([Type.String(), Type.Null()]),
      auditSeed: Type.Union([Type.String(), Type.Null()]),
      checks: Type.Array(CheckView),
    }),
  ),
  /**
   * Earlier results of this task that checks proved wrong, oldest first (absent when none): the
   * task ran again, inside the job, on a provider of another operator. What a refuted attempt
   * charged is not the requester's to pay — it went back into the job's budget, which paid for the
   * re-run — and counts neither in `cost` nor in the job's `money.spent`.
   */
  refuted: Type.Optional(
    Type.Array(
      Type.Object({
        leaseId: Type.String(),
        providerId: Type.String(),
        providerName: Type.Union([Type.String(), Type.Null()]),
        finishedAt: Type.Union([Type.String(), Type.Null()]),
        /** What the attempt had charged (credits), returned. */
        charged: Type.String(),
        checks: Type.Array(CheckView),
      }),
    ),
  ),
});
export type TaskView = Type.Static<typeof TaskView>;

export const JobView = Type.Object({
  id: Type.String(),
  name: Type.String(),
  kind: Type.String(),
  owner: Type.String(),
  state: JobState,
  error: Type.Union([Type.String(), Type.Null()]),
  createdAt: Type.String(),
  updatedAt: Type.String(),
  tasks: Type.Array(TaskView),
  money: Type.Object({
    budget: Type.String(),
    maxPerHour: Type.String(),
    /** Paid to providers so far (settled and metered); refuted results, returned to the requester, are not counted. */
    spent: Type.String(),
    /** Still held for this job (budget left plus lease escrows); returned when the job ends. */
    held: Type.String(),
    /** Set while the budget cannot fund the job's leases; they stop when the grace period ends. */
    lowBalanceSince: Type.Union([Type.String(), Type.Null()]),
  }),
  /** While tasks wait: why they do not match (see GET /v1/market/explain). */
  explain: Type.Optional(Type.Unknown()),
});
export type JobView = Omit<Type.Static<typeof JobView>, 'state' | 'explain'> & { state: JobState; explain?: MatchExplanation };

export const JobSummary = Type.Object({
  id: Type.String(),
  name: Type.String(),
  state: JobState,
  createdAt: Type.String(),
  tasks: Type.Integer(),
  tasksDone: Type.Integer(),
});
export type JobSummary = Omit<Type.Static<typeof JobSummary>, 'state'> & { state: JobState };

export const LogEntry = Type.Object({
  taskIndex: Type.Integer(),
  leaseId: Type.String(),
  seq: Type.Integer(),
  stream: Type.Union([Type.Literal('stdout'), Type.Literal('stderr'), Type.Literal('system')]),
  data: Type.String(),
  ts: Type.String(),
});
export type LogEntry = Type.Static<typeof LogEntry>;

/** Events of `GET /v1/jobs/:id/events` (NDJSON): a snapshot on connect and on every change. */
export type JobEvent = { type: 'job'; job: JobView };

export const TERMINAL_JOB_STATES: readonly JobState[] = ['succeeded', 'failed', 'cancelled'];
