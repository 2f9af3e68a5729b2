/**
 * Output rules, as gh and kubectl do it:
 * - data (tables, balances, lists, `--json` documents) goes to stdout, so `gridwork market | grep`
 *   works; progress, diagnostics and errors go to stderr;
 * - colour only when the stream is a TTY, never with NO_COLOR (https://no-color.org) or
 *   TERM=dumb; FORCE_COLOR forces it;
 * - with `--json`, an error is a JSON document on stdout too: `{ "error": { code, message, exitCode } }`.
 *
 * Exit codes (documented in the README and `gridwork --help`):
 *   0  success
 *   1  the job or the operation failed (a failed job, an unreachable coordinator, ...)
 *   2  bad usage or input (unknown option, invalid spec, malformed URL, unknown job, ...)
 *   3  lost contact with the coordinator while waiting: the job is still running
 *
 * This module is loaded by every command: it must stay free of heavy imports.
 */
import type { GridworkError } from '@gridwork/protocol';
import pc from 'picocolors';

export const EXIT_OK = 0;
export const EXIT_FAILED = 1;
export const EXIT_USAGE = 2;
export const EXIT_LOST = 3;

const env = process.env;
function colorFor(stream: NodeJS.WriteStream): boolean {
  if (env.NO_COLOR !== undefined && env.NO_COLOR !== '') return false;
  if (env.FORCE_COLOR !== undefined && env.FORCE_COLOR !== '0') return true;
  return Boolean(stream.isTTY) && env.TERM !== 'dumb' && env.CI !== 'true';
}

/** Live, redrawn progress: only for a person at a terminal. */
export const isTty = Boolean(process.stderr.isTTY) && env.CI !== 'true' && env.TERM !== 'dumb';
/** Colours for what goes to stderr (progress, diagnostics). */
export const color = pc.createColors(colorFor(process.stderr));
/** Colours for data on stdout. */
export const outColor = pc.createColors(colorFor(process.stdout));

/** A diagnostic or progress line, for people: stderr. */
export function info(line: string): void {
  process.stderr.write(`${line}\n`);
}

/** A line of data: stdout. */
export function out(line = ''): void {
  process.stdout.write(`${line}\n`);
}

let wroteJson = false;
/** Whether a JSON document already went to stdout (an error then adds none: stdout stays one document). */
export const jsonWritten = () => wroteJson;

export function printJson(value: unknown): void {
  wroteJson = true;
  process.stdout.write(`${JSON.stringify(value, (_k, v) => (typeof v === 'bigint' ? v.toString() : v), 2)}\n`);
}

/** Exits with a message and a given code (and, with --json, a JSON error document). */
export class CliExit extends Error {
  constructor(
    readonly exitCode: number,
    message: string,
    readonly code = exitCode === EXIT_USAGE ? 'BAD_REQUEST' : exitCode === EXIT_LOST ? 'LOST_CONTACT' : 'FAILED',
    readonly details?: unknown,
    /** The coordinator's error behind it, if one is: its code is shown with the message. */
    options?: ErrorOptions,
  ) {
    super(message, options);
  }
}

// Status classes of the shared code → HTTP status table, without importing the protocol package.
const USAGE_STATUSES = new Set([400, 401, 402, 403, 404, 409, 413, 415]);

function isGridworkError(err: unknown): err is GridworkError {
  return err instanceof Error && typeof (err as { code?: unknown }).code === 'string' && 'httpStatus' in err;
}

export function exitCodeFor(err: unknown): number {
  if (err instanceof CliExit) return err.exitCode;
  const name = (err as { constructor?: { name?: string } })?.constructor?.name;
  if (name === 'LostContactError') return EXIT_LOST;
  // A URL that answers but is not a coordinator is a wrong input, like a malformed URL.
  if (name === 'NotACoordinatorError') return EXIT_USAGE;
  if (isGridworkError(err)) {
    if (err.code === 'ABORTED' || err.code === 'NETWORK_ERROR' || err.code === 'UNAVAILABLE' || err.code === 'INSUFFICIENT_FUNDS') return EXIT_FAILED;
    return USAGE_STATUSES.has(err.httpStatus) ? EXIT_USAGE : EXIT_FAILED;
  }
  return EXIT_FAILED;
}

export function describeError(err: unknown): string {
  if (err instanceof CliExit) return isGridworkError(err.cause) ? `${err.message} [${err.code}]` : err.message;
  if (isGridworkError(err)) {
    // Every problem of a spec at once, so fixing one does not just reveal the next.
    const problems = Array.isArray(err.details) ? (err.details as { path?: unknown; message?: unknown }[]) : [];
    if (problems.length > 1 && problems.every((p) => typeof p?.path === 'string' && typeof p.message === 'string')) {
      const at = err.message.indexOf('invalid job spec');
      const head = at >= 0 ? err.message.slice(0, at + 'invalid job spec'.length) : `${problems.length} problems`;
      return `${head} [${err.code}]${problems.map((p) => `\n  - ${p.path}: ${p.message}`).join('')}`;
    }
    return `${err.message} [${err.code}]`;
  }
  if (err instanceof Error) return err.message;
  return String(err);
}

/** The JSON document printed on stdout for an error when --json was given. */
export function errorDocument(err: unknown, exitCode: number): { error: { code: string; message: string; exitCode: number; details?: unknown } } {
  const code = err instanceof CliExit ? err.code : isGridworkError(err) ? err.code : 'FAILED';
  const details = err instanceof CliExit ? err.details : isGridworkError(err) ? err.details : undefined;
  const message = err instanceof Error ? err.message : String(err);
  return { error: { code, message, exitCode, ...(details === undefined ? {} : { details }) } };
}

export function formatDuration(ms: number | null): string {
  if (ms === null) return '-';
  if (ms < 1000) return `${ms} ms`;
  if (ms < 60_000) return `${(ms / 1000).toFixed(1)} s`;
  const m = Math.floor(ms / 60_000);
  if (m < 60) return `${m} min ${Math.round((ms % 60_000) / 1000)} s`;
  return `${Math.floor(m / 60)} h ${m % 60} min`;
}

/** "3 min ago", "in 2 h", "just now": for people; --json keeps the ISO time. */
export function relativeTime(iso: string | null | undefined, now = Date.now()): string {
  if (!iso) return '-';
  const t = Date.parse(iso);
  if (Number.isNaN(t)) return iso;
  const d = Math.round((now - t) / 1000);
  const abs = Math.abs(d);
  let text: string;
  if (abs < 5) return 'just now';
  if (abs < 60) text = `${abs} s`;
  else if (abs < 3600) text = `${Math.floor(abs / 60)} min`;
  else if (abs < 86_400) text = `${Math.floor(abs / 3600)} h`;
  else text = `${Math.floor(abs / 86_400)} d`;
  return d >= 0 ? `${text} ago` : `in ${text}`;
}

const ANSI = /\x1b\[[0-9;]*m/g;
const visible = (s: string) => s.replace(ANSI, '').length;

/**
 * Columns aligned to their widest cell, a header row first. Columns named in `right` are
 * right-aligned (numbers, money); the last column is never padded.
 */
export function table(headers: string[], rows: string[][], options: { right?: string[]; paint?: (s: string) => string } = {}): string[] {
  const widths = headers.map((h, i) => Math.max(visible(h), ...rows.map((r) => visible(r[i] ?? ''))));
  const right = new Set(options.right ?? []);
  const line = (cells: string[]) =>
    cells
      .map((c, i) => {
        const pad = ' '.repeat(Math.max(0, (widths[i] ?? 0) - visible(c)));
        if (right.has(headers[i] as string)) return pad + c;
        return i === cells.length - 1 ? c : c + pad;
      })
      .join('  ')
      .trimEnd();
  const head = line(headers.map((h) => h.toUpperCase()));
  return [options.paint ? options.paint(head) : head, ...rows.map(line)];
}

/** Parses "90s", "15m", "2h", "500ms" or a number of seconds into milliseconds. */
export function parseDuration(text: string, what: string): number {
  const m = /^(\d+(?:\.\d+)?)\s*(ms|s|m|min|h|d)?$/.exec(text.trim());
  if (!m) throw new CliExit(EXIT_USAGE, `${what}: expected a duration like 30s, 15m or 2h, got "${text}"`);
  const n = Number(m[1]);
  const unit = m[2] ?? 's';
  const factor = unit === 'ms' ? 1 : unit === 's' ? 1000 : unit === 'm' || unit === 'min' ? 60_000 : unit === 'h' ? 3_600_000 : 86_400_000;
  return Math.round(n * factor);
}
