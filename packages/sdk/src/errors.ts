/**
 * Typed errors of the SDK. Every error is a GridworkError (stable `code`); the subclasses say
 * what kind of trouble it was, so a program can react without parsing messages:
 * `err instanceof CoordinatorUnreachableError`, `err instanceof LostContactError`, ...
 */
import type { JobView } from '@gridwork/protocol';
import { GridworkError } from '@gridwork/protocol/errors';

export type UnreachableReason = 'refused' | 'dns' | 'timeout' | 'reset' | 'other';

/** The coordinator could not be reached at all (nothing listening, unknown host, network down). */
export class CoordinatorUnreachableError extends GridworkError {
  constructor(
    readonly url: string,
    readonly reason: UnreachableReason,
    options?: ErrorOptions,
  ) {
    super('NETWORK_ERROR', unreachableMessage(url, reason, options?.cause), options);
  }
}

function unreachableMessage(url: string, reason: UnreachableReason, cause: unknown): string {
  const host = safeHost(url);
  switch (reason) {
    case 'refused':
      return `cannot reach the coordinator at ${url}: connection refused (is a coordinator running there? start one with \`gridwork coordinator start\`)`;
    case 'dns':
      return `cannot reach the coordinator at ${url}: the host name ${host} does not resolve (DNS lookup failed)`;
    case 'timeout':
      return `cannot reach the coordinator at ${url}: the connection timed out`;
    case 'reset':
      return `lost the connection to the coordinator at ${url} (connection reset)`;
    default:
      return `cannot reach the coordinator at ${url}: ${describeCause(cause)}`;
  }
}

function safeHost(url: string): string {
  try {
    return new URL(url).hostname;
  } catch {
    return url;
  }
}

function describeCause(cause: unknown): string {
  const inner = (cause as { cause?: unknown } | undefined)?.cause ?? cause;
  if (inner instanceof Error) return inner.message || inner.name;
  return String(inner);
}

/** Something answered at the URL, but not as a Gridwork coordinator does (a web server, a proxy, another API). */
export class NotACoordinatorError extends GridworkError {
  constructor(
    readonly url: string,
    readonly status: number,
    detail: string,
  ) {
    super('PROTOCOL_ERROR', `${url} is not a Gridwork coordinator: ${detail}`, { details: { status } });
  }
}

/**
 * A wait gave up: no contact with the coordinator for longer than the give-up time. The job
 * itself is most likely still running; `lastSeen` is the last state received.
 */
export class LostContactError extends GridworkError {
  constructor(
    readonly jobId: string,
    readonly lastSeen: JobView | undefined,
    readonly lostForMs: number,
    options?: ErrorOptions,
  ) {
    super(
      'UNAVAILABLE',
      `lost contact with the coordinator for ${Math.round(lostForMs / 1000)} s while waiting for job ${jobId}; the job is still ${lastSeen ? lastSeen.state : 'running'} as far as we know`,
      options,
    );
  }
}

const REFUSED = new Set(['ECONNREFUSED']);
const DNS = new Set(['ENOTFOUND', 'EAI_AGAIN', 'EAI_NONAME', 'EAI_FAIL']);
const TIMEOUT = new Set(['ETIMEDOUT', 'UND_ERR_CONNECT_TIMEOUT', 'UND_ERR_HEADERS_TIMEOUT', 'UND_ERR_BODY_TIMEOUT']);
const RESET = new Set(['ECONNRESET', 'EPIPE', 'UND_ERR_SOCKET', 'UND_ERR_CLOSED']);

/** Error codes found anywhere in an undici `fetch failed` error (cause chains, AggregateErrors). */
function codesOf(err: unknown, depth = 0): string[] {
  if (!err || typeof err !== 'object' || depth > 5) return [];
  const out: string[] = [];
  const code = (err as { code?: unknown }).code;
  if (typeof code === 'string') out.push(code);
  const errors = (err as { errors?: unknown }).errors;
  if (Array.isArray(errors)) for (const e of errors) out.push(...codesOf(e, depth + 1));
  out.push(...codesOf((err as { cause?: unknown }).cause, depth + 1));
  return out;
}

export function unreachableReason(err: unknown): UnreachableReason {
  const codes = codesOf(err);
  if (codes.some((c) => REFUSED.has(c))) return 'refused';
  if (codes.some((c) => DNS.has(c))) return 'dns';
  if (codes.some((c) => TIMEOUT.has(c))) return 'timeout';
  if (codes.some((c) => RESET.has(c))) return 'reset';
  return 'other';
}

/**
 * Errors worth retrying while waiting: the coordinator is unreachable, restarting (503) or the
 * stream broke. A 4xx (job unknown, bad signature) would fail the same way again.
 */
export function isTransient(err: unknown): boolean {
  if (err instanceof CoordinatorUnreachableError) return true;
  if (err instanceof GridworkError) return err.code === 'NETWORK_ERROR' || err.code === 'UNAVAILABLE' || err.code === 'TIMEOUT' || err.code === 'INTERNAL';
  return true;
}
