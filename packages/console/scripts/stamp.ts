/**
 * The console build's fingerprint: a sha256 over its sources and build config, written to
 * built/source-hash.txt by the build, so a test tells when the committed build is older than
 * its sources (rebuild with npm run build -w packages/console).
 */
import { createHash } from 'node:crypto';
import { readdirSync, readFileSync, statSync, writeFileSync } from 'node:fs';
import { join, relative } from 'node:path';
import { fileURLToPath } from 'node:url';

export const CONSOLE_ROOT = fileURLToPath(new URL('..', import.meta.url));

export function sourceHash(root = CONSOLE_ROOT): string {
  const files: string[] = [];
  const walk = (dir: string) => {
    for (const name of readdirSync(dir).sort()) {
      const p = join(dir, name);
      if (statSync(p).isDirectory()) walk(p);
      else files.push(p);
    }
  };
  walk(join(root, 'web'));
  files.push(join(root, 'vite.config.ts'), join(root, 'tsconfig.json'));
  const h = createHash('sha256');
  for (const f of files) h.update(relative(root, f).split('\\').join('/')).update('\0').update(readFileSync(f)).update('\0');
  return h.digest('hex');
}

if (process.argv[1] === fileURLToPath(import.meta.url)) {
  writeFileSync(join(CONSOLE_ROOT, 'built', 'source-hash.txt'), `${sourceHash()}\n`);
}
