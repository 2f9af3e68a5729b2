/**
 * Every example's job.yaml passes the real job-spec validation (the service one included, with
 * its `service:` block), and names files that exist.
 */
import assert from 'node:assert/strict';
import { existsSync, readdirSync, readFileSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { describe, it } from 'node:test';
import { fileURLToPath } from 'node:url';
import { expandGlob, parseSpecText } from '@gridwork/sdk';

const here = fileURLToPath(new URL('.', import.meta.url));
const specs = readdirSync(here, { withFileTypes: true })
  .filter((e) => e.isDirectory() && existsSync(join(here, e.name, 'job.yaml')))
  .map((e) => join(here, e.name, 'job.yaml'));

describe('examples/*/job.yaml', () => {
  it('finds the examples', () => {
    for (const name of ['train', 'infer-trained', 'infer-pretrained', 'service']) assert.ok(specs.includes(join(here, name, 'job.yaml')), name);
  });

  for (const path of specs) {
    it(`${path.slice(here.length)} is a valid spec whose bundle and inputs exist`, async () => {
      const text = readFileSync(path, 'utf8');
      const spec = await parseSpecText(text, path);
      const base = dirname(path);
      if (spec.runtime.path) assert.ok(existsSync(resolve(base, spec.runtime.path, spec.runtime.command[1] ?? '')), 'bundle command file');
      for (const input of spec.inputs ?? []) assert.ok((await expandGlob(base, input.path)).length > 0, `inputs ${input.name}: ${input.path}`);
    });
  }
});
