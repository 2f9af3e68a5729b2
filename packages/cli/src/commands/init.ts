/** `gridwork init`: a job spec and a bundle to start from, in the current (or a given) directory. */
import { mkdir, writeFile } from 'node:fs/promises';
import { basename, join, resolve } from 'node:path';
import type { Command } from 'commander';
import { CliExit, EXIT_USAGE, info, printJson } from '../output.ts';

const spec = (name: string) => `# A Gridwork job spec. Reference: https://github.com/gridwork (README, "Job spec").
# Check it against the network without submitting:  gridwork job explain job.yaml
# Run it:                                           gridwork job submit job.yaml --wait
version: 1
name: ${name}
kind: batch                      # batch | train | service | cluster
runtime:
  kind: bundle                   # the files under path are uploaded and run sandboxed
  path: ./workload
  command: [node, main.mjs]
resources: { cpu: 1, memoryGiB: 1 }
inputs: [{ name: items, path: ./data/*.txt, shard: true }]   # one task per shard of the files
shards: 2
price: { maxPerHour: "1.00", budget: "0.50" }   # credits: at most 1.00 per task-hour, 0.50 in all
timeoutSeconds: 600
`;

const workload = `// Runs inside the sandbox: inputs are read-only under $GRIDWORK_INPUTS, results go to
// $GRIDWORK_OUTPUTS (uploaded when the task ends). stdout and stderr are the task's logs.
import { readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';

const inputs = process.env.GRIDWORK_INPUTS;
const outputs = process.env.GRIDWORK_OUTPUTS;
const results = [];
for (const file of readdirSync(join(inputs, 'items'), { recursive: true })) {
  const text = readFileSync(join(inputs, 'items', String(file)), 'utf8');
  results.push({ file: String(file), words: text.split(/\\s+/).filter(Boolean).length });
  console.log(\`counted \${file}\`);
}
writeFileSync(join(outputs, 'counts.json'), \`\${JSON.stringify(results, null, 2)}\\n\`);
`;

export function registerInitCommand(program: Command): void {
  program
    .command('init [dir]')
    .description('create job.yaml, workload/main.mjs and sample data to start from (never overwrites)')
    .option('--name <name>', 'job name (default: the directory name)')
    .option('--json', 'print the files created as JSON on stdout')
    .action(async (dirArg: string | undefined, opts: { name?: string; json?: boolean }) => {
      const dir = resolve(dirArg ?? '.');
      const name = (opts.name ?? basename(dir))
        .toLowerCase()
        .replace(/[^a-z0-9._-]+/g, '-')
        .replace(/^[^a-z0-9]+/, '')
        .slice(0, 63);
      if (!/^[a-z0-9][a-z0-9._-]{0,62}$/.test(name)) throw new CliExit(EXIT_USAGE, `cannot make a job name from "${opts.name ?? basename(dir)}": pass --name`);
      const files: [string, string][] = [
        ['job.yaml', spec(name)],
        [join('workload', 'main.mjs'), workload],
        [join('data', 'a.txt'), 'the quick brown fox\n'],
        [join('data', 'b.txt'), 'jumps over the lazy dog\n'],
      ];
      const created: string[] = [];
      for (const [rel, text] of files) {
        const path = join(dir, rel);
        await mkdir(join(path, '..'), { recursive: true });
        try {
          await writeFile(path, text, { flag: 'wx' });
          created.push(path);
        } catch (err) {
          if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err;
          if (rel === 'job.yaml') throw new CliExit(EXIT_USAGE, `${path} already exists; nothing was changed`);
          info(`kept existing ${path}`);
        }
      }
      if (opts.json) return printJson({ dir, created });
      for (const c of created) info(`created ${c}`);
      info('next: gridwork job explain job.yaml   (then: gridwork job submit job.yaml --wait)');
    });
}
