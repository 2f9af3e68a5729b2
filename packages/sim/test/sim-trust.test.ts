/**
 * The trust simulation end to end (the real coordinator in-process, simulated providers over the
 * real WebSocket protocol), small: 8 providers, an always-wrong and a lazy cheater, 60 jobs.
 * Every always-wrong cheater is caught, no honest provider is punished, cheating costs more than
 * it earns, the ledger audit balances, and the JSON document has the documented shape. Plus the
 * pure parts: seeded identities and the assignment of roles.
 */
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { signBytes, verifyBytes } from '@gridwork/protocol/node';
import { postgresUrl, uniqueSchema } from '@gridwork/testkit';
import { assignRoles, runTrustSimulation, seededIdentity, type TrustReport } from '../src/index.ts';

describe('seeded identities', () => {
  test('the same seed and label give the same working key pair; others differ', () => {
    const a = seededIdentity('7', 'sim-00#0');
    assert.deepEqual(seededIdentity('7', 'sim-00#0'), a);
    assert.notEqual(seededIdentity('8', 'sim-00#0').publicKey, a.publicKey);
    assert.notEqual(seededIdentity('7', 'sim-01#0').publicKey, a.publicKey);
    assert.ok(verifyBytes(a.publicKey, 'hello', signBytes(a, 'hello')));
  });
});

describe('roles', () => {
  test('one group per strategy in order (colluders in pairs), then round-robin; too few cheaters leave strategies out', () => {
    const all = assignRoles(20, 7, ['always-wrong', 'wrong-q', 'lazy', 'fake-hardware', 'colluding', 'whitewashing']);
    assert.deepEqual(all.roles.slice(0, 7), ['always-wrong', 'wrong-q', 'lazy', 'fake-hardware', 'colluding', 'colluding', 'whitewashing']);
    assert.equal(all.roles.filter((r) => r === 'honest').length, 13);
    assert.deepEqual(all.notSimulated, []);
    const few = assignRoles(20, 5, ['always-wrong', 'wrong-q', 'lazy', 'fake-hardware', 'colluding', 'whitewashing']);
    assert.deepEqual(few.simulated, ['always-wrong', 'wrong-q', 'lazy', 'fake-hardware', 'whitewashing']);
    assert.deepEqual(few.notSimulated, ['colluding']);
    const more = assignRoles(10, 4, ['always-wrong', 'lazy']);
    assert.deepEqual(more.roles.slice(0, 4), ['always-wrong', 'lazy', 'always-wrong', 'lazy']);
  });
});

/** Asserts that `value` has exactly these keys, each of the given JSON type. */
function shape(value: unknown, fields: Record<string, string>, where: string): void {
  assert.equal(typeof value, 'object', where);
  const obj = value as Record<string, unknown>;
  assert.deepEqual(Object.keys(obj).sort(), Object.keys(fields).sort(), `${where}: keys`);
  for (const [k, type] of Object.entries(fields)) {
    const v = obj[k];
    const actual = v === null ? 'null' : Array.isArray(v) ? 'array' : typeof v;
    assert.ok(type.split('|').includes(actual), `${where}.${k}: ${actual} is not ${type}`);
  }
}

describe('gridwork sim trust (small)', { timeout: 240_000 }, () => {
  test('always-wrong caught, no honest provider punished, cheating unprofitable, ledger balanced, documented JSON', async () => {
    const report: TrustReport = await runTrustSimulation({ providers: 8, cheaters: 0.25, jobs: 60, seed: 'test', strategies: ['always-wrong', 'lazy'] });
    const doc = JSON.parse(JSON.stringify(report)) as Record<string, unknown>;

    shape(
      doc,
      {
        simulation: 'string',
        version: 'number',
        params: 'object',
        elapsedMs: 'number',
        strategies: 'array',
        honest: 'object',
        cheatersOverall: 'object',
        overhead: 'object',
        ledger: 'object',
        work: 'object',
        errors: 'array',
        goals: 'array',
        ok: 'boolean',
        notes: 'array',
      },
      'report',
    );
    assert.equal(doc.simulation, 'trust');
    for (const s of doc.strategies as unknown[]) {
      shape(
        s,
        {
          strategy: 'string',
          keys: 'number',
          operators: 'number',
          caught: 'number',
          shareCaught: 'number',
          predictedShareCaught: 'number',
          meanJobsUntilCaught: 'number|null',
          predictedJobsUntilCaught: 'number|null',
          meanAuditRate: 'number|null',
          jobs: 'number',
          cheatedJobs: 'number',
          earned: 'string',
          withheld: 'string',
          slashed: 'string',
          stakeAbandoned: 'string',
          net: 'string',
          profitable: 'boolean',
        },
        'strategy',
      );
    }
    shape(
      doc.honest,
      {
        keys: 'number',
        wronglyPunished: 'number',
        punishedIds: 'array',
        punishments: 'array',
        challengeFailures: 'number',
        earned: 'string',
        slashed: 'string',
        meanAuditRate: 'number|null',
      },
      'honest',
    );
    shape(
      doc.overhead,
      {
        steadyState: 'number|null',
        steadyStateExpected: 'number|null',
        steadyStateStdError: 'number|null',
        steadyStateAll: 'number|null',
        probation: 'number|null',
        total: 'number|null',
        workMs: 'number',
        checkMs: 'number',
        checkMsByKind: 'object',
        steadyStateResults: 'number',
        steadyStateChecks: 'number',
      },
      'overhead',
    );
    shape(
      doc.ledger,
      { balanced: 'boolean', total: 'string', negative: 'array', mismatched: 'array', transactions: 'number', fees: 'string', reserve: 'string' },
      'ledger',
    );
    for (const g of doc.goals as unknown[]) shape(g, { id: 'string', goal: 'string', value: 'string|number|null', met: 'boolean', exit: 'boolean' }, 'goal');

    const byName = new Map(report.strategies.map((s) => [s.strategy, s]));
    assert.deepEqual([...byName.keys()], ['always-wrong', 'lazy']);
    const alwaysWrong = byName.get('always-wrong');
    assert.ok(alwaysWrong && alwaysWrong.keys === 1 && alwaysWrong.jobs > 0, 'the always-wrong cheater got work');
    assert.equal(alwaysWrong.caught, alwaysWrong.keys, 'every always-wrong cheater is caught');
    assert.equal(report.honest.keys, 6);
    assert.equal(report.honest.wronglyPunished, 0, `honest providers punished: ${JSON.stringify(report.honest.punishments)}`);
    assert.equal(report.honest.slashed, '0');
    for (const s of report.strategies) {
      assert.ok(s.net.startsWith('-'), `${s.strategy}: net ${s.net} (earned ${s.earned}, slashed ${s.slashed}) is not negative`);
      assert.equal(s.profitable, false);
    }
    assert.equal(report.ledger.balanced, true, JSON.stringify(report.ledger));
    assert.equal(report.ledger.total, '0');
    assert.deepEqual(report.ledger.negative, []);
    assert.deepEqual(report.ledger.mismatched, []);
    assert.equal(report.work.jobs, 60);
    assert.equal(report.work.succeeded + report.work.failed + report.work.other, 60);
    assert.ok(report.work.checks > 0, 'results were checked');
    assert.deepEqual(report.errors, []);
    assert.equal(
      report.ok,
      report.goals.every((g) => g.met || !g.exit),
    );
  });
});

describe('gridwork sim trust on PostgreSQL', { timeout: 240_000 }, () => {
  test('the same verification code on the other store: cheaters caught and unprofitable, honest providers unpunished, ledger balanced', async () => {
    const report = await runTrustSimulation({
      providers: 6,
      cheaters: 0.34,
      jobs: 40,
      seed: 'pg',
      strategies: ['always-wrong', 'wrong-q'],
      databaseUrl: postgresUrl(),
      databaseSchema: uniqueSchema('gw_sim'),
    });
    assert.equal(report.honest.wronglyPunished, 0, JSON.stringify(report.honest.punishments));
    const alwaysWrong = report.strategies.find((s) => s.strategy === 'always-wrong');
    assert.ok(alwaysWrong && alwaysWrong.caught === alwaysWrong.keys && alwaysWrong.jobs > 0);
    for (const s of report.strategies) if (s.jobs > 0 && s.caught > 0) assert.equal(s.profitable, false, `${s.strategy} net ${s.net}`);
    assert.equal(report.ledger.balanced, true, JSON.stringify(report.ledger));
    assert.equal(report.work.jobs, 40);
    assert.deepEqual(report.errors, []);
  });
});
