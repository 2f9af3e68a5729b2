/** Payloads the SDK reads that have no schema in @gridwork/protocol yet. */
import type { Asks, Benchmarks, Hardware } from '@gridwork/protocol';

/** One provider as `GET /v1/providers` lists it. */
export interface ProviderListing {
  id: string;
  name: string;
  state: 'online' | 'draining' | 'offline';
  /** Connected to this coordinator right now. */
  connected: boolean;
  hardware: Hardware;
  attributes: Record<string, string>;
  asks: Asks | null;
  benchmarks: Benchmarks | null;
  slots: number;
  /** 0..1 from lease history ((completed + 1) / (completed + faulted + 2)). */
  reputation: number;
  leasesCompleted: number;
  leasesFaulted: number;
  /** Staked credits (decimal string). */
  stake: string;
  lastSeenAt: string;
}
