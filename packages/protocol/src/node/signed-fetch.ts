/**
 * Signed HTTP to the coordinator, shared by the SDK and the provider agent: every request
 * carries fresh signature headers; errors come back as GridworkError with the server's code.
 */
import { GridworkError } from '../errors.ts';
import { type Identity, signRequest } from './signing.ts';

export type RequestBody =
  | { json: unknown }
  /** Raw bytes of a blob whose digest is known: streamed, signed by digest. */
  | { blob: ReadableStream<Uint8Array> | Uint8Array; digest: string };

export interface SignedFetchOptions {
  body?: RequestBody;
  signal?: AbortSignal;
  headers?: Record<string, string>;
}

export async function signedFetch(baseUrl: string, identity: Identity, method: string, path: string, options: SignedFetchOptions = {}): Promise<Response> {
  const { body } = options;
  let payload: string | Uint8Array | ReadableStream<Uint8Array> | undefined;
  let headers: Record<string, string> = { ...options.headers };
  if (body && 'json' in body) {
    payload = JSON.stringify(body.json);
    headers = { ...headers, 'content-type': 'application/json', ...signRequest(identity, method, path, payload) };
  } else if (body) {
    payload = body.blob;
    headers = { ...headers, 'content-type': 'application/octet-stream', ...signRequest(identity, method, path, { digest: body.digest }) };
  } else {
    headers = { ...headers, ...signRequest(identity, method, path) };
  }
  let res: Response;
  try {
    res = await fetch(new URL(path, baseUrl), {
      method,
      headers,
      ...(payload === undefined ? {} : { body: payload }),
      ...(payload instanceof ReadableStream ? { duplex: 'half' } : {}),
      ...(options.signal ? { signal: options.signal } : {}),
    } as RequestInit);
  } catch (err) {
    if (options.signal?.aborted) throw new GridworkError('ABORTED', 'request aborted', { cause: err });
    throw new GridworkError('NETWORK_ERROR', `cannot reach the coordinator at ${baseUrl}: ${(err as Error).message}`, { cause: err });
  }
  if (!res.ok) {
    const text = await res.text().catch(() => '');
    let parsed: unknown = text;
    try {
      parsed = JSON.parse(text);
    } catch {}
    throw GridworkError.fromBody(parsed, res.status);
  }
  return res;
}

/** Reads an NDJSON response body line by line. */
export async function* readNdjson<T>(res: Response): AsyncGenerator<T> {
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
  const rest = buffer.trim();
  if (rest) yield JSON.parse(rest) as T;
}
