#!/usr/bin/env node
// The `gridwork` command runs compiled JavaScript (dist/, built by `npm run build`, which the
// root `prepare` script runs on `npm ci`). Only inside a source checkout whose TypeScript is
// newer than its build — a developer editing, a test run — does it run the sources through tsx
// instead, so nobody ever runs stale code. GRIDWORK_FROM_SOURCE=1 forces the sources, =0 the build.
import { existsSync, readdirSync, statSync } from 'node:fs';
import { fileURLToPath } from 'node:url';

const cli = fileURLToPath(new URL('..', import.meta.url));
const packages = fileURLToPath(new URL('../..', import.meta.url));
const PACKAGES = ['protocol', 'sdk', 'provider', 'coordinator', 'sim', 'cli'];

function newestSource(dir) {
  let newest = 0;
  for (const e of readdirSync(dir, { withFileTypes: true })) {
    const path = `${dir}/${e.name}`;
    if (e.isDirectory()) newest = Math.max(newest, newestSource(path));
    else if (e.name.endsWith('.ts') && !e.name.endsWith('.test.ts')) newest = Math.max(newest, statSync(path).mtimeMs);
  }
  return newest;
}

/** True when some package's sources changed after its last build (or it was never built). */
function buildIsStale() {
  if (!existsSync(`${cli}/src`)) return false; // an installed package: dist only
  for (const p of PACKAGES) {
    const src = `${packages}/${p}/src`;
    if (!existsSync(src)) continue;
    const info = `${packages}/${p}/dist/.tsbuildinfo`;
    if (!existsSync(info) || newestSource(src) > statSync(info).mtimeMs) return true;
  }
  return false;
}

const fromSource = process.env.GRIDWORK_FROM_SOURCE;
if (fromSource === '1' || (fromSource !== '0' && (!existsSync(`${cli}/dist/main.js`) || buildIsStale()))) {
  const { register } = await import('tsx/esm/api');
  // The repository's tsconfig maps @gridwork/* to their sources.
  register({ tsconfig: fileURLToPath(new URL('../../../tsconfig.json', import.meta.url)) });
  await import('../src/main.ts');
} else {
  await import('../dist/main.js');
}
