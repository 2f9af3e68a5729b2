/**
 * Request signing, the same canonical request as the CLI and SDK (packages/protocol/src/auth.ts):
 * Ed25519 over canonical JSON of method, path with query, body sha256, nonce and timestamp.
 */
import { sha256 } from '@noble/hashes/sha2.js';
import { AuthHeader, canonicalRequest } from '../../../protocol/src/auth.ts';
import { toBase64url, toHex } from './base64url.ts';
import { type Identity, signBytes } from './identity.ts';

const encoder = new TextEncoder();

export function sha256Hex(data: Uint8Array | string): string {
  return toHex(sha256(typeof data === 'string' ? encoder.encode(data) : data));
}

/** A body to sign: its bytes, or the digest of a content-addressed blob (uploads sign the digest). */
export type SignedBody = string | Uint8Array | { digest: string } | undefined;

export function signRequest(id: Identity, method: string, path: string, body?: SignedBody, now = Date.now()): Record<string, string> {
  const nonce = toBase64url(crypto.getRandomValues(new Uint8Array(16)));
  const bodyDigest = body === undefined ? sha256Hex('') : typeof body === 'object' && 'digest' in body ? body.digest : sha256Hex(body);
  const signature = signBytes(id, encoder.encode(canonicalRequest({ method, path, bodyDigest, nonce, timestamp: now })));
  return {
    [AuthHeader.key]: id.publicKey,
    [AuthHeader.nonce]: nonce,
    [AuthHeader.timestamp]: String(now),
    [AuthHeader.signature]: signature,
  };
}
