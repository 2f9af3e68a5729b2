/** An identity on disk: `{ publicKey, privateKey }` JSON, mode 0600, created on first use. */
import { mkdir, readFile, writeFile } from 'node:fs/promises';
import { dirname } from 'node:path';
import { GridworkError } from '../errors.ts';
import { generateIdentity, type Identity } from './signing.ts';

export async function loadOrCreateIdentity(path: string): Promise<Identity> {
  let text: string | undefined;
  try {
    text = await readFile(path, 'utf8');
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err;
  }
  if (text === undefined) {
    const id = generateIdentity();
    await mkdir(dirname(path), { recursive: true, mode: 0o700 });
    try {
      await writeFile(path, `${JSON.stringify(id, null, 2)}\n`, { mode: 0o600, flag: 'wx' });
      return id;
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err;
      text = await readFile(path, 'utf8'); // another process created it first
    }
  }
  const parsed = JSON.parse(text) as Partial<Identity>;
  if (typeof parsed.publicKey !== 'string' || typeof parsed.privateKey !== 'string') {
    throw new GridworkError('BAD_REQUEST', `key file ${path} is not a Gridwork identity`);
  }
  return { publicKey: parsed.publicKey, privateKey: parsed.privateKey };
}
