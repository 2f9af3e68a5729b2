/**
 * The console's HTTP client: JSON calls signed with the browser's key (or unsigned for the
 * public routes), content-addressed blob uploads, downloads, and NDJSON streams read with
 * fetch (empty lines are keepalives). Errors keep the API's stable code.
 */
import type { Identity } from './identity.ts';
import { sha256Hex, signRequest } from './signing.ts';

export class ApiError extends Error {
  constructor(
    readonly code: string,
    message: string,
    readonly status: number,
  ) {
    super(message);
  }
}

async function failure(res: Response): Promise<ApiError> {
  try {
    const body = (await res.json()) as { error?: { code?: string; message?: string } };
    return new ApiError(body.error?.code ?? 'HTTP_ERROR', body.error?.message ?? res.statusText, res.status);
  } catch {
    return new ApiError('HTTP_ERROR', `${res.status} ${res.statusText}`, res.status);
  }
}

export class Api {
  constructor(readonly identity: Identity | undefined) {}

  private headers(method: string, path: string, body?: string | Uint8Array | { digest: string }): Record<string, string> {
    return this.identity ? signRequest(this.identity, method, path, body) : {};
  }

  async json<T>(method: string, path: string, body?: unknown, signal?: AbortSignal): Promise<T> {
    const text = body === undefined ? undefined : JSON.stringify(body);
    const headers: Record<string, string> = { ...this.headers(method, path, text), accept: 'application/json' };
    if (text !== undefined) headers['content-type'] = 'application/json';
    const res = await fetch(path, { method, headers, body: text ?? null, signal: signal ?? null });
    if (!res.ok) throw await failure(res);
    return (await res.json()) as T;
  }

  /** Uploads bytes as a blob (idempotent) and returns their sha256. */
  async putBlob(bytes: Uint8Array): Promise<string> {
    const digest = sha256Hex(bytes);
    const path = `/v1/blobs/${digest}`;
    const res = await fetch(path, {
      method: 'PUT',
      headers: { ...this.headers('PUT', path, { digest }), 'content-type': 'application/octet-stream' },
      body: bytes as BodyInit,
    });
    if (!res.ok) throw await failure(res);
    return digest;
  }

  async download(path: string): Promise<Blob> {
    const res = await fetch(path, { headers: this.headers('GET', path) });
    if (!res.ok) throw await failure(res);
    return res.blob();
  }

  /** Items of an NDJSON stream until it ends or the signal aborts. */
  async *ndjson<T>(path: string, signal: AbortSignal): AsyncGenerator<T> {
    const res = await fetch(path, { headers: this.headers('GET', path), signal });
    if (!res.ok || !res.body) throw await failure(res);
    const reader = res.body.pipeThrough(new TextDecoderStream()).getReader();
    let buffer = '';
    try {
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buffer += value;
        let nl = buffer.indexOf('\n');
        while (nl >= 0) {
          const line = buffer.slice(0, nl).trim();
          buffer = buffer.slice(nl + 1);
          if (line) yield JSON.parse(line) as T;
          nl = buffer.indexOf('\n');
        }
      }
    } finally {
      reader.releaseLock();
    }
  }
}
