/** Folds the network stream into one picture: a snapshot replaces it, a delta patches it (see the coordinator's observe/network-feed.ts). */
import type { NetworkFrame, NetworkSnapshot, ProviderRow } from './types.ts';

/** As many price points as the coordinator keeps. */
const HISTORY_LIMIT = 720;

export function applyNetworkFrame(prev: NetworkSnapshot | undefined, frame: NetworkFrame): NetworkSnapshot | undefined {
  if (frame.type === 'network') return frame;
  // A connection always starts with a snapshot; a delta without one has nothing to patch.
  if (!prev) return prev;
  const removed = new Set(frame.removed ?? []);
  const byId = new Map(prev.providers.filter((p) => !removed.has(p.id)).map((p) => [p.id, p]));
  for (const p of frame.providers ?? []) byId.set(p.id, { ...byId.get(p.id), ...p } as ProviderRow);
  return {
    ...prev,
    at: frame.at,
    providers: [...byId.values()],
    market: frame.market ?? prev.market,
    history: frame.history ? [...prev.history, ...frame.history].slice(-HISTORY_LIMIT) : prev.history,
    leases: frame.leases ?? prev.leases,
  };
}
