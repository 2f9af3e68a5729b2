/**
 * The SDK installs like a package (issue 9): built with tsc, packed with `npm pack` together
 * with @gridwork/protocol, installed from the tarballs into a fresh project outside the
 * repository, then used from a plain Node ESM script (no tsx, no TypeScript) that submits a job
 * to a real coordinator and reads its result, and from a .ts file checked by tsc with the
 * defaults of `tsc --init` (no skipLibCheck: our .d.ts files are checked too).
 */
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { mkdir, readdir, writeFile } from 'node:fs/promises';
import { join, resolve } from 'node:path';
import { after, before, test } from 'node:test';
import { fileURLToPath } from 'node:url';
import { startTestNetwork, type TestNetwork, tempDir } from '@gridwork/testkit';

const repo = resolve(fileURLToPath(new URL('../../..', import.meta.url)));
const tsc = join(repo, 'node_modules', 'typescript', 'bin', 'tsc');

function run(cmd: string, args: string[], cwd: string, env: Record<string, string> = {}): Promise<{ stdout: string; stderr: string }> {
  return new Promise((res, rej) => {
    // A clean environment for the consumer: no NODE_OPTIONS (a test runner's loaders), no npm_* of ours.
    const clean: Record<string, string> = {};
    for (const [k, v] of Object.entries(process.env)) if (v !== undefined && !k.startsWith('npm_') && k !== 'NODE_OPTIONS' && k !== 'NODE_TEST_CONTEXT') clean[k] = v;
    execFile(cmd, args, { cwd, env: { ...clean, ...env }, maxBuffer: 32 << 20, timeout: 240_000 }, (err, stdout, stderr) => {
      if (err) rej(new Error(`${cmd} ${args.join(' ')} failed in ${cwd}: ${err.message}\n${stdout}\n${stderr}`));
      else res({ stdout, stderr });
    });
  });
}

let net: TestNetwork;
let work: { path: string; remove: () => Promise<void> };
let project: string;

before(async () => {
  work = await tempDir('gridwork-sdk-package-');
  // The build this test checks, brought up to date (incremental: fast when nothing changed).
  await run(process.execPath, [tsc, '-b', join(repo, 'packages', 'sdk', 'tsconfig.build.json')], repo);
  const packs = join(work.path, 'tarballs');
  await mkdir(packs);
  for (const pkg of ['protocol', 'sdk']) await run('npm', ['pack', '--silent', '--pack-destination', packs], join(repo, 'packages', pkg));
  const tarballs = await readdir(packs);
  const tgz = (name: string) => join(packs, tarballs.find((t) => t.startsWith(`gridwork-${name}-`)) as string);
  project = join(work.path, 'consumer');
  await mkdir(project);
  await writeFile(
    join(project, 'package.json'),
    JSON.stringify({ name: 'consumer', private: true, type: 'module', dependencies: { '@gridwork/protocol': `file:${tgz('protocol')}`, '@gridwork/sdk': `file:${tgz('sdk')}` } }),
  );
  // From the npm cache when it has everything (it does after `npm ci` here); the registry otherwise.
  await run('npm', ['install', '--prefer-offline', '--no-audit', '--no-fund', '--ignore-scripts'], project);
  net = await startTestNetwork({ providers: 1 });
});

after(async () => {
  await net?.close();
  await work?.remove();
});

test('the packed SDK contains compiled JavaScript and declarations, and no TypeScript sources', async () => {
  const files = await readdir(join(project, 'node_modules', '@gridwork', 'sdk', 'dist'));
  assert.ok(files.includes('index.js') && files.includes('index.d.ts'), files.join(' '));
  assert.ok(!files.some((f) => f.endsWith('.ts') && !f.endsWith('.d.ts')));
  const root = await readdir(join(project, 'node_modules', '@gridwork', 'sdk'));
  assert.ok(!root.includes('src') && !root.includes('test'), root.join(' '));
});

test('a plain Node ESM script submits a job, waits for it and reads its result', async () => {
  await mkdir(join(project, 'job', 'work'), { recursive: true });
  await writeFile(join(project, 'job', 'work', 'main.mjs'), "import { writeFileSync } from 'node:fs';\nwriteFileSync(process.env.GRIDWORK_OUTPUTS + '/answer.txt', '42');\n");
  await writeFile(
    join(project, 'job', 'job.yaml'),
    'version: 1\nname: from-a-package\nkind: batch\nruntime: { kind: bundle, path: ./work, command: [node, main.mjs] }\nresources: { cpu: 1, memoryGiB: 1 }\nprice: { maxPerHour: 1.00, budget: 0.50 }\n',
  );
  await writeFile(
    join(project, 'run.mjs'),
    `import { readFile } from 'node:fs/promises';
import { GridworkClient, GridworkError } from '@gridwork/sdk';

const client = await GridworkClient.fromEnv();
await client.deposit('5');
const job = await client.submitFile('job/job.yaml');
const done = await client.wait(job.id);
const [file] = await client.results(job.id, 'out');
let notFound;
try { await client.get('job_aaaaaaaaaaaaaaaa'); } catch (err) { notFound = err instanceof GridworkError ? err.code : String(err); }
console.log(JSON.stringify({ state: done.state, answer: await readFile(file, 'utf8'), notFound }));
`,
  );
  const { stdout } = await run(process.execPath, ['run.mjs'], project, { GRIDWORK_HOME: join(project, '.gridwork'), GRIDWORK_COORDINATOR: net.coordinator.url });
  assert.deepEqual(JSON.parse(stdout.trim()), { state: 'succeeded', answer: '42', notFound: 'JOB_NOT_FOUND' });
});

test('a TypeScript file type-checks against the package with the defaults of `tsc --init`', async () => {
  await run(process.execPath, [tsc, '--init'], project);
  await writeFile(
    join(project, 'check.ts'),
    `import { GridworkClient, LostContactError, type JobView, type LogLine } from '@gridwork/sdk';

export async function follow(jobId: string): Promise<JobView['state']> {
  const client = await GridworkClient.fromEnv();
  for await (const line of client.logLines(jobId, { follow: true })) {
    const l: LogLine = line;
    console.log(l.taskIndex, l.line);
  }
  try {
    return (await client.wait(jobId, { giveUpAfterMs: 60_000 })).state;
  } catch (err) {
    if (err instanceof LostContactError) return err.lastSeen?.state ?? 'running';
    throw err;
  }
}
// @ts-expect-error: the SDK's types are real, not any
export const wrong: number = new GridworkClient({ url: 'http://x', identity: { publicKey: '', privateKey: '' } }).url;
`,
  );
  await run(process.execPath, [tsc, '-p', '.', '--noEmit', '--skipLibCheck', 'false'], project);
});
