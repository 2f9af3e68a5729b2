/** Payloads the SDK reads, as the protocol defines them (types only: nothing of the protocol's schemas is loaded). */
export type { DisputeView, ProviderChallengeEntry, ProviderCheckEntry, ProviderListing, ProviderStatus } from '@gridwork/protocol';
