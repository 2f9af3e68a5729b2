/**
 * Messages on the provider ↔ coordinator WebSocket.
 *
 * Both directions carry sequenced messages (`seq` > 0, per sender, starting after what the
 * peer last acknowledged) and unsequenced control messages (hello, welcome, ack, heartbeat).
 * A receiver applies a sequenced message only if its seq is exactly one more than the last it
 * applied, records that seq durably together with the effect, and acks. A sender keeps every
 * unacked message and resends it after reconnecting, so nothing is lost or applied twice.
 */
import Type from 'typebox';
import { FileRef, InputSet } from './api.ts';
import { Hardware, HARDWARE_LIMITS } from './hardware.ts';
import { Asks, Benchmarks } from './market.ts';
import { Resources } from './job-spec.ts';
import type { CapacityChallenge } from './challenge.ts';
import { RUNTIME_KINDS, RuntimeKindSchema, WorkloadKindSchema } from './runtimes.ts';

export const PROTOCOL_VERSION = 1;

/** Agents retry a lost connection with exponential backoff capped at this; coordinators give them this long after a restart. */
export const RECONNECT_MAX_BACKOFF_MS = 5000;

/**
 * The most bytes one message on the provider channel may take (its JSON, UTF-8). The agent never
 * sends a bigger one (log batches are split well below it); the coordinator answers a bigger one
 * with a PAYLOAD_TOO_LARGE error and keeps the connection.
 */
export const MAX_MESSAGE_BYTES = 1024 * 1024;

/**
 * The coordinator's WebSocket frame limit (`maxPayload`). Above MAX_MESSAGE_BYTES on purpose: a
 * message between the two is still read, so it can be refused with a typed error; only a bigger
 * one makes the socket close (code 1009).
 */
export const WS_MAX_PAYLOAD_BYTES = 4 * 1024 * 1024;

/** Task output an agent logs per lease by default; beyond it the log ends with a truncation marker. */
export const DEFAULT_LEASE_LOG_BYTES = 8 * 1024 * 1024;

/**
 * The most log bytes a coordinator stores for one lease, whatever its provider sends: the agent's
 * default cap and room for its marker line. A provider that sends more (a modified agent, or one
 * configured above the default) is truncated here, with a marker of the coordinator's own.
 */
export const MAX_STORED_LEASE_LOG_BYTES = DEFAULT_LEASE_LOG_BYTES + 64 * 1024;

export const LeaseAssignment = Type.Object({
  leaseId: Type.String(),
  taskId: Type.String(),
  jobId: Type.String(),
  taskIndex: Type.Integer(),
  taskCount: Type.Integer(),
  runtime: Type.Object({
    kind: WorkloadKindSchema,
    command: Type.Array(Type.String()),
    env: Type.Record(Type.String(), Type.String()),
    network: Type.Boolean(),
    image: Type.Optional(Type.String()),
  }),
  bundle: Type.Union([Type.Object({ manifest: Type.String() }), Type.Null()]),
  inputs: Type.Array(InputSet),
  resources: Resources,
  /** Indices of the provider's GPUs reserved for this lease. */
  gpus: Type.Array(Type.Integer({ minimum: 0 })),
  timeoutSeconds: Type.Integer(),
  /**
   * The coordinator's commitment to this lease's audit randomness: hex sha256 of a secret seed it
   * reveals only after the provider committed to its result (commit–reveal, trust layer L2).
   */
  auditCommitment: Type.Optional(Type.String({ pattern: '^[0-9a-f]{64}$' })),
  /**
   * Resume from a checkpoint (the task's latest, written on an earlier lease): the agent puts the
   * file in the task's checkpoints directory and sets GRIDWORK_RESUME_STEP.
   */
  resume: Type.Optional(Type.Object({ step: Type.Integer({ minimum: 0 }), file: FileRef }, { additionalProperties: false })),
  /** Re-execute one segment only: the task stops after writing checkpoint `stopStep` (GRIDWORK_STOP_STEP). */
  stopStep: Type.Optional(Type.Integer({ minimum: 0 })),
  /**
   * A service replica: the task serves HTTP on `port` (PORT is set), is healthy while GET
   * `healthPath` answers 2xx, and must be healthy within `startupTimeoutSeconds`. The agent's
   * ingress forwards the coordinator's requests for this lease to it, accepting only `token`.
   */
  /** A cluster member: its rank among `worldSize` (RANK, WORLD_SIZE; files relayed through GRIDWORK_EXCHANGE). */
  cluster: Type.Optional(Type.Object({ rank: Type.Integer({ minimum: 0 }), worldSize: Type.Integer({ minimum: 2 }) }, { additionalProperties: false })),
  service: Type.Optional(
    Type.Object(
      {
        port: Type.Integer({ minimum: 1, maximum: 65535 }),
        healthPath: Type.String({ maxLength: 256 }),
        startupTimeoutSeconds: Type.Integer({ minimum: 1 }),
        token: Type.String({ minLength: 32, maxLength: 128 }),
      },
      { additionalProperties: false },
    ),
  ),
});
export type LeaseAssignment = Type.Static<typeof LeaseAssignment>;

const Seq = Type.Integer({ minimum: 1 });
const Hex64 = Type.String({ pattern: '^[0-9a-f]{64}$' });
const Int32 = Type.Integer({ minimum: -2147483648, maximum: 2147483647 });
const Proof = Type.Array(Hex64, { maxItems: 48 });

export const LogChunk = Type.Object({
  stream: Type.Union([Type.Literal('stdout'), Type.Literal('stderr'), Type.Literal('system')]),
  data: Type.String({ maxLength: 65536 }),
  /** Milliseconds since the epoch (up to the year 2286). */
  ts: Type.Integer({ minimum: 0, maximum: 9_999_999_999_999 }),
});
export type LogChunk = Type.Static<typeof LogChunk>;

const Message = Type.String({ maxLength: 4096 });

/**
 * How a lease ended on the provider. `exited` with code 0 is success; any other `exited`,
 * `timeout` and `limit` are the workload's own failure (deterministic: not retried); `cancelled`
 * answers a coordinator cancel; `error` is the provider's fault (fetching files, uploading
 * outputs, the runtime itself): the task is retried elsewhere.
 */
export const LeaseEnd = Type.Union([
  Type.Object({ kind: Type.Literal('exited'), exitCode: Type.Integer({ minimum: 0, maximum: 255 }), signal: Type.Optional(Type.String({ maxLength: 16 })) }, { additionalProperties: false }),
  Type.Object({ kind: Type.Literal('timeout'), limitSeconds: Type.Integer({ minimum: 0 }) }, { additionalProperties: false }),
  Type.Object(
    {
      kind: Type.Literal('limit'),
      /** `outputs`: more output files than one report of at most MAX_MESSAGE_BYTES can list, or outputs the agent cannot read back (names that are not UTF-8, a tree nested too deep, files swapped while read). */
      limit: Type.Union([Type.Literal('memory'), Type.Literal('processes'), Type.Literal('disk'), Type.Literal('outputs')]),
      message: Message,
    },
    { additionalProperties: false },
  ),
  Type.Object({ kind: Type.Literal('cancelled') }, { additionalProperties: false }),
  Type.Object({ kind: Type.Literal('error'), message: Message }, { additionalProperties: false }),
]);
export type LeaseEnd = Type.Static<typeof LeaseEnd>;

export const ProviderSequenced = Type.Union([
  Type.Object({ seq: Seq, type: Type.Literal('lease.started'), leaseId: Type.String() }, { additionalProperties: false }),
  Type.Object(
    { seq: Seq, type: Type.Literal('lease.log'), leaseId: Type.String(), chunks: Type.Array(LogChunk, { maxItems: 1000 }) },
    { additionalProperties: false },
  ),
  Type.Object(
    {
      seq: Seq,
      type: Type.Literal('lease.finished'),
      leaseId: Type.String(),
      /** How the task ended, as a typed value: the coordinator never parses error strings. */
      outcome: LeaseEnd,
      durationMs: Type.Integer({ minimum: 0, maximum: 31_536_000_000_000 }),
      outputs: Type.Array(FileRef, { maxItems: 10000 }),
      /**
       * The provider's signed commitment (commitment.ts): a Merkle root over `outputs` and an
       * Ed25519 signature over `leaseCommitmentMessage`. A commitment that does not match is a
       * proven fault. Optional on the wire while raw-protocol clients catch up; the agent always sends it.
       */
      commitment: Type.Optional(
        Type.Object({ outputsRoot: Hex64, signature: Type.String({ maxLength: 128 }) }, { additionalProperties: false }),
      ),
    },
    { additionalProperties: false },
  ),
  /**
   * The task wrote a checkpoint (`/checkpoints/step-<N>.*`) and the agent uploaded it. `usageMs` is
   * the lease's run time when it was written (what a lost lease is paid up to); the signature over
   * `checkpointMessage` makes its digest a commitment (disputes bisect over these).
   */
  Type.Object(
    {
      seq: Seq,
      type: Type.Literal('lease.checkpoint'),
      leaseId: Type.String(),
      step: Type.Integer({ minimum: 0, maximum: 2_147_483_647 }),
      file: FileRef,
      usageMs: Type.Integer({ minimum: 0, maximum: 31_536_000_000_000 }),
      signature: Type.String({ maxLength: 128 }),
    },
    { additionalProperties: false },
  ),
  /** A cluster member published exchange round `round` (`exchange/out/round-<r>.json`, uploaded as a blob). */
  Type.Object(
    { seq: Seq, type: Type.Literal('lease.exchange'), leaseId: Type.String(), round: Type.Integer({ minimum: 1, maximum: 2_147_483_647 }), file: FileRef },
    { additionalProperties: false },
  ),
  /** A service replica's health changed: `healthy` (it serves: the ingress routes to it) or `unhealthy`. */
  Type.Object(
    { seq: Seq, type: Type.Literal('lease.service'), leaseId: Type.String(), health: Type.Union([Type.Literal('healthy'), Type.Literal('unhealthy')]) },
    { additionalProperties: false },
  ),
  /** A capacity challenge's roots (Merkle over result rows, and over memory blocks), signed: `committedMessage`. */
  Type.Object(
    { seq: Seq, type: Type.Literal('challenge.committed'), challengeId: Type.String({ maxLength: 64 }), matrixRoot: Hex64, memoryRoot: Hex64, signature: Type.String({ maxLength: 128 }) },
    { additionalProperties: false },
  ),
  /** The opened rows and memory blocks with their proofs, signed: `openedMessage`. */
  Type.Object(
    {
      seq: Seq,
      type: Type.Literal('challenge.opened'),
      challengeId: Type.String({ maxLength: 64 }),
      rows: Type.Array(Type.Object({ index: Type.Integer({ minimum: 0 }), values: Type.Array(Int32, { maxItems: 4096 }), proof: Proof }, { additionalProperties: false }), {
        maxItems: 64,
      }),
      blocks: Type.Array(
        Type.Object({ index: Type.Integer({ minimum: 0 }), words: Type.Array(Int32, { maxItems: 256 }), proof: Proof }, { additionalProperties: false }),
        { maxItems: 3 * 64 },
      ),
      signature: Type.String({ maxLength: 128 }),
    },
    { additionalProperties: false },
  ),
  /** A debit note: cumulative run time of a lease, signed by the provider (canonical JSON of {leaseId, usageMs}). */
  Type.Object(
    { seq: Seq, type: Type.Literal('lease.usage'), leaseId: Type.String(), usageMs: Type.Integer({ minimum: 0, maximum: 31_536_000_000_000 }), signature: Type.String({ maxLength: 128 }) },
    { additionalProperties: false },
  ),
  Type.Object({ seq: Seq, type: Type.Literal('provider.asks'), asks: Asks, signature: Type.String({ maxLength: 128 }) }, { additionalProperties: false }),
  Type.Object(
    { seq: Seq, type: Type.Literal('lease.released'), leaseId: Type.String(), reason: Type.String({ maxLength: 1024 }) },
    { additionalProperties: false },
  ),
  Type.Object(
    { seq: Seq, type: Type.Literal('provider.state'), state: Type.Union([Type.Literal('online'), Type.Literal('draining'), Type.Literal('offline')]) },
    { additionalProperties: false },
  ),
]);
export type ProviderSequenced = Type.Static<typeof ProviderSequenced>;

export const ProviderHello = Type.Object(
  {
    type: Type.Literal('hello'),
    protocol: Type.Literal(PROTOCOL_VERSION),
    name: Type.String({ minLength: 1, maxLength: 64 }),
    agentVersion: Type.String({ maxLength: 64 }),
    /** The runtime that runs this agent's bundles (or its only runtime). */
    runtime: RuntimeKindSchema,
    /**
     * Every runtime the agent offers, `runtime` included (a container runtime only where its engine
     * answered). Absent from agents that offer `runtime` alone.
     */
    runtimes: Type.Optional(Type.Array(RuntimeKindSchema, { minItems: 1, maxItems: RUNTIME_KINDS.length, uniqueItems: true })),
    slots: Type.Integer({ minimum: 1, maximum: 1024 }),
    hardware: Hardware,
    attributes: Type.Record(Type.String({ maxLength: 64 }), Type.String({ maxLength: 256 }), { maxProperties: HARDWARE_LIMITS.attributes }),
    /** Standing asks, signed: Ed25519 over canonical JSON of { asks, instance }. */
    asks: Asks,
    asksSignature: Type.String({ maxLength: 128 }),
    benchmarks: Benchmarks,
    /** Whether this agent bids in auctions (it runs a pricing script). */
    bids: Type.Boolean(),
    /** Random per agent process: a new instance means the old one's leases are gone. */
    instance: Type.String({ minLength: 8, maxLength: 64 }),
    /** Where the coordinator reaches this agent's service ingress (http://host:port); absent: it runs no services. */
    ingressUrl: Type.Optional(Type.String({ pattern: '^https?://[A-Za-z0-9.:\\-\\[\\]]+$', maxLength: 256 })),
    /** Highest coordinator seq this agent has applied. */
    lastApplied: Type.Integer({ minimum: 0 }),
    /** Leases the agent is running right now (after a reconnect). */
    running: Type.Array(Type.String(), { maxItems: 1024 }),
  },
  { additionalProperties: false },
);
export type ProviderHello = Type.Static<typeof ProviderHello>;

export const ProviderMessage = Type.Union([
  ProviderHello,
  Type.Object({ type: Type.Literal('ack'), seq: Seq }, { additionalProperties: false }),
  Type.Object({ type: Type.Literal('heartbeat'), running: Type.Array(Type.String(), { maxItems: 1024 }) }, { additionalProperties: false }),
  /** A bid in an auction window; signed over canonical JSON of { orderId, pricePerHour }. */
  Type.Object(
    {
      type: Type.Literal('bid'),
      orderId: Type.String({ maxLength: 64 }),
      pricePerHour: Type.String({ maxLength: 32 }),
      signature: Type.String({ maxLength: 128 }),
    },
    { additionalProperties: false },
  ),
  ProviderSequenced,
]);
export type ProviderMessage = Type.Static<typeof ProviderMessage>;

export type CoordinatorSequenced =
  | { seq: number; type: 'lease.assign'; lease: LeaseAssignment }
  | { seq: number; type: 'lease.cancel'; leaseId: string; reason: string }
  /** Every member of the lease's cluster published round `round`: their files, by rank, to put in its exchange `in/`. */
  | { seq: number; type: 'exchange.round'; leaseId: string; round: number; files: { rank: number; digest: string; size: number }[] }
  /** A capacity challenge (L1): compute, commit to the roots by `deadlineMs`. */
  | { seq: number; type: 'challenge.issue'; challenge: CapacityChallenge }
  /** The secret behind the challenge's `openCommitment`: open the rows and blocks it picks, within `answerWithinMs`. */
  | { seq: number; type: 'challenge.open'; challengeId: string; openSeed: string; answerWithinMs: number };

export type CoordinatorMessage =
  | {
      type: 'welcome';
      providerId: string;
      /** Highest provider seq the coordinator has applied: resend everything after it. */
      lastApplied: number;
      heartbeatIntervalMs: number;
      /** How often to send `lease.usage` for each running lease. */
      meteringIntervalMs: number;
    }
  /** An order open for bids until `closesAt` (ms since epoch); answered with `bid` or nothing. */
  | { type: 'order.announce'; orderId: string; resources: Type.Static<typeof Resources>; maxPerHour: string; closesAt: number }
  | { type: 'ack'; seq: number }
  | { type: 'error'; code: string; message: string }
  | CoordinatorSequenced;
