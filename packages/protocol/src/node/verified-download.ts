/**
 * Writes a downloaded content-addressed blob to disk, hashing it on the way: the bytes land at
 * `dest` (renamed from a temporary file) only if their sha256 is `digest`.
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
  try {
    await pipeline(
      Readable.fromWeb(res.body as unknown as WebReadableStream<Uint8Array>),
      async function* (src: AsyncIterable<Buffer>) {
        for await (const c of src) {
          hash.update(c);
          yield c;
        }
      },
      createWriteStream(tmp),
    );
    if (hash.digest('hex') !== digest) throw new GridworkError('DIGEST_MISMATCH', `downloaded bytes of ${digest} do not match their digest`);
    await rename(tmp, dest);
  } finally {
    await rm(tmp, { force: true });
  }
}
