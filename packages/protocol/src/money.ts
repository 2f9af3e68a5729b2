/**
 * Money: integer micro-credits (1 credit = 1_000_000 µc) as bigint. Never a float.
 *
 * Wire form is a decimal string of credits: "12", "0.5", "1.000001". Parsing is strict —
 * no sign other than an optional leading "-" where allowed, no exponent, no whitespace,
 * no leading "+", no more than 6 fraction digits (never silently rounded), no leading
 * zeros beyond one, and the result must fit in a signed 64-bit integer.
 */
import { GridworkError } from './errors.ts';

export type Micros = bigint;
export const MICROS_PER_CREDIT = 1_000_000n;
export const MAX_MICROS = (1n << 63n) - 1n;

const DECIMAL = /^(-?)(0|[1-9][0-9]*)(?:\.([0-9]{1,6}))?$/;

export interface ParseCreditsOptions {
  /** Accept negative amounts. @default false */
  allowNegative?: boolean;
  /** Accept zero. @default true */
  allowZero?: boolean;
  /** Field name used in error messages. @default 'amount' */
  field?: string;
}

export function parseCredits(input: unknown, options: ParseCreditsOptions = {}): Micros {
  const field = options.field ?? 'amount';
  if (typeof input !== 'string') {
    throw new GridworkError('INVALID_AMOUNT', `${field} must be a decimal string of credits, e.g. "1.25"`);
  }
  const m = DECIMAL.exec(input);
  if (!m) {
    const tooPrecise = /^-?(0|[1-9][0-9]*)\.[0-9]{7,}$/.test(input);
    throw new GridworkError(
      'INVALID_AMOUNT',
      tooPrecise
        ? `${field} "${input}" has more than 6 decimal places (1 micro-credit is the smallest unit)`
        : `${field} "${input}" is not a plain decimal number of credits`,
    );
  }
  const [, sign, whole = '0', frac = ''] = m;
  let micros = BigInt(whole) * MICROS_PER_CREDIT + BigInt(frac.padEnd(6, '0'));
  if (sign === '-') micros = -micros;
  if (micros > MAX_MICROS || micros < -MAX_MICROS) {
    throw new GridworkError('INVALID_AMOUNT', `${field} "${input}" is out of range`);
  }
  if (micros < 0n && !options.allowNegative) {
    throw new GridworkError('INVALID_AMOUNT', `${field} must not be negative`);
  }
  if (micros === 0n && options.allowZero === false) {
    throw new GridworkError('INVALID_AMOUNT', `${field} must be greater than zero`);
  }
  return micros;
}

/** Formats micro-credits as the shortest exact decimal string ("1.5", "0.000001", "-3"). */
export function formatCredits(micros: Micros): string {
  const neg = micros < 0n;
  const abs = neg ? -micros : micros;
  const whole = abs / MICROS_PER_CREDIT;
  const frac = (abs % MICROS_PER_CREDIT).toString().padStart(6, '0').replace(/0+$/, '');
  return `${neg ? '-' : ''}${whole}${frac ? `.${frac}` : ''}`;
}
