/**
 * Do two executions of one task agree? `exact`: the same files with the same bytes (their
 * output digests are equal). `tolerance`: the same files, and each pair either identical or
 * text whose tokens match, numbers within the relative tolerance (|a − b| ≤ tol × max(|a|, |b|, 1e-12)),
 * everything else equal. A file too large to compare as text must be identical.
 */
import type { FileRef } from '@gridwork/protocol';

export type CompareMode = { mode: 'exact' } | { mode: 'tolerance'; tolerance: number };

/** Largest file compared token by token. */
const MAX_TEXT_BYTES = 8 * 1024 * 1024;
const NUMBER = /^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$/;

export async function outputsAgree(
  a: readonly FileRef[],
  b: readonly FileRef[],
  how: CompareMode,
  read: (digest: string) => Promise<Buffer>,
): Promise<{ agree: boolean; detail: string | null }> {
  const byPath = new Map(b.map((f) => [f.path, f]));
  const aPaths = new Set(a.map((f) => f.path));
  // Each side a set of paths (a path twice is no result), and the same set on both sides.
  if (aPaths.size !== a.length || byPath.size !== b.length) return { agree: false, detail: 'an output path is listed twice' };
  if (a.length !== b.length || a.some((f) => !byPath.has(f.path)) || b.some((f) => !aPaths.has(f.path))) {
    const only = [...a.filter((f) => !byPath.has(f.path)).map((f) => f.path), ...b.filter((f) => !a.some((x) => x.path === f.path)).map((f) => f.path)];
    return { agree: false, detail: `different output files (${only.slice(0, 5).join(', ') || 'count differs'})` };
  }
  for (const fa of a) {
    const fb = byPath.get(fa.path) as FileRef;
    if (fa.digest === fb.digest) continue;
    if (how.mode === 'exact') return { agree: false, detail: `${fa.path} differs` };
    if (fa.size > MAX_TEXT_BYTES || fb.size > MAX_TEXT_BYTES) return { agree: false, detail: `${fa.path} differs and is too large to compare within a tolerance` };
    const why = textsAgree((await read(fa.digest)).toString('utf8'), (await read(fb.digest)).toString('utf8'), how.tolerance);
    if (why) return { agree: false, detail: `${fa.path}: ${why}` };
  }
  return { agree: true, detail: null };
}

/** null when the texts agree within the tolerance, else where they first differ. */
export function textsAgree(x: string, y: string, tolerance: number): string | null {
  const tx = x.split(/([\s,;:[\]{}()"]+)/).filter((t) => t !== '');
  const ty = y.split(/([\s,;:[\]{}()"]+)/).filter((t) => t !== '');
  if (tx.length !== ty.length) return `different number of tokens (${tx.length} vs ${ty.length})`;
  for (let i = 0; i < tx.length; i++) {
    const a = tx[i] as string;
    const b = ty[i] as string;
    if (a === b) continue;
    if (NUMBER.test(a) && NUMBER.test(b)) {
      const na = Number(a);
      const nb = Number(b);
      if (Math.abs(na - nb) <= tolerance * Math.max(Math.abs(na), Math.abs(nb), 1e-12)) continue;
      return `token ${i}: ${a} vs ${b} beyond the tolerance ${tolerance}`;
    }
    return `token ${i}: ${JSON.stringify(a.slice(0, 40))} vs ${JSON.stringify(b.slice(0, 40))}`;
  }
  return null;
}
