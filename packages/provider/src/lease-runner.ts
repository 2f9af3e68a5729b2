/**
 * Runs one lease: fetches the bundle and inputs (checking every digest), runs the command in
 * the runtime, streams its output as batched log reports, uploads the outputs, and reports
 * the end. A setup or upload failure is reported as the provider's fault (the coordinator
 * retries elsewhere); a non-zero exit or a timeout is the workload's.
 */
import { createHash } from 'node:crypto';
import { chmod, mkdir, readdir, readFile, rm } from 'node:fs/promises';
import { join, relative, resolve, sep } from 'node:path';
import { Readable } from 'node:stream';
import { StringDecoder } from 'node:string_decoder';
import { setTimeout as sleep } from 'node:timers/promises';
import type { BundleCache } from './bundle-cache.ts';
import {
  BundleManifest,
  canonicalJson,
  type FileRef,
  type GpuInfo,
  GridworkError,
  LeaseAssignment,
  type LeaseEnd,
  type LogChunk,
  leaseCommitmentMessage,
  MAX_MESSAGE_BYTES,
  outputsRoot,
} from '@gridwork/protocol';
import { type Identity, sha256Bytes, signBytes, signedFetch, writeVerified } from '@gridwork/protocol/node';
import type { Logger } from 'pino';
import { Compile } from 'typebox/compile';
import { type CheckpointTamper, deliverRound, PublishedFiles } from './checkpoints.ts';
import type { ServiceIngress } from './service-ingress.ts';
import { openTaskFile, removeTaskTree } from './task-file.ts';
import type { Report } from './coordinator-link.ts';
import { leaseGpus } from './runtime/gpu-passthrough.ts';
import type { RunRequest, RunResult, Runtime } from './runtime/runtime.ts';

const manifestCheck = Compile(BundleManifest);
const assignmentCheck = Compile(LeaseAssignment);
const LEASE_ID = /^lease_[a-z2-7]{16}$/;
const JOB_ID = /^job_[a-z2-7]{16}$/;

/**
 * Whether an assignment is what the protocol allows: its lease id names a directory on this host and its job
 * id goes into URLs, so one that is not well formed is never run, whoever sent it.
 */
export function wellFormedAssignment(lease: unknown): lease is LeaseAssignment {
  return assignmentCheck.Check(lease) && LEASE_ID.test(lease.leaseId) && JOB_ID.test(lease.jobId);
}
const GiB = 1024 ** 3;
const LOG_FLUSH_MS = 200;
const LOG_CHUNK_CHARS = 16 * 1024;
/** Serialized chunks in one lease.log: well under MAX_MESSAGE_BYTES, so a batch is never refused, and each a short transaction. */
const LOG_BATCH_BYTES = MAX_MESSAGE_BYTES / 4;
const LOG_BATCH_CHUNKS = 500;
/** How long a file transfer keeps retrying a coordinator it cannot reach (a restart takes seconds). */
const UNREACHABLE_RETRY_MS = 120_000;

export interface LeaseRunnerDeps {
  coordinatorUrl: string;
  /** How often to report usage (debit notes) while the task runs. */
  meteringIntervalMs: () => number;
  identity: Identity;
  /** The runtime for this lease's workload kind (the agent picks it). */
  runtime: Runtime;
  /** This agent's GPUs: the lease's reserved indices are looked up here for their UUIDs. @default [] */
  gpus?: readonly GpuInfo[];
  /** Parent of per-lease work directories. */
  workRoot: string;
  /** Queues a report; false when it is too large to send (coordinator-link.ts). */
  send: (report: Report) => boolean;
  /** Task output (stdout and stderr, UTF-8 bytes) logged per lease; the rest is discarded after a marker line. */
  maxLogBytes: number;
  log: Logger;
  resultTamper?: ResultTamper;
  checkpointTamper?: CheckpointTamper;
  /** Where service replicas are routed from (absent: the agent runs no services). */
  ingress?: ServiceIngress;
  /** Bundle files kept across leases (absent: every lease downloads its bundle). */
  bundles?: BundleCache;
  /** Routes the coordinator's complete exchange rounds to the cluster member they are for. */
  exchange?: { register(leaseId: string, deliver: (round: number, files: { rank: number; digest: string; size: number }[]) => Promise<void>): () => void };
}

/** Rewrites a finished task's outputs before they are committed (a cheating provider, for tests). */
export type ResultTamper = (outputsDir: string, lease: LeaseAssignment) => Promise<void>;

/** Why a run was aborted: the coordinator cancelled it, or the agent is draining and hands it back. */
export type AbortReason = 'cancelled' | 'drain';

export async function runLease(deps: LeaseRunnerDeps, lease: LeaseAssignment, signal: AbortSignal): Promise<void> {
  const { send, log } = deps;
  const dir = join(deps.workRoot, lease.leaseId);
  const dirs = { bundle: join(dir, 'bundle'), inputs: join(dir, 'inputs'), outputs: join(dir, 'outputs'), checkpoints: join(dir, 'checkpoints') };
  const logs = new LogBatcher(deps.maxLogBytes, (chunks) => send({ type: 'lease.log', leaseId: lease.leaseId, chunks }));
  const started = Date.now();
  send({ type: 'lease.started', leaseId: lease.leaseId });
  // Signed usage records (cumulative run time) every metering interval: what the requester is charged.
  const usage = () => {
    const usageMs = Date.now() - started;
    send({ type: 'lease.usage', leaseId: lease.leaseId, usageMs, signature: signBytes(deps.identity, canonicalJson({ leaseId: lease.leaseId, usageMs })) });
    meter = setTimeout(usage, deps.meteringIntervalMs());
  };
  let meter = setTimeout(usage, deps.meteringIntervalMs());
  try {
    await removeTaskTree(dir);
    for (const d of Object.values(dirs)) await mkdir(d, { recursive: true });
    let fetched = 0;
    try {
      if (lease.bundle) fetched += await fetchBundle(deps, lease, dirs.bundle, signal);
      for (const set of lease.inputs) {
        for (const f of set.files) {
          await download(deps, lease.jobId, f, join(dirs.inputs, set.name), signal);
          fetched++;
        }
      }
      // A resumed task finds the checkpoint it resumes from in its checkpoints directory.
      if (lease.resume) await download(deps, lease.jobId, lease.resume.file, dirs.checkpoints, signal);
    } catch (err) {
      if (signal.aborted) return endAborted(deps, lease, signal, logs, started);
      throw new SetupError(`could not fetch the task's files: ${(err as Error).message}`);
    }
    // Uploads with their own deadline, not the lease's signal: files are still reported when a drain stops the task.
    const publishing = {
      identity: deps.identity,
      log,
      send,
      upload: (full: string, name: string) => uploadFile(deps, dirs.checkpoints, full, name, AbortSignal.timeout(60_000)),
      ...(deps.checkpointTamper ? { tamper: deps.checkpointTamper } : {}),
    };
    const checkpoints = PublishedFiles.checkpoints(publishing, lease, dirs.checkpoints, started);
    // A cluster member: its exchange rounds go out as it writes them (`$GRIDWORK_EXCHANGE/out`, in
    // its checkpoints), and complete rounds come in. The agent writes those into a directory of its
    // own, outside everything the task owns, which the runtime shows the task read-only as
    // `$GRIDWORK_EXCHANGE/in`: writing by path into the task's tree would follow the task's symlinks.
    // Both are made before the task starts, so that the runtime hands `out` to the task's user with
    // the rest of its checkpoints and finds the mount point `in`.
    const exchangeDir = join(dirs.checkpoints, 'exchange');
    const exchangeIn = join(dir, 'exchange-in');
    if (lease.cluster) for (const d of [join(exchangeDir, 'in'), join(exchangeDir, 'out'), exchangeIn]) await mkdir(d, { recursive: true });
    const exchange = lease.cluster ? PublishedFiles.exchange(publishing, lease, exchangeDir, started) : undefined;
    const unregister = lease.cluster
      ? deps.exchange?.register(lease.leaseId, (round, files) => deliverRound(exchangeIn, round, files, (f, into) => download(deps, lease.jobId, f, into, signal)))
      : undefined;
    exchange?.start();
    // Only the GPUs reserved for this lease, by UUID (none for a CPU lease); an index unknown here is the agent's fault.
    const gpus = leaseGpus(lease.gpus, deps.gpus ?? []);
    checkpoints.start();
    logs.push('system', `fetched ${fetched} file(s); running ${JSON.stringify(lease.runtime.command)} in the ${deps.runtime.kind} runtime\n`);

    let stoppedFor: string | undefined;
    const request: RunRequest = {
      bundleDir: dirs.bundle,
      inputsDir: dirs.inputs,
      outputsDir: dirs.outputs,
      checkpointsDir: dirs.checkpoints,
      ...(lease.cluster ? { exchangeInDir: exchangeIn } : {}),
      command: lease.runtime.command,
      env: {
        ...lease.runtime.env,
        ...(lease.resume ? { GRIDWORK_RESUME_STEP: String(lease.resume.step) } : {}),
        ...(lease.stopStep !== undefined ? { GRIDWORK_STOP_STEP: String(lease.stopStep) } : {}),
      },
      network: lease.runtime.network,
      timeoutMs: lease.timeoutSeconds * 1000,
      memoryBytes: Math.ceil(lease.resources.memoryGiB * GiB),
      cpu: lease.resources.cpu,
      // No diskGiB in the spec: 10 GiB, DEFAULT_TASK_DISK_BYTES of runtime/runtime.ts.
      diskBytes: lease.resources.diskGiB === undefined ? 10 * GiB : Math.ceil(lease.resources.diskGiB * GiB),
      signal,
      onOutput: (stream, data) => logs.push(stream, data),
      gpus,
      ...(lease.runtime.image ? { image: lease.runtime.image } : {}),
      ...(lease.service ? { ports: [lease.service.port], healthCheck: { port: lease.service.port, path: lease.service.healthPath } } : {}),
    };
    const result = await (lease.service
      ? serve(deps, lease, request, logs).then((r) => {
          stoppedFor = r.stoppedFor;
          return r.result;
        })
      : deps.runtime.run(request)
    ).catch(async (err: unknown) => {
      await checkpoints.stop(false);
      await exchange?.stop(false);
      unregister?.();
      throw err;
    });
    // Checkpoints written up to the end are reported before the lease ends (also when it is handed back).
    await checkpoints.stop(!(result.aborted || signal.aborted) || signal.reason === 'drain');
    await exchange?.stop(false);
    unregister?.();
    if (signal.aborted) return endAborted(deps, lease, signal, logs, started);
    if (stoppedFor) {
      // A service replica that never became healthy, or stopped being so: the coordinator replaces it.
      logs.flush();
      send(finished(deps, lease, { kind: 'error', message: stoppedFor }, Date.now() - started, []));
      return;
    }
    if (result.aborted) return endAborted(deps, lease, signal, logs, started);
    const durationMs = Date.now() - started;
    if (result.timedOut) {
      logs.push('system', `time limit of ${lease.timeoutSeconds}s reached: task killed\n`);
      logs.flush();
      send(finished(deps, lease, { kind: 'timeout', limitSeconds: lease.timeoutSeconds }, durationMs, []));
      return;
    }
    if (result.limit) {
      const message = LIMIT_MESSAGES[result.limit](lease);
      logs.push('system', `${result.limit} limit reached, task stopped: ${message}\n`);
      logs.flush();
      send(finished(deps, lease, { kind: 'limit', limit: result.limit, message }, durationMs, []));
      return;
    }
    const exitCode = result.exitCode ?? (result.signal ? 128 : 1);
    let outputs: FileRef[] = [];
    if (exitCode === 0) {
      try {
        await deps.resultTamper?.(dirs.outputs, lease);
        outputs = await uploadOutputs(deps, dirs.outputs, signal);
      } catch (err) {
        if (signal.aborted) return endAborted(deps, lease, signal, logs, started);
        if (err instanceof OutputsRefused) {
          logs.push('system', `outputs limit reached, task failed: ${err.message}\n`);
          logs.flush();
          send(finished(deps, lease, { kind: 'limit', limit: 'outputs', message: err.message.slice(0, 4096) }, durationMs, []));
          return;
        }
        throw new SetupError(`could not upload outputs: ${(err as Error).message}`);
      }
    }
    logs.push('system', `exit code ${exitCode}${result.signal ? ` (signal ${result.signal})` : ''}; ${outputs.length} output file(s)\n`);
    logs.flush();
    if (send(finished(deps, lease, { kind: 'exited', exitCode: Math.min(255, Math.max(0, exitCode)), ...(result.signal ? { signal: result.signal } : {}) }, durationMs, outputs))) return;
    // Too many outputs to list in one message: the task's own doing, so it fails as a limit (not retried elsewhere).
    const message = `the task wrote ${outputs.length} output files: more than one report of ${MAX_MESSAGE_BYTES} bytes can list`;
    logs.push('system', `outputs limit reached, task failed: ${message}\n`);
    logs.flush();
    send(finished(deps, lease, { kind: 'limit', limit: 'outputs', message }, durationMs, []));
  } catch (err) {
    const message = err instanceof SetupError || err instanceof GridworkError ? err.message : `agent error: ${(err as Error).message}`;
    log.warn({ leaseId: lease.leaseId, err: message }, 'lease failed on this provider');
    logs.push('system', `${message}\n`);
    logs.flush();
    send(finished(deps, lease, { kind: 'error', message: message.slice(0, 4096) }, Date.now() - started, []));
  } finally {
    clearTimeout(meter);
    logs.stop();
    await removeTaskTree(dir).catch((err: unknown) => log.warn({ err, leaseId: lease.leaseId }, 'could not remove the lease directory'));
  }
}

function endAborted(deps: LeaseRunnerDeps, lease: LeaseAssignment, signal: AbortSignal, logs: LogBatcher, started: number): void {
  const reason = signal.reason as AbortReason;
  if (reason === 'drain') {
    logs.push('system', 'provider is shutting down: task handed back\n');
    logs.flush();
    deps.send({ type: 'lease.released', leaseId: lease.leaseId, reason: 'provider draining' });
  } else {
    logs.push('system', 'task cancelled\n');
    logs.flush();
    deps.send(finished(deps, lease, { kind: 'cancelled' }, Date.now() - started, []));
  }
}

/**
 * The report that ends a lease, with the provider's signed commitment (trust layer L2): a Merkle
 * root over the outputs and the outcome, bound to the coordinator's audit commitment.
 */
function finished(deps: LeaseRunnerDeps, lease: LeaseAssignment, outcome: LeaseEnd, durationMs: number, outputs: FileRef[]): Report {
  const root = outputsRoot(sha256Bytes, outputs);
  const signature = signBytes(
    deps.identity,
    leaseCommitmentMessage({ leaseId: lease.leaseId, outcome, durationMs, outputsRoot: root, auditCommitment: lease.auditCommitment ?? '' }),
  );
  return { type: 'lease.finished', leaseId: lease.leaseId, outcome, durationMs, outputs, commitment: { outputsRoot: root, signature } };
}

class SetupError extends Error {}

/** The task left outputs the agent cannot read back: the task's failure (a limit), not the provider's. */
class OutputsRefused extends Error {}

/** What reading a tree back fails with when its task made it unreadable (never a network or coordinator error). */
const TASK_TREE_ERRORS = new Set(['ENOENT', 'ENAMETOOLONG', 'ELOOP', 'EACCES', 'ENOTDIR', 'EISDIR']);

const LIMIT_MESSAGES: Record<NonNullable<RunResult['limit']>, (lease: LeaseAssignment) => string> = {
  processes: () => 'the task started more processes than it may',
  disk: (lease) => `the task wrote more than ${lease.resources.diskGiB ?? 10} GiB to /outputs and /checkpoints${lease.cluster ? ' (with the exchange rounds it received)' : ''}`,
  memory: (lease) => `the task needed more than ${lease.resources.memoryGiB} GiB`,
};

/** Resolves `rel` under `root`, refusing anything that would escape it. */
function inside(root: string, rel: string): string {
  const full = resolve(root, ...rel.split('/'));
  if (full !== root && !full.startsWith(root + sep)) throw new SetupError(`path escapes its directory: ${rel}`);
  return full;
}

/** Downloads a file of the job into `dir` (at its path); a bundle file through the agent's bundle cache. */
async function download(deps: LeaseRunnerDeps, jobId: string, file: FileRef, dir: string, signal: AbortSignal, opts: { executable?: boolean; cached?: boolean } = {}): Promise<void> {
  const dest = inside(dir, file.path);
  const fetchTo = async (path: string) => {
    const res = await whileUnreachable(signal, () =>
      signedFetch(deps.coordinatorUrl, deps.identity, 'GET', `/v1/jobs/${jobId}/blobs/${file.digest}`, { signal }),
    );
    await writeVerified(res, path, file.digest);
  };
  if (opts.cached && deps.bundles) await deps.bundles.place(file.digest, file.size, dest, fetchTo);
  else await fetchTo(dest);
  await chmod(dest, opts.executable ? 0o755 : 0o644);
}

async function fetchBundle(deps: LeaseRunnerDeps, lease: LeaseAssignment, dir: string, signal: AbortSignal): Promise<number> {
  const manifestDigest = (lease.bundle as { manifest: string }).manifest;
  const tmp = join(dir, '..', 'manifest.json');
  await download(deps, lease.jobId, { path: 'manifest.json', digest: manifestDigest, size: 0 }, join(dir, '..'), signal, { cached: true });
  const manifest: unknown = JSON.parse(await readFile(tmp, 'utf8'));
  await rm(tmp);
  if (!manifestCheck.Check(manifest)) throw new SetupError('bundle manifest is malformed');
  for (const f of manifest.files) await download(deps, lease.jobId, f, dir, signal, { executable: f.executable, cached: true });
  return manifest.files.length;
}

async function uploadOutputs(deps: LeaseRunnerDeps, dir: string, signal: AbortSignal): Promise<FileRef[]> {
  const out: FileRef[] = [];
  // A tree the agent cannot read back (nested deeper than a path can name, names that are not UTF-8, files
  // gone or swapped for links) is the task's doing: it fails as such, not as this provider's fault.
  const unreadable = (err: unknown, what: string): never => {
    const code = (err as { code?: unknown }).code;
    const tasks = err instanceof GridworkError ? code === 'FORBIDDEN' : typeof code === 'string' && TASK_TREE_ERRORS.has(code);
    if (!tasks) throw err;
    throw new OutputsRefused(`the agent cannot read the task's output ${what}: ${err instanceof GridworkError ? err.message : code}`);
  };
  const walk = async (d: string): Promise<void> => {
    const entries = await readdir(d, { withFileTypes: true }).catch((err: unknown) => unreadable(err, `directory ${relative(dir, d) || '.'}`));
    for (const e of entries) {
      const full = join(d, e.name);
      const rel = relative(dir, full).split(sep).join('/');
      if (e.isDirectory()) await walk(full);
      else if (e.isFile()) out.push(await uploadFile(deps, dir, full, rel, signal).catch((err: unknown) => unreadable(err, `file ${rel}`)));
      // Symlinks and devices are not outputs: a task must not make the agent read outside its directory.
    }
  };
  await walk(dir);
  return out.sort((a, b) => (a.path < b.path ? -1 : 1));
}

/** Health probes of a service replica: this often, and this many failures in a row stop it. */
const PROBE_MS = 1000;
const UNHEALTHY_PROBES = 3;

/**
 * Runs a service replica: starts it, probes its health, routes the ingress to it (and tells the
 * coordinator) once healthy, and stops it when it is not healthy within its startup time or fails
 * UNHEALTHY_PROBES probes in a row. Cancel and drain stop it through the request's signal.
 */
async function serve(deps: LeaseRunnerDeps, lease: LeaseAssignment, request: RunRequest, logs: LogBatcher): Promise<{ result: RunResult; stoppedFor?: string }> {
  const service = lease.service as NonNullable<LeaseAssignment['service']>;
  const task = await deps.runtime.start(request);
  let ended = false;
  const done = task.wait().finally(() => {
    ended = true;
  });
  const exposed = task.ports[0];
  const deadline = Date.now() + service.startupTimeoutSeconds * 1000;
  let healthy = false;
  let failures = 0;
  let stoppedFor: string | undefined;
  try {
    while (!ended) {
      const health = await task.health();
      if (health === 'healthy') {
        failures = 0;
        if (!healthy && exposed) {
          healthy = true;
          deps.ingress?.add(lease.leaseId, service.token, exposed.address, exposed.host);
          deps.send({ type: 'lease.service', leaseId: lease.leaseId, health: 'healthy' });
          logs.push('system', `service healthy: GET ${service.healthPath} on port ${service.port} answers\n`);
        }
      } else if (healthy && ++failures >= UNHEALTHY_PROBES) {
        stoppedFor = `service unhealthy: ${UNHEALTHY_PROBES} health checks in a row failed`;
      } else if (!healthy && Date.now() > deadline) {
        stoppedFor = `service not healthy within ${service.startupTimeoutSeconds}s of starting`;
      }
      if (stoppedFor) {
        deps.ingress?.remove(lease.leaseId);
        if (healthy) deps.send({ type: 'lease.service', leaseId: lease.leaseId, health: 'unhealthy' });
        logs.push('system', `${stoppedFor}: stopping it\n`);
        task.stop(stoppedFor);
        break;
      }
      await Promise.race([sleep(PROBE_MS), done]);
    }
    return { result: await done, ...(stoppedFor ? { stoppedFor } : {}) };
  } finally {
    deps.ingress?.remove(lease.leaseId);
  }
}

/** Uploads one file as a blob (retrying while the coordinator is unreachable); `path` names it in the result. */
async function uploadFile(deps: LeaseRunnerDeps, root: string, full: string, path: string, signal: AbortSignal): Promise<FileRef> {
  // The task owns `root`'s tree: the file is opened once, checked, and read only through that descriptor (task-file.ts).
  const file = await openTaskFile(root, full);
  try {
    const hash = createHash('sha256');
    let size = 0;
    for await (const c of file.createReadStream({ start: 0, autoClose: false })) {
      hash.update(c as Buffer);
      size += (c as Buffer).length;
    }
    const digest = hash.digest('hex');
    await whileUnreachable(signal, () =>
      signedFetch(deps.coordinatorUrl, deps.identity, 'PUT', `/v1/blobs/${digest}`, {
        body: { blob: Readable.toWeb(file.createReadStream({ start: 0, autoClose: false })) as ReadableStream<Uint8Array>, digest },
        signal,
      }),
    );
    return { path, digest, size };
  } finally {
    await file.close();
  }
}

/**
 * Retries `attempt` while the coordinator cannot be reached at all (connection refused or
 * reset): a coordinator that crashed and is restarting must not cost a finished task its
 * results, nor a starting task an attempt. Errors the coordinator answered are not retried.
 */
async function whileUnreachable<T>(signal: AbortSignal, attempt: () => Promise<T>): Promise<T> {
  const deadline = Date.now() + UNREACHABLE_RETRY_MS;
  for (let delayMs = 100; ; delayMs = Math.min(delayMs * 2, 2000)) {
    try {
      return await attempt();
    } catch (err) {
      if (signal.aborted || !(err instanceof GridworkError && err.code === 'NETWORK_ERROR') || Date.now() + delayMs > deadline) throw err;
      await sleep(delayMs, undefined, { signal });
    }
  }
}

/**
 * Collects output into chunks and sends them every LOG_FLUSH_MS, in batches of at most
 * LOG_BATCH_BYTES serialized. The task's output is kept up to `maxBytes`; then one marker line,
 * and the rest is discarded (the task runs on: a chatty task must not cost the channel).
 */
class LogBatcher {
  private chunks: LogChunk[] = [];
  private bytes = 0;
  private logged = 0;
  private truncated = false;
  private timer: NodeJS.Timeout | undefined;
  constructor(
    private readonly maxBytes: number,
    private readonly sendChunks: (chunks: LogChunk[]) => void,
  ) {}

  push(stream: LogChunk['stream'], data: string): void {
    if (stream !== 'system') {
      if (this.truncated) return;
      const bytes = Buffer.byteLength(data);
      if (this.logged + bytes > this.maxBytes) {
        // Whole characters only: the decoder holds back a character cut at the limit.
        this.add(stream, new StringDecoder('utf8').write(Buffer.from(data).subarray(0, this.maxBytes - this.logged)));
        this.truncated = true;
        this.add('system', `[gridwork: log truncated after ${this.maxBytes} bytes]\n`);
        return;
      }
      this.logged += bytes;
    }
    this.add(stream, data);
  }

  private add(stream: LogChunk['stream'], data: string): void {
    for (let i = 0; i < data.length; i += LOG_CHUNK_CHARS) {
      const chunk = { stream, data: data.slice(i, i + LOG_CHUNK_CHARS), ts: Date.now() };
      // Measured as sent: escaping can make a chunk's JSON several times its characters.
      const bytes = Buffer.byteLength(JSON.stringify(chunk)) + 1;
      if (this.bytes + bytes > LOG_BATCH_BYTES || this.chunks.length >= LOG_BATCH_CHUNKS) this.flush();
      this.chunks.push(chunk);
      this.bytes += bytes;
    }
    if (this.chunks.length > 0) this.timer ??= setTimeout(() => this.flush(), LOG_FLUSH_MS);
  }

  flush(): void {
    clearTimeout(this.timer);
    this.timer = undefined;
    if (this.chunks.length === 0) return;
    const chunks = this.chunks;
    this.chunks = [];
    this.bytes = 0;
    this.sendChunks(chunks);
  }

  stop(): void {
    this.flush();
  }
}
