// Writes built/source-hash.txt: a sha256 over the console's sources and build config, so a test
// can tell when the committed build is older than its sources (rebuild: npm run build -w packages/console).
import { createHash } from 'node:crypto';
import { readdirSync, readFileSync, statSync, writeFileSync } from 'node:fs';
import { join, relative } from 'node:path';
import { fileURLToPath } from 'node:url';

const root = fileURLToPath(new URL('..', import.meta.url));

export function sourceHash() {
  const files = [];
  const walk = (dir) => {
    for (const name of readdirSync(dir).sort()) {
      const p = join(dir, name);
      if (statSync(p).isDirectory()) walk(p);
      else files.push(p);
    }
  };
  walk(join(root, 'web'));
  files.push(join(root, 'vite.config.ts'), join(root, 'package.json'));
  const h = createHash('sha256');
  for (const f of files) h.update(relative(root, f).split('\\').join('/')).update('\0').update(readFileSync(f)).update('\0');
  return h.digest('hex');
}

if (process.argv[1] === fileURLToPath(import.meta.url)) {
  writeFileSync(join(root, 'built', 'source-hash.txt'), `${sourceHash()}\n`);
}
