/**
 * Reputation counts verification's verdicts (`provider.audited`): passes and failures, the passes
 * in a row (a failure resets them, across batches too) and when the provider last passed. The verdicts themselves take no provider row (verify/verification.ts): a verdict that
 * updated the counters after its ledger postings deadlocked against the provider's report batches.
 * They are counted under a subscriber name of their own: the previous release's `reputation` does
 * not know them and would move that name's position past them.
 */
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import type { DomainEvent, StoredEvent } from '../src/core/events.ts';
import { Units } from '../src/core/unit-of-work.ts';
import { auditCountsSubscriber, reputationSubscriber } from '../src/providers/reputation.ts';
import { type Db, openDatabase } from '../src/store/database.ts';
import { insertProviderRow } from './fixtures/provider-row.ts';

describe('reputation counts verdicts', () => {
  let db: Db;
  let units: Units;
  let position = 0n;
  const audits = auditCountsSubscriber();
  const reputation = reputationSubscriber();
  const stored = (e: DomainEvent, at = new Date()): StoredEvent => ({ ...e, position: ++position, at }) as StoredEvent;
  const audited = (providerId: string, passed: boolean, at?: Date) => stored({ type: 'provider.audited', providerId, passed }, at);
  /** As the bus does: each subscriber is handed the events of its types, in one unit of work each. */
  const deliver = async (events: StoredEvent[]) => {
    for (const sub of [reputation, audits]) {
      const mine = events.filter((e) => sub.types?.includes(e.type));
      if (mine.length > 0)
        await units.run(async (uow) => {
          await sub.handle(mine, uow);
        });
    }
  };
  const counters = (id: string) =>
    db
      .selectFrom('providers')
      .select(['audits_passed', 'audits_failed', 'audit_streak', 'last_audit_passed_at', 'leases_completed'])
      .where('id', '=', id)
      .executeTakeFirstOrThrow();

  before(async () => {
    db = await openDatabase({});
    units = new Units(db, { publish: () => {} });
    for (const id of ['p1', 'p2']) await insertProviderRow(db, id);
  });

  after(async () => {
    await db?.destroy();
  });

  test("verdicts have a subscriber of their own; reputation's types are the previous release's", () => {
    assert.deepEqual(audits.types, ['provider.audited']);
    assert.deepEqual(reputation.types, ['lease.ended', 'provider.challenged', 'provider.fault']);
    assert.notEqual(audits.name, reputation.name);
  });

  test('passes, failures, the streak and the last pass, per provider', async () => {
    const firstPass = new Date('2026-03-01T10:00:00Z');
    const lastPass = new Date('2026-03-01T10:05:00Z');
    await deliver([
      audited('p1', true, firstPass),
      audited('p1', false),
      audited('p2', true, firstPass),
      audited('p1', true, new Date('2026-03-01T10:04:00Z')),
      stored({ type: 'lease.ended', jobId: 'j', taskId: 't', leaseId: 'l', providerId: 'p2', outcome: 'completed', error: null, charged: '0' }),
      audited('p1', true, lastPass),
    ]);
    assert.deepEqual(await counters('p1'), { audits_passed: 3, audits_failed: 1, audit_streak: 2, last_audit_passed_at: lastPass, leases_completed: 0 });
    assert.deepEqual(await counters('p2'), { audits_passed: 1, audits_failed: 0, audit_streak: 1, last_audit_passed_at: firstPass, leases_completed: 1 });
  });

  test('a later batch adds to the streak, a failure in it resets the streak without touching the last pass, and the last pass is the latest verdict in log order (a replica clock behind only makes backtracking re-audit more)', async () => {
    await deliver([audited('p1', true, new Date('2026-03-01T09:00:00Z')), audited('p2', false)]);
    const p1 = await counters('p1');
    assert.equal(p1.audit_streak, 3);
    assert.equal(p1.audits_passed, 4);
    assert.deepEqual(p1.last_audit_passed_at, new Date('2026-03-01T09:00:00Z'));
    const p2 = await counters('p2');
    assert.deepEqual([p2.audits_failed, p2.audit_streak, p2.last_audit_passed_at], [1, 0, new Date('2026-03-01T10:00:00Z')]);
  });
});
