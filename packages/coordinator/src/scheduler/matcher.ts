/**
 * The matcher picks a provider for a task. This first one is first-fit by resource filters,
 * spreading load to the provider with the most free slots; the market (price, performance,
 * reputation, auctions) replaces it behind the same interface.
 */
import type { Hardware, Resources } from '@gridwork/protocol';

export interface Candidate {
  id: string;
  hardware: Hardware;
  attributes: Record<string, string>;
  freeSlots: number;
}

export interface Placement {
  resources: Resources;
  regions?: readonly string[] | undefined;
}

export interface Matcher {
  /** Returns the chosen candidate's index in `candidates`, or -1 if none fits. */
  pick(placement: Placement, candidates: readonly Candidate[]): number;
}

export function fits(placement: Placement, c: Candidate): boolean {
  const r = placement.resources;
  if (c.freeSlots <= 0) return false;
  if (r.cpu > c.hardware.cpu.cores) return false;
  if (r.memoryGiB > c.hardware.memoryGiB) return false;
  if (r.diskGiB !== undefined && r.diskGiB > c.hardware.diskGiB) return false;
  if (placement.regions && placement.regions.length > 0 && !placement.regions.includes(c.attributes.region ?? '')) return false;
  const gpu = r.gpu;
  if (gpu && gpu.count > 0) {
    const usable = c.hardware.gpus.filter(
      (g) => (!gpu.models || gpu.models.length === 0 || gpu.models.includes(g.model)) && (gpu.minVramGiB === undefined || g.vramGiB >= gpu.minVramGiB),
    );
    if (usable.length < gpu.count) return false;
  }
  return true;
}

export const firstFitMatcher: Matcher = {
  pick(placement, candidates) {
    let best = -1;
    for (let i = 0; i < candidates.length; i++) {
      const c = candidates[i] as Candidate;
      if (!fits(placement, c)) continue;
      // Most free slots first; id breaks ties so the choice is deterministic.
      const b = candidates[best];
      if (!b || c.freeSlots > b.freeSlots || (c.freeSlots === b.freeSlots && c.id < b.id)) best = i;
    }
    return best;
  },
};
