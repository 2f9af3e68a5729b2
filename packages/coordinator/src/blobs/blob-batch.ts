/**
 * The body of a batch upload (`POST /v1/blobs/batch/:digest`, many small blobs in one signed
 * request) and its limits. The body is `application/octet-stream`: frames back to back, each
 *
 *   32 bytes  the blob's sha256 (raw, not hex)
 *    4 bytes  its length, unsigned big-endian
 *    n bytes  the blob
 *
 * and `:digest` is the sha256 of the whole body, which the request's signature covers as its
 * body digest (as the single upload's path digest is).
 *
 * Why this format: it streams — a frame's length arrives before its bytes, so the reader keeps
 * at most one blob, checked against the per-blob limit before any of it is buffered, never the
 * whole batch; it costs 36 bytes a blob and no encoding (JSON would inflate bytes by a third in
 * base64; multipart needs boundary searches and per-part headers); and it parses in a few lines.
 */
import { createHash } from 'node:crypto';
import { GridworkError } from '@gridwork/protocol';

export interface BlobBatchLimits {
  /** Blobs in one batch. */
  maxBlobs: number;
  /** Bytes of one blob of a batch (larger ones travel alone, as PUT /v1/blobs/:digest). */
  maxBlobBytes: number;
  /** Bytes of the whole body, frame headers included. */
  maxBodyBytes: number;
}

/**
 * What one batch may hold. A batch is for small files: the per-blob limit keeps the memory of
 * a request to a few blobs, and the body limit bounds what one bad frame makes the client resend.
 */
export const BLOB_BATCH_LIMITS: Readonly<BlobBatchLimits> = {
  maxBlobs: 10_000,
  maxBlobBytes: 1024 * 1024,
  maxBodyBytes: 16 * 1024 * 1024,
};

/** sha256 (32) + length (4). */
export const FRAME_HEADER_BYTES = 36;

export interface BatchFrame {
  digest: string;
  bytes: Buffer;
}

/**
 * Turns body chunks into frames as they arrive, enforcing the limits on the way (too many
 * blobs, a blob or the body too large, the same digest twice) and hashing the whole body.
 * Throws GridworkError: PAYLOAD_TOO_LARGE or BAD_REQUEST.
 */
export class BatchFrameReader {
  private readonly hash = createHash('sha256');
  private chunks: Buffer[] = [];
  private buffered = 0;
  private total = 0;
  private header: { digest: string; length: number } | undefined;
  private readonly seen = new Set<string>();

  constructor(private readonly limits: BlobBatchLimits) {}

  /** The frames this chunk completes (often none, for a chunk inside a large blob; often many, for tiny ones). */
  push(chunk: Buffer): BatchFrame[] {
    this.total += chunk.length;
    if (this.total > this.limits.maxBodyBytes) {
      throw new GridworkError('PAYLOAD_TOO_LARGE', `batch body exceeds the limit of ${this.limits.maxBodyBytes} bytes`);
    }
    this.hash.update(chunk);
    this.chunks.push(chunk);
    this.buffered += chunk.length;
    const frames: BatchFrame[] = [];
    for (;;) {
      if (!this.header) {
        if (this.buffered < FRAME_HEADER_BYTES) break;
        const h = this.take(FRAME_HEADER_BYTES);
        const digest = h.subarray(0, 32).toString('hex');
        const length = h.readUInt32BE(32);
        if (this.seen.size >= this.limits.maxBlobs) {
          throw new GridworkError('PAYLOAD_TOO_LARGE', `a batch holds at most ${this.limits.maxBlobs} blobs`);
        }
        if (length > this.limits.maxBlobBytes) {
          throw new GridworkError(
            'PAYLOAD_TOO_LARGE',
            `blob ${digest} of ${length} bytes exceeds the batch limit of ${this.limits.maxBlobBytes} bytes a blob`,
            {
              details: { digest, size: length },
            },
          );
        }
        if (this.seen.has(digest)) throw new GridworkError('BAD_REQUEST', `blob ${digest} appears twice in the batch`, { details: { digest } });
        this.seen.add(digest);
        this.header = { digest, length };
      }
      if (this.buffered < this.header.length) break;
      frames.push({ digest: this.header.digest, bytes: this.take(this.header.length) });
      this.header = undefined;
    }
    return frames;
  }

  /** After the last chunk: the body's sha256 (hex). Throws BAD_REQUEST when the body ends inside a frame, or held none. */
  end(): string {
    if (this.header) {
      throw new GridworkError(
        'BAD_REQUEST',
        `truncated batch: blob ${this.header.digest} declares ${this.header.length} bytes, the body ends after ${this.buffered}`,
      );
    }
    if (this.buffered > 0) {
      throw new GridworkError('BAD_REQUEST', `truncated batch: the body ends ${this.buffered} bytes into a ${FRAME_HEADER_BYTES}-byte frame header`);
    }
    if (this.seen.size === 0) throw new GridworkError('BAD_REQUEST', 'empty batch: no blob in the body');
    return this.hash.digest('hex');
  }

  private take(n: number): Buffer {
    this.buffered -= n;
    const first = this.chunks[0];
    if (first && first.length >= n) {
      if (first.length === n) this.chunks.shift();
      else this.chunks[0] = first.subarray(n);
      // A view into the chunk, not a copy: it is written out and dropped within the request.
      return first.subarray(0, n);
    }
    const out = Buffer.allocUnsafe(n);
    let offset = 0;
    while (offset < n) {
      const c = this.chunks[0] as Buffer;
      const k = Math.min(c.length, n - offset);
      c.copy(out, offset, 0, k);
      if (k === c.length) this.chunks.shift();
      else this.chunks[0] = c.subarray(k);
      offset += k;
    }
    return out;
  }
}
