// The training data: three interleaved 2-D spiral arms (one class each), made from a seed with
// the deterministic math of detmath.mjs, and read back from / written to CSV ("x,y,label").
// Numbers are written in JavaScript's shortest round-trip form, so parsing a written file gives
// back exactly the same doubles.
import { deriveSeed, gaussian, mulberry32, sincos } from './detmath.mjs';

export const CLASSES = 3;
export const CLASS_NAMES = ['arm-0', 'arm-1', 'arm-2'];
/** How many turns each arm makes from the centre to radius 1. */
const TURNS = 1.5;

/** perClass points per arm; noise is the angular jitter in radians. Returns { x: Float64Array(2n), y: Int32Array(n) }. */
export function makeSpirals({ perClass, seed, noise = 0.3 }) {
  const rng = mulberry32(deriveSeed(seed, 0x5eed));
  const n = perClass * CLASSES;
  const x = new Float64Array(2 * n);
  const y = new Int32Array(n);
  let i = 0;
  for (let c = 0; c < CLASSES; c++) {
    for (let j = 0; j < perClass; j++, i++) {
      const t = j / perClass;
      const radius = 0.05 + 0.95 * t;
      const angle = c * ((2 * Math.PI) / CLASSES) + t * TURNS * 2 * Math.PI + noise * gaussian(rng);
      const [s, co] = sincos(angle);
      x[2 * i] = radius * s;
      x[2 * i + 1] = radius * co;
      y[i] = c;
    }
  }
  return { x, y };
}

export function toCsv({ x, y }) {
  const lines = ['x,y,label'];
  for (let i = 0; i < y.length; i++) lines.push(`${x[2 * i]},${x[2 * i + 1]},${y[i]}`);
  return `${lines.join('\n')}\n`;
}

/** Parses "x,y[,label]" lines (a header line is skipped); label -1 when absent. */
export function fromCsv(text, name = 'csv') {
  const xs = [];
  const ys = [];
  const lines = text.split('\n');
  for (let li = 0; li < lines.length; li++) {
    const line = lines[li].trim();
    if (line === '' || (li === 0 && /[a-z]/i.test(line))) continue;
    const parts = line.split(',');
    const a = Number(parts[0]);
    const b = Number(parts[1]);
    const label = parts.length > 2 ? Number(parts[2]) : -1;
    if (parts.length < 2 || !Number.isFinite(a) || !Number.isFinite(b) || !Number.isInteger(label) || label >= CLASSES) {
      throw new Error(`${name}:${li + 1}: expected "x,y[,label]" with label 0..${CLASSES - 1}, got ${JSON.stringify(line)}`);
    }
    xs.push(a, b);
    ys.push(label);
  }
  return { x: Float64Array.from(xs), y: Int32Array.from(ys) };
}
