/**
 * Content-addressed blob storage (bundles, inputs, outputs). Files live under
 * `<dir>/<aa>/<digest>`; a write streams to a temporary file, is hashed on the way, and is
 * renamed into place only when the digest matches, so a blob on disk is always whole.
 * A batch upload stages each blob in a temporary file first and makes them visible only once
 * the whole batch checked out (`stage`, then `commit` or `discard`).
 * The `blobs` table records which digests exist; the interface lets an object store replace
 * the directory later.
 */
import { createHash, randomBytes } from 'node:crypto';
import { createReadStream, createWriteStream } from 'node:fs';
import { mkdir, rename, rm, stat, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import type { Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { GridworkError } from '@gridwork/protocol';

export interface BlobStore {
  has(digest: string): Promise<boolean>;
  /** Stores a stream whose sha256 must equal `digest`; returns its size. */
  put(digest: string, body: Readable, maxBytes: number): Promise<number>;
  open(digest: string): Promise<{ stream: Readable; size: number }>;
  /**
   * Writes bytes whose sha256 must equal `digest` (DIGEST_MISMATCH otherwise) where no reader
   * sees them yet: `commit` makes the blob visible, `discard` removes it.
   */
  stage(digest: string, bytes: Uint8Array): Promise<StagedBlob>;
}

export interface StagedBlob {
  readonly digest: string;
  readonly size: number;
  commit(): Promise<void>;
  /** Removes the staged bytes; safe to call after a failed or finished commit. */
  discard(): Promise<void>;
}

export class FileBlobStore implements BlobStore {
  /** Fan-out directories made so far (nothing removes them): a batch of thousands of blobs need not mkdir for each. */
  private readonly madeDirs = new Set<string>();

  constructor(private readonly dir: string) {}

  private pathOf(digest: string): string {
    return join(this.dir, digest.slice(0, 2), digest);
  }

  private async dirFor(digest: string): Promise<void> {
    const prefix = digest.slice(0, 2);
    if (this.madeDirs.has(prefix)) return;
    await mkdir(join(this.dir, prefix), { recursive: true });
    this.madeDirs.add(prefix);
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
    await this.dirFor(digest);
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

  async stage(digest: string, bytes: Uint8Array): Promise<StagedBlob> {
    const actual = createHash('sha256').update(bytes).digest('hex');
    if (actual !== digest) throw new GridworkError('DIGEST_MISMATCH', `blob sha256 is ${actual}, not ${digest}`);
    const final = this.pathOf(digest);
    await this.dirFor(digest);
    const tmp = `${final}.${randomBytes(6).toString('hex')}.tmp`;
    try {
      await writeFile(tmp, bytes, { flag: 'wx' });
    } catch (err) {
      await rm(tmp, { force: true });
      throw err;
    }
    return {
      digest,
      size: bytes.length,
      // Renaming over an existing copy is safe: same name, same bytes, and open readers keep theirs.
      commit: () => rename(tmp, final),
      discard: () => rm(tmp, { force: true }),
    };
  }

  async open(digest: string): Promise<{ stream: Readable; size: number }> {
    const path = this.pathOf(digest);
    const s = await stat(path).catch(() => {
      throw new GridworkError('BLOB_MISSING', `blob ${digest} does not exist`);
    });
    return { stream: createReadStream(path), size: s.size };
  }
}
