export { GridworkClient, type ClientOptions, type CallOptions, type SubmitOptions, type MoneyCallOptions } from './client.ts';
export { readSpecFile, parseSpecText } from './spec-file.ts';
export { expandGlob, packBundle, hashFile } from './files.ts';
export {
  GridworkError,
  ErrorCode,
  type JobSpec,
  type JobView,
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
