/**
 * Everything the simulation decides by chance, derived from one seed: key pairs, who cheats,
 * job sizes, each cheater's coin flips. Draws are keyed by what they decide (a provider's name
 * and the task it is answering), not by the order events arrive in, so two runs with the same
 * seed make the same choices even where the coordinator interleaves work differently.
 */
import { createHash, createPrivateKey, createPublicKey } from 'node:crypto';
import type { Identity } from '@gridwork/protocol/node';

/** sha256 over the labelled parts: the root of every draw. */
export function digestOf(...parts: (string | number)[]): Buffer {
  const h = createHash('sha256');
  for (const p of parts) h.update(`${String(p).length}:${p};`);
  return h.digest();
}

/** A uniform draw in [0, 1) named by its parts (48 bits of a sha256). */
export function unitOf(...parts: (string | number)[]): number {
  return digestOf(...parts).readUIntBE(0, 6) / 2 ** 48;
}

/** An Ed25519 key pair from a 32-byte seed (RFC 8410 PKCS#8 wrapping of the private key). */
export function identityFromSeed(seed: Uint8Array): Identity {
  if (seed.length !== 32) throw new Error('an Ed25519 seed is 32 bytes');
  const pkcs8 = Buffer.concat([Buffer.from('302e020100300506032b657004220420', 'hex'), seed]);
  const privateKey = createPrivateKey({ key: pkcs8, format: 'der', type: 'pkcs8' });
  const jwk = createPublicKey(privateKey).export({ format: 'jwk' });
  return { publicKey: jwk.x as string, privateKey: Buffer.from(seed).toString('base64url') };
}

/** The key pair named `label` under `seed`. */
export function seededIdentity(seed: string, label: string): Identity {
  return identityFromSeed(digestOf('identity', seed, label));
}

/** A seeded shuffle (Fisher–Yates over named draws). */
export function shuffled<T>(items: readonly T[], ...parts: (string | number)[]): T[] {
  const out = [...items];
  for (let i = out.length - 1; i > 0; i--) {
    const j = Math.floor(unitOf(...parts, i) * (i + 1));
    [out[i], out[j]] = [out[j] as T, out[i] as T];
  }
  return out;
}
