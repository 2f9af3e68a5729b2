/**
 * Results and their verification (trust L3–L6; verify/verification.ts decides what a check
 * means): holding a result for its audit window, opening checks (audits, referees, canaries,
 * disputes) as jobs of the protocol account paid from `sys:fees`, closing them, and confirming or
 * refuting the result. Part of the lifecycle (lifecycle.ts).
 */
import { formatCredits, type GridworkError, type JobSpec, newId, parseCredits } from '@gridwork/protocol';
import { sql } from 'kysely';
import { balanceOf, earnedOf, FEES, holdOf, post, RESERVE, stakeOf } from '../ledger/ledger.ts';
import { costOf, payEarnings, refundEarnings } from '../ledger/lease-economics.ts';
import { baseHourly, parseAsks } from '../market/order-price.ts';
import { auditRate, drawOf, slashFor } from '../verify/verification-policy.ts';
import { isTerminalJob } from '../core/state-machine.ts';
import type { Trx, UnitOfWork } from '../core/unit-of-work.ts';
import { limitMsOf } from '../core/time-limit.ts';
import type { LifecycleParts, NewCheck, Segment, LeaseRow } from './lifecycle.ts';

/** The account that owns the protocol's check jobs (paid from `sys:fees`). */
export const PROTOCOL_ACCOUNT = 'protocol';

export class ResultChecks {
  constructor(private readonly parts: LifecycleParts) {}

  /**
   * A completed task's result is pending: its earnings wait in the lease's account until the
   * audit window closes. Whether it is audited is drawn from the lease's secret seed, whose hash
   * the provider received with the task (commit–reveal): it could not know when it committed.
   */
  async holdForVerification(uow: UnitOfWork, lease: LeaseRow, digest: string): Promise<void> {
    const { trx } = uow;
    const cfg = this.parts.verification;
    const provider = await trx.selectFrom('providers').select('audit_streak').where('id', '=', lease.provider_id).executeTakeFirst();
    const stake = await balanceOf(trx, stakeOf(lease.provider_id));
    const streak = provider?.audit_streak ?? 0;
    const p = auditRate(lease.charged, stake, streak, cfg);
    const audited = drawOf(lease.audit_seed ?? lease.id, 'audit') < p;
    // On probation, or with nothing at stake: the audit is mandatory, and the result pays for it.
    const mandatory = streak < cfg.probationTasks || stake <= 0n;
    await trx
      .updateTable('leases')
      .set({ verification: 'pending', settle_at: new Date(Date.now() + cfg.windowMs) })
      .where('id', '=', lease.id)
      .execute();
    this.emitVerification(uow, lease, 'pending', audited ? `audited (p = ${p.toFixed(4)})` : null);
    if (audited) {
      // Checkpointed work is audited one segment at a time: the seed picks which.
      const segments = await this.segmentsOf(trx, lease.id);
      const segment = segments[Math.floor(drawOf(lease.audit_seed ?? lease.id, 'segment') * segments.length)];
      await this.openCheck(uow, { kind: 'audit', leaseId: lease.id, paidByEarnings: mandatory, ...(await this.expectation(trx, lease.id, segment, digest)) });
    } else if (cfg.windowMs === 0) await this.confirmResult(uow, lease.id, null);
  }

  /**
   * The segments of a lease's checkpointed work: from where it started (a checkpoint of an earlier
   * lease of its task, or the start) through each of its checkpoints to the end. Empty without checkpoints.
   */
  async segmentsOf(db: Trx, leaseId: string): Promise<Segment[]> {
    const own = (await db.selectFrom('checkpoints').select('step').where('lease_id', '=', leaseId).orderBy('step').execute()).map((c) => c.step);
    if (own.length === 0) return [];
    const lease = await db.selectFrom('leases').select(['task_id']).where('id', '=', leaseId).executeTakeFirstOrThrow();
    const before = await db
      .selectFrom('checkpoints')
      .select('step')
      .where('task_id', '=', lease.task_id)
      .where('lease_id', '!=', leaseId)
      .where('step', '<', own[0] as number)
      .orderBy('step', 'desc')
      .limit(1)
      .executeTakeFirst();
    const points: (number | null)[] = [before?.step ?? null, ...own, null];
    return points.slice(1).map((to, i) => ({ from: points[i] ?? null, to }));
  }

  /** What a check of `segment` (or of the whole task) must reproduce. */
  async expectation(db: Trx, leaseId: string, segment: Segment | undefined, outputDigest: string): Promise<{ expectedDigest: string; segment?: Segment }> {
    if (!segment) return { expectedDigest: outputDigest };
    if (segment.to === null) return { expectedDigest: outputDigest, segment };
    const c = await db.selectFrom('checkpoints').select('digest').where('lease_id', '=', leaseId).where('step', '=', segment.to).executeTakeFirstOrThrow();
    return { expectedDigest: c.digest, segment };
  }

  private emitVerification(
    uow: UnitOfWork,
    lease: { id: string; job_id: string; task_id: string; provider_id: string },
    state: 'pending' | 'verified' | 'disputed' | 'failed',
    detail: string | null,
  ): void {
    uow.emit({ type: 'lease.verification', jobId: lease.job_id, taskId: lease.task_id, leaseId: lease.id, providerId: lease.provider_id, state, detail });
  }

  /**
   * Opens a check of a lease's result: a job of the protocol's, paid from `sys:fees`, that runs
   * the same task on another provider (never the checked one, nor one of its operator). Returns
   * the check's id; a check the fees cannot pay for is recorded as abandoned.
   */
  async openCheck(uow: UnitOfWork, check: NewCheck): Promise<string> {
    let c = check;
    const { trx } = uow;
    const lease = await trx.selectFrom('leases').selectAll().where('id', '=', c.leaseId).executeTakeFirstOrThrow();
    const job = await trx.selectFrom('jobs').selectAll().where('id', '=', lease.job_id).executeTakeFirstOrThrow();
    const task = await trx.selectFrom('tasks').selectAll().where('id', '=', lease.task_id).executeTakeFirstOrThrow();
    const checkId = c.checkId ?? newId('ver');
    if (!c.segment) {
      // A lease that resumed from another lease's checkpoint answers only for its own work: its
      // check starts from the same checkpoint (a forged checkpoint it inherited is not its fault).
      const start = (await this.segmentsOf(trx, lease.id))[0]?.from ?? null;
      if (start !== null) c = { ...c, segment: { from: start, to: null } };
    }
    const cfg = this.parts.verification;
    // Everyone of the same operator as an excluded provider is excluded too.
    const named = [lease.provider_id, ...(c.exclude ?? [])];
    const excluded = await sql<{ id: string }>`
      select id from providers
      where coalesce(attributes->>'operator', id) in (select coalesce(attributes->>'operator', id) from providers where id = any(${named}::text[]))`.execute(
      trx,
    );
    const exclude = [...new Set([...named, ...excluded.rows.map((r) => r.id)])].sort();
    // A checker answers for its verdict with stake: at least what the fault it could hide or
    // invent costs (a wrong verdict is slashed as much), and at least what the requester asked of
    // the providers of its work. What a check may cost is bounded by the market of such checkers
    // and by the work it repeats, as the coordinator metered it: at most `checkPriceMultiple` × the
    // median ask of the providers staked enough to check, for four times the metered run time. Neither the requester's maxPerHour nor the price
    // the checked provider asked raises it — acting together, requester and provider could
    // otherwise have the protocol pay their own auditor any amount — and keys without stake, asking
    // nothing, do not lower it below what real checkers ask.
    const economics = this.parts.economics;
    const multiple = BigInt(Math.round(cfg.checkPriceMultiple * 1000));
    const slash = slashFor(lease.charged, cfg);
    const asked = job.spec.placement?.minStake === undefined ? 0n : parseCredits(job.spec.placement.minStake);
    const minStake = asked > slash ? asked : slash;
    // With no such checker online, the market at large bounds it (keys without stake can then only lower it).
    // The pool is set by the slash alone: a requester's own minStake could narrow it to keys it controls.
    const reference = (await this.medianAsk(trx, job.spec, slash)) ?? (await this.medianAsk(trx, job.spec, null)) ?? lease.price_per_hour;
    const maxPerHour = (reference * multiple) / 1000n || 1n;
    const limitMs = BigInt(limitMsOf(job.spec));
    // Four times the metered run time, and four metering periods: a checker may be slower, busier
    // or further from its inputs than the checked provider was.
    const runMs = 4n * lease.usage_ms + BigInt(4 * economics.meteringIntervalMs);
    const budget = costOf(maxPerHour, runMs < limitMs ? runMs : limitMs) || 1n;
    const base = {
      id: checkId,
      kind: c.kind,
      lease_id: lease.id,
      provider_id: lease.provider_id,
      expected_digest: c.expectedDigest,
      opened_by: c.openedBy ?? null,
      bond: c.bondPosted ?? 0n,
      parent_id: c.parentId ?? null,
      segment_from: c.segment?.from ?? null,
      segment_to: c.segment?.to ?? null,
    };
    const jobId = newId('job');
    // A mandatory audit (a provider on probation, or without stake at risk) is paid from the
    // checked result's own pending earnings first: a provider cannot profit from work that must be
    // checked. What they do not cover, and every other check, is paid from the fees (the
    // verification share), else from the reserve. The check's job returns what it did not spend
    // the same way (ledger/lease-economics.ts releaseJob).
    const earnings = c.paidByEarnings ? await balanceOf(trx, earnedOf(lease.id)) : 0n;
    const own = earnings < budget ? earnings : budget;
    let funded = 0n;
    for (const from of own === budget ? [null] : [FEES, RESERVE]) {
      try {
        await post(trx, {
          kind: 'check.fund',
          key: `check:${checkId}`,
          postings: [
            ...(own > 0n ? [{ account: earnedOf(lease.id), amount: -own }] : []),
            ...(from === null ? [] : [{ account: from, amount: own - budget }]),
            { account: holdOf(jobId), amount: budget },
          ],
          memo: { checkId, kind: c.kind, leaseId: lease.id, jobId, from: from ?? earnedOf(lease.id) },
        });
        funded = budget;
        break;
      } catch (err) {
        if ((err as GridworkError).code !== 'INSUFFICIENT_FUNDS') throw err;
      }
    }
    if (funded === 0n) {
      const detail = 'neither the verification fund (sys:fees) nor the reserve can pay for this check now';
      await trx
        .insertInto('verifications')
        .values({ ...base, state: 'abandoned', detail, ended_at: new Date() })
        .execute();
      uow.emit({ type: 'check.closed', checkId, kind: c.kind, leaseId: lease.id, providerId: lease.provider_id, state: 'abandoned', detail });
      return checkId;
    }
    const now = new Date();
    const count = await this.parts.ending.taskCount(trx, job.id);
    // A check honours the requester's trust filters (reputation, stake: at least the slash above).
    // Not its regions: a check runs where independent checkers are.
    const { placement, ...checked } = job.spec;
    const spec: JobSpec = {
      ...checked,
      runtime: { ...job.spec.runtime, env: { ...(job.spec.runtime.env ?? {}), GRIDWORK_TASK_INDEX: String(task.idx), GRIDWORK_TASK_COUNT: String(count) } },
      name: `${c.kind}-${job.name}`.slice(0, 64),
      placement: { ...(placement?.minReputation === undefined ? {} : { minReputation: placement.minReputation }), minStake: formatCredits(minStake) },
      price: { maxPerHour: formatCredits(maxPerHour), budget: formatCredits(funded) },
      maxRetries: 1,
      queueTimeoutSeconds: Math.max(1, Math.ceil(cfg.checkTimeoutMs / 1000)),
      failurePolicy: 'stop',
    };
    await trx
      .insertInto('jobs')
      .values({
        id: jobId,
        owner: PROTOCOL_ACCOUNT,
        name: spec.name,
        kind: job.kind,
        state: 'pending',
        spec: JSON.stringify(spec),
        bundle_manifest: job.bundle_manifest,
        error: null,
        created_at: now,
        updated_at: now,
        budget: funded,
        max_per_hour: maxPerHour,
        request_digest: null,
        purpose: c.kind,
        exclude_providers: JSON.stringify(c.only ? [] : exclude),
        only_provider: c.only ?? null,
      })
      .execute();
    await trx
      .insertInto('tasks')
      .values({ id: newId('task'), job_id: jobId, idx: 0, state: 'queued', attempts: 0, inputs: JSON.stringify(task.inputs), outputs: '[]', queued_at: now })
      .execute();
    // The check reads what the checked task read.
    await sql`insert into job_blobs (job_id, digest, role) select ${jobId}, digest, role from job_blobs where job_id = ${job.id} and role in ('bundle', 'input') on conflict do nothing`.execute(
      trx,
    );
    if (c.segment?.from != null) {
      // A segment check starts from the checked task's checkpoint.
      await sql`insert into job_blobs (job_id, digest, role) select ${jobId}, digest, 'checkpoint' from checkpoints where task_id = ${task.id} and step = ${c.segment.from} limit 1 on conflict do nothing`.execute(
        trx,
      );
    }
    await trx
      .insertInto('verifications')
      .values({ ...base, state: 'open', check_job_id: jobId })
      .execute();
    uow.emit({ type: 'job.submitted', jobId, owner: PROTOCOL_ACCOUNT, tasks: 1 });
    uow.emit({ type: 'check.opened', checkId, kind: c.kind, leaseId: lease.id, providerId: lease.provider_id, checkJobId: jobId });
    return checkId;
  }

  /** Records how a check ended (verify/ decided); stops its job if it still runs. */
  async closeCheck(uow: UnitOfWork, checkId: string, state: 'passed' | 'failed' | 'abandoned', outcome: string, detail: string | null): Promise<boolean> {
    const row = await uow.trx
      .updateTable('verifications')
      .set({ state, outcome, detail, ended_at: new Date() })
      .where('id', '=', checkId)
      .where('state', '=', 'open')
      .returning(['kind', 'lease_id', 'provider_id', 'check_job_id'])
      .executeTakeFirst();
    if (!row) return false;
    if (row.check_job_id) await this.parts.jobs.cancel(uow, row.check_job_id, `check ${state}`);
    uow.emit({ type: 'check.closed', checkId, kind: row.kind, leaseId: row.lease_id, providerId: row.provider_id, state, detail });
    return true;
  }

  /**
   * A result stands (confirmed by a check, or its window closed unchallenged): its earnings are
   * paid. A disputed result only by its dispute's dismissal (`disputed: true`): an audit passing
   * meanwhile must not pay what the dispute may still refund.
   */
  async confirmResult(uow: UnitOfWork, leaseId: string, detail: string | null, opts: { disputed?: boolean } = {}): Promise<boolean> {
    const { trx } = uow;
    const peek = await trx.selectFrom('leases').select('job_id').where('id', '=', leaseId).executeTakeFirstOrThrow();
    await this.parts.ending.lockJob(trx, peek.job_id);
    const lease = await this.parts.ending.lockLease(trx, leaseId);
    if (lease.verification !== (opts.disputed ? 'disputed' : 'pending')) return false;
    if (lease.settle_at !== null) await payEarnings(trx, lease, lease.provider_id, this.parts.economics);
    await trx.updateTable('leases').set({ verification: 'verified', settle_at: null }).where('id', '=', leaseId).execute();
    this.emitVerification(uow, lease, 'verified', detail);
    await this.parts.ending.refreshJob(uow, lease.job_id);
    return true;
  }

  /**
   * A result proven wrong (verify/ slashes the provider). While its job is open and the task has
   * retries left (a refutation counts as an attempt, as a lost lease does), the task runs again
   * inside the job, on no provider of the refuted one's operator: the lease's pending earnings go
   * back into the job's hold and pay for the re-run, so the refuted attempt costs the requester
   * nothing. Otherwise (no retries left, or the job has ended: a result refuted later by
   * backtracking) the earnings go back to the requester and a job still open fails with the
   * reason. `refunded`: the pending earnings returned (either way); `wasPaid`: they had been
   * paid out already (verify/ refunds them from the slash).
   */
  async rejectResult(uow: UnitOfWork, leaseId: string, detail: string): Promise<{ refunded: bigint; wasPaid: boolean } | null> {
    const { trx } = uow;
    const peek = await trx.selectFrom('leases').select('job_id').where('id', '=', leaseId).executeTakeFirstOrThrow();
    const job = await this.parts.ending.lockJob(trx, peek.job_id);
    const lease = await this.parts.ending.lockLease(trx, leaseId);
    if (lease.verification === 'failed' || lease.verification === null) return null;
    const task = await trx.selectFrom('tasks').selectAll().where('id', '=', lease.task_id).forNoKeyUpdate().executeTakeFirstOrThrow();
    const rerun = !isTerminalJob(job.state) && task.state === 'succeeded' && task.lease_id === lease.id && task.attempts + 1 <= (job.spec.maxRetries ?? 2);
    const wasPaid = lease.settle_at === null;
    const refunded = wasPaid ? 0n : await refundEarnings(trx, lease, job.owner, detail, rerun ? 'hold' : 'requester');
    await trx.updateTable('leases').set({ verification: 'failed', settle_at: null }).where('id', '=', leaseId).execute();
    this.emitVerification(uow, lease, 'failed', detail);
    if (rerun) await this.rerunRefuted(uow, job, task, lease.provider_id, detail);
    else if (!isTerminalJob(job.state)) {
      await this.parts.ending.refreshJob(uow, job.id, { force: 'failed', error: `task ${task.idx}'s result failed verification: ${detail}` });
    }
    return { refunded, wasPaid };
  }

  /**
   * A requester disputes a pending result (`disputed: true`; only while its window is open), or a
   * dispute ended without a verdict (`false`): the result stays unpaid until the dispute is decided.
   * Returns whether the result was in the expected state.
   */
  async markDisputed(uow: UnitOfWork, leaseId: string, disputed: boolean): Promise<boolean> {
    const peek = await uow.trx.selectFrom('leases').select('job_id').where('id', '=', leaseId).executeTakeFirstOrThrow();
    await this.parts.ending.lockJob(uow.trx, peek.job_id);
    const lease = await this.parts.ending.lockLease(uow.trx, leaseId);
    if (disputed ? lease.verification !== 'pending' || !lease.settle_at || lease.settle_at.getTime() <= Date.now() : lease.verification !== 'disputed')
      return false;
    const to = disputed ? 'disputed' : 'pending';
    await uow.trx.updateTable('leases').set({ verification: to }).where('id', '=', leaseId).execute();
    this.emitVerification(uow, lease, to, null);
    return true;
  }

  /**
   * The median hourly price that online providers (with at least `minStake` staked) ask for a
   * spec's resources (GPUs: the lowest of the models it accepts that a provider prices), from at
   * most 500 of them; null when none does.
   */
  private async medianAsk(db: Trx, spec: JobSpec, minStake: bigint | null): Promise<bigint | null> {
    const rows = await db
      .selectFrom('providers')
      .leftJoin('ledger_balances', (j) => j.on(sql<boolean>`ledger_balances.account = 'acct:' || providers.id || ':stake'`))
      .select('providers.asks')
      .where('providers.state', '=', 'online')
      .where('providers.asks', 'is not', null)
      .$if(minStake !== null, (q) => q.where('ledger_balances.balance', '>=', minStake as bigint))
      .limit(500)
      .execute();
    const r = spec.resources;
    const prices: bigint[] = [];
    for (const row of rows) {
      if (!row.asks) continue;
      const asks = parseAsks(row.asks);
      let price = baseHourly(asks, r);
      if (r.gpu && r.gpu.count > 0) {
        const models = r.gpu.models?.length ? r.gpu.models : [...asks.gpuHour.keys()];
        const each = models.map((m) => asks.gpuHour.get(m)).filter((x): x is bigint => x !== undefined);
        if (each.length === 0) continue;
        price += BigInt(r.gpu.count) * each.reduce((a, b) => (b < a ? b : a));
      }
      prices.push(price);
    }
    prices.sort((a, b) => (a < b ? -1 : a > b ? 1 : 0));
    return prices[Math.floor(prices.length / 2)] ?? null;
  }

  /**
   * Pending results whose window has closed with no check open, and that were never audited: an
   * audited result stands only by its audit's verdict (one without a verdict is audited again).
   */
  async dueResults(db: Trx | import('../store/database.ts').Db, limit: number): Promise<string[]> {
    const rows = await db
      .selectFrom('leases')
      .select('id')
      .where('settle_at', '<=', new Date())
      .where('verification', '=', 'pending')
      .where(({ not, exists, selectFrom }) =>
        not(
          exists(
            selectFrom('verifications')
              .select('id')
              .whereRef('verifications.lease_id', '=', 'leases.id')
              .where((v) => v.or([v('verifications.state', '=', 'open'), v('verifications.kind', '=', 'audit')])),
          ),
        ),
      )
      .orderBy('settle_at')
      .limit(limit)
      .execute();
    return rows.map((r) => r.id);
  }

  /**
   * A refuted task runs again inside its job: never again on the refuted provider nor on any
   * provider of its operator (the job's `exclude_providers`, which the scheduler and placement
   * honour), from a checkpoint no refuted lease wrote (placement.ts). The job follows its tasks
   * (a verifying job is matching again).
   */
  private async rerunRefuted(
    uow: UnitOfWork,
    job: Awaited<ReturnType<LifecycleParts['ending']['lockJob']>>,
    task: { id: string; job_id: string; idx: number; state: string; attempts: number },
    providerId: string,
    detail: string,
  ): Promise<void> {
    const { trx } = uow;
    const operator = await sql<{ id: string }>`
      select id from providers
      where coalesce(attributes->>'operator', id) = (select coalesce(attributes->>'operator', id) from providers where id = ${providerId})`.execute(trx);
    const exclude = [...new Set([...job.exclude_providers, providerId, ...operator.rows.map((r) => r.id)])].sort();
    await trx.updateTable('jobs').set({ exclude_providers: JSON.stringify(exclude) }).where('id', '=', job.id).execute();
    const attempts = task.attempts + 1;
    await this.parts.ending.requeueTask(uow, task, attempts, `the result of attempt ${attempts} was refuted (${detail}); the task runs again on another provider`);
    // The job's row as locked by rejectResult: its state has not changed since.
    await this.parts.ending.refreshJob(uow, job);
  }
}
