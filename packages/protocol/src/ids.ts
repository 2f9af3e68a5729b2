/** Opaque, sortable-enough, URL-safe ids: a type prefix and 80 random bits in base32. */
const ALPHABET = 'abcdefghijklmnopqrstuvwxyz234567';

export type IdPrefix = 'job' | 'task' | 'lease' | 'req' | 'ver';

export function newId(prefix: IdPrefix): string {
  const bytes = new Uint8Array(10);
  globalThis.crypto.getRandomValues(bytes);
  let bits = 0;
  let value = 0;
  let out = '';
  for (const b of bytes) {
    value = (value << 8) | b;
    bits += 8;
    while (bits >= 5) {
      out += ALPHABET[(value >>> (bits - 5)) & 31];
      bits -= 5;
    }
  }
  return `${prefix}_${out}`;
}

export const ID_PATTERN = '^(job|task|lease)_[a-z2-7]{16}$';
