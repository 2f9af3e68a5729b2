/**
 * Signed HTTP to the coordinator for the SDK: every request carries fresh signature headers;
 * failures come back typed — unreachable (refused, DNS, timeout), "not a Gridwork
 * coordinator", or a GridworkError with the server's stable code.
 *
 * Several coordinator URLs (replicas of one network, behind one database) make a request move
 * to the next URL when one fails in a way that says nothing was done (see `failoverRequest`).
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

/**
 * A coordinator setting as a list: one URL, several separated by commas (or white space), or an
 * array of such strings. Empty entries and repeats are dropped; nothing is validated here.
 */
function splitCoordinatorList(value: string | readonly string[]): string[] {
  const parts = (typeof value === 'string' ? [value] : value).flatMap((v) => v.split(/[\s,]+/)).filter((v) => v !== '');
  return [...new Set(parts)];
}

/** Several coordinator URLs, each checked as `normalizeCoordinatorUrl` does; at least one. */
export function normalizeCoordinatorUrls(value: string | readonly string[]): string[] {
  const urls = [...new Set(splitCoordinatorList(value).map(normalizeCoordinatorUrl))];
  if (urls.length === 0) throw new GridworkError('BAD_REQUEST', 'no coordinator URL given: expected something like http://127.0.0.1:7070 (several separated by commas)');
  return urls;
}

/**
 * The coordinator URLs a client may use, and the one it uses now. Sticky: a request that had to
 * move to another URL leaves the client there, so one dead replica costs one failover, not one
 * per request.
 */
export class CoordinatorEndpoints {
  readonly urls: readonly string[];
  private current = 0;

  constructor(urls: string | readonly string[]) {
    this.urls = normalizeCoordinatorUrls(urls);
  }

  /** The URL requests go to now. */
  get url(): string {
    return this.urls[this.current] as string;
  }

  /** Every URL once, the current one first, then the others in the order given. */
  rotation(): string[] {
    return this.urls.map((_, i) => this.urls[(this.current + i) % this.urls.length] as string);
  }

  /** `url` answered: later requests go there. */
  use(url: string): void {
    const i = this.urls.indexOf(url);
    if (i >= 0) this.current = i;
  }

  /** A stream from `url` broke: the next request starts at the next URL (unless one already moved on). */
  leave(url: string): void {
    if (this.url === url) this.current = (this.current + 1) % this.urls.length;
  }
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

/** How long a connection may take to open: a replica whose host is down must not hold a request for minutes. */
const CONNECT_TIMEOUT_MS = 10_000;

/** Errors of exchanges that failed before their connection opened: nothing of the request reached a server. */
const unsent = new WeakSet<object>();

/**
 * How a request failed, where another coordinator may be asked instead: `unsent` (no connection
 * was made), `unanswered` (the connection broke after the request may have been sent),
 * `unavailable` (a 503 without our error body: a replica shutting down, which refuses requests
 * before handling them), `gateway` (a proxy's 502 or 504: the request may have been handled).
 */
interface Failure {
  kind: 'unsent' | 'unanswered' | 'unavailable' | 'gateway';
  /** For messages: "refused", "HTTP 503", ... */
  what: string;
}
const failures = new WeakMap<object, Failure>();

/**
 * One HTTP exchange on node:http(s). Not fetch: undici loads and compiles its HTTP parser
 * (WebAssembly) on first use, which cost 40 MiB and a few hundred milliseconds per CLI command.
 * No idle timeout on responses either: a stream lasts as long as its keepalives do; only
 * opening the connection is timed (CONNECT_TIMEOUT_MS).
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
    // Whether the request may have reached the server: once its connection is open (a reused
    // keep-alive connection is open already). TLS: once the handshake is done.
    let connected = false;
    let connectTimer: NodeJS.Timeout | undefined;
    request.once('socket', (socket) => {
      if (!socket.connecting) {
        connected = true;
        return;
      }
      connectTimer = setTimeout(() => {
        request.destroy(Object.assign(new Error(`connection not open after ${CONNECT_TIMEOUT_MS} ms`), { code: 'ETIMEDOUT' }));
      }, CONNECT_TIMEOUT_MS);
      socket.once('encrypted' in socket ? 'secureConnect' : 'connect', () => {
        connected = true;
        clearTimeout(connectTimer);
      });
    });
    request.once('error', (err) => {
      clearTimeout(connectTimer);
      if (!connected) unsent.add(err);
      reject(err);
    });
    request.once('response', (res) => {
      clearTimeout(connectTimer);
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
    const unreachable = new CoordinatorUnreachableError(baseUrl, unreachableReason(err), { cause: err });
    failures.set(unreachable, { kind: unsent.has(err as object) ? 'unsent' : 'unanswered', what: unreachable.reason });
    throw unreachable;
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
      const unavailable = new GridworkError('UNAVAILABLE', `the coordinator at ${baseUrl} is unavailable (HTTP ${res.status})`);
      failures.set(unavailable, { kind: res.status === 503 ? 'unavailable' : 'gateway', what: `HTTP ${res.status}` });
      throw unavailable;
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
 * `signedRequest` against several coordinators (replicas of one network): the current URL first,
 * then each other one once. Another URL is asked only where asking again cannot do twice what
 * the first one did:
 * - the connection never opened (refused, DNS, connect timeout), or a replica shutting down
 *   answered 503 (it refuses requests before handling them): any request;
 * - the connection broke after the request may have been sent (reset, closed before an answer),
 *   or a proxy answered 502 or 504: only a request that is safe to repeat — GET and HEAD, and
 *   requests whose JSON body carries an `idempotencyKey` (money, job submits), which the
 *   coordinator applies once per key. A signed request sent again is signed again, with a
 *   fresh nonce: the coordinator takes it for a new request, so one without a key is never
 *   repeated after it may have arrived.
 * A streamed body is never sent twice (a stream is read once). Any answer ends it, an error
 * answer too. The URL that answered takes later requests (sticky); a response stream that
 * breaks (its replica died mid-stream) makes the next request, its reconnect, start at the next.
 */
export async function failoverRequest(
  endpoints: CoordinatorEndpoints,
  identity: Identity,
  method: string,
  path: string,
  options: { body?: RequestBody; signal?: AbortSignal; accept?: 'json' | 'ndjson' | 'bytes' } = {},
): Promise<HttpResponse> {
  const { body, signal } = options;
  const replayable = body === undefined || 'json' in body || body.blob instanceof Uint8Array;
  const keyed = body !== undefined && 'json' in body && typeof (body.json as { idempotencyKey?: unknown } | null)?.idempotencyKey === 'string';
  const repeatable = replayable && (method === 'GET' || method === 'HEAD' || keyed);
  const urls = endpoints.rotation();
  const tried: string[] = [];
  for (const [i, url] of urls.entries()) {
    let res: HttpResponse;
    try {
      res = await signedRequest(url, identity, method, path, options);
    } catch (err) {
      const failure = failures.get(err as object);
      if (signal?.aborted) throw err;
      if (failure === undefined) {
        // A coordinator answered (with an error): it is there, later requests go to it too.
        if (err instanceof GridworkError && !(err instanceof NotACoordinatorError)) endpoints.use(url);
        throw err;
      }
      tried.push(`${url}: ${failure.what}`);
      const again = failure.kind === 'unsent' || failure.kind === 'unavailable' ? replayable : repeatable;
      if (again && i < urls.length - 1) continue;
      const e = err as Error;
      if (!again && i < urls.length - 1) {
        e.message += replayable
          ? `; not sent to another coordinator: ${method} ${path.split('?')[0]} may have been applied, and it carries no idempotency key`
          : `; not sent to another coordinator: its body was a stream, which cannot be sent twice`;
      } else if (tried.length > 1) {
        e.message += ` (tried every coordinator given: ${tried.join('; ')})`;
      }
      throw err;
    }
    endpoints.use(url);
    res.body.once('error', () => {
      if (!signal?.aborted) endpoints.leave(url);
    });
    return res;
  }
  throw new GridworkError('INTERNAL', 'no coordinator URL to send to');
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
