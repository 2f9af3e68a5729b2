/**
 * The requester's client: submit (packs and uploads the bundle and inputs), get, list, watch,
 * logs, results, cancel. Every call takes an AbortSignal; errors are GridworkError with the
 * server's stable codes.
 */
import { createReadStream } from 'node:fs';
import { join, resolve } from 'node:path';
import { Readable } from 'node:stream';
import { randomBytes } from 'node:crypto';
import {
  type BalanceView,
  GridworkError,
  type HistoryEntry,
  type MarketClass,
  type MatchExplanation,
  type InputSet,
  type JobSpec,
  type JobSummary,
  type JobView,
  type LogEntry,
  type SubmitJobRequest,
  TERMINAL_JOB_STATES,
} from '@gridwork/protocol';
import { type Identity, type RequestBody, readNdjson, signedFetch, writeVerified } from '@gridwork/protocol/node';
import { describeFiles, expandGlob, type LocalFile, packBundle } from './files.ts';

export interface ClientOptions {
  /** Coordinator base URL, e.g. http://127.0.0.1:7070 */
  url: string;
  identity: Identity;
}

export interface CallOptions {
  signal?: AbortSignal;
}

export interface MoneyCallOptions extends CallOptions {
  /** Makes the request safe to retry: the same key moves money once. @default a random key */
  idempotencyKey?: string;
}

const newKey = () => randomBytes(16).toString('base64url');

export interface SubmitOptions extends CallOptions {
  /** Directory that relative paths in the spec are resolved against. */
  baseDir: string;
  /** Called as files are uploaded. */
  onUpload?: (info: { uploaded: number; total: number; bytes: number }) => void;
}

export class GridworkClient {
  readonly url: string;
  readonly accountId: string;
  private readonly identity: Identity;

  constructor(options: ClientOptions) {
    this.url = options.url.replace(/\/+$/, '');
    this.identity = options.identity;
    this.accountId = options.identity.publicKey;
  }

  private fetch(method: string, path: string, body?: RequestBody, signal?: AbortSignal): Promise<Response> {
    return signedFetch(this.url, this.identity, method, path, { ...(body ? { body } : {}), ...(signal ? { signal } : {}) });
  }

  private async json<T>(method: string, path: string, body?: unknown, signal?: AbortSignal): Promise<T> {
    const res = await this.fetch(method, path, body === undefined ? undefined : { json: body }, signal);
    return (await res.json()) as T;
  }

  /** Packs the spec's bundle and inputs, uploads what the coordinator lacks, and submits. */
  async submit(spec: JobSpec, options: SubmitOptions): Promise<JobView> {
    const upload: LocalFile[] = [];
    let bundle: SubmitJobRequest['bundle'];
    let manifestBytes: Buffer | undefined;
    let manifestDigest = '';
    if (spec.runtime.kind === 'bundle' && spec.runtime.path) {
      const packed = await packBundle(resolve(options.baseDir, spec.runtime.path));
      upload.push(...packed.files);
      bundle = { manifest: packed.manifestDigest };
      manifestBytes = packed.manifestBytes;
      manifestDigest = packed.manifestDigest;
    }
    const inputs: InputSet[] = [];
    for (const [i, input] of (spec.inputs ?? []).entries()) {
      const files = await describeFiles(await expandGlob(options.baseDir, input.path));
      if (files.length === 0) throw new GridworkError('INVALID_SPEC', `inputs[${i}].path: "${input.path}" matches no files in ${options.baseDir}`);
      upload.push(...files);
      inputs.push({ name: input.name, shard: input.shard ?? false, files: files.map((f) => ({ path: f.path, digest: f.digest, size: f.size })) });
    }
    await this.uploadFiles(upload, options);
    if (manifestBytes) await this.uploadBlob(manifestBytes, manifestDigest, options.signal);
    return this.submitPrepared({ spec, ...(bundle ? { bundle } : {}), inputs }, options);
  }

  async submitPrepared(request: SubmitJobRequest, options: CallOptions = {}): Promise<JobView> {
    return this.json<JobView>('POST', '/v1/jobs', request, options.signal);
  }

  private async uploadFiles(files: LocalFile[], options: SubmitOptions): Promise<void> {
    const byDigest = new Map(files.map((f) => [f.digest, f]));
    const { missing } = await this.json<{ missing: string[] }>('POST', '/v1/blobs/missing', { digests: [...byDigest.keys()] }, options.signal);
    let uploaded = 0;
    let bytes = 0;
    for (const digest of missing) {
      const f = byDigest.get(digest) as LocalFile;
      await this.uploadBlob(Readable.toWeb(createReadStream(f.absPath)) as ReadableStream<Uint8Array>, digest, options.signal);
      uploaded++;
      bytes += f.size;
      options.onUpload?.({ uploaded, total: missing.length, bytes });
    }
  }

  async uploadBlob(data: Uint8Array | ReadableStream<Uint8Array>, digest: string, signal?: AbortSignal): Promise<void> {
    await this.fetch('PUT', `/v1/blobs/${digest}`, { blob: data, digest }, signal);
  }

  get(jobId: string, options: CallOptions = {}): Promise<JobView> {
    return this.json<JobView>('GET', `/v1/jobs/${encodeURIComponent(jobId)}`, undefined, options.signal);
  }

  async list(options: CallOptions & { limit?: number } = {}): Promise<JobSummary[]> {
    const r = await this.json<{ jobs: JobSummary[] }>('GET', `/v1/jobs?limit=${options.limit ?? 50}`, undefined, options.signal);
    return r.jobs;
  }

  cancel(jobId: string, options: CallOptions = {}): Promise<JobView> {
    return this.json<JobView>('POST', `/v1/jobs/${encodeURIComponent(jobId)}/cancel`, undefined, options.signal);
  }

  /** Job snapshots: the current one at once, then one per change, ending when the job ends. */
  async *watch(jobId: string, options: CallOptions = {}): AsyncGenerator<JobView> {
    const res = await this.fetch('GET', `/v1/jobs/${encodeURIComponent(jobId)}/events`, undefined, options.signal);
    try {
      for await (const ev of readNdjson<{ type: 'job'; job: JobView }>(res)) yield ev.job;
    } catch (err) {
      if (options.signal?.aborted) throw new GridworkError('ABORTED', 'watch aborted', { cause: err });
      throw new GridworkError('NETWORK_ERROR', `event stream broke: ${(err as Error).message}`, { cause: err });
    }
  }

  /** Waits until the job ends and returns its final state. */
  async wait(jobId: string, options: CallOptions & { onUpdate?: (job: JobView) => void } = {}): Promise<JobView> {
    let last: JobView | undefined;
    for await (const job of this.watch(jobId, options)) {
      last = job;
      options.onUpdate?.(job);
    }
    if (!last || !TERMINAL_JOB_STATES.includes(last.state)) return this.get(jobId, options);
    return last;
  }

  /** Log entries; with `follow`, new ones as they arrive until the job ends. */
  async *logs(jobId: string, options: CallOptions & { follow?: boolean; after?: number } = {}): AsyncGenerator<LogEntry> {
    const q = `after=${options.after ?? 0}&follow=${options.follow ? 'true' : 'false'}`;
    const res = await this.fetch('GET', `/v1/jobs/${encodeURIComponent(jobId)}/logs?${q}`, undefined, options.signal);
    yield* readNdjson<LogEntry>(res);
  }

  // ── money ────────────────────────────────────────────────────────────────────────────────

  balance(options: CallOptions = {}): Promise<BalanceView> {
    return this.json<BalanceView>('GET', '/v1/account', undefined, options.signal);
  }

  async history(options: CallOptions & { limit?: number } = {}): Promise<HistoryEntry[]> {
    return (await this.json<{ entries: HistoryEntry[] }>('GET', `/v1/account/history?limit=${options.limit ?? 50}`, undefined, options.signal)).entries;
  }

  /** Faucet deposit (coordinators started with --dev). Amounts are decimal credit strings. */
  deposit(amount: string, options: MoneyCallOptions = {}): Promise<BalanceView> {
    return this.json<BalanceView>('POST', '/v1/account/deposit', { amount, idempotencyKey: options.idempotencyKey ?? newKey() }, options.signal);
  }

  withdraw(amount: string, options: MoneyCallOptions = {}): Promise<BalanceView> {
    return this.json<BalanceView>('POST', '/v1/account/withdraw', { amount, idempotencyKey: options.idempotencyKey ?? newKey() }, options.signal);
  }

  /** Operator only: credits another account. */
  credit(account: string, amount: string, options: MoneyCallOptions = {}): Promise<BalanceView> {
    return this.json<BalanceView>('POST', '/v1/account/credit', { account, amount, idempotencyKey: options.idempotencyKey ?? newKey() }, options.signal);
  }

  stake(amount: string, options: MoneyCallOptions = {}): Promise<BalanceView> {
    return this.json<BalanceView>('POST', '/v1/stake', { amount, idempotencyKey: options.idempotencyKey ?? newKey() }, options.signal);
  }

  unstake(amount: string, options: MoneyCallOptions = {}): Promise<BalanceView> {
    return this.json<BalanceView>('POST', '/v1/stake/unbond', { amount, idempotencyKey: options.idempotencyKey ?? newKey() }, options.signal);
  }

  addBudget(jobId: string, amount: string, options: MoneyCallOptions = {}): Promise<JobView> {
    return this.json<JobView>(
      'POST',
      `/v1/jobs/${encodeURIComponent(jobId)}/budget`,
      { amount, idempotencyKey: options.idempotencyKey ?? newKey() },
      options.signal,
    );
  }

  async market(options: CallOptions = {}): Promise<MarketClass[]> {
    return (await this.json<{ classes: MarketClass[] }>('GET', '/v1/market', undefined, options.signal)).classes;
  }

  /** Why a spec would (not) match now, without submitting it. */
  explain(spec: JobSpec, options: CallOptions = {}): Promise<MatchExplanation> {
    return this.json<MatchExplanation>('POST', '/v1/market/explain', { spec }, options.signal);
  }

  /** Downloads one blob of a job to `dest`, checking its digest; written atomically. */
  async download(jobId: string, digest: string, dest: string, options: CallOptions = {}): Promise<void> {
    const res = await this.fetch('GET', `/v1/jobs/${encodeURIComponent(jobId)}/blobs/${digest}`, undefined, options.signal);
    await writeVerified(res, dest, digest);
  }

  /** Downloads every output of a job into `dir/task-<index>/<path>`; returns the files written. */
  async results(jobId: string, dir: string, options: CallOptions = {}): Promise<string[]> {
    const job = await this.get(jobId, options);
    const written: string[] = [];
    for (const task of job.tasks) {
      for (const out of task.outputs) {
        const dest = join(dir, `task-${task.index}`, ...out.path.split('/'));
        await this.download(jobId, out.digest, dest, options);
        written.push(dest);
      }
    }
    return written;
  }
}
