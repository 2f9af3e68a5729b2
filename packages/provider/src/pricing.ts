/**
 * Pricing policies. Fixed rates give the standing asks (per CPU core-hour, per GiB-hour of
 * memory, per GPU-hour of each model). A script policy also bids in auction windows: the agent
 * runs the user's script with the order as JSON on stdin and reads a price in credits per hour
 * (or "no bid") from stdout. A script that fails, hangs past its time limit, prints garbage or
 * bids above the order's max price means no bid — never a crash.
 */
import { spawn } from 'node:child_process';
import { readFile } from 'node:fs/promises';
import { type Asks, formatCredits, GridworkError, type Hardware, parseCredits, type Resources } from '@gridwork/protocol';

export interface FixedRates {
  /** @default '0.02' */
  cpuCoreHour?: string;
  /** @default '0.004' */
  memoryGiBHour?: string;
  /** Per GPU model; models not listed use `gpuDefault`. */
  gpuHour?: Record<string, string>;
  /** @default '0.60' */
  gpuDefault?: string;
}

export interface AnnouncedOrder {
  orderId: string;
  resources: Resources;
  maxPerHour: string;
}

export interface PricingPolicy {
  asks(hardware: Hardware): Asks;
  /** A bid for an auction, in credits per hour, or null for no bid. Absent: this policy never bids. */
  bid?(order: AnnouncedOrder, standing: Asks): Promise<string | null>;
}

function checked(value: string, field: string): string {
  return formatCredits(parseCredits(value, { field }));
}

export function fixedPricing(rates: FixedRates = {}): PricingPolicy {
  const cpu = checked(rates.cpuCoreHour ?? '0.02', 'cpuCoreHour');
  const mem = checked(rates.memoryGiBHour ?? '0.004', 'memoryGiBHour');
  const gpuDefault = checked(rates.gpuDefault ?? '0.60', 'gpuDefault');
  const gpuHour = Object.fromEntries(Object.entries(rates.gpuHour ?? {}).map(([m, p]) => [m, checked(p, `gpuHour.${m}`)]));
  return {
    asks: (hardware) => ({
      cpuCoreHour: cpu,
      memoryGiBHour: mem,
      gpuHour: Object.fromEntries(hardware.gpus.map((g) => [g.model, gpuHour[g.model] ?? gpuDefault])),
    }),
  };
}

/** Reads fixed rates from a JSON file shaped like FixedRates. */
export async function loadRates(path: string): Promise<FixedRates> {
  let parsed: unknown;
  try {
    parsed = JSON.parse(await readFile(path, 'utf8'));
  } catch (err) {
    throw new GridworkError('BAD_REQUEST', `pricing config ${path}: ${(err as Error).message}`);
  }
  if (typeof parsed !== 'object' || parsed === null || Array.isArray(parsed))
    throw new GridworkError('BAD_REQUEST', `pricing config ${path} must be a JSON object`);
  const allowed = new Set(['cpuCoreHour', 'memoryGiBHour', 'gpuHour', 'gpuDefault']);
  for (const k of Object.keys(parsed)) if (!allowed.has(k)) throw new GridworkError('BAD_REQUEST', `pricing config ${path}: unknown field ${k}`);
  return parsed as FixedRates;
}

export interface ScriptPolicyOptions {
  script: string;
  /** Standing asks when no auction runs. */
  rates?: FixedRates;
  /** @default 2000 */
  timeoutMs?: number;
  /** Most processes the script may run (RLIMIT_NPROC; not enforced for root). @default 16 */
  maxProcesses?: number;
}

export function scriptPricing(options: ScriptPolicyOptions): PricingPolicy {
  const fixed = fixedPricing(options.rates);
  return {
    asks: fixed.asks,
    bid: async (order, standing) => {
      const out = await runScript(options.script, JSON.stringify({ order, standingAsks: standing }), options.timeoutMs ?? 2000, options.maxProcesses ?? 16);
      if (out === null) return null;
      const text = out.trim();
      if (text === '' || /^no[ -]?bid$/i.test(text)) return null;
      let price: string | undefined = text;
      if (text.startsWith('{')) {
        try {
          price = (JSON.parse(text) as { pricePerHour?: unknown }).pricePerHour as string | undefined;
        } catch {
          return null;
        }
      }
      if (typeof price !== 'string') return null;
      try {
        const micros = parseCredits(price, { allowZero: false });
        return micros <= parseCredits(order.maxPerHour) ? formatCredits(micros) : null;
      } catch {
        return null;
      }
    },
  };
}

/** Runs the script; resolves with its stdout, or null if it failed, timed out or printed too much. */
function runScript(script: string, input: string, timeoutMs: number, maxProcesses: number): Promise<string | null> {
  return new Promise((resolve) => {
    const child = spawn('prlimit', [`--nproc=${maxProcesses}`, '--', script], { stdio: ['pipe', 'pipe', 'ignore'], detached: true });
    let out = '';
    let done = false;
    const finish = (value: string | null) => {
      if (done) return;
      done = true;
      clearTimeout(timer);
      try {
        if (child.pid) process.kill(-child.pid, 'SIGKILL');
      } catch {}
      resolve(value);
    };
    const timer = setTimeout(() => finish(null), timeoutMs);
    child.on('error', () => finish(null));
    child.stdout.setEncoding('utf8');
    child.stdout.on('data', (d: string) => {
      out += d;
      if (out.length > 4096) finish(null);
    });
    child.on('close', (code) => finish(code === 0 ? out : null));
    child.stdin.on('error', () => {});
    child.stdin.end(input);
  });
}
