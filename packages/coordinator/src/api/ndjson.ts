/** Streams an async generator of objects as NDJSON, stopping it when the client goes away. */
import { Readable } from 'node:stream';
import type { FastifyReply, FastifyRequest } from 'fastify';

export function sendNdjson(req: FastifyRequest, reply: FastifyReply, produce: (signal: AbortSignal) => AsyncGenerator<unknown>): FastifyReply {
  const ac = new AbortController();
  req.raw.on('close', () => ac.abort());
  reply.raw.on('close', () => ac.abort());
  const lines = async function* () {
    for await (const item of produce(ac.signal)) yield `${JSON.stringify(item)}\n`;
  };
  reply.header('content-type', 'application/x-ndjson; charset=utf-8').header('cache-control', 'no-store');
  return reply.send(Readable.from(lines()));
}

/** Waits until `wake` is called or the signal aborts. */
export function waiter(signal: AbortSignal): { wait: () => Promise<void>; wake: () => void } {
  let resolve: (() => void) | undefined;
  let pending = false;
  const wake = () => {
    pending = true;
    resolve?.();
  };
  signal.addEventListener('abort', wake, { once: true });
  return {
    wake,
    wait: () =>
      pending
        ? Promise.resolve().then(() => {
            pending = false;
          })
        : new Promise<void>((r) => {
            resolve = () => {
              pending = false;
              resolve = undefined;
              r();
            };
          }),
  };
}
