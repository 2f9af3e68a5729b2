/**
 * Job spec files in the browser: JSON or YAML text to an object; the coordinator validates it.
 * Numeric prices (YAML users write maxPerHour: 1.20) become the decimal string they spell, as
 * the SDK's validateJobSpec does.
 */
import { parse } from 'yaml';

export function parseSpecText(text: string): Record<string, unknown> {
  const trimmed = text.trim();
  if (!trimmed) throw new Error('paste or pick a job spec first');
  const value: unknown = trimmed.startsWith('{') ? JSON.parse(trimmed) : parse(trimmed, { uniqueKeys: true });
  if (!value || typeof value !== 'object' || Array.isArray(value)) throw new Error('a job spec is an object (version, name, kind, runtime, ...)');
  const spec = value as Record<string, unknown>;
  const price = spec.price as Record<string, unknown> | undefined;
  if (price && typeof price === 'object') {
    for (const k of ['maxPerHour', 'budget']) if (typeof price[k] === 'number' && Number.isFinite(price[k])) price[k] = String(price[k]);
  }
  return spec;
}
