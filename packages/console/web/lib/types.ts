/** API payload types the console reads (type-only imports from the protocol package, plus the live feed's shape). */
export type { JobSummary, JobView, LogEntry, TaskView } from '../../../protocol/src/api.ts';
export type { MarketClass, MatchExplanation } from '../../../protocol/src/market.ts';

export interface GpuInfo {
  model: string;
  vramGiB: number;
}

export interface ProviderRow {
  id: string;
  name: string;
  state: 'online' | 'draining' | 'offline';
  hardware: { cpu?: { cores: number; model: string }; memoryGiB?: number; gpus?: GpuInfo[] } | null;
  attributes: Record<string, string>;
  slots: number;
  reputation: number;
  leasesCompleted: number;
  leasesFaulted: number;
  stake: string;
  lastSeenAt: string;
  activeLeases: number;
}

export interface PricePoint {
  at: number;
  classes: Record<string, { min: string; median: string; max: string; freeUnits: number }>;
}

export interface NetworkSnapshot {
  type: 'network';
  at: string;
  providers: ProviderRow[];
  market: import('../../../protocol/src/market.ts').MarketClass[];
  history: PricePoint[];
  leases: { placed: number; ended: Record<string, number> };
}

/** What changed since the previous frame of the same stream; absent fields did not change. */
export interface NetworkDelta {
  type: 'network.delta';
  at: string;
  /** Whole rows for providers new to the stream, else the id and the changed fields. */
  providers?: (Partial<ProviderRow> & { id: string })[];
  removed?: string[];
  market?: NetworkSnapshot['market'];
  /** New points only. */
  history?: PricePoint[];
  leases?: NetworkSnapshot['leases'];
}

export type NetworkFrame = NetworkSnapshot | NetworkDelta;

export interface Balance {
  account: string;
  available: string;
  held: string;
  stake: string;
  unbonding: string;
}

export interface HistoryEntry {
  id: string;
  kind: string;
  at: string;
  change: string;
  postings: { account: string; amount: string }[];
  memo: unknown;
}

export interface OperatorReport {
  totals: Record<string, string>;
  fees: string;
  reserve: string;
  ledger: { ok: boolean; total: string; mismatched: string[]; negative: string[]; transactions: number; postings: number };
}
