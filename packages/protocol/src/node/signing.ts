/**
 * Ed25519 identities and request signing on Node (node:crypto: ~15× faster than noble here).
 * Keys travel as base64url: the public key (32 bytes) is the account id; the private key is
 * the 32-byte seed.
 */
import { createHash, createPrivateKey, createPublicKey, generateKeyPairSync, randomBytes, sign, verify, type KeyObject } from 'node:crypto';
import { AuthHeader, canonicalRequest, MAX_CLOCK_SKEW_MS } from '../auth.ts';
import { GridworkError } from '../errors.ts';

export interface Identity {
  /** base64url public key: the account id. */
  publicKey: string;
  /** base64url 32-byte private seed. */
  privateKey: string;
}

export function generateIdentity(): Identity {
  const { publicKey, privateKey } = generateKeyPairSync('ed25519');
  const jwk = privateKey.export({ format: 'jwk' });
  return { publicKey: publicKey.export({ format: 'jwk' }).x as string, privateKey: jwk.d as string };
}

const privateCache = new Map<string, KeyObject>();
const publicCache = new Map<string, KeyObject>();

function privateKeyObject(id: Identity): KeyObject {
  let k = privateCache.get(id.privateKey);
  if (!k) {
    k = createPrivateKey({ key: { kty: 'OKP', crv: 'Ed25519', d: id.privateKey, x: id.publicKey }, format: 'jwk' });
    privateCache.set(id.privateKey, k);
  }
  return k;
}

function publicKeyObject(publicKey: string): KeyObject | undefined {
  let k = publicCache.get(publicKey);
  if (!k) {
    // Canonical base64url only: the last character carries 2 unused bits, so without the
    // round-trip check four different account ids would name the same key.
    if (!/^[A-Za-z0-9_-]{43}$/.test(publicKey) || Buffer.from(publicKey, 'base64url').toString('base64url') !== publicKey) return undefined;
    try {
      k = createPublicKey({ key: { kty: 'OKP', crv: 'Ed25519', x: publicKey }, format: 'jwk' });
    } catch {
      return undefined;
    }
    if (publicCache.size > 10_000) publicCache.clear();
    publicCache.set(publicKey, k);
  }
  return k;
}

export function signBytes(id: Identity, message: string | Uint8Array): string {
  return sign(null, typeof message === 'string' ? Buffer.from(message) : message, privateKeyObject(id)).toString('base64url');
}

export function verifyBytes(publicKey: string, message: string | Uint8Array, signature: string): boolean {
  const key = publicKeyObject(publicKey);
  if (!key || !/^[A-Za-z0-9_-]{86}$/.test(signature)) return false;
  const sig = Buffer.from(signature, 'base64url');
  // Reject non-canonical encodings: otherwise flipping an unused bit of the last character
  // gives a different signature string that still verifies.
  if (sig.toString('base64url') !== signature) return false;
  return verify(null, typeof message === 'string' ? Buffer.from(message) : message, key, sig);
}

export function sha256Hex(data: string | Uint8Array): string {
  return createHash('sha256').update(data).digest('hex');
}

export const EMPTY_SHA256 = sha256Hex('');

/** Headers that authenticate one request. A fresh nonce every call: never reuse them. */
/**
 * A body to sign: its bytes, or (for streamed uploads of content-addressed blobs) its
 * already-known sha256, which the server checks against the bytes it receives.
 */
export type SignedBody = string | Uint8Array | { digest: string } | undefined;

function bodyDigestOf(body: SignedBody): string {
  if (body === undefined) return EMPTY_SHA256;
  if (typeof body === 'object' && 'digest' in body) return body.digest;
  return body.length === 0 ? EMPTY_SHA256 : sha256Hex(body);
}

export function signRequest(id: Identity, method: string, path: string, body?: SignedBody, now = Date.now()): Record<string, string> {
  const nonce = randomBytes(16).toString('base64url');
  const bodyDigest = bodyDigestOf(body);
  const signature = signBytes(id, canonicalRequest({ method, path, bodyDigest, nonce, timestamp: now }));
  return {
    [AuthHeader.key]: id.publicKey,
    [AuthHeader.nonce]: nonce,
    [AuthHeader.timestamp]: String(now),
    [AuthHeader.signature]: signature,
  };
}

export interface VerifiedRequest {
  accountId: string;
  nonce: string;
  timestamp: number;
}

/**
 * The signature headers, well-formed and within the clock window, without the signature
 * itself checked: cheap enough to refuse an unsigned or stale request before its body is read.
 * Throws GridworkError with UNAUTHENTICATED or STALE_REQUEST.
 */
export function readAuthHeaders(headers: Record<string, string | string[] | undefined>, now = Date.now()): VerifiedRequest & { signature: string } {
  const h = (name: string) => {
    const v = headers[name];
    return Array.isArray(v) ? undefined : v;
  };
  const accountId = h(AuthHeader.key);
  const nonce = h(AuthHeader.nonce);
  const ts = h(AuthHeader.timestamp);
  const signature = h(AuthHeader.signature);
  if (!accountId || !nonce || !ts || !signature) {
    throw new GridworkError('UNAUTHENTICATED', `request must be signed: headers ${Object.values(AuthHeader).join(', ')} are required`);
  }
  if (!/^[A-Za-z0-9_-]{16,64}$/.test(nonce)) throw new GridworkError('UNAUTHENTICATED', 'nonce must be 16–64 base64url characters');
  if (!/^\d{1,16}$/.test(ts)) throw new GridworkError('UNAUTHENTICATED', 'timestamp must be milliseconds since the epoch');
  const timestamp = Number(ts);
  if (Math.abs(now - timestamp) > MAX_CLOCK_SKEW_MS) {
    throw new GridworkError('STALE_REQUEST', `request timestamp is more than ${MAX_CLOCK_SKEW_MS / 1000}s from the server clock`);
  }
  return { accountId, nonce, timestamp, signature };
}

/**
 * Checks the signature and the clock window. Replay (a nonce seen before) is the caller's
 * check, since it needs storage. Throws GridworkError with UNAUTHENTICATED, BAD_SIGNATURE or
 * STALE_REQUEST.
 */
export function verifyRequest(
  headers: Record<string, string | string[] | undefined>,
  method: string,
  path: string,
  body: SignedBody,
  now = Date.now(),
): VerifiedRequest {
  const { accountId, nonce, timestamp, signature } = readAuthHeaders(headers, now);
  const bodyDigest = bodyDigestOf(body);
  if (!verifyBytes(accountId, canonicalRequest({ method, path, bodyDigest, nonce, timestamp }), signature)) {
    throw new GridworkError('BAD_SIGNATURE', 'signature does not verify for this key, method, path and body');
  }
  return { accountId, nonce, timestamp };
}
