/**
 * Streams an async generator of objects as NDJSON, stopping it when the client goes away. An
 * empty line goes out every `keepaliveMs` of silence: HTTP clients (Node's fetch among them)
 * abort a body that stays silent for minutes, and a job may wait or run for hours. Clients
 * ignore empty lines.
 */
import { PassThrough } from 'node:stream';
import type { FastifyReply, FastifyRequest } from 'fastify';

/** @default 15 s: well inside undici's 300 s body timeout and common proxies' 60 s. */
export const KEEPALIVE_MS = 15_000;

export function sendNdjson(
  req: FastifyRequest,
  reply: FastifyReply,
  produce: (signal: AbortSignal) => AsyncGenerator<unknown>,
  keepaliveMs = KEEPALIVE_MS,
): FastifyReply {
  const ac = new AbortController();
  const out = new PassThrough();
  let last = Date.now();
  const timer = setInterval(() => {
    if (Date.now() - last >= keepaliveMs - 5 && !out.writableEnded) {
      last = Date.now();
      out.write('\n');
    }
  }, Math.max(5, Math.floor(keepaliveMs / 3)));
  const stop = () => {
    clearInterval(timer);
    ac.abort();
  };
  req.raw.on('close', stop);
  reply.raw.on('close', stop);
  void (async () => {
    try {
      for await (const item of produce(ac.signal)) {
        last = Date.now();
        if (!out.write(`${JSON.stringify(item)}\n`)) await drainedOrGone(out, ac.signal);
        // Leaving the loop returns the generator, so its `finally` (unsubscribing) runs.
        if (ac.signal.aborted) break;
      }
    } catch (err) {
      req.log.warn({ err }, 'stream ended with an error');
    } finally {
      clearInterval(timer);
      out.end();
    }
  })();
  reply.header('content-type', 'application/x-ndjson; charset=utf-8').header('cache-control', 'no-store');
  return reply.send(out);
}

/** Resolves when a backed-up stream drains, or when it will never drain (closed, or the client left). */
function drainedOrGone(out: PassThrough, signal: AbortSignal): Promise<void> {
  return new Promise((resolve) => {
    const done = () => {
      out.off('drain', done);
      out.off('close', done);
      signal.removeEventListener('abort', done);
      resolve();
    };
    out.once('drain', done);
    out.once('close', done);
    signal.addEventListener('abort', done, { once: true });
    if (signal.aborted || out.destroyed) done();
  });
}
