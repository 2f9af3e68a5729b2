// The SDK's declarations use Node's types (Buffer, streams): bring them into any project that
// imports it, even one whose tsconfig lists no "types" (the default of `tsc --init`).
/// <reference types="node" preserve="true" />
/**
 * @gridwork/sdk — the requester's client library. Start with `GridworkClient.fromEnv()` (same
 * settings as the `gridwork` CLI) or `new GridworkClient({ url, identity })`.
 */
export {
  GridworkClient,
  type ClientOptions,
  type CallOptions,
  type SubmitOptions,
  type MoneyCallOptions,
  type ReconnectOptions,
  type WaitOptions,
  type LogOptions,
  type ConnectionEvent,
} from './client.ts';
export { CoordinatorUnreachableError, NotACoordinatorError, LostContactError, isTransient, unreachableReason, type UnreachableReason } from './errors.ts';
export {
  resolveConfig,
  gridworkHome,
  readConfigFile,
  DEFAULT_COORDINATOR,
  type ConfigOptions,
  type ResolvedConfig,
  type ConfigFile,
  type Profile,
} from './config.ts';
export { normalizeCoordinatorUrl } from './http.ts';
export { type LogLine, LogLineSplitter } from './log-lines.ts';
export type { ProviderListing, DisputeView, ProviderStatus, ProviderCheckEntry, ProviderChallengeEntry } from './types.ts';
export { readSpecFile, parseSpecText } from './spec-file.ts';
export { expandGlob, packBundle, hashFile } from './files.ts';
export { TERMINAL_JOB_STATES, RESULTS_READY_STATES } from './states.ts';
// From the protocol's light entry points only: importing the SDK must not load its schemas.
export { GridworkError, ErrorCode } from '@gridwork/protocol/errors';
export { formatCredits, parseCredits } from '@gridwork/protocol/money';
export type {
  JobSpec,
  JobView,
  TaskView,
  JobState,
  LogEntry,
  JobSummary,
  BalanceView,
  HistoryEntry,
  MarketClass,
  MatchExplanation,
} from '@gridwork/protocol';
export { loadOrCreateIdentity, generateIdentity, type Identity } from '@gridwork/protocol/node';
