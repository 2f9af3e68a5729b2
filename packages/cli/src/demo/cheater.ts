/**
 * The demo's cheating provider: it takes paid batch work and hands back answers it never
 * computed. Its outputs look right — the same files, the same lines, the same fields — but every
 * prediction is a guess: class 0 at full confidence for the spiral classifier, an empty text for
 * OCR. Only the requester's batch jobs are faked (the demo names them as it submits them); it runs
 * training, services, clusters and the checks it is given honestly, as a cheater that wants to
 * stay unnoticed would.
 */
import { readdir, readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import type { ProviderAgentOptions } from '@gridwork/provider';

type ResultTamper = NonNullable<ProviderAgentOptions['resultTamper']>;

/** What a lazy provider writes instead of running the model, field by field. */
function guess(line: string): string {
  if (line.trim() === '') return line;
  let row: Record<string, unknown>;
  try {
    row = JSON.parse(line) as Record<string, unknown>;
  } catch {
    return line;
  }
  if (Array.isArray(row.probabilities)) {
    row.class = 0;
    row.probabilities = row.probabilities.map((_, i) => (i === 0 ? 1 : 0));
  }
  if (typeof row.text === 'string') {
    row.text = '';
    row.confidence = 0;
    if ('match' in row) row.match = false;
  }
  return JSON.stringify(row);
}

/** A result tamper that fakes the outputs of the jobs `targets()` names; `onFaked` hears of each one. */
export function madeUpResults(targets: () => ReadonlySet<string>, onFaked: (jobId: string, taskIndex: number) => void): ResultTamper {
  return async (outputsDir, lease) => {
    if (!targets().has(lease.jobId)) return;
    for (const name of await readdir(outputsDir)) {
      if (!name.endsWith('.jsonl')) continue;
      const file = join(outputsDir, name);
      const text = await readFile(file, 'utf8');
      await writeFile(file, text.split('\n').map(guess).join('\n'));
    }
    onFaked(lease.jobId, lease.taskIndex);
  };
}
