/**
 * The browser's identity: an Ed25519 key pair in localStorage, in the CLI's key-file format
 * ({ publicKey, privateKey } as base64url; the private key is the 32-byte seed). It is made
 * here or imported from a key file, and never sent anywhere: requests carry only signatures.
 */
import { ed25519 } from '@noble/curves/ed25519.js';
import { fromBase64url, toBase64url } from './base64url.ts';

export interface Identity {
  publicKey: string;
  privateKey: string;
}

const STORAGE_KEY = 'gridwork.identity';

export function generateIdentity(): Identity {
  const seed = crypto.getRandomValues(new Uint8Array(32));
  return { publicKey: toBase64url(ed25519.getPublicKey(seed)), privateKey: toBase64url(seed) };
}

/** Parses a key file's JSON; the public key must be the one the seed derives. */
export function parseIdentity(text: string): Identity {
  let parsed: Partial<Identity>;
  try {
    parsed = JSON.parse(text) as Partial<Identity>;
  } catch {
    throw new Error('this is not JSON: pick the key file the CLI wrote (for example ~/.gridwork/key.json)');
  }
  if (typeof parsed.privateKey !== 'string' || typeof parsed.publicKey !== 'string') throw new Error('a key file has "publicKey" and "privateKey" fields');
  const seed = fromBase64url(parsed.privateKey);
  if (seed.length !== 32) throw new Error('privateKey must be a 32-byte base64url seed');
  if (toBase64url(ed25519.getPublicKey(seed)) !== parsed.publicKey) throw new Error('publicKey does not belong to privateKey');
  return { publicKey: parsed.publicKey, privateKey: parsed.privateKey };
}

export function loadIdentity(): Identity | undefined {
  const text = localStorage.getItem(STORAGE_KEY);
  if (!text) return undefined;
  try {
    return parseIdentity(text);
  } catch {
    return undefined;
  }
}

export function saveIdentity(id: Identity | undefined): void {
  if (id) localStorage.setItem(STORAGE_KEY, JSON.stringify(id));
  else localStorage.removeItem(STORAGE_KEY);
}

export function signBytes(id: Identity, message: Uint8Array): string {
  return toBase64url(ed25519.sign(message, fromBase64url(id.privateKey)));
}
