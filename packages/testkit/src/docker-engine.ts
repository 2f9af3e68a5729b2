/**
 * A Docker engine for tests: where it is (DOCKER_HOST, else the default socket, as the container runtime looks),
 * whether it answers, its API over plain HTTP, and a test image built here, because no registry is reachable:
 * FROM scratch with this machine's `node` and the libraries `ldd` lists, so a container runs `node -e …` with the
 * Node of the tests. The image is tagged by Node version and reused once built.
 *
 * .ci/run starts a private engine and exports DOCKER_HOST; a test that needs the engine fails on CI (CI=true)
 * when none answers, and says why it skipped elsewhere. This helper starts no engine itself: a daemon with its
 * own bridges and iptables chains is the machine's business (.ci/run), not one test file's.
 */
import { spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import { copyFile, mkdir, mkdtemp, realpath, rm, writeFile } from 'node:fs/promises';
import http from 'node:http';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';

/** The test image for this Node: `node` and its libraries, nothing else (no shell). */
export const NODE_TEST_IMAGE = `gridwork-test/node:${process.versions.node}`;

/** Where tests find the engine, or undefined. */
export function engineEndpoint(env: NodeJS.ProcessEnv = process.env): string | undefined {
  if (env.DOCKER_HOST) return env.DOCKER_HOST;
  return existsSync('/var/run/docker.sock') ? 'unix:///var/run/docker.sock' : undefined;
}

function connection(endpoint: string): { socketPath: string } | { host: string; port: number } {
  if (endpoint.startsWith('unix://')) return { socketPath: endpoint.slice('unix://'.length) };
  const url = new URL(endpoint.replace(/^tcp:/, 'http:'));
  return { host: url.hostname, port: Number(url.port || 2375) };
}

export interface EngineAnswer {
  status: number;
  text: string;
}

/** One call of the Engine API (unversioned paths: the engine's own version). */
export function engineRequest(
  method: string,
  path: string,
  options: { body?: NodeJS.ReadableStream | string; contentType?: string; timeoutMs?: number } = {},
): Promise<EngineAnswer> {
  const endpoint = engineEndpoint();
  if (endpoint === undefined) return Promise.reject(new Error('no Docker engine: DOCKER_HOST unset and no /var/run/docker.sock'));
  return new Promise((resolve, reject) => {
    const req = http.request(
      {
        ...connection(endpoint),
        method,
        path,
        headers: options.contentType ? { 'Content-Type': options.contentType } : {},
        timeout: options.timeoutMs ?? 120_000,
      },
      (res) => {
        let text = '';
        res.setEncoding('utf8');
        res.on('data', (d: string) => {
          text += d;
        });
        res.on('end', () => resolve({ status: res.statusCode ?? 0, text }));
        res.on('error', reject);
      },
    );
    req.on('timeout', () => req.destroy(new Error(`${method} ${path}: the engine did not answer in time`)));
    req.on('error', reject);
    if (typeof options.body === 'string' || options.body === undefined) req.end(options.body);
    else options.body.pipe(req);
  });
}

/** Why the engine cannot be used here, or undefined when it answers. */
export async function dockerEngineUnavailable(): Promise<string | undefined> {
  const endpoint = engineEndpoint();
  if (endpoint === undefined) return 'no Docker engine: DOCKER_HOST is unset and /var/run/docker.sock is missing (.ci/run starts one)';
  try {
    const ping = await engineRequest('GET', '/_ping', { timeoutMs: 5000 });
    return ping.status === 200 ? undefined : `the Docker engine at ${endpoint} answered ${ping.status} to a ping`;
  } catch (err) {
    return `the Docker engine at ${endpoint} does not answer: ${(err as Error).message}`;
  }
}

function output(file: string, args: string[]): Promise<string> {
  return new Promise((resolve, reject) => {
    const child = spawn(file, args, { stdio: ['ignore', 'pipe', 'pipe'] });
    let text = '';
    child.stdout.setEncoding('utf8').on('data', (d: string) => {
      text += d;
    });
    child.on('error', reject);
    child.on('close', (code) => (code === 0 ? resolve(text) : reject(new Error(`${file} ${args.join(' ')} exited with ${code}`))));
  });
}

/** The shared libraries `ldd` lists for a binary (the loader included). */
export async function sharedLibraries(binary: string): Promise<string[]> {
  const listed = await output('ldd', [binary]);
  return [...listed.matchAll(/(\/\S+) \(0x[0-9a-f]+\)/g)].map((m) => m[1] ?? '').filter(Boolean);
}

/** Builds NODE_TEST_IMAGE (or `tag`) unless the engine has it; resolves with the tag. */
export async function buildNodeTestImage(tag = NODE_TEST_IMAGE): Promise<string> {
  if ((await engineRequest('GET', `/images/${encodeURIComponent(tag)}/json`)).status === 200) return tag;
  const dir = await mkdtemp(join(tmpdir(), 'gw-image-'));
  try {
    for (const file of [process.execPath, ...(await sharedLibraries(process.execPath))]) {
      const target = join(dir, 'rootfs', file);
      await mkdir(dirname(target), { recursive: true });
      await copyFile(await realpath(file), target);
    }
    await writeFile(
      join(dir, 'Dockerfile'),
      `FROM scratch\nCOPY rootfs/ /\nENV PATH=${dirname(process.execPath)}:/usr/local/bin:/usr/bin:/bin\nLABEL io.gridwork.test-image=node\n`,
    );
    const tar = spawn('tar', ['-C', dir, '-cf', '-', 'Dockerfile', 'rootfs'], { stdio: ['ignore', 'pipe', 'inherit'] });
    const tarDone = new Promise<void>((resolve, reject) => {
      tar.on('error', reject);
      tar.on('close', (code) => (code === 0 ? resolve() : reject(new Error(`tar exited with ${code}`))));
    });
    const built = await engineRequest('POST', `/build?t=${encodeURIComponent(tag)}&rm=1&forcerm=1`, {
      body: tar.stdout,
      contentType: 'application/x-tar',
    });
    await tarDone;
    const failure = built.text
      .split('\n')
      .filter((line) => line.trim() !== '')
      .map((line) => JSON.parse(line) as { error?: string })
      .find((event) => event.error !== undefined);
    if (built.status !== 200 || failure) throw new Error(`building ${tag} failed (${built.status}): ${failure?.error ?? built.text.slice(0, 500)}`);
    return tag;
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}
