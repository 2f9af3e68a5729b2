/**
 * Coordinator and agent logs for a person at a terminal: `12:03:04 INFO message key=value …`
 * instead of pino's JSON lines. JSON stays the format when stderr is a file or a pipe (log
 * collectors, `journalctl`, tests).
 */
import { color } from './output.ts';

const LEVELS: Record<number, [string, (s: string) => string]> = {
  10: ['TRACE', color.dim],
  20: ['DEBUG', color.dim],
  30: ['INFO ', color.green],
  40: ['WARN ', color.yellow],
  50: ['ERROR', color.red],
  60: ['FATAL', color.red],
};

function field(value: unknown): string {
  if (typeof value === 'string') return /[\s"=]/.test(value) ? JSON.stringify(value) : value;
  try {
    return JSON.stringify(value) ?? String(value);
  } catch {
    return String(value);
  }
}

/** One pino JSON line → one readable line (or the line unchanged if it is not JSON). */
export function formatLogLine(line: string): string {
  let o: Record<string, unknown>;
  try {
    o = JSON.parse(line) as Record<string, unknown>;
  } catch {
    return line;
  }
  const { level, time, msg, pid: _pid, hostname: _host, err, req, res, responseTime, ...rest } = o;
  const [name, paint] = LEVELS[Number(level)] ?? [String(level), (s: string) => s];
  const at = typeof time === 'number' ? new Date(time).toISOString().slice(11, 19) : '';
  const parts = [color.dim(at), paint(name), String(msg ?? '')];
  const r = req as { method?: string; url?: string } | undefined;
  if (r?.method) parts.push(`${r.method} ${r.url ?? ''}`);
  const s = res as { statusCode?: number } | undefined;
  if (s?.statusCode) parts.push(`→ ${s.statusCode}${typeof responseTime === 'number' ? ` ${responseTime.toFixed(1)} ms` : ''}`);
  for (const [k, v] of Object.entries(rest)) parts.push(color.dim(`${k}=`) + field(v));
  const e = err as { message?: string; stack?: string } | undefined;
  let out = parts.filter(Boolean).join(' ');
  if (e?.stack) out += `\n${color.dim(e.stack)}`;
  else if (e?.message) out += ` ${color.red(e.message)}`;
  return `${out}\n`;
}

/** A pino destination writing readable lines to stderr. */
export const prettyStderr = { write: (line: string) => void process.stderr.write(formatLogLine(line)) };
