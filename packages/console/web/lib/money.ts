/** Credit arithmetic for display sums: decimal strings ↔ bigint micro-credits, never floats (as packages/protocol/src/money.ts). */
export function toMicros(s: string): bigint {
  const neg = s.startsWith('-');
  const [whole = '0', frac = ''] = (neg ? s.slice(1) : s).split('.');
  const v = BigInt(whole) * 1_000_000n + BigInt((frac + '000000').slice(0, 6));
  return neg ? -v : v;
}

export function formatMicros(m: bigint): string {
  const neg = m < 0n;
  const abs = neg ? -m : m;
  const frac = (abs % 1_000_000n).toString().padStart(6, '0').replace(/0+$/, '');
  return `${neg ? '-' : ''}${abs / 1_000_000n}${frac ? `.${frac}` : ''}`;
}
