import assert from 'node:assert/strict';
import { createPublicKey, verify as cryptoVerify } from 'node:crypto';
import { describe, it } from 'node:test';
import { AuthHeader, canonicalRequest, MAX_CLOCK_SKEW_MS } from '../auth.ts';
import { type ErrorCode, GridworkError } from '../errors.ts';
import { EMPTY_SHA256, generateIdentity, sha256Hex, signBytes, signRequest, verifyBytes, verifyRequest } from './signing.ts';

const B64URL = 'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_';
const NOW = 1_750_000_000_000;
const BODY = JSON.stringify({ amount: '1.50', to: 'someone' });

/** Replaces the character at `index` with a different base64url character (flips its low bit). */
function flipChar(s: string, index: number): string {
  const i = index < 0 ? s.length + index : index;
  const c = s[i] as string;
  const flipped = B64URL[B64URL.indexOf(c) ^ 1] as string;
  assert.notEqual(flipped, c);
  return s.slice(0, i) + flipped + s.slice(i + 1);
}

function rejectsWith(code: ErrorCode, fn: () => unknown, message?: RegExp): void {
  assert.throws(fn, (err: unknown) => {
    assert.ok(err instanceof GridworkError, `expected GridworkError, got ${String(err)}`);
    assert.equal(err.code, code, `expected ${code}, got ${err.code}: ${err.message}`);
    if (message) assert.match(err.message, message);
    return true;
  });
}

describe('generateIdentity', () => {
  it('gives a 43-char base64url public key and a 43-char base64url 32-byte seed', () => {
    const id = generateIdentity();
    assert.match(id.publicKey, /^[A-Za-z0-9_-]{43}$/);
    assert.match(id.privateKey, /^[A-Za-z0-9_-]{43}$/);
    assert.equal(Buffer.from(id.publicKey, 'base64url').length, 32);
    assert.equal(Buffer.from(id.privateKey, 'base64url').length, 32);
    assert.notEqual(id.publicKey, id.privateKey);
  });

  it('gives a different key pair each time', () => {
    const keys = new Set(Array.from({ length: 50 }, () => generateIdentity().publicKey));
    assert.equal(keys.size, 50);
  });
});

describe('signBytes / verifyBytes', () => {
  it('verifies its own signatures and nothing else', () => {
    const a = generateIdentity();
    const b = generateIdentity();
    const sig = signBytes(a, 'hello');
    assert.match(sig, /^[A-Za-z0-9_-]{86}$/);
    assert.equal(verifyBytes(a.publicKey, 'hello', sig), true);
    assert.equal(verifyBytes(a.publicKey, new TextEncoder().encode('hello'), sig), true);
    assert.equal(verifyBytes(a.publicKey, 'hellp', sig), false);
    assert.equal(verifyBytes(b.publicKey, 'hello', sig), false);
  });

  it('rejects malformed keys and signatures by returning false, not throwing', () => {
    const a = generateIdentity();
    const sig = signBytes(a, 'm');
    for (const key of ['', 'short', `${a.publicKey}A`, `${a.publicKey.slice(0, 42)}=`, `${a.publicKey.slice(0, 42)}+`, 'A'.repeat(43), '_'.repeat(43)]) {
      assert.equal(verifyBytes(key, 'm', sig), false, `key ${JSON.stringify(key)}`);
    }
    for (const s of ['', sig.slice(1), `${sig}A`, `${sig.slice(0, 85)}=`, 'A'.repeat(86)]) {
      assert.equal(verifyBytes(a.publicKey, 'm', s), false, `signature ${JSON.stringify(s)}`);
    }
  });

  it('rejects a non-canonical public key encoding (same 32 bytes, different account id)', () => {
    const a = generateIdentity();
    const alias = flipChar(a.publicKey, -1); // only the 2 unused trailing bits change
    assert.ok(Buffer.from(alias, 'base64url').equals(Buffer.from(a.publicKey, 'base64url')), 'precondition: same key bytes');
    assert.equal(verifyBytes(alias, 'm', signBytes(a, 'm')), false);
  });

  it('rejects a non-canonical signature encoding (same 64 bytes, different string)', () => {
    const a = generateIdentity();
    const sig = signBytes(a, 'm');
    const alias = flipChar(sig, -1); // only the 4 unused trailing bits change
    assert.ok(Buffer.from(alias, 'base64url').equals(Buffer.from(sig, 'base64url')), 'precondition: same signature bytes');
    assert.equal(verifyBytes(a.publicKey, 'm', alias), false);
  });
});

describe('sha256Hex', () => {
  it('matches known digests', () => {
    assert.equal(EMPTY_SHA256, 'e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855');
    assert.equal(sha256Hex('abc'), 'ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad');
    assert.equal(sha256Hex(new TextEncoder().encode('abc')), sha256Hex('abc'));
  });
});

describe('signRequest / verifyRequest', () => {
  const id = generateIdentity();

  it('signs the headers the server expects', () => {
    const h = signRequest(id, 'POST', '/v1/jobs', BODY, NOW);
    assert.deepEqual(Object.keys(h).sort(), Object.values(AuthHeader).sort());
    assert.equal(h[AuthHeader.key], id.publicKey);
    assert.equal(h[AuthHeader.timestamp], String(NOW));
    assert.match(h[AuthHeader.nonce] as string, /^[A-Za-z0-9_-]{16,64}$/);
    assert.match(h[AuthHeader.signature] as string, /^[A-Za-z0-9_-]{86}$/);
  });

  it('uses a fresh nonce on every call', () => {
    const nonces = new Set(Array.from({ length: 100 }, () => signRequest(id, 'GET', '/v1/me', undefined, NOW)[AuthHeader.nonce]));
    assert.equal(nonces.size, 100);
  });

  it('round-trips: a signed request verifies and returns the account, nonce and timestamp', () => {
    const h = signRequest(id, 'POST', '/v1/jobs?dry=1', BODY, NOW);
    const v = verifyRequest(h, 'POST', '/v1/jobs?dry=1', BODY, NOW);
    assert.deepEqual(v, { accountId: id.publicKey, nonce: h[AuthHeader.nonce], timestamp: NOW });
  });

  it('round-trips with a byte body, and with no body (undefined and empty are the same)', () => {
    const bytes = new TextEncoder().encode(BODY);
    assert.equal(verifyRequest(signRequest(id, 'PUT', '/x', bytes, NOW), 'PUT', '/x', BODY, NOW).accountId, id.publicKey);
    assert.equal(verifyRequest(signRequest(id, 'PUT', '/x', BODY, NOW), 'PUT', '/x', bytes, NOW).accountId, id.publicKey);
    assert.equal(verifyRequest(signRequest(id, 'GET', '/x', undefined, NOW), 'GET', '/x', undefined, NOW).accountId, id.publicKey);
    assert.equal(verifyRequest(signRequest(id, 'GET', '/x', undefined, NOW), 'GET', '/x', '', NOW).accountId, id.publicKey);
    assert.equal(verifyRequest(signRequest(id, 'GET', '/x', '', NOW), 'GET', '/x', new Uint8Array(0), NOW).accountId, id.publicKey);
  });

  it('a body given by its known digest signs the same as the bytes themselves', () => {
    const h = signRequest(id, 'PUT', '/v1/blobs/x', { digest: sha256Hex(BODY) }, NOW);
    assert.equal(verifyRequest(h, 'PUT', '/v1/blobs/x', BODY, NOW).accountId, id.publicKey);
    rejectsWith('BAD_SIGNATURE', () => verifyRequest(h, 'PUT', '/v1/blobs/x', { digest: sha256Hex(`${BODY}!`) }, NOW));
  });

  it('treats the method case-insensitively (the canonical request upper-cases it)', () => {
    const h = signRequest(id, 'post', '/v1/jobs', BODY, NOW);
    assert.equal(verifyRequest(h, 'POST', '/v1/jobs', BODY, NOW).accountId, id.publicKey);
  });

  it('accepts timestamps within the allowed clock skew', () => {
    const h = signRequest(id, 'GET', '/x', undefined, NOW);
    verifyRequest(h, 'GET', '/x', undefined, NOW + MAX_CLOCK_SKEW_MS);
    verifyRequest(h, 'GET', '/x', undefined, NOW - MAX_CLOCK_SKEW_MS);
    verifyRequest(h, 'GET', '/x', undefined, NOW + 4 * 60_000);
  });

  describe('rejections', () => {
    const h = () => signRequest(id, 'POST', '/v1/jobs', BODY, NOW);

    it('forged signature (one char flipped, anywhere) → BAD_SIGNATURE', () => {
      const good = h();
      const sig = good[AuthHeader.signature] as string;
      for (const index of [0, 1, 20, 42, 43, 84, 85]) {
        const forged = { ...good, [AuthHeader.signature]: flipChar(sig, index) };
        rejectsWith('BAD_SIGNATURE', () => verifyRequest(forged, 'POST', '/v1/jobs', BODY, NOW));
      }
    });

    it("another identity's key in the key header → BAD_SIGNATURE", () => {
      const other = generateIdentity();
      rejectsWith('BAD_SIGNATURE', () => verifyRequest({ ...h(), [AuthHeader.key]: other.publicKey }, 'POST', '/v1/jobs', BODY, NOW));
    });

    it('a non-canonical alias of the signer key → BAD_SIGNATURE', () => {
      const aliased = { ...h(), [AuthHeader.key]: flipChar(id.publicKey, -1) };
      rejectsWith('BAD_SIGNATURE', () => verifyRequest(aliased, 'POST', '/v1/jobs', BODY, NOW));
    });

    it('changed body → BAD_SIGNATURE', () => {
      rejectsWith('BAD_SIGNATURE', () => verifyRequest(h(), 'POST', '/v1/jobs', BODY.replace('1.50', '9.50'), NOW), /signature does not verify/);
      rejectsWith('BAD_SIGNATURE', () => verifyRequest(h(), 'POST', '/v1/jobs', undefined, NOW));
      rejectsWith('BAD_SIGNATURE', () => verifyRequest(h(), 'POST', '/v1/jobs', `${BODY} `, NOW));
    });

    it('changed path (including the query string) → BAD_SIGNATURE', () => {
      rejectsWith('BAD_SIGNATURE', () => verifyRequest(h(), 'POST', '/v1/jobz', BODY, NOW));
      rejectsWith('BAD_SIGNATURE', () => verifyRequest(h(), 'POST', '/v1/jobs?x=1', BODY, NOW));
      rejectsWith('BAD_SIGNATURE', () => verifyRequest(h(), 'POST', '/v1/jobs/', BODY, NOW));
    });

    it('changed method → BAD_SIGNATURE', () => {
      rejectsWith('BAD_SIGNATURE', () => verifyRequest(h(), 'PUT', '/v1/jobs', BODY, NOW));
      rejectsWith('BAD_SIGNATURE', () => verifyRequest(h(), 'GET', '/v1/jobs', BODY, NOW));
    });

    it('changed nonce or timestamp header → BAD_SIGNATURE', () => {
      const good = h();
      rejectsWith('BAD_SIGNATURE', () =>
        verifyRequest({ ...good, [AuthHeader.nonce]: flipChar(good[AuthHeader.nonce] as string, 0) }, 'POST', '/v1/jobs', BODY, NOW),
      );
      rejectsWith('BAD_SIGNATURE', () => verifyRequest({ ...good, [AuthHeader.timestamp]: String(NOW + 1) }, 'POST', '/v1/jobs', BODY, NOW));
    });

    for (const name of Object.values(AuthHeader)) {
      it(`missing ${name} → UNAUTHENTICATED`, () => {
        const headers: Record<string, string | undefined> = { ...h() };
        delete headers[name];
        rejectsWith('UNAUTHENTICATED', () => verifyRequest(headers, 'POST', '/v1/jobs', BODY, NOW), /request must be signed/);
        rejectsWith('UNAUTHENTICATED', () => verifyRequest({ ...h(), [name]: '' }, 'POST', '/v1/jobs', BODY, NOW));
      });
    }

    it('no headers at all, or a header repeated (array value) → UNAUTHENTICATED', () => {
      rejectsWith('UNAUTHENTICATED', () => verifyRequest({}, 'POST', '/v1/jobs', BODY, NOW));
      const good = h();
      const sig = good[AuthHeader.signature] as string;
      rejectsWith('UNAUTHENTICATED', () => verifyRequest({ ...good, [AuthHeader.signature]: [sig, sig] }, 'POST', '/v1/jobs', BODY, NOW));
    });

    it('malformed nonce or timestamp → UNAUTHENTICATED', () => {
      const good = h();
      for (const nonce of ['short', 'has space in it!!!', 'x'.repeat(65)]) {
        rejectsWith('UNAUTHENTICATED', () => verifyRequest({ ...good, [AuthHeader.nonce]: nonce }, 'POST', '/v1/jobs', BODY, NOW), /nonce/);
      }
      for (const ts of ['abc', '-1', '1.5', '1e12', ` ${NOW}`, '1'.repeat(17)]) {
        rejectsWith('UNAUTHENTICATED', () => verifyRequest({ ...good, [AuthHeader.timestamp]: ts }, 'POST', '/v1/jobs', BODY, NOW), /timestamp/);
      }
    });

    it('stale timestamp (now ± 6 minutes) → STALE_REQUEST', () => {
      const sixMin = 6 * 60_000;
      rejectsWith('STALE_REQUEST', () => verifyRequest(signRequest(id, 'GET', '/x', undefined, NOW - sixMin), 'GET', '/x', undefined, NOW));
      rejectsWith('STALE_REQUEST', () => verifyRequest(signRequest(id, 'GET', '/x', undefined, NOW + sixMin), 'GET', '/x', undefined, NOW));
      rejectsWith('STALE_REQUEST', () => verifyRequest(signRequest(id, 'GET', '/x', undefined, NOW), 'GET', '/x', undefined, NOW + MAX_CLOCK_SKEW_MS + 1));
    });

    it('malformed public key → BAD_SIGNATURE, never any other kind of error', () => {
      const good = h();
      const keys = [
        'x',
        'not a key at all',
        'A'.repeat(43),
        '_'.repeat(43),
        `${id.publicKey}A`,
        `${id.publicKey.slice(0, 42)}=`,
        `${id.publicKey.slice(0, 42)}/`,
        '💥'.repeat(22),
      ];
      for (const key of keys) {
        rejectsWith('BAD_SIGNATURE', () => verifyRequest({ ...good, [AuthHeader.key]: key }, 'POST', '/v1/jobs', BODY, NOW));
      }
    });

    it('malformed signature → BAD_SIGNATURE', () => {
      const good = h();
      for (const sig of ['x', 'A'.repeat(86), `${good[AuthHeader.signature]}A`, '+'.repeat(86)]) {
        rejectsWith('BAD_SIGNATURE', () => verifyRequest({ ...good, [AuthHeader.signature]: sig }, 'POST', '/v1/jobs', BODY, NOW));
      }
    });
  });

  it('signature bytes verify with raw node:crypto over canonicalRequest', () => {
    const h = signRequest(id, 'delete', '/v1/jobs/job_abc?force=true', BODY, NOW);
    const message = canonicalRequest({
      method: 'DELETE',
      path: '/v1/jobs/job_abc?force=true',
      bodyDigest: sha256Hex(BODY),
      nonce: h[AuthHeader.nonce] as string,
      timestamp: NOW,
    });
    assert.equal(
      message,
      `{"bodyDigest":"${sha256Hex(BODY)}","method":"DELETE","nonce":"${h[AuthHeader.nonce]}","path":"/v1/jobs/job_abc?force=true","timestamp":${NOW},"v":1}`,
    );
    const key = createPublicKey({ key: { kty: 'OKP', crv: 'Ed25519', x: id.publicKey }, format: 'jwk' });
    const sig = Buffer.from(h[AuthHeader.signature] as string, 'base64url');
    assert.equal(sig.length, 64);
    assert.equal(cryptoVerify(null, Buffer.from(message, 'utf8'), key, sig), true);
    assert.equal(cryptoVerify(null, Buffer.from(message.replace('DELETE', 'GET'), 'utf8'), key, sig), false);
  });
});
