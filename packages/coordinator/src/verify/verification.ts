/**
 * Result verification (trust layers L3–L6): what a finished check means, and what follows.
 *
 *   audit    another provider re-ran a completed task. Agreement confirms the result (paid at
 *            once); disagreement calls referees, other providers.
 *   referee  settles a disagreement: two independent referees must take the same side, which then
 *            stands, and the other side committed a proven fault (the provider, or the checker
 *            that lied about it); referees that split leave it inconclusive, and nobody is punished.
 *   canary   a task whose answer is known (two providers agreed on it) aimed at another
 *            provider, shaped and priced like real work, paid by the protocol; a wrong answer
 *            is a proven fault.
 *   dispute  a requester bonds its doubt about a pending result; a referee re-runs the task.
 *            Upheld: the bond returns, the provider is slashed and the requester refunded and
 *            rewarded; dismissed: the bond pays the provider.
 *
 * A proven fault slashes the provider (stake first, then unbonding stake; the requester is
 * refunded, the finder rewarded, the rest goes to the reserve) and re-audits every result it
 * gave since its last passed audit (backtracking). Nobody is punished on an inconclusive check
 * (a referee that agrees with neither side, a check that produced no result).
 *
 * A durable bus subscriber (`job.ended` of check jobs) plus the dispute command and a sweep;
 * the lifecycle owns jobs, tasks and leases, this module owns `verifications`' verdicts; the
 * providers' audit counters follow them (`provider.audited`, counted by reputation).
 */
import { type DisputeView, formatCredits, GridworkError, newId, type FileRef } from '@gridwork/protocol';
import { type Selectable, sql } from 'kysely';
import type { Logger } from 'pino';
import { buffer } from 'node:stream/consumers';
import type { BlobStore } from '../blobs/blob-store.ts';
import type { Subscriber } from '../bus/bus.ts';
import { available, balanceOf, bondOf, post, RESERVE, stakeOf, unbondingOf } from '../ledger/ledger.ts';
import type { ChallengeVerdict, ProviderFaultKind } from '../core/events.ts';
import type { Lifecycle, Segment } from '../lifecycle/lifecycle.ts';
import type { Units, UnitOfWork } from '../core/unit-of-work.ts';
import type { Db } from '../store/database.ts';
import { isRetryable } from '../store/transact.ts';
import type { VerificationsTable } from '../store/schema.ts';
import { type CompareMode, outputsAgree } from './result-comparison.ts';
import { bondFor, slashFor, type VerificationConfig } from './verification-policy.ts';
import { lockForCounters } from '../providers/counter-locks.ts';

export interface VerifierDeps {
  db: Db;
  units: Units;
  lifecycle: Lifecycle;
  blobs: BlobStore;
  log: Logger;
  config: VerificationConfig;
  /** Draws in [0, 1) for canaries (a seeded one makes a simulation deterministic). @default Math.random */
  random?: () => number;
}

type Check = Selectable<VerificationsTable>;

/** What one execution of a task produced: its outputs, or nothing usable. */
type Result = { ok: true; outputs: FileRef[]; providerId: string; leaseId: string } | { ok: false; why: string; providerId: string | null; leaseId: string | null };


export class Verifier {
  private readonly random: () => number;

  constructor(private readonly deps: VerifierDeps) {
    this.random = deps.random ?? Math.random;
  }

  subscriber(): Subscriber {
    return {
      name: 'verification',
      durable: true,
      types: ['job.ended', 'provider.challenged'],
      handle: async (events, uow) => {
        if (!uow) throw new Error('verification is a durable subscriber');
        for (const e of events) {
          // Each event behind a savepoint: a verdict that fails (a bug, bad data) is logged and
          // skipped — its check then times out and is abandoned — instead of stopping every verdict after it.
          try {
            await uow.savepoint(async () => {
              if (e.type === 'job.ended') await this.checkEnded(uow, e.jobId);
              else if (e.type === 'provider.challenged' && e.verdict !== 'passed') await this.challengeFailed(uow, e.providerId, e.challengeId, e.verdict);
            });
          } catch (err) {
            if (isRetryable(err)) throw err;
            this.deps.log.error({ err, event: e.type, position: String(e.position) }, 'verification could not handle an event; skipped');
          }
        }
      },
    };
  }

  /** Pays results whose window closed unchallenged; abandons checks that outlived their time. */
  async sweep(): Promise<void> {
    const { db, units, lifecycle, config } = this.deps;
    for (const leaseId of await lifecycle.dueResults(db, 200)) {
      await units.run((uow) => lifecycle.confirmResult(uow, leaseId, 'audit window closed'));
    }
    // Checks whose own job has not ended in time. One whose job ended waits on its referees (they
    // time out themselves), up to four times as long: an audit and two referees, one after another.
    // A check of long work gets four times the checked lease's metered run time on top.
    const now = Date.now();
    const stale = await db
      .selectFrom('verifications')
      .selectAll('verifications')
      .leftJoin('jobs', 'jobs.id', 'verifications.check_job_id')
      .innerJoin('leases as checked', 'checked.id', 'verifications.lease_id')
      .where('verifications.state', '=', 'open')
      .where(sql<boolean>`verifications.created_at + (4 * checked.usage_ms) * interval '1 millisecond' < ${new Date(now - config.checkTimeoutMs)}`)
      .where((eb) =>
        eb.or([
          eb('jobs.state', 'is', null),
          eb('jobs.state', 'not in', ['succeeded', 'failed', 'cancelled']),
          eb('verifications.created_at', '<', new Date(now - 4 * config.checkTimeoutMs)),
        ]),
      )
      .limit(100)
      .execute();
    for (const c of stale) await units.run((uow) => this.abandon(uow, c, `no result within ${Math.round(config.checkTimeoutMs / 1000)} s`));
    // Results whose last audit could not even be opened (nobody could pay): tried again, a minute apart.
    const unaudited = await sql<{ lease_id: string }>`
      select distinct v.lease_id from verifications v join leases l on l.id = v.lease_id
      where l.verification = 'pending' and v.kind = 'audit' and v.state = 'abandoned' and v.check_job_id is null
        and v.ended_at < ${new Date(Date.now() - 60_000)}
        and not exists (select 1 from verifications o where o.lease_id = v.lease_id and (o.state = 'open' or o.created_at > v.created_at))
      limit 100`.execute(db);
    for (const r of unaudited.rows) await units.run((uow) => this.recheck(uow, r.lease_id, 'no check could be paid for'));
  }

  /** A requester disputes one task's pending result, posting a bond. */
  async dispute(owner: string, jobId: string, taskIndex: number): Promise<DisputeView> {
    const { units, lifecycle, config } = this.deps;
    return units.run(async (uow) => {
      const { trx } = uow;
      const job = await trx.selectFrom('jobs').select(['id', 'owner', 'purpose']).where('id', '=', jobId).executeTakeFirst();
      if (!job || job.owner !== owner || job.purpose !== 'work') throw new GridworkError('JOB_NOT_FOUND', `job ${jobId} does not exist`);
      const task = await trx.selectFrom('tasks').selectAll().where('job_id', '=', jobId).where('idx', '=', taskIndex).executeTakeFirst();
      if (!task) throw new GridworkError('TASK_NOT_FOUND', `job ${jobId} has no task ${taskIndex}`);
      const lease = task.lease_id ? await trx.selectFrom('leases').selectAll().where('id', '=', task.lease_id).executeTakeFirst() : undefined;
      if (!lease || task.state !== 'succeeded' || !task.output_digest) {
        throw new GridworkError('NOT_DISPUTABLE', `task ${taskIndex} has no result to dispute (it is ${task.state})`);
      }
      if (lease.verification === 'disputed') throw new GridworkError('DISPUTE_EXISTS', `task ${taskIndex}'s result is already disputed`);
      // Disputing one's own result would only make the protocol pay for re-runs.
      if (lease.provider_id === owner) throw new GridworkError('NOT_DISPUTABLE', `task ${taskIndex}'s result is your own provider's`);
      if (lease.verification !== 'pending' || !lease.settle_at || lease.settle_at.getTime() <= Date.now()) {
        throw new GridworkError('DISPUTE_WINDOW_CLOSED', `task ${taskIndex}'s result can no longer be disputed: it is ${lease.verification ?? 'not verified'} and its audit window has closed`);
      }
      const bond = bondFor(lease.charged, config);
      const checkId = newId('ver');
      await post(trx, {
        kind: 'dispute.bond',
        key: `bond:${checkId}`,
        postings: [
          { account: available(owner), amount: -bond },
          { account: bondOf(checkId), amount: bond },
        ],
        memo: { jobId, taskIndex, leaseId: lease.id },
      });
      // Checked again under the job's and the lease's locks: the window may have closed meanwhile.
      if (!(await lifecycle.markDisputed(uow, lease.id, true))) {
        throw new GridworkError('DISPUTE_WINDOW_CLOSED', `task ${taskIndex}'s result can no longer be disputed: its audit window has closed`);
      }
      await lifecycle.openCheck(uow, { kind: 'dispute', checkId, leaseId: lease.id, expectedDigest: task.output_digest, openedBy: owner, bondPosted: bond });
      const check = await trx.selectFrom('verifications').selectAll().where('id', '=', checkId).executeTakeFirstOrThrow();
      if (check.state !== 'open') throw new GridworkError('VERIFICATION_UNAVAILABLE', `no referee can be paid for now: ${check.detail ?? 'try again later'}`);
      return { id: checkId, jobId, taskIndex, state: 'open', bond: formatCredits(bond), checkJobId: check.check_job_id };
    });
  }

  // ---- verdicts -------------------------------------------------------------------------------

  private async checkEnded(uow: UnitOfWork, checkJobId: string): Promise<void> {
    const check = await uow.trx.selectFrom('verifications').selectAll().where('check_job_id', '=', checkJobId).where('state', '=', 'open').executeTakeFirst();
    if (!check) return;
    const result = await this.resultOf(uow, check);
    if (!result.ok) {
      await this.abandon(uow, check, result.why);
      return;
    }
    const original = await this.expected(uow, check);
    if (!original.ok) {
      await this.abandon(uow, check, 'the checked result is gone');
      return;
    }
    const mode = await this.modeOf(uow, check.lease_id);
    const verdict = await outputsAgree(original.outputs, result.outputs, mode, (d) => this.read(d));
    const { lifecycle } = this.deps;
    const segment = segmentOf(check);
    switch (check.kind) {
      case 'audit':
        if (verdict.agree) {
          await lifecycle.closeCheck(uow, check.id, 'passed', 'confirmed', null);
          this.passed(uow, check.provider_id);
          await lifecycle.confirmResult(uow, check.lease_id, `audit passed (re-run by ${short(result.providerId)}${segment ? `, ${describe(segment)}` : ''})`);
          await this.maybeCanary(uow, check, [check.provider_id, result.providerId]);
        } else {
          // Two providers disagree: a third re-runs the same (segment of the) task. The audit stays open until it does.
          await this.openReferee(uow, check, result.providerId);
        }
        return;
      case 'referee':
        await this.refereeEnded(uow, check, result, verdict);
        return;
      case 'canary':
        // The known answer is the checked lease's (confirmed by an audit); the canary's provider is on trial.
        if (verdict.agree) {
          await lifecycle.closeCheck(uow, check.id, 'passed', 'canary-correct', null);
          this.passed(uow, result.providerId);
        } else {
          // The "known" answer could itself be wrong (confirmed by a colluding auditor): two
          // referees decide between it and the canary's, as for audits.
          await this.openReferee(uow, check, result.providerId);
        }
        return;
      case 'dispute':
        if (verdict.agree) {
          await this.dismiss(uow, check, 'a referee reproduced the result');
          return;
        }
        {
          // Checkpointed work: bisect the two runs' committed checkpoints for the first segment
          // where they part, and have a third provider re-run only that segment.
          // Without checkpoints the whole task: either way two referees decide, as for audits.
          const diverged = await this.firstDivergence(uow, check.lease_id, result.leaseId);
          const expect = diverged ? await lifecycle.expectation(uow.trx, check.lease_id, diverged, check.expected_digest ?? '') : { expectedDigest: check.expected_digest ?? '' };
          await lifecycle.openCheck(uow, { kind: 'referee', leaseId: check.lease_id, ...expect, exclude: await this.refereeExclusions(uow, check.lease_id, check.id, [result.providerId]), parentId: check.id });
        }
        return;
    }
  }

  /** A referee re-ran what an audit or a dispute disagreed about: the side it agrees with stands. */
  private async refereeEnded(uow: UnitOfWork, check: Check, result: Extract<Result, { ok: true }>, verdict: { agree: boolean; detail: string | null }): Promise<void> {
    const { lifecycle } = this.deps;
    const parent = check.parent_id ? await uow.trx.selectFrom('verifications').selectAll().where('id', '=', check.parent_id).executeTakeFirst() : undefined;
    // The other side: the parent's re-execution, over the same segment.
    const other = parent?.check_job_id ? await this.resultOf(uow, { ...check, check_job_id: parent.check_job_id }) : null;
    if (!parent || !other?.ok) {
      await this.abandon(uow, check, 'the disagreeing check is gone');
      return;
    }
    const mode = await this.modeOf(uow, check.lease_id);
    const withOther = await outputsAgree(other.outputs, result.outputs, mode, (d) => this.read(d));
    const segment = segmentOf(check);
    const where = segment ? ` on ${describe(segment)}` : '';
    const side = verdict.agree ? 'provider' : withOther.agree ? 'checker' : 'neither';
    const earlier = await uow.trx
      .selectFrom('verifications')
      .select(['id', 'outcome'])
      .where('parent_id', '=', parent.id)
      .where('kind', '=', 'referee')
      .where('id', '!=', check.id)
      .where('state', '!=', 'open')
      .executeTakeFirst();
    if (!earlier) {
      // One referee's word convicts no one: two providers acting together could otherwise frame an
      // honest one (as checker and referee). A second, independent referee must take the same side.
      await lifecycle.closeCheck(uow, check.id, side === 'provider' ? 'passed' : side === 'checker' ? 'failed' : 'abandoned', `sided-with-${side}`, null);
      if (side === 'neither') {
        await this.abandon(uow, parent, `the provider, the re-execution and the referee all disagree${where} (is the task deterministic?)`);
        return;
      }
      await lifecycle.openCheck(uow, {
        kind: 'referee',
        leaseId: check.lease_id,
        expectedDigest: check.expected_digest ?? '',
        exclude: await this.refereeExclusions(uow, check.lease_id, parent.id, [other.providerId, result.providerId]),
        parentId: parent.id,
        ...(segment ? { segment } : {}),
      });
      return;
    }
    if (earlier.outcome !== `sided-with-${side}`) {
      const detail = `the referees disagree${where}: nobody is punished (is the task deterministic?)`;
      await lifecycle.closeCheck(uow, check.id, 'abandoned', `sided-with-${side}`, detail);
      await this.abandon(uow, parent, detail);
      return;
    }
    if (side === 'provider') {
      await lifecycle.closeCheck(uow, check.id, 'passed', 'original-confirmed', null);
      if (parent.kind === 'canary') {
        // The known answer stands: the canary's provider answered wrong.
        await lifecycle.closeCheck(uow, parent.id, 'failed', 'canary-wrong', `a known-answer task came back wrong (two referees confirmed the answer)${where}`);
        this.failedCounter(uow, other.providerId);
        await this.fault(uow, { providerId: other.providerId, leaseId: other.leaseId, fault: 'failed-canary', checkId: parent.id, detail: `a known-answer task came back wrong${where}` });
        await this.backtrack(uow, other.providerId);
        return;
      }
      const checked = await uow.trx.selectFrom('leases').select('charged').where('id', '=', check.lease_id).executeTakeFirstOrThrow();
      await this.fault(uow, {
        providerId: other.providerId,
        leaseId: other.leaseId,
        fault: 'false-audit',
        checkId: parent.id,
        slashOf: checked.charged,
        detail: `its re-execution disagreed with the provider and two referees${where}`,
      });
      if (parent.kind === 'dispute') {
        await this.dismiss(uow, parent, `two referees reproduced the provider's result${where}`);
      } else {
        await lifecycle.closeCheck(uow, parent.id, 'passed', 'auditor-overruled', `two referees agreed with the provider, not with auditor ${short(other.providerId)}${where}`);
        this.passed(uow, check.provider_id);
        await lifecycle.confirmResult(uow, check.lease_id, 'audit disagreement settled by two referees in the provider’s favour');
      }
      return;
    }
    const detail = `a re-execution by ${short(other.providerId)} and two referees produced another result${where}: ${verdict.detail}`;
    await lifecycle.closeCheck(uow, check.id, 'failed', 'original-refuted', null);
    if (parent.kind === 'dispute') await this.uphold(uow, parent, detail);
    else {
      await lifecycle.closeCheck(uow, parent.id, 'failed', 'original-refuted', detail);
      await this.convict(uow, check, 'failed-audit', detail, other.providerId);
    }
  }

  /**
   * Capacity fraud costs stake (L1 + L6): a wrong proof or product is evidence at once; missed
   * deadlines are, once `maxConsecutiveFailures` of them come in a row (one slow answer may be a
   * bad network; a streak says the hardware is not what the provider claims). Without this a
   * provider claiming a faster class than it has wins work on the claim and loses nothing.
   */
  private async challengeFailed(uow: UnitOfWork, providerId: string, challengeId: string, verdict: ChallengeVerdict): Promise<void> {
    const { maxConsecutiveChallengeFailures: streak } = this.deps.config;
    if (verdict === 'missed-deadline') {
      const recent = await uow.trx.selectFrom('capacity_challenges').select('state').where('provider_id', '=', providerId).where('state', 'in', ['passed', 'failed']).orderBy('issued_at', 'desc').limit(streak + 1).execute();
      const failedInARow = recent.findIndex((r) => r.state !== 'failed');
      // Exactly at the streak's length: one slash per streak, not one per miss after it.
      if ((failedInARow === -1 ? recent.length : failedInARow) !== streak) return;
    }
    // It billed everything since its last passed challenge on the hardware it claimed: that is what the fraud earned.
    const lastPass = await uow.trx.selectFrom('capacity_challenges').select('ended_at').where('provider_id', '=', providerId).where('state', '=', 'passed').orderBy('ended_at', 'desc').limit(1).executeTakeFirst();
    const billed = await uow.trx
      .selectFrom('leases')
      .select((eb) => eb.fn.coalesce(eb.fn.sum<bigint>('charged'), sql<bigint>`0`).as('total'))
      .where('provider_id', '=', providerId)
      .where('created_at', '>', lastPass?.ended_at ?? new Date(0))
      .executeTakeFirstOrThrow();
    await this.fault(uow, {
      providerId,
      leaseId: null,
      fault: 'failed-capacity',
      checkId: challengeId,
      charged: BigInt(billed.total),
      detail: `capacity challenge ${verdict === 'missed-deadline' ? `deadlines missed ${streak} times in a row` : `failed (${verdict})`}`,
    });
  }

  /** A dispute dismissed: its bond pays the provider, whose result is confirmed and paid. */
  private async dismiss(uow: UnitOfWork, check: Check, detail: string): Promise<void> {
    const { lifecycle } = this.deps;
    await lifecycle.closeCheck(uow, check.id, 'passed', 'dispute-dismissed', detail);
    await this.payBond(uow, check, check.provider_id, 'dispute dismissed');
    this.passed(uow, check.provider_id);
    await lifecycle.confirmResult(uow, check.lease_id, `dispute dismissed: ${detail}`, { disputed: true });
  }

  /** A dispute upheld: the bond goes back, the provider is convicted, the requester rewarded as finder. */
  private async uphold(uow: UnitOfWork, check: Check, detail: string): Promise<void> {
    await this.deps.lifecycle.closeCheck(uow, check.id, 'failed', 'dispute-upheld', detail);
    await this.payBond(uow, check, check.opened_by as string, 'dispute upheld: bond returned');
    await this.convict(uow, check, 'lost-dispute', detail, check.opened_by as string);
  }

  /**
   * The first segment of the checked lease where another run's committed checkpoints part from
   * its own, by bisection over the steps both committed (runs of a deterministic task agree up to
   * some step and differ after it). Null when the lease has no checkpoints.
   */
  private async firstDivergence(uow: UnitOfWork, leaseId: string, otherLeaseId: string): Promise<Segment | null> {
    const segments = await this.deps.lifecycle.segmentsOf(uow.trx, leaseId);
    if (segments.length === 0) return null;
    const mine = new Map((await uow.trx.selectFrom('checkpoints').select(['step', 'digest']).where('lease_id', '=', leaseId).execute()).map((c) => [c.step, c.digest]));
    const otherTask = await uow.trx.selectFrom('leases').select('task_id').where('id', '=', otherLeaseId).executeTakeFirstOrThrow();
    const theirs = new Map((await uow.trx.selectFrom('checkpoints').select(['step', 'digest']).where('task_id', '=', otherTask.task_id).execute()).map((c) => [c.step, c.digest]));
    const agreesAt = (s: Segment) => s.to === null || mine.get(s.to) === theirs.get(s.to);
    // Invariant: every segment before `lo` agrees at its end; segment `hi` is the first known not to (or the last).
    let lo = 0;
    let hi = segments.length - 1;
    while (lo < hi) {
      const mid = (lo + hi) >> 1;
      if (agreesAt(segments[mid] as Segment)) lo = mid + 1;
      else hi = mid;
    }
    return segments[lo] as Segment;
  }

  /** The checked provider's result is refuted: refund, slash (finder rewarded), backtrack. */
  private async convict(uow: UnitOfWork, check: Check, fault: ProviderFaultKind, detail: string, finder: string): Promise<void> {
    const rejected = await this.deps.lifecycle.rejectResult(uow, check.lease_id, detail);
    // Refuted already (an audit and a dispute of one result): one wrong result is punished once.
    if (!rejected) return;
    this.failedCounter(uow, check.provider_id);
    const charged = await uow.trx.selectFrom('leases').select('charged').where('id', '=', check.lease_id).executeTakeFirstOrThrow();
    const owner = await uow.trx.selectFrom('leases').innerJoin('jobs', 'jobs.id', 'leases.job_id').select('jobs.owner').where('leases.id', '=', check.lease_id).executeTakeFirstOrThrow();
    await this.fault(uow, {
      providerId: check.provider_id,
      leaseId: check.lease_id,
      fault,
      checkId: check.id,
      detail,
      finder,
      // What the requester paid and did not get back from the pending earnings (paid out already: a
      // result re-audited after its window; or spent on its mandatory audit) is refunded from the slash.
      ...(charged.charged > rejected.refunded ? { refund: { to: owner.owner, amount: charged.charged - rejected.refunded } } : {}),
    });
    await this.backtrack(uow, check.provider_id);
    // Whoever confirmed this result (an audit that agreed, a canary that answered the same) lied too.
    const confirmers = await uow.trx
      .selectFrom('verifications')
      .innerJoin('tasks', 'tasks.job_id', 'verifications.check_job_id')
      .select(['verifications.id', 'tasks.provider_id', 'tasks.lease_id'])
      .where('verifications.lease_id', '=', check.lease_id)
      .where('verifications.kind', 'in', ['audit', 'canary'])
      .where('verifications.state', '=', 'passed')
      // An auditor overruled by referees ('auditor-overruled') was right, and was slashed already.
      .where('verifications.outcome', 'in', ['confirmed', 'canary-correct'])
      // Only checks of the part that was refuted: an audit of another segment may have been right.
      .where(sql<boolean>`verifications.segment_from is not distinct from ${check.segment_from}`)
      .where(sql<boolean>`verifications.segment_to is not distinct from ${check.segment_to}`)
      .execute();
    for (const c of confirmers) {
      if (!c.provider_id || c.provider_id === check.provider_id) continue;
      this.failedCounter(uow, c.provider_id);
      await this.fault(uow, {
        providerId: c.provider_id,
        leaseId: c.lease_id,
        fault: 'false-audit',
        checkId: c.id,
        slashOf: charged.charged,
        detail: `it confirmed a result later proven wrong: ${detail}`,
      });
    }
  }

  /** A check produced no usable result: nobody is punished; a dispute's bond goes back. */
  private async abandon(uow: UnitOfWork, check: Check, why: string): Promise<void> {
    const { lifecycle } = this.deps;
    if (!(await lifecycle.closeCheck(uow, check.id, 'abandoned', 'no-result', why))) {
      // Closed already (a sweep got there first): the result still must not wait forever.
      await this.recheck(uow, check.lease_id, why, segmentOf(check));
      return;
    }
    if (check.kind === 'dispute') {
      await this.payBond(uow, check, check.opened_by as string, 'dispute abandoned: bond returned');
      await lifecycle.markDisputed(uow, check.lease_id, false);
    }
    if (check.kind === 'referee' && check.parent_id) {
      const parent = await uow.trx.selectFrom('verifications').selectAll().where('id', '=', check.parent_id).executeTakeFirst();
      if (parent?.state === 'open') await this.abandon(uow, parent, `its referee ended without a result: ${why}`);
    }
    // A check without a verdict (its checker vanished, referees split, all disagree) never lets
    // the result stand by default: once nothing else checks it, others audit it again.
    await this.recheck(uow, check.lease_id, why, segmentOf(check));
  }

  /** The first referee of a check whose re-run (by `disagreeing`) disagreed with the checked result, over the same segment. */
  private async openReferee(uow: UnitOfWork, check: Check, disagreeing: string): Promise<void> {
    const segment = segmentOf(check);
    await this.deps.lifecycle.openCheck(uow, {
      kind: 'referee',
      leaseId: check.lease_id,
      expectedDigest: check.expected_digest ?? '',
      exclude: await this.refereeExclusions(uow, check.lease_id, check.id, [disagreeing]),
      parentId: check.id,
      ...(segment ? { segment } : {}),
    });
  }

  /** Every provider a check of this lease was ever placed on (a lease lost and placed again counts both). */
  private async participants(uow: UnitOfWork, leaseId: string) {
    return uow.trx
      .selectFrom('verifications')
      .leftJoin('leases', 'leases.job_id', 'verifications.check_job_id')
      .select(['verifications.id', 'verifications.kind', 'verifications.state', 'verifications.parent_id', 'verifications.check_job_id', 'leases.provider_id'])
      .where('verifications.lease_id', '=', leaseId)
      .execute();
  }

  /**
   * Providers a new referee of a check (`parentId`) must not be: `also`, whoever ran that check
   * or one of its referees, and whoever ran a check of this lease that ended without a result.
   */
  private async refereeExclusions(uow: UnitOfWork, leaseId: string, parentId: string, also: string[]): Promise<string[]> {
    const ran = (await this.participants(uow, leaseId)).flatMap((c) =>
      c.provider_id && (c.id === parentId || c.parent_id === parentId || c.state === 'abandoned') ? [c.provider_id] : [],
    );
    return [...new Set([...also, ...ran])];
  }

  /**
   * A result whose check ended without a verdict is audited again, by a provider of none of the
   * operators that ran its checks so far (a checker that drops a check, or answers a third value,
   * never sees it again), at most `maxAuditRounds` times: then it could not be verified and is
   * refused without blame — its provider is not paid, its requester pays nothing for it.
   */
  private async recheck(uow: UnitOfWork, leaseId: string, why: string, segment?: Segment): Promise<void> {
    const { trx } = uow;
    const lease = await trx.selectFrom('leases').select(['verification']).where('id', '=', leaseId).executeTakeFirst();
    if (lease?.verification !== 'pending') return;
    const open = await trx.selectFrom('verifications').select('id').where('lease_id', '=', leaseId).where('state', '=', 'open').executeTakeFirst();
    if (open) return;
    const checkers = await this.participants(uow, leaseId);
    const passed = await trx.selectFrom('verifications').select('id').where('lease_id', '=', leaseId).where('kind', '=', 'audit').where('state', '=', 'passed').executeTakeFirst();
    if (passed) {
      await this.deps.lifecycle.confirmResult(uow, leaseId, `an audit confirmed it earlier; a later check ended without a verdict (${why})`);
      return;
    }
    // Rounds: audits that some checker took (one nobody could pay for, or nobody eligible took, is tried again, uncounted).
    const rounds = new Set(checkers.filter((c) => c.kind === 'audit' && c.provider_id !== null).map((c) => c.id)).size;
    if (rounds >= this.deps.config.maxAuditRounds) {
      await this.deps.lifecycle.rejectResult(uow, leaseId, `it could not be verified in ${rounds} audits (last: ${why}); nobody is blamed`);
      return;
    }
    const task = await trx.selectFrom('tasks').select('output_digest').where('lease_id', '=', leaseId).executeTakeFirst();
    if (!task?.output_digest) return;
    const expect = await this.deps.lifecycle.expectation(trx, leaseId, segment, task.output_digest);
    const exclude = [...new Set(checkers.flatMap((c) => (c.provider_id ? [c.provider_id] : [])))];
    await this.deps.lifecycle.openCheck(uow, { kind: 'audit', leaseId, ...expect, exclude });
  }

  private async payBond(uow: UnitOfWork, check: Check, to: string, why: string): Promise<void> {
    const bond = await balanceOf(uow.trx, bondOf(check.id));
    if (bond === 0n) return;
    await post(uow.trx, {
      kind: 'dispute.bond-paid',
      key: `bond-paid:${check.id}`,
      postings: [
        { account: bondOf(check.id), amount: -bond },
        { account: available(to), amount: bond },
      ],
      memo: { checkId: check.id, to, why },
    });
  }

  /**
   * A proven fault: the provider loses `slashFor(charge)` — from its stake, then its unbonding
   * stake, never more than both — shared as refund to the requester (for earnings already paid),
   * a reward to whoever found it, and the rest to the reserve.
   */
  private async fault(
    uow: UnitOfWork,
    f: {
      providerId: string;
      leaseId: string | null;
      fault: ProviderFaultKind;
      checkId: string;
      detail: string;
      finder?: string;
      refund?: { to: string; amount: bigint };
      /** What the fault earned, when it is not one lease's charge (capacity fraud: everything billed under the false claim). */
      charged?: bigint;
      /** The charge the slash is sized by, when not the lease's own: a checker's wrong verdict costs what the fault it hid or invented would. */
      slashOf?: bigint;
    },
  ): Promise<void> {
    const { trx } = uow;
    const { config } = this.deps;
    const lease = f.leaseId
      ? await trx.selectFrom('leases').select(['charged', 'job_id']).where('id', '=', f.leaseId).executeTakeFirstOrThrow()
      : { charged: f.charged ?? 0n, job_id: null };
    const stake = await balanceOf(trx, stakeOf(f.providerId));
    const unbonding = await balanceOf(trx, unbondingOf(f.providerId));
    const want = slashFor(f.slashOf ?? lease.charged, config);
    const amount = min(want, stake + unbonding);
    if (amount > 0n) {
      const refund = f.refund ? min(f.refund.amount, amount) : 0n;
      const reward = f.finder ? ((amount - refund) * BigInt(config.finderRewardBps)) / 10_000n : 0n;
      const fromStake = min(stake, amount);
      const fromUnbonding = amount - fromStake;
      const postings = [
        { account: stakeOf(f.providerId), amount: -fromStake },
        { account: unbondingOf(f.providerId), amount: -fromUnbonding },
        { account: RESERVE, amount: amount - refund - reward },
      ];
      if (f.refund && refund > 0n) postings.push({ account: available(f.refund.to), amount: refund });
      if (f.finder && reward > 0n) postings.push({ account: available(f.finder), amount: reward });
      await post(trx, { kind: 'slash', key: `slash:${f.checkId}:${f.providerId}`, postings, memo: { provider: f.providerId, leaseId: f.leaseId, fault: f.fault, reason: f.detail } });
      if (fromUnbonding > 0n) await this.drawUnbonding(uow, f.providerId, fromUnbonding);
      await lockForCounters(trx, [f.providerId]);
      await trx
        .updateTable('providers')
        .set((eb) => ({ stake_slashed: eb('stake_slashed', '+', amount) }))
        .where('id', '=', f.providerId)
        .execute();
      uow.emit({ type: 'provider.slashed', providerId: f.providerId, amount: formatCredits(amount), fault: f.fault, leaseId: f.leaseId });
      uow.emit({ type: 'provider.changed', providerId: f.providerId, what: 'stake' });
    }
    uow.emit({
      type: 'provider.fault',
      providerId: f.providerId,
      ...(lease.job_id && f.leaseId ? { jobId: lease.job_id, leaseId: f.leaseId } : {}),
      fault: f.fault,
      detail: f.detail,
    });
    this.deps.log.warn({ providerId: f.providerId, fault: f.fault, slashed: formatCredits(amount), wanted: formatCredits(want) }, 'provider slashed for a proven fault');
  }

  /** Unbonding stake slashed: the pending releases shrink, latest first, by as much. */
  private async drawUnbonding(uow: UnitOfWork, providerId: string, amount: bigint): Promise<void> {
    const rows = await uow.trx
      .selectFrom('stake_unbondings')
      .selectAll()
      .where('account_id', '=', providerId)
      .where('released_at', 'is', null)
      .orderBy('release_at', 'desc')
      .forUpdate()
      .execute();
    let left = amount;
    for (const r of rows) {
      if (left === 0n) break;
      const take = min(r.amount, left);
      left -= take;
      await uow.trx
        .updateTable('stake_unbondings')
        // A row used up by the slash is closed as it is (amounts stay positive; nothing is left to release).
        .set(r.amount === take ? { released_at: new Date() } : { amount: r.amount - take })
        .where('id', '=', r.id)
        .execute();
    }
  }

  /** After a proven fault, every result of the provider since its last passed audit is audited again. */
  private async backtrack(uow: UnitOfWork, providerId: string): Promise<void> {
    const { trx } = uow;
    const p = await trx.selectFrom('providers').select('last_audit_passed_at').where('id', '=', providerId).executeTakeFirst();
    const since = p?.last_audit_passed_at ?? new Date(0);
    const rows = await sql<{ id: string; digest: string }>`
      select l.id, t.output_digest as digest
      from leases l join tasks t on t.lease_id = l.id join jobs j on j.id = l.job_id
      where l.provider_id = ${providerId} and l.state = 'completed' and j.purpose = 'work'
        and l.verification in ('pending', 'verified') and t.output_digest is not null and l.ended_at > ${since}
        and not exists (select 1 from verifications v where v.lease_id = l.id and v.kind in ('audit', 'dispute', 'referee') and v.state in ('open', 'passed'))
      order by l.ended_at desc
      limit ${this.deps.config.backtrackLimit}`.execute(trx);
    for (const r of rows.rows) await this.deps.lifecycle.openCheck(uow, { kind: 'audit', leaseId: r.id, expectedDigest: r.digest });
    if (rows.rows.length > 0) this.deps.log.info({ providerId, results: rows.rows.length }, 're-auditing results since the last passed audit');
  }

  /** An audit-confirmed result becomes, now and then, a known-answer task for the least-verified other provider. */
  private async maybeCanary(uow: UnitOfWork, check: Check, agreed: readonly string[]): Promise<void> {
    if (this.random() >= this.deps.config.canaryRate) return;
    // A canary's target answers for its answer with stake, as every checker does (openCheck asks as much).
    const checked = await uow.trx.selectFrom('leases').select('charged').where('id', '=', check.lease_id).executeTakeFirstOrThrow();
    const target = await uow.trx
      .selectFrom('providers')
      .innerJoin('ledger_balances', (j) => j.on(sql<boolean>`ledger_balances.account = 'acct:' || providers.id || ':stake'`))
      .select('providers.id')
      .where('providers.state', '=', 'online')
      .where('providers.id', 'not in', [...agreed])
      .where('ledger_balances.balance', '>=', slashFor(checked.charged, this.deps.config))
      .orderBy('providers.audits_passed')
      .orderBy('providers.id')
      .executeTakeFirst();
    if (!target) return;
    const segment = segmentOf(check);
    await this.deps.lifecycle.openCheck(uow, { kind: 'canary', leaseId: check.lease_id, expectedDigest: check.expected_digest ?? '', only: target.id, ...(segment ? { segment } : {}) });
  }

  /**
   * Counted by reputation, not here: a verdict holds job, lease and ledger rows, and a provider
   * row taken after them closed a cycle with that provider's report batches (they lock its row
   * last, after the same ledger rows), broken by PostgreSQL only after its deadlock_timeout (1 s).
   */
  private passed(uow: UnitOfWork, providerId: string): void {
    uow.emit({ type: 'provider.audited', providerId, passed: true });
  }

  private failedCounter(uow: UnitOfWork, providerId: string): void {
    uow.emit({ type: 'provider.audited', providerId, passed: false });
  }

  // ---- reading results ------------------------------------------------------------------------

  /** What a check's job produced: its outputs, or (a segment check) the checkpoint that ends its segment. */
  private async resultOf(uow: UnitOfWork, check: Pick<Check, 'check_job_id' | 'segment_to'>): Promise<Result> {
    const jobId = check.check_job_id as string;
    const job = await uow.trx.selectFrom('jobs').select(['state', 'error']).where('id', '=', jobId).executeTakeFirstOrThrow();
    const task = await uow.trx.selectFrom('tasks').select(['id', 'state', 'outputs', 'provider_id', 'lease_id']).where('job_id', '=', jobId).where('idx', '=', 0).executeTakeFirstOrThrow();
    if (job.state !== 'succeeded' || task.state !== 'succeeded' || !task.provider_id || !task.lease_id) {
      return { ok: false, why: `the check job ${job.state}${job.error ? `: ${job.error}` : ''}`, providerId: task.provider_id, leaseId: task.lease_id };
    }
    if (check.segment_to === null) return { ok: true, outputs: task.outputs, providerId: task.provider_id, leaseId: task.lease_id };
    const c = await uow.trx.selectFrom('checkpoints').select(['digest', 'size']).where('task_id', '=', task.id).where('step', '=', check.segment_to).limit(1).executeTakeFirst();
    // It ran from the committed start and succeeded, but never wrote the committed step: that is
    // evidence against the commitment (a step an honest run never writes), not a missing result.
    if (!c) return { ok: true, outputs: [{ path: 'segment', digest: `no checkpoint at step ${check.segment_to}`, size: 0 }], providerId: task.provider_id, leaseId: task.lease_id };
    return { ok: true, outputs: [{ path: 'segment', digest: c.digest, size: Number(c.size) }], providerId: task.provider_id, leaseId: task.lease_id };
  }

  /** What the checked lease committed to, for this check: its outputs, or the checkpoint that ends the segment. */
  private async expected(uow: UnitOfWork, check: Check): Promise<Result> {
    const t = await uow.trx.selectFrom('tasks').select(['state', 'outputs', 'provider_id', 'lease_id']).where('lease_id', '=', check.lease_id).executeTakeFirst();
    if (t?.state !== 'succeeded' || !t.provider_id) return { ok: false, why: 'no result', providerId: null, leaseId: check.lease_id };
    if (check.segment_to === null) return { ok: true, outputs: t.outputs, providerId: t.provider_id, leaseId: check.lease_id };
    const c = await uow.trx.selectFrom('checkpoints').select(['digest', 'size']).where('lease_id', '=', check.lease_id).where('step', '=', check.segment_to).executeTakeFirst();
    if (!c) return { ok: false, why: 'the checkpoint is gone', providerId: t.provider_id, leaseId: check.lease_id };
    return { ok: true, outputs: [{ path: 'segment', digest: c.digest, size: Number(c.size) }], providerId: t.provider_id, leaseId: check.lease_id };
  }

  private async modeOf(uow: UnitOfWork, leaseId: string): Promise<CompareMode> {
    const j = await uow.trx.selectFrom('leases').innerJoin('jobs', 'jobs.id', 'leases.job_id').select('jobs.spec').where('leases.id', '=', leaseId).executeTakeFirstOrThrow();
    const v = j.spec.verification;
    return v?.mode === 'tolerance' ? { mode: 'tolerance', tolerance: v.tolerance ?? 0 } : { mode: 'exact' };
  }

  private async read(digest: string): Promise<Buffer> {
    const { stream } = await this.deps.blobs.open(digest);
    return buffer(stream);
  }
}

const min = (a: bigint, b: bigint) => (a < b ? a : b);
/** The segment a check re-executes, if it is a segment check. */
const segmentOf = (c: Pick<Check, 'segment_from' | 'segment_to'>): Segment | undefined =>
  c.segment_from === null && c.segment_to === null ? undefined : { from: c.segment_from, to: c.segment_to };
const describe = (s: Segment) => `steps ${s.from ?? 'start'}–${s.to ?? 'end'}`;
const short = (id: string) => `${id.slice(0, 8)}…`;
