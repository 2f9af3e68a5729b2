/**
 * Reads a job spec from YAML or JSON and validates it; problems name the file and the field.
 * The YAML parser and the spec schema load on first use, not with the SDK.
 */
import { readFile } from 'node:fs/promises';
import type { JobSpec } from '@gridwork/protocol';
import { GridworkError } from '@gridwork/protocol/errors';

export async function parseSpecText(text: string, source: string): Promise<JobSpec> {
  let value: unknown;
  try {
    value = source.endsWith('.json') ? JSON.parse(text) : (await import('yaml')).parse(text, { prettyErrors: true, uniqueKeys: true });
  } catch (err) {
    throw new GridworkError('INVALID_SPEC', `${source}: not valid ${source.endsWith('.json') ? 'JSON' : 'YAML'}: ${(err as Error).message.split('\n')[0]}`);
  }
  const { validateJobSpec } = await import('@gridwork/protocol');
  try {
    return validateJobSpec(value);
  } catch (err) {
    if (err instanceof GridworkError) throw new GridworkError(err.code, `${source}: ${err.message}`, { details: err.details });
    throw err;
  }
}

export async function readSpecFile(path: string): Promise<JobSpec> {
  let text: string;
  try {
    text = await readFile(path, 'utf8');
  } catch (err) {
    throw new GridworkError('BAD_REQUEST', `cannot read ${path}: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}`);
  }
  return parseSpecText(text, path);
}
