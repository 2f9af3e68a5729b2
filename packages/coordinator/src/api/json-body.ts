/**
 * Reads a JSON request body as it streams in, and refuses it as early as it can: over the
 * route's limit (by its content-length, before a byte is read, or as the bytes arrive) or nested
 * deeper than any request of this API (at the chunk where it gets too deep). A refused body is
 * never read to its end: the error reply closes the connection (http-app.ts). Parsing, and the
 * signature check that precedes it, happen on the whole body afterwards.
 */
import type { IncomingMessage } from 'node:http';
import { GridworkError } from '@gridwork/protocol';

/** Counts array/object nesting of JSON text fed in pieces (brackets inside strings do not count). */
export class JsonDepthGauge {
  private depth = 0;
  private inString = false;
  private escaped = false;
  private over = false;

  constructor(private readonly max: number) {}

  /** Feeds the next bytes; true once the text has nested deeper than `max` (and from then on). */
  feed(bytes: Uint8Array): boolean {
    if (this.over) return true;
    for (let i = 0; i < bytes.length; i++) {
      const c = bytes[i];
      if (this.inString) {
        if (this.escaped) this.escaped = false;
        else if (c === 0x5c) this.escaped = true;
        else if (c === 0x22) this.inString = false;
      } else if (c === 0x22) this.inString = true;
      else if (c === 0x5b || c === 0x7b) {
        if (++this.depth > this.max) {
          this.over = true;
          return true;
        }
      } else if (c === 0x5d || c === 0x7d) this.depth--;
    }
    return false;
  }
}

/** Whether JSON text nests arrays/objects deeper than `max`. */
export function nestsDeeperThan(body: Uint8Array, max: number): boolean {
  return new JsonDepthGauge(max).feed(body);
}

function tooLarge(limit: number): GridworkError {
  return new GridworkError('PAYLOAD_TOO_LARGE', `request body is larger than the limit (${limit} bytes)`);
}

/** How long a JSON body may take to arrive once its headers have: 1 MiB at 35 KB/s. */
export const JSON_BODY_TIMEOUT_MS = 30_000;

/**
 * The whole body, once it has arrived within `limit` bytes, `maxDepth` levels of nesting (null:
 * not checked, for bodies forwarded unparsed) and JSON_BODY_TIMEOUT_MS. The bytes are copied
 * into one buffer as they come: a body sent a byte per chunk costs its size, not a Buffer per byte.
 */
export function readJsonBody(req: IncomingMessage, limit: number, maxDepth: number | null): Promise<Buffer> {
  const declared = req.headers['content-length'] === undefined ? undefined : Number(req.headers['content-length']);
  if (declared !== undefined && declared > limit) return Promise.reject(tooLarge(limit));
  return new Promise((resolve, reject) => {
    const gauge = maxDepth === null ? undefined : new JsonDepthGauge(maxDepth);
    let body = Buffer.allocUnsafe(Math.min(declared ?? 16 * 1024, limit));
    let length = 0;
    const timer = setTimeout(() => finish(new GridworkError('BAD_REQUEST', `request body did not arrive within ${JSON_BODY_TIMEOUT_MS / 1000} s`)), JSON_BODY_TIMEOUT_MS);
    const finish = (err: GridworkError | null) => {
      clearTimeout(timer);
      req.off('data', onData).off('end', onEnd).off('error', onError).off('close', onClose);
      if (err) {
        // Stop reading: nothing more of this body will be used.
        req.pause();
        reject(err);
      } else resolve(body.subarray(0, length));
    };
    const onData = (chunk: Buffer) => {
      if (length + chunk.length > limit) return finish(tooLarge(limit));
      if (gauge?.feed(chunk)) return finish(new GridworkError('BAD_REQUEST', `JSON nests deeper than ${maxDepth} levels`));
      if (length + chunk.length > body.length) {
        const grown = Buffer.allocUnsafe(Math.min(Math.max(body.length * 2, length + chunk.length), limit));
        body.copy(grown, 0, 0, length);
        body = grown;
      }
      chunk.copy(body, length);
      length += chunk.length;
    };
    const onEnd = () => finish(null);
    const onError = (err: Error) => finish(new GridworkError('BAD_REQUEST', `request body could not be read: ${err.message}`));
    const onClose = () => {
      if (!req.complete) finish(new GridworkError('BAD_REQUEST', 'request body ended early (connection closed)'));
    };
    req.on('data', onData).on('end', onEnd).on('error', onError).on('close', onClose);
  });
}
