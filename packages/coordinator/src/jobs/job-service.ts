/**
 * Jobs as requesters see them: submission (spec, bundle and inputs checked against blobs the
 * requester uploaded), views, listing, cancel, top-up, logs. Every read checks ownership: a
 * requester sees only their own jobs. State changes are lifecycle commands; this module writes
 * no table itself.
 */
import {
  BundleManifest,
  canonicalJson,
  formatCredits,
  GridworkError,
  MAX_MICROS,
  type MatchExplanation,
  parseCredits,
  type InputSet,
  type JobSpec,
  type JobState,
  type JobSummary,
  type JobView,
  type LogEntry,
  type SubmitJobRequest,
  type TaskView,
  validateJobSpec,
} from '@gridwork/protocol';
import { sha256Hex } from '@gridwork/protocol/node';
import { sql } from 'kysely';
import { Compile } from 'typebox/compile';
import { notUploadedBy } from '../blobs/blob-service.ts';
import type { BlobStore } from '../blobs/blob-store.ts';
import type { Bus, LocalProgress } from '../bus/bus.ts';
import type { Lifecycle } from '../lifecycle/lifecycle.ts';
import { limitMsOf } from '../core/time-limit.ts';
import { ACTIVE_LEASE_STATES, isTerminalJob, TERMINAL_JOB } from '../core/state-machine.ts';
import type { Units } from '../core/unit-of-work.ts';
import { balancesOf, escrowOf, holdOf } from '../ledger/ledger.ts';
import { type EconomicsConfig, minimumBudget } from '../ledger/lease-economics.ts';
import { type Market, orderOf } from '../market/market.ts';
import type { Db } from '../store/database.ts';
import type { VerificationState } from '../store/schema.ts';
import { shardInputs } from './sharding.ts';

const manifestCheck = Compile(BundleManifest);
/** How long a submit waits for the scheduling pass that places its tasks. */
const SUBMIT_WAITS_FOR_PLACEMENT_MS = 1000;

function waitAtMost(p: Promise<unknown>, ms: number): Promise<void> {
  let timer: NodeJS.Timeout | undefined;
  return Promise.race([p, new Promise<void>((r) => (timer = setTimeout(r, ms)))]).then(() => clearTimeout(timer));
}
const MAX_MANIFEST_BYTES = 4 * 1024 * 1024;

export interface JobServiceDeps {
  db: Db;
  units: Units;
  lifecycle: Lifecycle;
  bus: Bus & LocalProgress;
  economics: EconomicsConfig;
  market: Market;
  blobs: BlobStore;
  /** The bus subscriber that places work; submit waits until it has seen the job, so its reply already shows the placements. */
  scheduler: string;
}

export class JobService {
  constructor(private readonly deps: JobServiceDeps) {}

  async submit(owner: string, req: SubmitJobRequest): Promise<JobView> {
    const spec = validateJobSpec(req.spec);
    const { economics } = this.deps;
    // Every runtime.kind is accepted: matching places a job only on providers offering a runtime
    // for it, and `job explain` says when none does (a container job waits for one). A container
    // brings its files in its image: a bundle beside it would be stored unchecked and never run.
    if (spec.runtime.kind !== 'bundle' && req.bundle) {
      throw new GridworkError('VALIDATION_FAILED', `bundle: only allowed when runtime.kind is bundle (this job's is ${spec.runtime.kind})`);
    }
    if (!spec.price) {
      throw new GridworkError('INVALID_SPEC', 'invalid job spec: price: required (maxPerHour and budget, in credits)', {
        details: [{ path: 'price', message: 'required' }],
      });
    }
    const maxPerHour = parseCredits(spec.price.maxPerHour, { field: 'price.maxPerHour', allowZero: false });
    const budget = parseCredits(spec.price.budget, { field: 'price.budget', allowZero: false });
    const minimum = minimumBudget(maxPerHour, economics);
    if (budget < minimum) {
      throw new GridworkError(
        'BUDGET_TOO_LOW',
        `price.budget ${formatCredits(budget)} does not cover one metering period (${economics.meteringIntervalMs / 1000} s) at the max price: at least ${formatCredits(minimum)}`,
        { details: { minimum: formatCredits(minimum) } },
      );
    }
    const blobRoles = new Map<string, 'bundle' | 'input'>();

    if (spec.runtime.kind === 'bundle') {
      if (!req.bundle) throw new GridworkError('VALIDATION_FAILED', 'bundle: required when runtime.kind is bundle');
      const manifest = await this.readManifest(owner, req.bundle.manifest);
      blobRoles.set(req.bundle.manifest, 'bundle');
      for (const f of manifest.files) blobRoles.set(f.digest, 'bundle');
    }
    const declared = new Map((spec.inputs ?? []).map((i) => [i.name, i]));
    const seen = new Set<string>();
    for (const [i, set] of req.inputs.entries()) {
      const decl = declared.get(set.name);
      if (!decl) throw new GridworkError('VALIDATION_FAILED', `inputs[${i}].name: "${set.name}" is not an input of the spec`);
      if (seen.has(set.name)) throw new GridworkError('VALIDATION_FAILED', `inputs[${i}].name: "${set.name}" given twice`);
      if ((decl.shard ?? false) !== set.shard) throw new GridworkError('VALIDATION_FAILED', `inputs[${i}].shard must match the spec (${decl.shard ?? false})`);
      if (set.files.length === 0) throw new GridworkError('VALIDATION_FAILED', `inputs[${i}]: input "${set.name}" matched no files`);
      seen.add(set.name);
      for (const f of set.files) if (!blobRoles.has(f.digest)) blobRoles.set(f.digest, 'input');
    }
    for (const name of declared.keys()) {
      if (!seen.has(name)) throw new GridworkError('VALIDATION_FAILED', `inputs: input "${name}" of the spec was not uploaded`);
    }
    // A service runs `replicas` tasks, each with all the inputs.
    // A cluster runs `cluster.size` members (its sharded inputs split among them).
    const taskInputs = spec.service
      ? Array.from({ length: spec.service.replicas ?? 1 }, () => req.inputs)
      : shardInputs(req.inputs, spec.cluster?.size ?? spec.shards ?? 1);
    await this.assertUploadedBy(owner, [...blobRoles.keys()]);

    const { jobId } = await this.deps.units.run((uow) =>
      this.deps.lifecycle.submit(uow, {
        owner,
        spec,
        bundleManifest: req.bundle?.manifest ?? null,
        budget,
        maxPerHour,
        taskInputs,
        blobs: blobRoles,
        ...(req.idempotencyKey !== undefined ? { idempotencyKey: req.idempotencyKey } : {}),
        requestDigest: sha256Hex(canonicalJson({ spec: req.spec, bundle: req.bundle ?? null, inputs: req.inputs })),
      }),
    );
    // The reply shows where the tasks went when the scheduler gets to them soon; a busy
    // scheduler (a long queue on the embedded store) must not hold the reply for seconds.
    await waitAtMost(this.deps.bus.reached(this.deps.scheduler, this.deps.bus.head()), SUBMIT_WAITS_FOR_PLACEMENT_MS);
    return this.get(owner, jobId, { explain: true });
  }

  private async readManifest(owner: string, digest: string): Promise<BundleManifest> {
    await this.assertUploadedBy(owner, [digest]);
    const { stream, size } = await this.deps.blobs.open(digest);
    if (size > MAX_MANIFEST_BYTES) {
      stream.destroy();
      throw new GridworkError('VALIDATION_FAILED', `bundle.manifest: manifest is larger than ${MAX_MANIFEST_BYTES} bytes`);
    }
    const chunks: Buffer[] = [];
    for await (const c of stream) chunks.push(c as Buffer);
    let parsed: unknown;
    try {
      parsed = JSON.parse(Buffer.concat(chunks).toString('utf8'));
    } catch {
      throw new GridworkError('VALIDATION_FAILED', 'bundle.manifest: blob is not a JSON bundle manifest');
    }
    if (!manifestCheck.Check(parsed)) {
      const first = manifestCheck.Errors(parsed)[0];
      throw new GridworkError('VALIDATION_FAILED', `bundle.manifest: not a valid manifest (${first?.instancePath ?? ''} ${first?.message ?? ''})`);
    }
    return parsed;
  }

  /**
   * Every digest must be a blob this account uploaded (content-addressing lets anyone name a
   * digest; only uploading the bytes proves one has them). Unknown and foreign blobs get the
   * same answer, so the check reveals nothing about other accounts' data.
   */
  private async assertUploadedBy(owner: string, digests: string[]): Promise<void> {
    const missing = await notUploadedBy(this.deps.db, owner, digests);
    if (missing.length > 0) {
      throw new GridworkError('BLOB_MISSING', `${missing.length} blob(s) were not uploaded by this account, e.g. ${missing[0]}`, {
        details: { missing: missing.slice(0, 100) },
      });
    }
  }

  /**
   * Loads a job and checks that `owner` may see it. Another account's job does not exist, as far
   * as the caller can tell: one answer for both, or job ids could be probed.
   */
  private async ownedJob(owner: string, jobId: string) {
    const job = await this.deps.db.selectFrom('jobs').selectAll().where('id', '=', jobId).executeTakeFirst();
    if (!job || job.owner !== owner) throw jobNotFound(jobId);
    return job;
  }

  /**
   * A job as its owner sees it. `explain` adds, while tasks wait, why they do not match: it
   * looks at every provider, so only a person asking for the job gets it (not streams).
   */
  async get(owner: string, jobId: string, options: { explain?: boolean } = {}): Promise<JobView> {
    const job = await this.ownedJob(owner, jobId);
    return this.view(job, options.explain ?? false);
  }

  private async view(
    job: {
      id: string;
      name: string;
      kind: string;
      owner: string;
      state: string;
      error: string | null;
      created_at: Date;
      updated_at: Date;
      budget: bigint;
      max_per_hour: bigint;
      low_balance_since: Date | null;
      spec: JobSpec;
    },
    explain = false,
  ): Promise<JobView> {
    const tasks = await this.deps.db
      .selectFrom('tasks')
      .leftJoin('providers', 'providers.id', 'tasks.provider_id')
      .select([
        'tasks.id',
        'tasks.idx',
        'tasks.state',
        'tasks.attempts',
        'tasks.lease_id',
        'tasks.provider_id',
        'providers.name as provider_name',
        'tasks.started_at',
        'tasks.finished_at',
        'tasks.exit_code',
        'tasks.duration_ms',
        'tasks.error',
        'tasks.outputs',
        'tasks.output_digest',
      ])
      .where('tasks.job_id', '=', job.id)
      .orderBy('tasks.idx')
      .execute();
    const leases = await this.deps.db
      .selectFrom('leases')
      .leftJoin('providers', 'providers.id', 'leases.provider_id')
      .select([
        'leases.id',
        'leases.task_id',
        'leases.provider_id',
        'providers.name as provider_name',
        'leases.price_per_hour',
        'leases.charged',
        'leases.verification',
        'leases.settle_at',
        'leases.audit_seed',
        'leases.ended_at',
      ])
      .where('leases.job_id', '=', job.id)
      .orderBy('leases.created_at')
      .execute();
    const verified = leases.filter((l) => l.verification !== null).map((l) => l.id);
    const checks =
      verified.length === 0
        ? []
        : await this.deps.db
            .selectFrom('verifications')
            .select(['id', 'lease_id', 'kind', 'state', 'outcome', 'detail'])
            .where('lease_id', 'in', verified)
            .where('kind', '!=', 'canary')
            .orderBy('created_at')
            .execute();
    const costByTask = new Map<string, bigint>();
    const leaseById = new Map(leases.map((l) => [l.id, l]));
    let spent = 0n;
    // A refuted result is not the requester's to pay: its earnings went back (rejectResult).
    const refutedByTask = new Map<string, (typeof leases)[number][]>();
    for (const l of leases) {
      if (l.verification === 'failed') {
        refutedByTask.set(l.task_id, [...(refutedByTask.get(l.task_id) ?? []), l]);
        continue;
      }
      spent += l.charged;
      costByTask.set(l.task_id, (costByTask.get(l.task_id) ?? 0n) + l.charged);
    }
    const held = await balancesOf(this.deps.db, [holdOf(job.id), ...leases.map((l) => escrowOf(l.id))]);
    let heldTotal = 0n;
    for (const v of held.values()) heldTotal += v;
    const waiting = explain && tasks.some((t) => t.state === 'queued') && !isTerminalJob(job.state);
    return {
      id: job.id,
      name: job.name,
      kind: job.kind,
      owner: job.owner,
      state: job.state as JobState,
      error: job.error,
      createdAt: job.created_at.toISOString(),
      updatedAt: job.updated_at.toISOString(),
      tasks: tasks.map(
        (t): TaskView => ({
          id: t.id,
          index: t.idx,
          state: t.state,
          attempts: t.attempts,
          leaseId: t.lease_id,
          providerId: t.provider_id,
          providerName: t.provider_name ?? null,
          startedAt: t.started_at?.toISOString() ?? null,
          finishedAt: t.finished_at?.toISOString() ?? null,
          exitCode: t.exit_code,
          durationMs: t.duration_ms,
          error: t.error,
          outputs: t.outputs,
          outputDigest: t.output_digest,
          pricePerHour:
            t.lease_id && leaseById.get(t.lease_id) ? formatCredits((leaseById.get(t.lease_id) as { price_per_hour: bigint }).price_per_hour) : null,
          cost: formatCredits(costByTask.get(t.id) ?? 0n),
          ...verificationOf(t.lease_id ? leaseById.get(t.lease_id) : undefined, checks),
          ...refutedOf(t.lease_id, refutedByTask.get(t.id), checks),
        }),
      ),
      money: {
        budget: formatCredits(job.budget),
        maxPerHour: formatCredits(job.max_per_hour),
        spent: formatCredits(spent),
        held: formatCredits(heldTotal),
        lowBalanceSince: job.low_balance_since?.toISOString() ?? null,
      },
      ...(waiting ? { explain: this.deps.market.explain(orderOf(job.spec, job.max_per_hour)) } : {}),
    };
  }

  /**
   * Jobs whose budget could not fund their leases for longer than the grace period end as
   * failed ("budget exhausted"): running leases stop and are paid for their metered time,
   * finished tasks keep their outputs, and what is left of the budget goes back.
   */
  async stopUnfunded(graceMs: number): Promise<string[]> {
    const due = await this.deps.db
      .selectFrom('jobs')
      .select(['id'])
      .where('low_balance_since', '<', new Date(Date.now() - graceMs))
      .where('state', 'not in', [...TERMINAL_JOB])
      .execute();
    const stopped: string[] = [];
    for (const j of due) {
      if (await this.deps.units.run((uow) => this.deps.lifecycle.failUnfunded(uow, j.id, graceMs))) stopped.push(j.id);
    }
    return stopped;
  }

  /**
   * Leases the provider did not end by itself: one still running well past its task's time limit
   * (the agent should have killed it and reported a timeout), or one never started long after it
   * was placed. They are lost — provider faults, the task is retried elsewhere — so a silent but
   * heartbeating provider cannot hold a task, its escrow and its capacity forever.
   */
  async expireOverdueLeases(graceMs: number, startDeadlineMs: number): Promise<string[]> {
    const now = Date.now();
    const active = await this.deps.db
      .selectFrom('leases')
      .innerJoin('jobs', 'jobs.id', 'leases.job_id')
      .select(['leases.id', 'leases.state', 'leases.created_at', 'leases.started_at', 'jobs.spec'])
      .where('leases.state', 'in', [...ACTIVE_LEASE_STATES])
      .where('leases.created_at', '<', new Date(now - Math.min(graceMs, startDeadlineMs)))
      .execute();
    const expired: string[] = [];
    for (const l of active) {
      const overdue = l.started_at ? l.started_at.getTime() + limitMsOf(l.spec) + graceMs < now : l.created_at.getTime() + startDeadlineMs < now;
      if (!overdue) continue;
      const why = l.started_at ? 'the provider did not stop the task at its time limit' : 'the provider did not start the task in time';
      if (await this.deps.units.run((uow) => this.deps.lifecycle.lose(uow, l.id, why))) expired.push(l.id);
    }
    return expired;
  }

  /** Jobs with a task queued longer than their spec's `queueTimeoutSeconds` fail, saying why nothing could run them. */
  async expireQueued(): Promise<string[]> {
    const due = await this.deps.db
      .selectFrom('tasks')
      .innerJoin('jobs', 'jobs.id', 'tasks.job_id')
      .select(['jobs.id', 'jobs.spec', 'jobs.max_per_hour'])
      .distinct()
      .where('tasks.state', '=', 'queued')
      .where(sql<boolean>`jobs.spec ? 'queueTimeoutSeconds'`)
      .where(sql<boolean>`tasks.queued_at < now() - make_interval(secs => (jobs.spec->>'queueTimeoutSeconds')::float8)`)
      .execute();
    const expired: string[] = [];
    for (const j of due) {
      const why = this.deps.market.explain(orderOf(j.spec, j.max_per_hour)).reasons.join('; ');
      if (await this.deps.units.run((uow) => this.deps.lifecycle.expireQueued(uow, j.id, why))) expired.push(j.id);
    }
    return expired;
  }

  /** Why a spec would (not) match right now, before submitting it. */
  explain(spec: JobSpec): MatchExplanation {
    const maxPerHour = spec.price ? parseCredits(spec.price.maxPerHour, { field: 'price.maxPerHour', allowZero: false }) : MAX_MICROS;
    return this.deps.market.explain(orderOf(spec, maxPerHour));
  }

  /** Adds budget to a job that has not ended (e.g. to clear a low balance). */
  async addBudget(owner: string, jobId: string, amount: bigint, idempotencyKey: string, requestDigest: string): Promise<JobView> {
    const job = await this.ownedJob(owner, jobId);
    if (isTerminalJob(job.state)) throw new GridworkError('INVALID_TRANSITION', `job ${jobId} has ended (${job.state})`);
    await this.deps.units.run((uow) => this.deps.lifecycle.topUp(uow, owner, jobId, amount, idempotencyKey, requestDigest));
    return this.get(owner, jobId);
  }

  async list(owner: string, limit: number): Promise<JobSummary[]> {
    const rows = await this.deps.db
      .selectFrom('jobs')
      .select((eb) => [
        'jobs.id',
        'jobs.name',
        'jobs.state',
        'jobs.created_at',
        eb.selectFrom('tasks').select(eb.fn.countAll<string>().as('n')).whereRef('tasks.job_id', '=', 'jobs.id').as('tasks'),
        eb
          .selectFrom('tasks')
          .select(eb.fn.countAll<string>().as('n'))
          .whereRef('tasks.job_id', '=', 'jobs.id')
          .where('tasks.state', 'in', ['succeeded', 'failed', 'cancelled'])
          .as('done'),
      ])
      .where('owner', '=', owner)
      .orderBy('created_at', 'desc')
      .limit(limit)
      .execute();
    return rows.map((r) => ({
      id: r.id,
      name: r.name,
      state: r.state as JobState,
      createdAt: r.created_at.toISOString(),
      tasks: Number(r.tasks ?? 0),
      tasksDone: Number(r.done ?? 0),
    }));
  }

  async cancel(owner: string, jobId: string): Promise<JobView> {
    await this.ownedJob(owner, jobId);
    await this.deps.units.run((uow) => this.deps.lifecycle.cancel(uow, jobId, 'cancelled by requester'));
    return this.get(owner, jobId);
  }

  async logs(owner: string, jobId: string, afterId: bigint, limit: number): Promise<{ entries: LogEntry[]; last: bigint }> {
    await this.ownedJob(owner, jobId);
    return this.logsAfter(jobId, afterId, limit);
  }

  async logsAfter(jobId: string, afterId: bigint, limit: number): Promise<{ entries: LogEntry[]; last: bigint }> {
    const rows = await this.deps.db
      .selectFrom('task_logs')
      .selectAll()
      .where('job_id', '=', jobId)
      .where('id', '>', afterId)
      .orderBy('id')
      .limit(limit)
      .execute();
    return {
      entries: rows.map((r) => ({
        taskIndex: r.task_idx,
        leaseId: r.lease_id,
        seq: Number(r.id),
        stream: r.stream as LogEntry['stream'],
        data: r.data,
        ts: r.ts.toISOString(),
      })),
      last: rows[rows.length - 1]?.id ?? afterId,
    };
  }

  /** No task of the job will log again: it has ended, or all its tasks are done and it is only verifying. */
  async logsComplete(jobId: string): Promise<boolean> {
    const job = await this.deps.db.selectFrom('jobs').select('state').where('id', '=', jobId).executeTakeFirst();
    return !job || job.state === 'verifying' || isTerminalJob(job.state);
  }

  /** The owner of a job, or a provider holding an active lease on it, may read its blobs. */
  async assertBlobAccess(accountId: string, jobId: string, digest: string): Promise<void> {
    const job = await this.deps.db.selectFrom('jobs').select(['owner', 'purpose']).where('id', '=', jobId).executeTakeFirst();
    if (!job) throw jobNotFound(jobId);
    const link = await this.deps.db.selectFrom('job_blobs').select('role').where('job_id', '=', jobId).where('digest', '=', digest).executeTakeFirst();
    if (job.owner === accountId) {
      if (!link) throw new GridworkError('NOT_FOUND', `blob ${digest} is not part of job ${jobId}`);
      return;
    }
    // A provider reads only what a live lease of its needs: the job's bundle, its own task's inputs,
    // and the checkpoint its task resumes from (its task's own, or a segment check's start).
    const leases = await this.deps.db
      .selectFrom('leases')
      .innerJoin('tasks', 'tasks.id', 'leases.task_id')
      .select(['tasks.inputs', 'tasks.id as task_id'])
      .where('leases.job_id', '=', jobId)
      .where('leases.provider_id', '=', accountId)
      .where('leases.state', 'in', [...ACTIVE_LEASE_STATES])
      .execute();
    if (leases.length === 0) throw jobNotFound(jobId);
    let needed = link?.role === 'bundle' || leases.some((l) => l.inputs.some((set) => set.files.some((f) => f.digest === digest)));
    // Cluster members read each other's exchange files.
    if (!needed && link?.role === 'exchange') needed = true;
    if (!needed && link?.role === 'checkpoint') {
      const own = await this.deps.db
        .selectFrom('checkpoints')
        .select('step')
        .where('task_id', 'in', leases.map((l) => l.task_id))
        .where('digest', '=', digest)
        .executeTakeFirst();
      needed = own !== undefined || job.purpose !== 'work';
    }
    if (!needed) throw new GridworkError('FORBIDDEN', `blob ${digest} is not needed by your lease of job ${jobId}`);
  }
}

export type { JobSpec, InputSet };

/** The one answer for a job that does not exist and for one that is not the caller's. */
export function jobNotFound(jobId: string): GridworkError {
  return new GridworkError('JOB_NOT_FOUND', `job ${jobId} does not exist`);
}

/** The task's earlier attempts whose results were refuted (its current lease's verification says the rest). */
function refutedOf(
  current: string | null,
  leases: readonly { id: string; provider_id: string; provider_name: string | null; charged: bigint; ended_at: Date | null }[] | undefined,
  checks: readonly { id: string; lease_id: string; kind: string; state: string; outcome: string | null; detail: string | null }[],
): Pick<TaskView, 'refuted'> {
  const earlier = (leases ?? []).filter((l) => l.id !== current);
  if (earlier.length === 0) return {};
  return {
    refuted: earlier.map((l) => ({
      leaseId: l.id,
      providerId: l.provider_id,
      providerName: l.provider_name,
      finishedAt: l.ended_at?.toISOString() ?? null,
      charged: formatCredits(l.charged),
      checks: checks.filter((c) => c.lease_id === l.id).map((c) => ({ id: c.id, kind: c.kind, state: c.state, outcome: c.outcome, detail: c.detail })),
    })),
  };
}

function verificationOf(
  lease: { id: string; verification: VerificationState | null; settle_at: Date | null; audit_seed: string | null } | undefined,
  checks: readonly { id: string; lease_id: string; kind: string; state: string; outcome: string | null; detail: string | null }[],
): Pick<TaskView, 'verification'> {
  if (!lease?.verification) return {};
  return {
    verification: {
      state: lease.verification,
      pendingUntil: lease.settle_at?.toISOString() ?? null,
      auditSeed: lease.audit_seed,
      checks: checks.filter((c) => c.lease_id === lease.id).map((c) => ({ id: c.id, kind: c.kind, state: c.state, outcome: c.outcome, detail: c.detail })),
    },
  };
}
