// Deterministic math for bitwise-reproducible training: every function here uses only IEEE-754
// double + - * / (exactly rounded by the spec), Math.round/floor (exact) and integer bit
// operations. Math.exp/log/sin/cos are NOT used: their results are implementation-approximated
// and may differ between engines and CPUs, which would break exact audits of a checkpoint segment.
// The polynomials are evaluated in one fixed order (Horner), so results are the same bits on any
// x86 or ARM machine running any conforming JavaScript engine.

const view = new DataView(new ArrayBuffer(8));

/** 2^k as an exact double, for integer k in [-1022, 1023]. */
function pow2(k) {
  view.setUint32(0, (k + 1023) << 20);
  view.setUint32(4, 0);
  return view.getFloat64(0);
}

/** x * 2^k, exact unless the result is subnormal (then rounded once per step, deterministically). */
export function scalb(x, k) {
  let y = x;
  let n = k;
  while (n > 1023) {
    y *= pow2(1023);
    n -= 1023;
  }
  while (n < -1022) {
    y *= pow2(-1022);
    n += 1022;
  }
  return y * pow2(n);
}

// ln 2 split so that k * LN2_HI is exact for |k| < 2^11 (fdlibm's constants).
const LN2_HI = 0.6931471803691238;
const LN2_LO = 1.9082149292705877e-10;
const INV_LN2 = Math.LOG2E;

// 1/n! for n = 0..13, computed by exact-rounded division at load time (same bits everywhere).
const EXP_C = [1];
for (let n = 1; n <= 13; n++) EXP_C.push(EXP_C[n - 1] / n);

/** e^x: x = k ln2 + r with |r| <= ln2/2, e^r by a degree-13 Taylor polynomial (error < 1e-17), times 2^k. */
export function exp(x) {
  if (Number.isNaN(x)) return Number.NaN;
  if (x > 709.782712893384) return Number.POSITIVE_INFINITY;
  if (x < -745.1332191019412) return 0;
  const k = Math.round(x * INV_LN2);
  const r = x - k * LN2_HI - k * LN2_LO;
  let p = EXP_C[13];
  for (let n = 12; n >= 0; n--) p = p * r + EXP_C[n];
  return scalb(p, k);
}

const SQRT2 = Math.SQRT2;

/** ln x: x = m 2^e with m in [sqrt(1/2), sqrt(2)), ln m = 2 atanh(s), s = (m-1)/(m+1), odd series to s^23. */
export function log(x) {
  if (Number.isNaN(x) || x < 0) return Number.NaN;
  if (x === 0) return Number.NEGATIVE_INFINITY;
  if (x === Number.POSITIVE_INFINITY) return x;
  let e = 0;
  let y = x;
  if (y < 2.2250738585072014e-308) {
    y *= pow2(54); // subnormal: normalise first (exact)
    e -= 54;
  }
  view.setFloat64(0, y);
  const hi = view.getUint32(0);
  e += ((hi >>> 20) & 0x7ff) - 1023;
  view.setUint32(0, (hi & 0x800fffff) | (1023 << 20)); // same mantissa, exponent 0: m in [1, 2)
  let m = view.getFloat64(0);
  if (m > SQRT2) {
    m /= 2;
    e += 1;
  }
  const s = (m - 1) / (m + 1);
  const s2 = s * s;
  let p = 1 / 23;
  for (let n = 21; n >= 1; n -= 2) p = p * s2 + 1 / n;
  const lnm = 2 * s * p;
  return e * LN2_HI + (e * LN2_LO + lnm);
}

// pi/2 split for Cody-Waite reduction (fdlibm's pio2_1 / pio2_1t); exact products for |k| < 2^20.
const PIO2_HI = 1.5707963267341256;
const PIO2_LO = 6.077100506506192e-11;
const TWO_OVER_PI = 0.6366197723675814;

// Taylor coefficients of sin (r, r^3, ..., r^17) and cos (1, r^2, ..., r^16), by exact-rounded division.
const SIN_C = [];
const COS_C = [];
for (let n = 1, term = 1; n <= 17; n += 2, term = -term / (n * (n - 1))) SIN_C.push(term);
for (let n = 0, term = 1; n <= 16; n += 2, term = -term / (n * (n - 1))) COS_C.push(term);

/** sin and cos on |r| <= pi/4 by Horner on the coefficients above. */
function sinPoly(r) {
  const r2 = r * r;
  let p = 0;
  for (let i = SIN_C.length - 1; i >= 0; i--) p = p * r2 + SIN_C[i];
  return r * p;
}
function cosPoly(r) {
  const r2 = r * r;
  let p = 0;
  for (let i = COS_C.length - 1; i >= 0; i--) p = p * r2 + COS_C[i];
  return p;
}

/** [sin x, cos x] for |x| < 1e5 (the data generator's range). */
export function sincos(x) {
  if (!(Math.abs(x) < 1e5)) throw new RangeError(`sincos: argument out of range: ${x}`);
  const k = Math.round(x * TWO_OVER_PI);
  const r = x - k * PIO2_HI - k * PIO2_LO;
  const s = sinPoly(r);
  const c = cosPoly(r);
  switch (((k % 4) + 4) % 4) {
    case 0:
      return [s, c];
    case 1:
      return [c, -s];
    case 2:
      return [-s, -c];
    default:
      return [-c, s];
  }
}

/** mulberry32: a 32-bit seeded PRNG using only integer operations. next() is a double in [0, 1). */
export function mulberry32(seed) {
  let a = seed >>> 0;
  return {
    next() {
      a = (a + 0x6d2b79f5) >>> 0;
      let t = a;
      t = Math.imul(t ^ (t >>> 15), t | 1);
      t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
      return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
    },
  };
}

/** A seed derived from a base seed and a stream number (e.g. the epoch), by integer mixing only. */
export function deriveSeed(seed, stream) {
  let h = (seed ^ Math.imul(stream + 1, 0x9e3779b1)) >>> 0;
  h = Math.imul(h ^ (h >>> 16), 0x85ebca6b);
  h = Math.imul(h ^ (h >>> 13), 0xc2b2ae35);
  return (h ^ (h >>> 16)) >>> 0;
}

/** Approximately standard normal: Irwin-Hall sum of 12 uniforms minus 6 (only + and -). */
export function gaussian(rng) {
  let s = 0;
  for (let i = 0; i < 12; i++) s += rng.next();
  return s - 6;
}
