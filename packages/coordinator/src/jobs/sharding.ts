/**
 * Splits a job's inputs into tasks. Files of sharded input sets are dealt round-robin in
 * path order, so the split is deterministic (a resubmission shards identically); unsharded
 * sets go to every task whole.
 */
import { GridworkError, type InputSet } from '@gridwork/protocol';

export function shardInputs(inputs: readonly InputSet[], shards: number): InputSet[][] {
  for (const set of inputs) {
    if (set.shard && set.files.length < shards) {
      throw new GridworkError('INVALID_SPEC', `shards: ${shards} is more than the ${set.files.length} file(s) of sharded input "${set.name}"`, {
        details: [{ path: 'shards', message: `at most ${set.files.length} for input ${set.name}` }],
      });
    }
  }
  return Array.from({ length: shards }, (_, task) =>
    inputs.map((set) => {
      if (!set.shard) return set;
      const sorted = [...set.files].sort((a, b) => (a.path < b.path ? -1 : a.path > b.path ? 1 : 0));
      return { ...set, files: sorted.filter((_, i) => i % shards === task) };
    }),
  );
}
