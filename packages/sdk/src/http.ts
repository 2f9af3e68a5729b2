/**
 * Signed HTTP to the coordinator for the SDK: every request carries fresh signature headers;
 * failures come back typed — unreachable (refused, DNS, timeout), "not a Gridwork
 * coordinator", or a GridworkError with the server's stable code.
 */
import { type IncomingMessage, request as httpRequest } from 'node:http';
import { request as httpsRequest } from 'node:https';
import { Readable } from 'node:stream';
import type { ReadableStream as WebReadableStream } from 'node:stream/web';
import { type ErrorBody, GridworkError, isErrorCode } from '@gridwork/protocol/errors';
import { type Identity, signRequest } from '@gridwork/protocol/node';
import { CoordinatorUnreachableError, NotACoordinatorError, unreachableReason } from './errors.ts';

export type RequestBody =
  | { json: unknown }
  /** Raw bytes of a blob whose digest is known: streamed, signed by digest. */
  | { blob: ReadableStream<Uint8Array> | Uint8Array; digest: string };

/** Checks a coordinator URL once, up front: a typo should be a usage error, not a network error. */
export function normalizeCoordinatorUrl(url: string): string {
  let parsed: URL;
  try {
    parsed = new URL(url);
  } catch {
    throw new GridworkError('BAD_REQUEST', `invalid coordinator URL "${url}": expected something like http://127.0.0.1:7070`);
  }
  if (parsed.protocol !== 'http:' && parsed.protocol !== 'https:') {
    throw new GridworkError('BAD_REQUEST', `invalid coordinator URL "${url}": the scheme must be http or https, not ${parsed.protocol.replace(/:$/, '')}`);
  }
  if (parsed.search || parsed.hash) throw new GridworkError('BAD_REQUEST', `invalid coordinator URL "${url}": no query or fragment expected`);
  return url.replace(/\/+$/, '');
}

function isErrorBody(value: unknown): value is ErrorBody {
  const e = (value as Partial<ErrorBody> | null)?.error;
  return typeof e === 'object' && e !== null && isErrorCode(e.code) && typeof e.message === 'string';
}

/** A response from the coordinator: status, lower-case headers and the body as a Node stream. */
export interface HttpResponse {
  status: number;
  headers: Record<string, string>;
  body: IncomingMessage;
  text(): Promise<string>;
  json(): Promise<unknown>;
  /** Discards the body (and the connection). */
  cancel(): void;
}

/**
 * One HTTP exchange on node:http(s). Not fetch: undici loads and compiles its HTTP parser
 * (WebAssembly) on first use, which cost 40 MiB and a few hundred milliseconds per CLI command.
 * No idle timeout on responses either: a stream lasts as long as its keepalives do.
 */
function send(
  url: URL,
  method: string,
  headers: Record<string, string>,
  payload: string | Uint8Array | Readable | undefined,
  signal: AbortSignal | undefined,
): Promise<HttpResponse> {
  return new Promise((resolve, reject) => {
    const request = (url.protocol === 'https:' ? httpsRequest : httpRequest)(url, {
      method,
      headers: typeof payload === 'string' || payload instanceof Uint8Array ? { ...headers, 'content-length': String(Buffer.byteLength(payload)) } : headers,
      ...(signal ? { signal } : {}),
    });
    request.once('error', reject);
    request.once('response', (res) => {
      const hdrs: Record<string, string> = {};
      for (const [k, v] of Object.entries(res.headers)) if (v !== undefined) hdrs[k] = Array.isArray(v) ? v.join(', ') : v;
      const text = async () => {
        const chunks: Buffer[] = [];
        for await (const c of res) chunks.push(c as Buffer);
        return Buffer.concat(chunks).toString('utf8');
      };
      resolve({
        status: res.statusCode ?? 0,
        headers: hdrs,
        body: res,
        text,
        json: async () => JSON.parse(await text()),
        cancel: () => res.destroy(),
      });
    });
    if (payload instanceof Readable) {
      payload.once('error', (err) => request.destroy(err));
      payload.pipe(request);
    } else request.end(payload);
  });
}

export async function signedRequest(
  baseUrl: string,
  identity: Identity,
  method: string,
  path: string,
  options: { body?: RequestBody; signal?: AbortSignal; accept?: 'json' | 'ndjson' | 'bytes' } = {},
): Promise<HttpResponse> {
  const { body } = options;
  let payload: string | Uint8Array | Readable | undefined;
  let headers: Record<string, string>;
  if (body && 'json' in body) {
    payload = JSON.stringify(body.json);
    headers = { 'content-type': 'application/json', ...signRequest(identity, method, path, payload) };
  } else if (body) {
    payload = body.blob instanceof Uint8Array ? body.blob : Readable.fromWeb(body.blob as WebReadableStream<Uint8Array>);
    headers = { 'content-type': 'application/octet-stream', ...signRequest(identity, method, path, { digest: body.digest }) };
  } else {
    headers = signRequest(identity, method, path);
  }
  let res: HttpResponse;
  try {
    res = await send(new URL(path, `${baseUrl}/`), method, headers, payload, options.signal);
  } catch (err) {
    if (options.signal?.aborted) throw new GridworkError('ABORTED', 'request aborted', { cause: err });
    throw new CoordinatorUnreachableError(baseUrl, unreachableReason(err), { cause: err });
  }
  const type = res.headers['content-type'] ?? '';
  if (res.status < 200 || res.status >= 300) {
    const text = await res.text().catch(() => '');
    let parsed: unknown;
    try {
      parsed = JSON.parse(text);
    } catch {}
    if (isErrorBody(parsed)) throw new GridworkError(parsed.error.code, parsed.error.message, { details: parsed.error.details });
    // A coordinator going down answers 503 before it closes; anything else without our error
    // shape came from something that is not a coordinator (a web server, a proxy).
    if (res.status === 502 || res.status === 503 || res.status === 504) {
      throw new GridworkError('UNAVAILABLE', `the coordinator at ${baseUrl} is unavailable (HTTP ${res.status})`);
    }
    throw new NotACoordinatorError(baseUrl, res.status, `${method} ${path.split('?')[0]} answered HTTP ${res.status}${type ? ` (${type.split(';')[0]})` : ''} without a Gridwork error body`);
  }
  const expected = options.accept ?? 'json';
  if (expected === 'json' && !type.includes('application/json')) {
    res.cancel();
    throw new NotACoordinatorError(baseUrl, res.status, `${method} ${path.split('?')[0]} answered ${type.split(';')[0] || 'without a content type'}, not JSON`);
  }
  if (expected === 'ndjson' && !type.includes('ndjson')) {
    res.cancel();
    throw new NotACoordinatorError(baseUrl, res.status, `${method} ${path.split('?')[0]} answered ${type.split(';')[0] || 'without a content type'}, not an NDJSON stream`);
  }
  return res;
}

/**
 * Reads an NDJSON body line by line. Empty lines are keepalives (the coordinator sends one
 * every 15 s so that idle streams outlive HTTP clients' body timeouts) and are skipped.
 */
export async function* readNdjsonLines<T>(body: AsyncIterable<Uint8Array | string>): AsyncGenerator<T> {
  const decoder = new TextDecoder();
  let buffer = '';
  for await (const chunk of body) {
    buffer += typeof chunk === 'string' ? chunk : decoder.decode(chunk, { stream: true });
    let nl = buffer.indexOf('\n');
    while (nl >= 0) {
      const line = buffer.slice(0, nl).trim();
      buffer = buffer.slice(nl + 1);
      if (line) yield JSON.parse(line) as T;
      nl = buffer.indexOf('\n');
    }
  }
  const rest = (buffer + decoder.decode()).trim();
  if (rest) yield JSON.parse(rest) as T;
}
