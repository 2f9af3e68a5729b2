// Regenerates the example data sets from their seeds (deterministic: the same bytes on any
// machine; train.test.ts checks that the committed files match):
//   examples/train/data/{train,test}.csv        training and held-out splits
//   examples/infer-trained/data/points-NN.csv   a third split, shuffled, in 6 files, for batch inference
//
//   node examples/train/make-data.mjs [--check]
import { readFileSync, writeFileSync, mkdirSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { makeSpirals, toCsv } from './workload/dataset.mjs';
import { deriveSeed, mulberry32 } from './workload/detmath.mjs';

const here = dirname(fileURLToPath(import.meta.url));

/** path → contents of every generated file. */
export function dataFiles() {
  const files = new Map();
  files.set(join(here, 'data/train.csv'), toCsv(makeSpirals({ perClass: 200, seed: 1 })));
  files.set(join(here, 'data/test.csv'), toCsv(makeSpirals({ perClass: 100, seed: 2 })));
  const points = makeSpirals({ perClass: 100, seed: 3 });
  const n = points.y.length;
  const order = Int32Array.from({ length: n }, (_, i) => i);
  const rng = mulberry32(deriveSeed(3, 77));
  for (let i = n - 1; i > 0; i--) {
    const j = Math.floor(rng.next() * (i + 1));
    [order[i], order[j]] = [order[j], order[i]];
  }
  const parts = 6;
  const per = n / parts;
  for (let p = 0; p < parts; p++) {
    const idx = order.subarray(p * per, (p + 1) * per);
    const x = new Float64Array(2 * idx.length);
    const y = new Int32Array(idx.length);
    idx.forEach((src, i) => {
      x[2 * i] = points.x[2 * src];
      x[2 * i + 1] = points.x[2 * src + 1];
      y[i] = points.y[src];
    });
    files.set(join(here, `../infer-trained/data/points-${String(p).padStart(2, '0')}.csv`), toCsv({ x, y }));
  }
  return files;
}

if (process.argv[1] === fileURLToPath(import.meta.url)) {
  const check = process.argv.includes('--check');
  let stale = 0;
  for (const [path, text] of dataFiles()) {
    if (check) {
      let old = '';
      try {
        old = readFileSync(path, 'utf8');
      } catch {}
      if (old !== text) {
        stale++;
        process.stderr.write(`differs: ${path}\n`);
      }
    } else {
      mkdirSync(dirname(path), { recursive: true });
      writeFileSync(path, text);
      process.stdout.write(`wrote ${path}\n`);
    }
  }
  if (stale > 0) process.exit(1);
}
