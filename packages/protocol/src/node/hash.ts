/** sha256 as raw bytes: the hash of every Merkle tree (merkle.ts takes it as a parameter to stay isomorphic). */
import { createHash } from 'node:crypto';

export function sha256Bytes(data: Uint8Array): Uint8Array {
  return createHash('sha256').update(data).digest();
}
