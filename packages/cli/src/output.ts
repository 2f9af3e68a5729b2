/**
 * Output rules: people read stderr (colours and live progress only on a TTY), scripts read
 * stdout (`--json`: one JSON document). Exit codes: 0 success, 1 the job or operation
 * failed, 2 bad usage or invalid input.
 */
import { GridworkError, httpStatusOf } from '@gridwork/protocol';
import pc from 'picocolors';

export const EXIT_OK = 0;
export const EXIT_FAILED = 1;
export const EXIT_USAGE = 2;

export const isTty = Boolean(process.stderr.isTTY) && process.env.CI !== 'true';
export const color = pc.createColors(isTty);

export function info(line: string): void {
  process.stderr.write(`${line}\n`);
}

export function printJson(value: unknown): void {
  process.stdout.write(`${JSON.stringify(value, (_k, v) => (typeof v === 'bigint' ? v.toString() : v), 2)}\n`);
}

/** Exits with a message: 2 for anything the user can fix in their input, 1 otherwise. */
export class CliExit extends Error {
  constructor(
    readonly exitCode: number,
    message: string,
  ) {
    super(message);
  }
}

export function exitCodeFor(err: unknown): number {
  if (err instanceof CliExit) return err.exitCode;
  if (err instanceof GridworkError) {
    const status = httpStatusOf[err.code];
    return status >= 400 && status < 500 && err.code !== 'ABORTED' ? EXIT_USAGE : EXIT_FAILED;
  }
  return EXIT_FAILED;
}

export function describeError(err: unknown): string {
  if (err instanceof GridworkError) return `${err.message} [${err.code}]`;
  if (err instanceof Error) return err.message;
  return String(err);
}

export function formatDuration(ms: number | null): string {
  if (ms === null) return '-';
  return ms < 1000 ? `${ms} ms` : `${(ms / 1000).toFixed(1)} s`;
}
