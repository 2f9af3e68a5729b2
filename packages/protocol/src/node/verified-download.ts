/**
 * Writes a downloaded content-addressed blob to disk, hashing it on the way: the bytes land at
 * `dest` (renamed from a temporary file) only if their sha256 is `digest`. The temporary file is
 * created new (O_CREAT | O_EXCL, which never follows a symlink; anything at its name is unlinked
 * first): a provider's task can write in directories its agent downloads into (a cluster's
 * exchange rounds), and a symlink planted at the temporary name would otherwise have the agent
 * write wherever it points.
 */
import { createHash } from 'node:crypto';
import { createWriteStream } from 'node:fs';
import { mkdir, rename, rm } from 'node:fs/promises';
import { dirname } from 'node:path';
import { Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import type { ReadableStream as WebReadableStream } from 'node:stream/web';
import { GridworkError } from '../errors.ts';

export async function writeVerified(res: Response, dest: string, digest: string): Promise<void> {
  if (!res.body) throw new GridworkError('NETWORK_ERROR', `empty download of ${digest}`);
  await mkdir(dirname(dest), { recursive: true });
  const tmp = `${dest}.part`;
  const hash = createHash('sha256');
  // Whatever is there (a leftover of an interrupted download, or a planted link) is unlinked, never followed.
  await rm(tmp, { force: true });
  try {
    await pipeline(
      Readable.fromWeb(res.body as unknown as WebReadableStream<Uint8Array>),
      async function* (src: AsyncIterable<Buffer>) {
        for await (const c of src) {
          hash.update(c);
          yield c;
        }
      },
      createWriteStream(tmp, { flags: 'wx' }),
    );
    if (hash.digest('hex') !== digest) throw new GridworkError('DIGEST_MISMATCH', `downloaded bytes of ${digest} do not match their digest`);
    await rename(tmp, dest);
  } finally {
    await rm(tmp, { force: true });
  }
}
