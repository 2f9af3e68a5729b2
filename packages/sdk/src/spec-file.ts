/** Reads a job spec from YAML or JSON and validates it; problems name the file and the field. */
import { readFile } from 'node:fs/promises';
import { GridworkError, type JobSpec, validateJobSpec } from '@gridwork/protocol';
import { parse as parseYaml } from 'yaml';

export function parseSpecText(text: string, source: string): JobSpec {
  let value: unknown;
  try {
    value = source.endsWith('.json') ? JSON.parse(text) : parseYaml(text, { prettyErrors: true, uniqueKeys: true });
  } catch (err) {
    throw new GridworkError('INVALID_SPEC', `${source}: not valid ${source.endsWith('.json') ? 'JSON' : 'YAML'}: ${(err as Error).message.split('\n')[0]}`);
  }
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
