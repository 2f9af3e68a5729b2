/**
 * Request authentication, the part that is the same everywhere: header names, the canonical
 * request that is signed, and the accepted clock skew. The signature itself is Ed25519 over
 * the UTF-8 bytes of `canonicalRequest(...)`; see `./node/signing.ts`.
 */
import { canonicalJson } from './canonical-json.ts';

export const AuthHeader = {
  key: 'x-gridwork-key',
  nonce: 'x-gridwork-nonce',
  timestamp: 'x-gridwork-timestamp',
  signature: 'x-gridwork-signature',
} as const;

/** Requests whose timestamp is further than this from the server's clock are rejected. */
export const MAX_CLOCK_SKEW_MS = 5 * 60_000;

export interface RequestToSign {
  method: string;
  /** Path with query string, exactly as sent. */
  path: string;
  /** Hex sha256 of the raw body bytes ("" body → digest of empty input). */
  bodyDigest: string;
  nonce: string;
  /** Milliseconds since the epoch. */
  timestamp: number;
}

export function canonicalRequest(r: RequestToSign): string {
  return canonicalJson({ v: 1, method: r.method.toUpperCase(), path: r.path, bodyDigest: r.bodyDigest, nonce: r.nonce, timestamp: r.timestamp });
}

/** Account ids are base64url Ed25519 public keys (32 bytes → 43 chars). */
export const ACCOUNT_ID_PATTERN = '^[A-Za-z0-9_-]{43}$';
export const SHA256_PATTERN = '^[0-9a-f]{64}$';
