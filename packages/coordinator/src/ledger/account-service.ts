/**
 * Accounts as their owners see them: balances, history, deposits (a faucet in development,
 * an operator credit otherwise), withdrawals, stake with an unbonding delay (slashing is
 * verify/verification.ts).
 * Every request that moves money carries an idempotency key: the same key and request moves
 * money once; the same key with another request is refused.
 */
import { canonicalJson, formatCredits, GridworkError, parseCredits, type BalanceView, type HistoryEntry } from '@gridwork/protocol';
import { sha256Hex } from '@gridwork/protocol/node';
import { sql } from 'kysely';
import type { Units } from '../core/unit-of-work.ts';
import type { Db } from '../store/database.ts';
import { transact } from '../store/transact.ts';
import { available, balancesOf, FEES, post, RESERVE, stakeOf, unbondingOf, WORLD } from './ledger.ts';

export interface AccountServiceOptions {
  /** The faucet (free deposits) is on only in development. */
  dev: boolean;
  /** Public keys allowed to credit accounts. */
  operators: readonly string[];
  /** How long unstaked credits wait before they are available again. @default 7 days */
  unbondingDelayMs: number;
  /** Largest faucet deposit. @default 1000 credits */
  faucetMax: bigint;
  /** What a proven fault costs (verify/verification-policy.ts): stake that must stay behind open work. */
  slashFor: (charged: bigint) => bigint;
}

const parseAmount = (amount: string, field = 'amount') => parseCredits(amount, { field, allowZero: false });
const digestOf = (value: unknown) => sha256Hex(canonicalJson(value));

export class AccountService {
  constructor(
    private readonly db: Db,
    private readonly options: AccountServiceOptions,
    /** Stake changes run as units of work: they announce `provider.changed` (the matching index filters on stake). */
    private readonly units: Units,
  ) {}

  async balance(accountId: string): Promise<BalanceView> {
    const b = await balancesOf(this.db, [available(accountId), stakeOf(accountId), unbondingOf(accountId)]);
    const held = await this.db
      .selectFrom('ledger_balances')
      .select(sql<string>`coalesce(sum(balance), 0)::text`.as('held'))
      .where((eb) =>
        eb.or([
          eb('account', 'in', eb.selectFrom('jobs').select(sql<string>`'job:' || id || ':hold'`.as('a')).where('owner', '=', accountId)),
          eb(
            'account',
            'in',
            eb
              .selectFrom('leases')
              .innerJoin('jobs', 'jobs.id', 'leases.job_id')
              .select(sql<string>`'lease:' || leases.id || ':escrow'`.as('a'))
              .where('jobs.owner', '=', accountId),
          ),
        ]),
      )
      .executeTakeFirstOrThrow();
    const unbondings = await this.db
      .selectFrom('stake_unbondings')
      .select(['amount', 'release_at'])
      .where('account_id', '=', accountId)
      .where('released_at', 'is', null)
      .orderBy('release_at')
      .execute();
    return {
      account: accountId,
      available: formatCredits(b.get(available(accountId)) ?? 0n),
      held: formatCredits(BigInt(held.held)),
      stake: formatCredits(b.get(stakeOf(accountId)) ?? 0n),
      unbonding: formatCredits(b.get(unbondingOf(accountId)) ?? 0n),
      unbondings: unbondings.map((u) => ({ amount: formatCredits(u.amount), releaseAt: u.release_at.toISOString() })),
    };
  }

  async history(accountId: string, limit: number): Promise<HistoryEntry[]> {
    const mine = [available(accountId), stakeOf(accountId), unbondingOf(accountId)];
    const txs = await this.db
      .selectFrom('ledger_transactions')
      .selectAll()
      .where('id', 'in', (eb) => eb.selectFrom('ledger_postings').select('tx_id').where('account', 'in', mine))
      .orderBy('id', 'desc')
      .limit(limit)
      .execute();
    if (txs.length === 0) return [];
    const postings = await this.db
      .selectFrom('ledger_postings')
      .selectAll()
      .where(
        'tx_id',
        'in',
        txs.map((t) => t.id),
      )
      .orderBy('id')
      .execute();
    return txs.map((t) => {
      const ps = postings.filter((p) => p.tx_id === t.id);
      const change = ps.filter((p) => p.account === available(accountId)).reduce((a, p) => a + p.amount, 0n);
      return {
        id: t.id.toString(),
        kind: t.kind,
        at: t.created_at.toISOString(),
        change: formatCredits(change),
        postings: ps.map((p) => ({ account: p.account, amount: formatCredits(p.amount) })),
        memo: t.memo,
      };
    });
  }

  private async move(
    kind: string,
    accountId: string,
    key: string,
    request: unknown,
    postings: { account: string; amount: bigint }[],
    memo: Record<string, unknown> = {},
  ) {
    await transact(this.db, (trx) => post(trx, { kind, key: `${accountId}:${key}`, requestDigest: digestOf(request), postings, memo }));
  }

  /** Development faucet: free credits, only when the coordinator runs with --dev. */
  async deposit(accountId: string, amount: string, key: string): Promise<BalanceView> {
    if (!this.options.dev)
      throw new GridworkError('DEV_ONLY', 'the faucet only runs on a coordinator started with --dev; ask the operator to credit your account');
    const micros = parseAmount(amount);
    if (micros > this.options.faucetMax)
      throw new GridworkError('INVALID_AMOUNT', `the faucet gives at most ${formatCredits(this.options.faucetMax)} credits per deposit`);
    await this.move('deposit', accountId, key, { op: 'deposit', amount }, [
      { account: WORLD, amount: -micros },
      { account: available(accountId), amount: micros },
    ]);
    return this.balance(accountId);
  }

  /** An operator credits an account (payment received off-network). */
  async credit(operatorId: string, account: string, amount: string, key: string): Promise<BalanceView> {
    if (!this.options.operators.includes(operatorId)) throw new GridworkError('FORBIDDEN', 'only the coordinator operator can credit accounts');
    const micros = parseAmount(amount);
    await this.db
      .insertInto('accounts')
      .values({ id: account })
      .onConflict((oc) => oc.doNothing())
      .execute();
    await this.move(
      'credit',
      operatorId,
      key,
      { op: 'credit', account, amount },
      [
        { account: WORLD, amount: -micros },
        { account: available(account), amount: micros },
      ],
      { account, operator: operatorId },
    );
    return this.balance(account);
  }

  async withdraw(accountId: string, amount: string, key: string): Promise<BalanceView> {
    const micros = parseAmount(amount);
    await this.move('withdraw', accountId, key, { op: 'withdraw', amount }, [
      { account: available(accountId), amount: -micros },
      { account: WORLD, amount: micros },
    ]);
    return this.balance(accountId);
  }

  async stake(accountId: string, amount: string, key: string): Promise<BalanceView> {
    const micros = parseAmount(amount);
    await this.units.run(async (uow) => {
      await post(uow.trx, {
        kind: 'stake',
        key: `${accountId}:${key}`,
        requestDigest: digestOf({ op: 'stake', amount }),
        postings: [
          { account: available(accountId), amount: -micros },
          { account: stakeOf(accountId), amount: micros },
        ],
      });
      uow.emit({ type: 'provider.changed', providerId: accountId, what: 'stake' });
    });
    return this.balance(accountId);
  }

  /**
   * Starts unbonding: the credits leave the stake now and become available after the delay.
   * Refused (STAKE_LOCKED) while it would leave less stake than the slashes its open work could
   * cost: its running leases and results still in their audit window. (Unbonding stake can be
   * slashed too, until it is released.)
   */
  async unstake(accountId: string, amount: string, key: string): Promise<BalanceView> {
    const micros = parseAmount(amount);
    await this.units.run(async ({ trx, emit }) => {
      // The stake row is locked first: concurrent unstakes take turns, each seeing the others' effect.
      await trx.insertInto('ledger_balances').values({ account: stakeOf(accountId), balance: 0n }).onConflict((oc) => oc.column('account').doNothing()).execute();
      await trx.selectFrom('ledger_balances').select('balance').where('account', '=', stakeOf(accountId)).forUpdate().execute();
      const open = await trx
        .selectFrom('leases')
        .select('charged')
        .where('provider_id', '=', accountId)
        .where((eb) => eb.or([eb('state', 'in', ['offered', 'starting', 'running']), eb('settle_at', 'is not', null)]))
        .execute();
      const required = open.reduce((sum, l) => sum + this.options.slashFor(l.charged), 0n);
      const staked = (await balancesOf(trx, [stakeOf(accountId)])).get(stakeOf(accountId)) ?? 0n;
      if (required > 0n && staked - micros < required) {
        throw new GridworkError(
          'STAKE_LOCKED',
          `${formatCredits(required)} credits of stake must stay behind ${open.length} open lease(s) and result(s) in their audit window; you may unstake at most ${formatCredits(staked > required ? staked - required : 0n)} now`,
          { details: { required: formatCredits(required), staked: formatCredits(staked), openWork: open.length } },
        );
      }
      const r = await post(trx, {
        kind: 'unstake',
        key: `${accountId}:${key}`,
        requestDigest: digestOf({ op: 'unstake', amount }),
        postings: [
          { account: stakeOf(accountId), amount: -micros },
          { account: unbondingOf(accountId), amount: micros },
        ],
      });
      if (r === 'posted') {
        await trx
          .insertInto('stake_unbondings')
          .values({ account_id: accountId, amount: micros, release_at: new Date(Date.now() + this.options.unbondingDelayMs) })
          .execute();
      }
      emit({ type: 'provider.changed', providerId: accountId, what: 'stake' });
    });
    return this.balance(accountId);
  }

  /**
   * Releases unbondings whose delay has passed. Returns how many. Each row is read again inside
   * its transaction after its balances are locked, in the ledger's lock order (as a slash locks
   * them before shrinking the rows): a slash that committed meanwhile is seen, never overwritten.
   */
  async releaseUnbonded(now = new Date()): Promise<number> {
    const due = await this.db.selectFrom('stake_unbondings').select(['id', 'account_id']).where('released_at', 'is', null).where('release_at', '<=', now).execute();
    let released = 0;
    for (const { id, account_id } of due) {
      released += await transact(this.db, async (trx) => {
        await trx
          .selectFrom('ledger_balances')
          .select('account')
          .where('account', 'in', [available(account_id), unbondingOf(account_id)])
          .orderBy('account')
          .forUpdate()
          .execute();
        const u = await trx.selectFrom('stake_unbondings').selectAll().where('id', '=', id).where('released_at', 'is', null).forUpdate().executeTakeFirst();
        if (!u) return 0;
        await post(trx, {
          kind: 'unbond.release',
          key: `unbond:${u.id}`,
          postings: [
            { account: unbondingOf(u.account_id), amount: -u.amount },
            { account: available(u.account_id), amount: u.amount },
          ],
        });
        await trx.updateTable('stake_unbondings').set({ released_at: now }).where('id', '=', u.id).execute();
        return 1;
      });
    }
    return released;
  }

  /** Seeds the verification fund (`sys:fees`) once per database: a dev coordinator's checks are paid from the first task. */
  async genesisFees(amount: bigint): Promise<void> {
    await transact(this.db, (trx) =>
      post(trx, {
        kind: 'genesis',
        key: 'genesis:fees',
        postings: [
          { account: WORLD, amount: -amount },
          { account: FEES, amount },
        ],
        memo: { why: 'development coordinator: funds audits and canaries from the start' },
      }),
    );
  }

  /** Protocol totals, for operators. */
  async protocolBalances(): Promise<{ fees: string; reserve: string }> {
    const b = await balancesOf(this.db, [FEES, RESERVE]);
    return { fees: formatCredits(b.get(FEES) ?? 0n), reserve: formatCredits(b.get(RESERVE) ?? 0n) };
  }
}
