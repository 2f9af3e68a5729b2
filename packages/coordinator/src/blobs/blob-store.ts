/**
 * Content-addressed blob storage (bundles, inputs, outputs). Files live under
 * `<dir>/<aa>/<digest>`; a write streams to a temporary file, is hashed on the way, and is
 * renamed into place only when the digest matches, so a blob on disk is always whole.
 * The `blobs` table records which digests exist; the interface lets an object store replace
 * the directory later.
 */
import { createHash, randomBytes } from 'node:crypto';
import { createReadStream, createWriteStream } from 'node:fs';
import { mkdir, rename, rm, stat } from 'node:fs/promises';
import { join } from 'node:path';
import type { Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { GridworkError } from '@gridwork/protocol';

export interface BlobStore {
  has(digest: string): Promise<boolean>;
  /** Stores a stream whose sha256 must equal `digest`; returns its size. */
  put(digest: string, body: Readable, maxBytes: number): Promise<number>;
  open(digest: string): Promise<{ stream: Readable; size: number }>;
}

export class FileBlobStore implements BlobStore {
  constructor(private readonly dir: string) {}

  private pathOf(digest: string): string {
    return join(this.dir, digest.slice(0, 2), digest);
  }

  async has(digest: string): Promise<boolean> {
    try {
      await stat(this.pathOf(digest));
      return true;
    } catch {
      return false;
    }
  }

  async put(digest: string, body: Readable, maxBytes: number): Promise<number> {
    const final = this.pathOf(digest);
    await mkdir(join(this.dir, digest.slice(0, 2)), { recursive: true });
    const tmp = `${final}.${randomBytes(6).toString('hex')}.tmp`;
    const hash = createHash('sha256');
    let size = 0;
    try {
      await pipeline(
        body,
        async function* (source: AsyncIterable<Buffer>) {
          for await (const chunk of source) {
            size += chunk.length;
            if (size > maxBytes) throw new GridworkError('PAYLOAD_TOO_LARGE', `blob exceeds the limit of ${maxBytes} bytes`);
            hash.update(chunk);
            yield chunk;
          }
        },
        createWriteStream(tmp, { flags: 'wx' }),
      );
      const actual = hash.digest('hex');
      if (actual !== digest) {
        throw new GridworkError('DIGEST_MISMATCH', `body sha256 is ${actual}, not ${digest}`);
      }
      await rename(tmp, final);
      return size;
    } finally {
      await rm(tmp, { force: true });
    }
  }

  async open(digest: string): Promise<{ stream: Readable; size: number }> {
    const path = this.pathOf(digest);
    const s = await stat(path).catch(() => {
      throw new GridworkError('BLOB_MISSING', `blob ${digest} does not exist`);
    });
    return { stream: createReadStream(path), size: s.size };
  }
}
