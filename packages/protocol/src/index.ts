/**
 * @gridwork/protocol — the contract between coordinator, providers and requesters: schemas,
 * wire messages, error codes, money, canonical JSON, request signing formats, and the trust
 * primitives (Merkle trees, capacity challenges, result commitments). Isomorphic: Node-only
 * helpers (keys, signing, signed fetch) are in `@gridwork/protocol/node`. Each export is listed
 * by name: what is not here is internal to its module.
 */
export {
  type ErrorBody,
  ErrorCode,
  GridworkError,
  httpStatusOf,
  isErrorCode,
} from './errors.ts';
export {
  formatCredits,
  MAX_MICROS,
  type Micros,
  MICROS_PER_CREDIT,
  parseCredits,
  type ParseCreditsOptions,
} from './money.ts';
export {
  canonicalJson,
} from './canonical-json.ts';
export {
  ID_PATTERN,
  type IdPrefix,
  newId,
} from './ids.ts';
export {
  GpuRequest,
  InputSpec,
  JobSpec,
  KNOWN_GPU_MODELS,
  nearest,
  Resources,
  RuntimeSpec,
  type SpecProblem,
  validateJobSpec,
} from './job-spec.ts';
export {
  ACCOUNT_ID_PATTERN,
  AuthHeader,
  canonicalRequest,
  MAX_CLOCK_SKEW_MS,
  type RequestToSign,
  SHA256_PATTERN,
} from './auth.ts';
export {
  BundleManifest,
  Digest,
  FileRef,
  InputSet,
  type JobEvent,
  JobState,
  JobSummary,
  JobView,
  type LeaseState,
  LogEntry,
  RelPath,
  SubmitJobRequest,
  type TaskState,
  TaskView,
  TERMINAL_JOB_STATES,
} from './api.ts';
export {
  GpuInfo,
  Hardware,
  HARDWARE_LIMITS,
} from './hardware.ts';
export {
  INGRESS_PROOF_PATH,
  ingressProofMessage,
} from './ingress-proof.ts';
export {
  type CoordinatorMessage,
  DEFAULT_LEASE_LOG_BYTES,
  MAX_STORED_LEASE_LOG_BYTES,
  type CoordinatorSequenced,
  LeaseAssignment,
  LeaseEnd,
  LogChunk,
  MAX_MESSAGE_BYTES,
  PROTOCOL_VERSION,
  ProviderHello,
  ProviderMessage,
  ProviderSequenced,
  RECONNECT_MAX_BACKOFF_MS,
  WS_MAX_PAYLOAD_BYTES,
} from './wire.ts';
export {
  formatRuntimeList,
  isRuntimeKind,
  offeredRuntimes,
  offersWorkload,
  parseRuntimeList,
  RUNTIME_KINDS,
  RUNTIMES,
  type RuntimeKind,
  RuntimeKindSchema,
  runtimeFor,
  runtimeNameFor,
  WORKLOAD_KINDS,
  WORKLOADS,
  type WorkloadKind,
  WorkloadKindSchema,
} from './runtimes.ts';
export {
  GRIDWORK_VERSION,
} from './version.ts';
export {
  Asks,
  BENCHMARK_LIMITS,
  Benchmarks,
  type MarketClass,
  type MatchExplanation,
  type ProviderListing,
} from './market.ts';
export {
  AmountRequest,
  type BalanceView,
  CreditRequest,
  type HistoryEntry,
  IdempotencyKey,
} from './account.ts';
export {
  fromHex,
  type HashFn,
  leafHash,
  MerkleTree,
  outputLeaf,
  outputsRoot,
  toHex,
  verifyMerkleProof,
} from './merkle.ts';
export {
  type CapacityChallenge,
  challengeMatrices,
  checkMemoryOpening,
  committedMessage,
  dot,
  fillMemory,
  matVec,
  MEMORY_BLOCK_BYTES,
  MEMORY_BLOCK_WORDS,
  memoryBlock,
  memoryParent,
  multiplyRows,
  openCommitmentOf,
  type OpenedBlock,
  openedIndices,
  openedMessage,
  type OpenedRow,
  productRow,
  SeededRandom,
  wordBytes,
  wordsLeaf,
} from './challenge.ts';
export type { DisputeView, ProviderChallengeEntry, ProviderCheckEntry, ProviderStatus } from './provider-status.ts';
export {
  type CheckpointCommitmentFields,
  checkpointMessage,
  checkpointStep,
  type LeaseCommitmentFields,
  leaseCommitmentMessage,
} from './commitment.ts';

