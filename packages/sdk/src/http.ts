/**
 * Signed HTTP to the coordinator for the SDK: every request carries fresh signature headers;
 * failures come back typed — unreachable (refused, DNS, timeout), "not a Gridwork
 * coordinator", or a GridworkError with the server's stable code.
 */
import { type ErrorBody, GridworkError, isErrorCode } from '@gridwork/protocol';
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

export async function signedRequest(
  baseUrl: string,
  identity: Identity,
  method: string,
  path: string,
  options: { body?: RequestBody; signal?: AbortSignal; accept?: 'json' | 'ndjson' | 'bytes' } = {},
): Promise<Response> {
  const { body } = options;
  let payload: string | Uint8Array | ReadableStream<Uint8Array> | undefined;
  let headers: Record<string, string>;
  if (body && 'json' in body) {
    payload = JSON.stringify(body.json);
    headers = { 'content-type': 'application/json', ...signRequest(identity, method, path, payload) };
  } else if (body) {
    payload = body.blob;
    headers = { 'content-type': 'application/octet-stream', ...signRequest(identity, method, path, { digest: body.digest }) };
  } else {
    headers = signRequest(identity, method, path);
  }
  let res: Response;
  try {
    res = await fetch(new URL(path, `${baseUrl}/`), {
      method,
      headers,
      ...(payload === undefined ? {} : { body: payload }),
      ...(payload instanceof ReadableStream ? { duplex: 'half' } : {}),
      ...(options.signal ? { signal: options.signal } : {}),
    } as RequestInit);
  } catch (err) {
    if (options.signal?.aborted) throw new GridworkError('ABORTED', 'request aborted', { cause: err });
    throw new CoordinatorUnreachableError(baseUrl, unreachableReason(err), { cause: err });
  }
  const type = res.headers.get('content-type') ?? '';
  if (!res.ok) {
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
    await res.body?.cancel().catch(() => {});
    throw new NotACoordinatorError(baseUrl, res.status, `${method} ${path.split('?')[0]} answered ${type.split(';')[0] || 'without a content type'}, not JSON`);
  }
  if (expected === 'ndjson' && !type.includes('ndjson')) {
    await res.body?.cancel().catch(() => {});
    throw new NotACoordinatorError(baseUrl, res.status, `${method} ${path.split('?')[0]} answered ${type.split(';')[0] || 'without a content type'}, not an NDJSON stream`);
  }
  return res;
}

/**
 * Reads an NDJSON body line by line. Empty lines are keepalives (the coordinator sends one
 * every 15 s so that idle streams outlive HTTP clients' body timeouts) and are skipped.
 */
export async function* readNdjsonLines<T>(res: Response): AsyncGenerator<T> {
  if (!res.body) return;
  const decoder = new TextDecoder();
  let buffer = '';
  for await (const chunk of res.body as unknown as AsyncIterable<Uint8Array>) {
    buffer += decoder.decode(chunk, { stream: true });
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
