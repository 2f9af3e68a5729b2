/**
 * Error codes shared by the coordinator, the provider agent, the SDK and the CLI.
 * A code is a stable public contract: never rename one, only add.
 */
export const ErrorCode = {
  BAD_REQUEST: 'BAD_REQUEST',
  VALIDATION_FAILED: 'VALIDATION_FAILED',
  INVALID_SPEC: 'INVALID_SPEC',
  INVALID_AMOUNT: 'INVALID_AMOUNT',
  INSUFFICIENT_FUNDS: 'INSUFFICIENT_FUNDS',
  BUDGET_TOO_LOW: 'BUDGET_TOO_LOW',
  IDEMPOTENCY_CONFLICT: 'IDEMPOTENCY_CONFLICT',
  DEV_ONLY: 'DEV_ONLY',
  PAYLOAD_TOO_LARGE: 'PAYLOAD_TOO_LARGE',
  UNSUPPORTED_MEDIA_TYPE: 'UNSUPPORTED_MEDIA_TYPE',
  DIGEST_MISMATCH: 'DIGEST_MISMATCH',
  BLOB_MISSING: 'BLOB_MISSING',
  UNAUTHENTICATED: 'UNAUTHENTICATED',
  BAD_SIGNATURE: 'BAD_SIGNATURE',
  STALE_REQUEST: 'STALE_REQUEST',
  REPLAYED_REQUEST: 'REPLAYED_REQUEST',
  FORBIDDEN: 'FORBIDDEN',
  NOT_FOUND: 'NOT_FOUND',
  JOB_NOT_FOUND: 'JOB_NOT_FOUND',
  LEASE_NOT_FOUND: 'LEASE_NOT_FOUND',
  NOT_LEASE_OWNER: 'NOT_LEASE_OWNER',
  INVALID_TRANSITION: 'INVALID_TRANSITION',
  CONFLICT: 'CONFLICT',
  PROVIDER_UNKNOWN: 'PROVIDER_UNKNOWN',
  PROTOCOL_ERROR: 'PROTOCOL_ERROR',
  UNAVAILABLE: 'UNAVAILABLE',
  TIMEOUT: 'TIMEOUT',
  ABORTED: 'ABORTED',
  NETWORK_ERROR: 'NETWORK_ERROR',
  SANDBOX_UNAVAILABLE: 'SANDBOX_UNAVAILABLE',
  UNSUPPORTED_RUNTIME: 'UNSUPPORTED_RUNTIME',
  CAPACITY_TAKEN: 'CAPACITY_TAKEN',
  PROCESS_LIMIT: 'PROCESS_LIMIT',
  DISK_LIMIT: 'DISK_LIMIT',
  MEMORY_LIMIT: 'MEMORY_LIMIT',
  TASK_NOT_FOUND: 'TASK_NOT_FOUND',
  NOT_DISPUTABLE: 'NOT_DISPUTABLE',
  DISPUTE_EXISTS: 'DISPUTE_EXISTS',
  DISPUTE_WINDOW_CLOSED: 'DISPUTE_WINDOW_CLOSED',
  VERIFICATION_UNAVAILABLE: 'VERIFICATION_UNAVAILABLE',
  STAKE_LOCKED: 'STAKE_LOCKED',
  INTERNAL: 'INTERNAL',
} as const;
export type ErrorCode = (typeof ErrorCode)[keyof typeof ErrorCode];

/** One table, code → HTTP status, used by the server to answer and by the SDK to interpret. */
export const httpStatusOf: Record<ErrorCode, number> = {
  BAD_REQUEST: 400,
  VALIDATION_FAILED: 400,
  INVALID_SPEC: 400,
  INVALID_AMOUNT: 400,
  INSUFFICIENT_FUNDS: 402,
  BUDGET_TOO_LOW: 400,
  IDEMPOTENCY_CONFLICT: 409,
  DEV_ONLY: 403,
  PAYLOAD_TOO_LARGE: 413,
  UNSUPPORTED_MEDIA_TYPE: 415,
  DIGEST_MISMATCH: 400,
  BLOB_MISSING: 409,
  UNAUTHENTICATED: 401,
  BAD_SIGNATURE: 401,
  STALE_REQUEST: 401,
  REPLAYED_REQUEST: 409,
  FORBIDDEN: 403,
  NOT_FOUND: 404,
  JOB_NOT_FOUND: 404,
  LEASE_NOT_FOUND: 404,
  NOT_LEASE_OWNER: 403,
  INVALID_TRANSITION: 409,
  CONFLICT: 409,
  PROVIDER_UNKNOWN: 404,
  PROTOCOL_ERROR: 400,
  UNAVAILABLE: 503,
  TIMEOUT: 504,
  ABORTED: 499,
  NETWORK_ERROR: 503,
  SANDBOX_UNAVAILABLE: 500,
  UNSUPPORTED_RUNTIME: 400,
  CAPACITY_TAKEN: 409,
  PROCESS_LIMIT: 422,
  DISK_LIMIT: 422,
  MEMORY_LIMIT: 422,
  TASK_NOT_FOUND: 404,
  NOT_DISPUTABLE: 409,
  DISPUTE_EXISTS: 409,
  DISPUTE_WINDOW_CLOSED: 409,
  VERIFICATION_UNAVAILABLE: 503,
  STAKE_LOCKED: 409,
  INTERNAL: 500,
};

export function isErrorCode(value: unknown): value is ErrorCode {
  return typeof value === 'string' && Object.hasOwn(ErrorCode, value);
}

export interface ErrorBody {
  error: { code: ErrorCode; message: string; details?: unknown };
}

export class GridworkError extends Error {
  override readonly name = 'GridworkError';
  readonly code: ErrorCode;
  readonly details: unknown;

  constructor(code: ErrorCode, message: string, options?: ErrorOptions & { details?: unknown }) {
    super(message, options);
    this.code = code;
    this.details = options?.details;
  }

  get httpStatus(): number {
    return httpStatusOf[this.code];
  }

  toBody(): ErrorBody {
    return {
      error: { code: this.code, message: this.message, ...(this.details === undefined ? {} : { details: this.details }) },
    };
  }

  /** Rebuilds an error from an API error body (SDK side); unknown shapes become INTERNAL. */
  static fromBody(body: unknown, status: number): GridworkError {
    const e = (body as Partial<ErrorBody> | undefined)?.error;
    if (e && isErrorCode(e.code) && typeof e.message === 'string') {
      return new GridworkError(e.code, e.message, { details: e.details });
    }
    return new GridworkError(status >= 500 ? 'INTERNAL' : 'BAD_REQUEST', `HTTP ${status}`, { details: body });
  }
}
