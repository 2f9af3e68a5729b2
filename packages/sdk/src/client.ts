/**
 * The requester's client: submit (packs and uploads the bundle and inputs), get, list, watch,
 * wait, logs, results, cancel, dispute, money; and a provider's own record (`providerStatus`,
 * with the provider's key). Every call takes an AbortSignal; errors are GridworkError with the
 * server's stable codes, or one of the typed errors in errors.ts.
 *
 * Waiting survives: `watch`, `wait` and following logs reconnect with backoff after a broken
 * stream or a coordinator restart (to the next coordinator URL, where several are given) and
 * resume from the last event position / log sequence they saw. `watch` ends when the job ends; `wait` returns once the results are in (a `verifying`
 * job has every result, pending verification for its audit window) unless asked to wait for
 * the end; either gives up after `giveUpAfterMs` without contact (LostContactError).
 */
import { randomUUID } from 'node:crypto';
import { createReadStream } from 'node:fs';
import { mkdir, writeFile } from 'node:fs/promises';
import { dirname, join, resolve } from 'node:path';
import { Readable } from 'node:stream';
import type {
  BalanceView,
  HistoryEntry,
  InputSet,
  JobSpec,
  JobSummary,
  JobView,
  LogEntry,
  MarketClass,
  MatchExplanation,
  SubmitJobRequest,
} from '@gridwork/protocol';
import { GridworkError } from '@gridwork/protocol/errors';
import { type Identity, loadOrCreateIdentity, writeVerified } from '@gridwork/protocol/node';
import { type ConfigOptions, resolveConfig } from './config.ts';
import { isTransient, LostContactError } from './errors.ts';
import { type BatchPolicy, describeFiles, expandGlob, type LocalFile, packBundle, planUploads, readBatchBody, type UploadUnit } from './files.ts';
import { CoordinatorEndpoints, failoverRequest, type HttpResponse, normalizeCoordinatorUrls, type RequestBody, readNdjsonLines } from './http.ts';
import { type LogLine, LogLineSplitter } from './log-lines.ts';
import { readSpecFile } from './spec-file.ts';
import { RESULTS_READY_STATES, TERMINAL_JOB_STATES } from './states.ts';
import type { DisputeView, ProviderListing, ProviderStatus } from './types.ts';

/** Upload requests in flight at once during a submit. */
const UPLOAD_CONCURRENCY = 8;
/**
 * Which files travel many to a request, and how many. Well inside what a coordinator takes in
 * one batch (10,000 blobs of at most 1 MiB, 16 MiB in all): a batch is held in memory while it
 * is sent, UPLOAD_CONCURRENCY of them at most; and a few batches in flight (2,000 small files go
 * as four of 500) overlap sending, hashing and the coordinator's file writes, which one large
 * batch does one after another.
 */
const BATCH_POLICY: BatchPolicy = { smallFileBytes: 256 * 1024, maxFiles: 500, maxBodyBytes: 4 * 1024 * 1024 };
export interface ClientOptions {
  /**
   * Coordinator base URL, e.g. http://127.0.0.1:7070; or several replicas of one network (a list,
   * or one string with the URLs separated by commas), tried in order: a request that cannot reach
   * one goes to the next where that is safe (GET and HEAD always; a request that changes
   * something only if it never arrived, or carries an idempotency key), and later requests stay
   * with the URL that answered.
   */
  url: string | readonly string[];
  identity: Identity;
}

export interface CallOptions {
  signal?: AbortSignal;
}

export interface MoneyCallOptions extends CallOptions {
  /** Makes the request safe to retry: the same key moves money once. @default a random key */
  idempotencyKey?: string;
}

/** What a reconnecting stream reports while it has no contact. */
export interface ConnectionEvent {
  state: 'lost' | 'restored';
  /** Why contact was lost (for 'lost'). */
  error?: unknown;
  /** Time without contact so far. */
  lostForMs: number;
  /** Delay before the next attempt (for 'lost'). */
  retryInMs?: number;
}

export interface ReconnectOptions extends CallOptions {
  /**
   * Give up (LostContactError) after this long without contact with the coordinator. Contact
   * means a successful (re)connection; keepalives on an open stream count as contact too.
   * @default Infinity (wait as long as it takes)
   */
  giveUpAfterMs?: number;
  /** Told when contact is lost and when it comes back. */
  onConnection?: (event: ConnectionEvent) => void;
  /** First retry delay; doubles up to maxRetryDelayMs. @default 250 */
  retryDelayMs?: number;
  /** @default 5000 */
  maxRetryDelayMs?: number;
}

export interface WaitOptions extends ReconnectOptions {
  /** Called with every snapshot of the job (the first one at once). */
  onUpdate?: (job: JobView) => void;
  /**
   * What to wait for. `results`: every result is in — the job ended, or it is `verifying`
   * (results pending verification until each task's `verification.pendingUntil`; a result an
   * audit or a dispute refutes runs again on another provider, or fails the job when no retries
   * are left). `end`: the job ended (succeeded, failed or cancelled), which for a verifying job
   * means waiting out its audit window (and any re-run).
   * @default 'results'
   */
  until?: 'results' | 'end';
}

export interface LogOptions extends ReconnectOptions {
  /** Keep reading new entries until the job ends. @default false */
  follow?: boolean;
  /** Only entries after this sequence number. @default 0 */
  after?: number;
}

export interface SubmitOptions extends CallOptions {
  /** Directory that relative paths in the spec are resolved against. @default process.cwd() */
  baseDir?: string;
  /** Called as files are uploaded: files and bytes done so far of those the coordinator lacked. */
  onUpload?: (info: { uploaded: number; total: number; bytes: number; totalBytes: number }) => void;
  /**
   * Send small files (under 256 KiB) many to a request instead of one request each. A
   * coordinator without batch uploads is detected (404) and gets single uploads anyway.
   * @default true
   */
  batchUploads?: boolean;
  /** Times a submit that failed on the network is sent again (same idempotency key). @default 3 */
  retries?: number;
  /**
   * One key per logical submit: a retried submit with the same key returns the same job
   * instead of creating a second one. @default a random UUID per call
   */
  idempotencyKey?: string;
}

const newKey = () => randomUUID();
const sleep = (ms: number, signal?: AbortSignal) =>
  new Promise<void>((res, rej) => {
    if (signal?.aborted) return rej(new GridworkError('ABORTED', 'aborted'));
    const t = setTimeout(() => {
      signal?.removeEventListener('abort', onAbort);
      res();
    }, ms);
    const onAbort = () => {
      clearTimeout(t);
      rej(new GridworkError('ABORTED', 'aborted'));
    };
    signal?.addEventListener('abort', onAbort, { once: true });
  });

/** Events of `GET /v1/jobs/:id/events`; `position` lets a reconnecting client resume. */
interface JobEventLine {
  type: 'job';
  job: JobView;
  position?: string;
}

/**
 * Tracks contact for a reconnecting stream: backoff between attempts, and the give-up clock
 * that starts when contact is lost and stops when it comes back.
 */
class Contact {
  private lostAt: number | undefined;
  private delay: number;

  constructor(
    private readonly jobId: string,
    private readonly options: ReconnectOptions,
  ) {
    this.delay = options.retryDelayMs ?? 250;
  }

  ok(): void {
    if (this.lostAt !== undefined) this.options.onConnection?.({ state: 'restored', lostForMs: Date.now() - this.lostAt });
    this.lostAt = undefined;
    this.delay = this.options.retryDelayMs ?? 250;
  }

  /** After a transient failure: waits before the next attempt, or throws when it is time to give up. */
  async failed(error: unknown, lastSeen: JobView | undefined): Promise<void> {
    const now = Date.now();
    this.lostAt ??= now;
    const lostForMs = now - this.lostAt;
    const giveUp = this.options.giveUpAfterMs ?? Number.POSITIVE_INFINITY;
    if (lostForMs >= giveUp) throw new LostContactError(this.jobId, lastSeen, lostForMs, { cause: error });
    const jitter = 0.8 + Math.random() * 0.4;
    const wait = Math.min(Math.round(this.delay * jitter), Math.max(1, giveUp - lostForMs));
    this.options.onConnection?.({ state: 'lost', error, lostForMs, retryInMs: wait });
    await sleep(wait, this.options.signal);
    this.delay = Math.min(this.delay * 2, this.options.maxRetryDelayMs ?? 5000);
  }
}

export class GridworkClient {
  readonly accountId: string;
  private readonly identity: Identity;
  private readonly endpoints: CoordinatorEndpoints;

  constructor(options: ClientOptions) {
    this.endpoints = new CoordinatorEndpoints(options.url);
    this.identity = options.identity;
    this.accountId = options.identity.publicKey;
  }

  /** The coordinator URL requests go to now: the first one given, until a failover moves on. */
  get url(): string {
    return this.endpoints.url;
  }

  /** Every coordinator URL given, in order. */
  get urls(): readonly string[] {
    return this.endpoints.urls;
  }

  /**
   * A client configured as the `gridwork` CLI is: GRIDWORK_COORDINATOR, GRIDWORK_KEY_FILE,
   * GRIDWORK_PROFILE and the profiles in $GRIDWORK_HOME/config.json (see config.ts). The key
   * file is created on first use, as the CLI does.
   */
  static async fromEnv(options: ConfigOptions = {}): Promise<GridworkClient> {
    const config = await resolveConfig(options);
    const url = normalizeCoordinatorUrls(config.coordinator); // a typo fails before a key is created
    return new GridworkClient({ url, identity: await loadOrCreateIdentity(config.keyFile) });
  }

  private fetch(method: string, path: string, body?: RequestBody, signal?: AbortSignal, accept: 'json' | 'ndjson' | 'bytes' = 'json'): Promise<HttpResponse> {
    return failoverRequest(this.endpoints, this.identity, method, path, { ...(body ? { body } : {}), ...(signal ? { signal } : {}), accept });
  }

  private async json<T>(method: string, path: string, body?: unknown, signal?: AbortSignal): Promise<T> {
    const res = await this.fetch(method, path, body === undefined ? undefined : { json: body }, signal);
    return (await res.json()) as T;
  }

  /** Reads a spec file (YAML or JSON), then submits it with paths relative to the file. */
  async submitFile(path: string, options: SubmitOptions = {}): Promise<JobView> {
    const spec = await readSpecFile(path);
    return this.submit(spec, { ...options, baseDir: options.baseDir ?? dirname(resolve(path)) });
  }

  /** Packs the spec's bundle and inputs, uploads what the coordinator lacks, and submits. */
  async submit(spec: JobSpec, options: SubmitOptions = {}): Promise<JobView> {
    const baseDir = options.baseDir ?? process.cwd();
    const upload: LocalFile[] = [];
    let bundle: SubmitJobRequest['bundle'];
    let manifestBytes: Buffer | undefined;
    let manifestDigest = '';
    if (spec.runtime.kind === 'bundle' && spec.runtime.path) {
      const packed = await packBundle(resolve(baseDir, spec.runtime.path));
      upload.push(...packed.files);
      bundle = { manifest: packed.manifestDigest };
      manifestBytes = packed.manifestBytes;
      manifestDigest = packed.manifestDigest;
    }
    const inputs: InputSet[] = [];
    for (const [i, input] of (spec.inputs ?? []).entries()) {
      const files = await describeFiles(await expandGlob(baseDir, input.path));
      if (files.length === 0) throw new GridworkError('INVALID_SPEC', `inputs[${i}].path: "${input.path}" matches no files in ${baseDir}`);
      upload.push(...files);
      inputs.push({ name: input.name, shard: input.shard ?? false, files: files.map((f) => ({ path: f.path, digest: f.digest, size: f.size })) });
    }
    await this.uploadFiles(upload, options);
    if (manifestBytes) await this.uploadBlob(manifestBytes, manifestDigest, options.signal);
    return this.submitPrepared({ spec, ...(bundle ? { bundle } : {}), inputs }, options);
  }

  /**
   * Submits a request whose blobs are already uploaded. A submit that fails on the way (the
   * connection broke, the coordinator restarting) is sent again with the same idempotency key,
   * so it creates one job however often it is retried.
   */
  async submitPrepared(request: SubmitJobRequest, options: CallOptions & { idempotencyKey?: string; retries?: number } = {}): Promise<JobView> {
    const body = { ...request, idempotencyKey: request.idempotencyKey ?? options.idempotencyKey ?? newKey() };
    const retries = options.retries ?? 3;
    for (let attempt = 0; ; attempt++) {
      try {
        return await this.json<JobView>('POST', '/v1/jobs', body, options.signal);
      } catch (err) {
        const retriable = err instanceof GridworkError && (err.code === 'NETWORK_ERROR' || err.code === 'UNAVAILABLE');
        if (!retriable || attempt >= retries || options.signal?.aborted) throw err;
        await sleep(500 * 2 ** attempt, options.signal);
      }
    }
  }

  private async uploadFiles(files: LocalFile[], options: SubmitOptions): Promise<void> {
    const byDigest = new Map(files.map((f) => [f.digest, f]));
    const { missing } = await this.json<{ missing: string[] }>('POST', '/v1/blobs/missing', { digests: [...byDigest.keys()] }, options.signal);
    const lacking = missing.map((d) => byDigest.get(d) as LocalFile);
    const totalBytes = lacking.reduce((n, f) => n + f.size, 0);
    const units: UploadUnit[] = options.batchUploads === false ? lacking.map((file) => ({ kind: 'single', file })) : planUploads(lacking, BATCH_POLICY);
    let uploaded = 0;
    let bytes = 0;
    let batchesRefused = false;
    // A few requests at once: thousands of small files (a sharded data set) spent most of their
    // time in round trips one after another; batches cut the round trips, and a few of them in
    // flight keep both ends busy. The first failure stops the others from starting.
    let next = 0;
    const worker = async () => {
      while (next < units.length) {
        const unit = units[next++] as UploadUnit;
        const done = unit.kind === 'single' ? [unit.file] : unit.files;
        if (unit.kind === 'single') {
          await this.uploadBlob(Readable.toWeb(createReadStream(unit.file.absPath)) as ReadableStream<Uint8Array>, unit.file.digest, options.signal);
        } else if (batchesRefused) {
          units.push(...unit.files.map((file): UploadUnit => ({ kind: 'single', file })));
          continue;
        } else {
          try {
            await this.uploadBatch(unit.files, options.signal);
          } catch (err) {
            // A coordinator from before batch uploads has no such route: send these files alone.
            if (!(err instanceof GridworkError && err.code === 'NOT_FOUND')) throw err;
            batchesRefused = true;
            units.push(...unit.files.map((file): UploadUnit => ({ kind: 'single', file })));
            continue;
          }
        }
        uploaded += done.length;
        bytes += done.reduce((n, f) => n + f.size, 0);
        options.onUpload?.({ uploaded, total: lacking.length, bytes, totalBytes });
      }
    };
    // Units added while the last workers finish (a refused batch's files) get a fresh round of workers.
    while (next < units.length) {
      await Promise.all(
        Array.from({ length: Math.min(UPLOAD_CONCURRENCY, units.length - next) }, () =>
          worker().catch((err) => {
            next = units.length;
            throw err;
          }),
        ),
      );
    }
  }

  /** Uploads small files in one request (`POST /v1/blobs/batch/:digest`); all are stored, or none. */
  private async uploadBatch(files: readonly LocalFile[], signal?: AbortSignal): Promise<void> {
    const { body, digest } = await readBatchBody(files);
    const res = await this.fetch('POST', `/v1/blobs/batch/${digest}`, { blob: body, digest }, signal);
    await res.text();
  }

  async uploadBlob(data: Uint8Array | ReadableStream<Uint8Array>, digest: string, signal?: AbortSignal): Promise<void> {
    const res = await this.fetch('PUT', `/v1/blobs/${digest}`, { blob: data, digest }, signal);
    await res.text();
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

  /**
   * Job snapshots: the current one at once, then one per change, ending when the job ends.
   * A broken stream is reopened (with backoff) from the last position seen; a snapshot that
   * repeats the last one after a reconnect is not yielded again.
   */
  async *watch(jobId: string, options: ReconnectOptions = {}): AsyncGenerator<JobView> {
    const contact = new Contact(jobId, options);
    let position: string | undefined;
    let last: JobView | undefined;
    let lastKey = '';
    for (;;) {
      const ac = new AbortController();
      const onAbort = () => ac.abort();
      options.signal?.addEventListener('abort', onAbort, { once: true });
      try {
        const q = position === undefined ? '' : `?after=${encodeURIComponent(position)}`;
        const res = await this.fetch('GET', `/v1/jobs/${encodeURIComponent(jobId)}/events${q}`, undefined, ac.signal, 'ndjson');
        contact.ok();
        for await (const ev of readNdjsonLines<JobEventLine>(res.body)) {
          if (ev.position !== undefined) position = ev.position;
          if (ev.type !== 'job' || !ev.job) continue;
          const key = JSON.stringify(ev.job);
          if (key !== lastKey) {
            lastKey = key;
            last = ev.job;
            yield ev.job;
          }
          if (TERMINAL_JOB_STATES.includes(ev.job.state)) return;
        }
        // The stream ended without the job ending (a coordinator shutting down ends it cleanly).
        await contact.failed(new GridworkError('NETWORK_ERROR', 'event stream ended before the job did'), last);
      } catch (err) {
        if (options.signal?.aborted) throw new GridworkError('ABORTED', 'watch aborted', { cause: err });
        if (err instanceof LostContactError || !isTransient(err)) throw err;
        await contact.failed(err, last);
      } finally {
        options.signal?.removeEventListener('abort', onAbort);
        ac.abort();
      }
    }
  }

  /**
   * Waits until the job's results are in (`verifying`, or ended) and returns that snapshot; with
   * `until: 'end'`, until the job ends. See `watch` for reconnects and giving up.
   */
  async wait(jobId: string, options: WaitOptions = {}): Promise<JobView> {
    const done = options.until === 'end' ? TERMINAL_JOB_STATES : RESULTS_READY_STATES;
    let last: JobView | undefined;
    for await (const job of this.watch(jobId, options)) {
      last = job;
      options.onUpdate?.(job);
      if (done.includes(job.state)) break;
    }
    if (!last) throw new GridworkError('INTERNAL', `no state received for job ${jobId}`);
    return last;
  }

  /**
   * Log entries, as the coordinator stores them (chunks of output); with `follow`, new ones as
   * they arrive until the job ends, reconnecting and resuming after the last sequence seen.
   */
  async *logs(jobId: string, options: LogOptions = {}): AsyncGenerator<LogEntry> {
    const contact = new Contact(jobId, options);
    const follow = options.follow ?? false;
    let after = options.after ?? 0;
    for (;;) {
      const ac = new AbortController();
      const onAbort = () => ac.abort();
      options.signal?.addEventListener('abort', onAbort, { once: true });
      try {
        const q = `after=${after}&follow=${follow ? 'true' : 'false'}`;
        const res = await this.fetch('GET', `/v1/jobs/${encodeURIComponent(jobId)}/logs?${q}`, undefined, ac.signal, 'ndjson');
        contact.ok();
        for await (const e of readNdjsonLines<LogEntry>(res.body)) {
          if (e.seq <= after) continue;
          after = e.seq;
          yield e;
        }
        if (!follow) return;
        // A follow stream ends when the job has ended, or when a server closes it (restart, page
        // limit). A verifying job has no task left to run: its log is complete too.
        const job = await this.get(jobId, { ...(options.signal ? { signal: options.signal } : {}) });
        if (RESULTS_READY_STATES.includes(job.state)) {
          // Entries written between the stream's end and the job's end, if any.
          const tail = await this.fetch('GET', `/v1/jobs/${encodeURIComponent(jobId)}/logs?after=${after}&follow=false`, undefined, ac.signal, 'ndjson');
          for await (const e of readNdjsonLines<LogEntry>(tail.body)) {
            if (e.seq <= after) continue;
            after = e.seq;
            yield e;
          }
          return;
        }
      } catch (err) {
        if (options.signal?.aborted) throw new GridworkError('ABORTED', 'log stream aborted', { cause: err });
        if (err instanceof LostContactError || !isTransient(err) || !follow) throw err;
        await contact.failed(err, undefined);
      } finally {
        options.signal?.removeEventListener('abort', onAbort);
        ac.abort();
      }
    }
  }

  /**
   * Log output as whole lines, per task and stream: chunks are split at newlines, and a
   * partial last line is held until its newline arrives (or the log ends).
   */
  async *logLines(jobId: string, options: LogOptions = {}): AsyncGenerator<LogLine> {
    const splitter = new LogLineSplitter();
    for await (const e of this.logs(jobId, options)) yield* splitter.push(e);
    yield* splitter.flush();
  }

  /**
   * Disputes one task's result while it is pending verification: posts a bond (the task's
   * charge, at least the coordinator's minimum) from your available balance, and a referee
   * provider re-runs the task. Upheld, the bond comes back with a refund and a reward;
   * dismissed, the bond pays the provider. Errors: JOB_NOT_FOUND, TASK_NOT_FOUND,
   * NOT_DISPUTABLE (no result), DISPUTE_EXISTS, DISPUTE_WINDOW_CLOSED, INSUFFICIENT_FUNDS,
   * VERIFICATION_UNAVAILABLE (no referee can be paid for now).
   */
  dispute(jobId: string, taskIndex: number, options: CallOptions = {}): Promise<DisputeView> {
    if (!Number.isInteger(taskIndex) || taskIndex < 0) {
      return Promise.reject(new GridworkError('BAD_REQUEST', `taskIndex: expected a task index (an integer ≥ 0), got ${taskIndex}`));
    }
    return this.json<DisputeView>('POST', `/v1/jobs/${encodeURIComponent(jobId)}/tasks/${taskIndex}/dispute`, undefined, options.signal);
  }

  /**
   * The calling provider's own record (the client's identity must be a provider's key): stake,
   * unbonding and slashed credits, reputation, eligibility, audits and its audit rate, capacity
   * challenges, recent result checks. PROVIDER_UNKNOWN for a key the coordinator has not seen.
   */
  providerStatus(options: CallOptions = {}): Promise<ProviderStatus> {
    return this.json<ProviderStatus>('GET', '/v1/providers/me', undefined, options.signal);
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

  /** Adds to a running job's budget from your available balance. */
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

  /** Providers known to the coordinator: state, hardware, asks, reputation, benchmarks. */
  async providers(options: CallOptions & { all?: boolean } = {}): Promise<ProviderListing[]> {
    return (await this.json<{ providers: ProviderListing[] }>('GET', `/v1/providers${options.all ? '?all=true' : ''}`, undefined, options.signal)).providers;
  }

  /** Why a spec would (not) match now, without submitting it. */
  explain(spec: JobSpec, options: CallOptions = {}): Promise<MatchExplanation> {
    return this.json<MatchExplanation>('POST', '/v1/market/explain', { spec }, options.signal);
  }

  /** Downloads one blob of a job to `dest`, checking its digest; written atomically. */
  async download(jobId: string, digest: string, dest: string, options: CallOptions = {}): Promise<void> {
    const res = await this.fetch('GET', `/v1/jobs/${encodeURIComponent(jobId)}/blobs/${digest}`, undefined, options.signal, 'bytes');
    await writeVerified(new Response(Readable.toWeb(res.body) as ReadableStream<Uint8Array>, { status: res.status }), dest, digest);
  }

  /**
   * Downloads every output of a job into `dir/task-<index>/<path>`; returns the files written.
   * Outputs exist only for tasks that succeeded: check the job's state first (or use `wait`).
   */
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
    // The result manifest: which task (shard) produced which files, on which provider, and how far
    // each result is verified. Written on every call, so a partial download of a running job says
    // what it holds.
    const manifest = {
      job: job.id,
      name: job.name,
      kind: job.kind,
      state: job.state,
      writtenAt: new Date().toISOString(),
      tasks: job.tasks.map((t) => ({
        index: t.index,
        state: t.state,
        provider: t.providerId ? { id: t.providerId, name: t.providerName } : null,
        verification: t.verification?.state ?? null,
        pendingUntil: t.verification?.pendingUntil ?? null,
        // Earlier results of the task that checks refuted (it ran again): not among these files.
        refuted: (t.refuted ?? []).map((r) => ({ provider: { id: r.providerId, name: r.providerName }, lease: r.leaseId })),
        outputs: t.outputs.map((o) => ({ path: o.path, file: `task-${t.index}/${o.path}`, digest: o.digest, size: o.size })),
      })),
    };
    await mkdir(dir, { recursive: true });
    await writeFile(join(dir, 'manifest.json'), `${JSON.stringify(manifest, null, 2)}\n`);
    return written;
  }
}
