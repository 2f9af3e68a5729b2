import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import fc from 'fast-check';
import { GridworkError } from './errors.ts';
import { formatCredits, MAX_MICROS, MICROS_PER_CREDIT, parseCredits, type ParseCreditsOptions } from './money.ts';

/** The strict wire form: optional "-", no leading zeros, at most 6 fraction digits, no trailing zeros. */
const STRICT_FORM = /^-?(0|[1-9][0-9]*)(\.[0-9]{0,5}[1-9])?$/;

const anyMicros = fc.bigInt({ min: -MAX_MICROS, max: MAX_MICROS });

const show = (v: unknown): string => (typeof v === 'string' ? JSON.stringify(v) : `${String(v)} (${typeof v})`);

function assertInvalid(input: unknown, options?: ParseCreditsOptions, messagePattern?: RegExp): void {
  assert.throws(
    () => parseCredits(input, options),
    (err: unknown) => {
      assert.ok(err instanceof GridworkError, `expected GridworkError for ${show(input)}, got ${String(err)}`);
      assert.equal(err.code, 'INVALID_AMOUNT');
      if (messagePattern) assert.match(err.message, messagePattern);
      return true;
    },
    `expected ${show(input)} to be rejected`,
  );
}

describe('formatCredits / parseCredits', () => {
  it('round-trips every bigint in [-(2^63-1), 2^63-1]: parse(format(x)) === x', () => {
    fc.assert(
      fc.property(anyMicros, (x) => {
        assert.equal(parseCredits(formatCredits(x), { allowNegative: true }), x);
      }),
      { numRuns: 2000 },
    );
  });

  it('round-trips the extremes and values around the unit boundaries', () => {
    const edge = [0n, 1n, -1n, 999_999n, 1_000_000n, 1_000_001n, -999_999n, -1_000_000n, MAX_MICROS, -MAX_MICROS, MAX_MICROS - 1n];
    for (const x of edge) assert.equal(parseCredits(formatCredits(x), { allowNegative: true }), x, `value ${x}`);
  });

  it('format output always matches the strict decimal form', () => {
    fc.assert(
      fc.property(anyMicros, (x) => {
        assert.match(formatCredits(x), STRICT_FORM);
      }),
      { numRuns: 2000 },
    );
  });

  it('format(parse(s)) === s for strings already in the strict form', () => {
    const strictString = fc
      .tuple(fc.boolean(), fc.bigInt({ min: 0n, max: MAX_MICROS / MICROS_PER_CREDIT - 1n }), fc.integer({ min: 0, max: 999_999 }))
      .map(([neg, whole, frac]) => {
        const f = String(frac).padStart(6, '0').replace(/0+$/, '');
        const s = `${whole}${f ? `.${f}` : ''}`;
        return neg && s !== '0' ? `-${s}` : s;
      });
    fc.assert(
      fc.property(strictString, (s) => {
        assert.equal(formatCredits(parseCredits(s, { allowNegative: true })), s);
      }),
    );
  });

  it('formats known values exactly', () => {
    assert.equal(formatCredits(0n), '0');
    assert.equal(formatCredits(1n), '0.000001');
    assert.equal(formatCredits(-1n), '-0.000001');
    assert.equal(formatCredits(1_500_000n), '1.5');
    assert.equal(formatCredits(-3_000_000n), '-3');
    assert.equal(formatCredits(1_200_000n), '1.2');
    assert.equal(formatCredits(MAX_MICROS), '9223372036854.775807');
    assert.equal(formatCredits(-MAX_MICROS), '-9223372036854.775807');
  });

  it('parses known values exactly', () => {
    assert.equal(parseCredits('12'), 12_000_000n);
    assert.equal(parseCredits('0.5'), 500_000n);
    assert.equal(parseCredits('1.000001'), 1_000_001n);
    assert.equal(parseCredits('1.20'), 1_200_000n);
    assert.equal(parseCredits('1.200000'), 1_200_000n);
    assert.equal(parseCredits('0'), 0n);
    assert.equal(parseCredits('0.000001'), 1n);
    assert.equal(parseCredits('-2.5', { allowNegative: true }), -2_500_000n);
  });

  it('accepts the boundary 9223372036854.775807 (2^63-1 micros), and its negation with allowNegative', () => {
    assert.equal(parseCredits('9223372036854.775807'), MAX_MICROS);
    assert.equal(parseCredits('-9223372036854.775807', { allowNegative: true }), -MAX_MICROS);
  });

  // Rounding: there is none. parseCredits never rounds — an amount with more precision than
  // one micro-credit is rejected, and formatCredits is exact, so no value is ever changed.
  it('never rounds: 7+ fraction digits are rejected, even when the extra digits are zero', () => {
    assertInvalid('1.0000001', undefined, /more than 6 decimal places/);
    assertInvalid('1.0000000', undefined, /more than 6 decimal places/);
    assertInvalid('0.9999999', undefined, /more than 6 decimal places/);
    fc.assert(
      fc.property(fc.bigInt({ min: 0n, max: 10n ** 12n }), fc.stringMatching(/^[0-9]{7,12}$/), (whole, frac) => {
        assertInvalid(`${whole}.${frac}`, undefined, /more than 6 decimal places/);
      }),
    );
  });

  describe('rejects with INVALID_AMOUNT', () => {
    const cases: Array<[string, unknown, ParseCreditsOptions | undefined, RegExp | undefined]> = [
      ['empty string', '', undefined, /not a plain decimal/],
      ['leading space', ' 1', undefined, /not a plain decimal/],
      ['trailing space', '1 ', undefined, /not a plain decimal/],
      ['leading plus', '+1', undefined, /not a plain decimal/],
      ['exponent', '1e3', undefined, /not a plain decimal/],
      ['trailing dot', '1.', undefined, /not a plain decimal/],
      ['leading dot', '.5', undefined, /not a plain decimal/],
      ['leading zero', '01', undefined, /not a plain decimal/],
      ['too precise', '1.0000001', undefined, /more than 6 decimal places/],
      ['beyond 2^63-1 micros', '9223372036854.775808', undefined, /out of range/],
      ['beyond -(2^63-1) micros', '-9223372036854.775808', { allowNegative: true }, /out of range/],
      ['NaN', 'NaN', undefined, /not a plain decimal/],
      ['Infinity', 'Infinity', undefined, /not a plain decimal/],
      ['negative without allowNegative', '-0.5', undefined, /must not be negative/],
      ['zero with allowZero:false', '0', { allowZero: false }, /greater than zero/],
      ['zero with decimals with allowZero:false', '0.000000', { allowZero: false }, /greater than zero/],
      ['a number, not a string', 1.5, undefined, /must be a decimal string/],
      ['a bigint, not a string', 1n, undefined, /must be a decimal string/],
      ['null', null, undefined, /must be a decimal string/],
      ['comma as decimal separator', '1,5', undefined, /not a plain decimal/],
      ['hex', '0x10', undefined, /not a plain decimal/],
      ['double minus', '--1', { allowNegative: true }, /not a plain decimal/],
      ['thousands separator', '1_000', undefined, /not a plain decimal/],
    ];
    for (const [label, input, options, pattern] of cases) {
      it(`${label}: ${show(input)}`, () => {
        assertInvalid(input, options, pattern);
      });
    }
  });

  it('names the field in error messages', () => {
    assertInvalid('abc', { field: 'price.budget' }, /^price\.budget "abc"/);
    assertInvalid(2, { field: 'deposit' }, /^deposit must be/);
  });

  it('only ever throws GridworkError INVALID_AMOUNT or returns a value in range, for any string', () => {
    fc.assert(
      fc.property(fc.oneof(fc.string(), fc.stringMatching(/^-?[0-9.]{0,25}$/)), fc.boolean(), fc.boolean(), (s, allowNegative, allowZero) => {
        let value: bigint;
        try {
          value = parseCredits(s, { allowNegative, allowZero });
        } catch (err) {
          assert.ok(err instanceof GridworkError);
          assert.equal(err.code, 'INVALID_AMOUNT');
          return;
        }
        assert.ok(value <= MAX_MICROS && value >= -MAX_MICROS);
        if (!allowNegative) assert.ok(value >= 0n);
        if (!allowZero) assert.notEqual(value, 0n);
        // Whatever was accepted is exactly the number written: no rounding.
        let normal = s.includes('.') ? s.replace(/0+$/, '').replace(/\.$/, '') : s;
        if (/^-0$/.test(normal)) normal = '0';
        assert.equal(formatCredits(value), normal);
      }),
      { numRuns: 2000 },
    );
  });
});
