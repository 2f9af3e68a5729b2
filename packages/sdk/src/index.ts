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
export { resolveConfig, gridworkHome, readConfigFile, DEFAULT_COORDINATOR, type ConfigOptions, type ResolvedConfig, type ConfigFile, type Profile } from './config.ts';
export { normalizeCoordinatorUrl } from './http.ts';
export { type LogLine, LogLineSplitter } from './log-lines.ts';
export type { ProviderListing } from './types.ts';
export { readSpecFile, parseSpecText } from './spec-file.ts';
export { expandGlob, packBundle, hashFile } from './files.ts';
export {
  GridworkError,
  ErrorCode,
  TERMINAL_JOB_STATES,
  type JobSpec,
  type JobView,
  type TaskView,
  type JobState,
  type LogEntry,
  type JobSummary,
  type BalanceView,
  type HistoryEntry,
  type MarketClass,
  type MatchExplanation,
  formatCredits,
  parseCredits,
} from '@gridwork/protocol';
export { loadOrCreateIdentity, generateIdentity, type Identity } from '@gridwork/protocol/node';
