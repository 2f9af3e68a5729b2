/**
 * The double-entry ledger. Money moves only as balanced transactions of postings (their
 * amounts sum to zero); each transaction has an idempotency key, so applying it again is a
 * no-op. `ledger_balances` is a cache derived from the postings, updated in the same database
 * transaction under row locks (taken in account order, so two transfers never deadlock);
 * `verify()` recomputes it from the postings. No account but `ext:world` (money entering and
 * leaving the system) may go negative. Owns the `ledger_*` tables.
 *
 * Account names:
 *   ext:world                  deposits come from here, withdrawals go here
 *   acct:<id>:available        spendable credits of an identity (requester or provider)
 *   acct:<id>:stake            locked stake of a provider
 *   acct:<id>:unbonding        stake on its way back to available
 *   job:<jobId>:hold           a job's budget, held when the job is accepted
 *   lease:<leaseId>:escrow     drawn from the hold for the metering period ahead
 *   lease:<leaseId>:earned     metered charges, paid out when the lease ends
 *   sys:fees, sys:reserve      the protocol fee and the reserve share
 */
import { formatCredits, GridworkError } from '@gridwork/protocol';
import { sql, type Transaction } from 'kysely';
import type { Db } from '../store/database.ts';
import type { Database } from '../store/schema.ts';

export type Trx = Transaction<Database>;

export interface Posting {
  account: string;
  amount: bigint;
}

export interface LedgerTx {
  kind: string;
  /** Unique per logical operation: the same key never moves money twice. */
  key: string;
  postings: Posting[];
  memo?: Record<string, unknown>;
  /** For client requests: a digest of the request, so a reused key with other content is refused. */
  requestDigest?: string;
}

export const WORLD = 'ext:world';
export const FEES = 'sys:fees';
export const RESERVE = 'sys:reserve';
export const available = (id: string) => `acct:${id}:available`;
export const stakeOf = (id: string) => `acct:${id}:stake`;
export const unbondingOf = (id: string) => `acct:${id}:unbonding`;
export const holdOf = (jobId: string) => `job:${jobId}:hold`;
export const escrowOf = (leaseId: string) => `lease:${leaseId}:escrow`;
export const earnedOf = (leaseId: string) => `lease:${leaseId}:earned`;

const ACCOUNT =
  /^(ext:world|sys:(fees|reserve)|acct:[A-Za-z0-9_-]{43}:(available|stake|unbonding)|job:job_[a-z2-7]{16}:hold|lease:lease_[a-z2-7]{16}:(escrow|earned))$/;

export type PostResult = 'posted' | 'duplicate';

/** Posts one transaction inside the caller's database transaction. Throws INSUFFICIENT_FUNDS. */
export async function post(trx: Trx, tx: LedgerTx): Promise<PostResult> {
  const deltas = new Map<string, bigint>();
  for (const p of tx.postings) {
    if (!ACCOUNT.test(p.account)) throw new GridworkError('INTERNAL', `bad ledger account ${p.account}`);
    if (p.amount === 0n) continue;
    deltas.set(p.account, (deltas.get(p.account) ?? 0n) + p.amount);
  }
  let sum = 0n;
  for (const d of deltas.values()) sum += d;
  if (sum !== 0n) throw new GridworkError('INTERNAL', `unbalanced ledger transaction ${tx.kind} (${sum})`);
  for (const [a, d] of deltas) if (d === 0n) deltas.delete(a);

  // Nothing is written before every check has passed, so a caller may catch a refusal
  // (INSUFFICIENT_FUNDS) and go on with its transaction.
  const prior = await trx.selectFrom('ledger_transactions').select('request_digest').where('idempotency_key', '=', tx.key).executeTakeFirst();
  if (prior) {
    if (tx.requestDigest !== undefined && prior.request_digest !== tx.requestDigest) {
      throw new GridworkError('IDEMPOTENCY_CONFLICT', 'this idempotency key was already used for a different request');
    }
    return 'duplicate';
  }
  const accounts = [...deltas.keys()].sort();
  const balances = new Map<string, bigint>();
  if (accounts.length > 0) {
    await trx
      .insertInto('ledger_balances')
      .values(accounts.map((account) => ({ account, balance: 0n })))
      .onConflict((oc) => oc.column('account').doNothing())
      .execute();
    const rows = await trx.selectFrom('ledger_balances').selectAll().where('account', 'in', accounts).orderBy('account').forUpdate().execute();
    for (const r of rows) balances.set(r.account, r.balance);
  }
  for (const account of accounts) {
    const before = balances.get(account) ?? 0n;
    const delta = deltas.get(account) as bigint;
    if (before + delta < 0n && account !== WORLD) {
      throw new GridworkError(
        'INSUFFICIENT_FUNDS',
        `insufficient funds in ${describeAccount(account)}: ${formatCredits(before)} available, ${formatCredits(-delta)} needed`,
        {
          details: { account, balance: formatCredits(before), needed: formatCredits(-delta) },
        },
      );
    }
  }
  const inserted = await trx
    .insertInto('ledger_transactions')
    .values({ kind: tx.kind, idempotency_key: tx.key, request_digest: tx.requestDigest ?? null, memo: JSON.stringify(tx.memo ?? {}) })
    .onConflict((oc) => oc.column('idempotency_key').doNothing())
    .returning('id')
    .executeTakeFirst();
  if (!inserted) return 'duplicate'; // a concurrent twin won the race
  if (accounts.length === 0) return 'posted';
  for (const account of accounts) {
    await trx
      .updateTable('ledger_balances')
      .set({ balance: (balances.get(account) ?? 0n) + (deltas.get(account) as bigint) })
      .where('account', '=', account)
      .execute();
  }
  await trx
    .insertInto('ledger_postings')
    .values(accounts.map((account) => ({ tx_id: inserted.id, account, amount: deltas.get(account) as bigint })))
    .execute();
  return 'posted';
}

function describeAccount(account: string): string {
  if (account.endsWith(':available')) return 'your available balance';
  if (account.endsWith(':hold')) return "the job's remaining budget";
  if (account.endsWith(':stake')) return 'your stake';
  return account;
}

export async function balanceOf(db: Db | Trx, account: string): Promise<bigint> {
  const row = await db.selectFrom('ledger_balances').select('balance').where('account', '=', account).executeTakeFirst();
  return row?.balance ?? 0n;
}

export async function balancesOf(db: Db | Trx, accounts: string[]): Promise<Map<string, bigint>> {
  const out = new Map(accounts.map((a) => [a, 0n]));
  if (accounts.length === 0) return out;
  const rows = await db.selectFrom('ledger_balances').select(['account', 'balance']).where('account', 'in', accounts).execute();
  for (const r of rows) out.set(r.account, r.balance);
  return out;
}

export interface LedgerAudit {
  /** Sum over every account, which double entry keeps at zero. */
  total: bigint;
  /** Accounts whose cached balance differs from the sum of their postings. */
  mismatched: string[];
  /** Accounts other than ext:world below zero. */
  negative: string[];
  transactions: number;
  postings: number;
}

/** Recomputes every balance from the postings and checks the double-entry invariants. */
export async function verifyLedger(db: Db | Trx): Promise<LedgerAudit> {
  const derived = await db
    .selectFrom('ledger_postings')
    .select(['account', sql<string>`sum(amount)::text`.as('sum')])
    .groupBy('account')
    .execute();
  const cached = await db.selectFrom('ledger_balances').select(['account', 'balance']).execute();
  const fromPostings = new Map(derived.map((r) => [r.account, BigInt(r.sum)]));
  const mismatched: string[] = [];
  const negative: string[] = [];
  let total = 0n;
  const all = new Set([...fromPostings.keys(), ...cached.map((c) => c.account)]);
  const cachedMap = new Map(cached.map((c) => [c.account, c.balance]));
  for (const a of all) {
    const d = fromPostings.get(a) ?? 0n;
    total += d;
    if ((cachedMap.get(a) ?? 0n) !== d) mismatched.push(a);
    if (d < 0n && a !== WORLD) negative.push(a);
  }
  const counts = await db
    .selectFrom('ledger_postings')
    .select([sql<string>`count(*)::text`.as('postings'), sql<string>`count(distinct tx_id)::text`.as('txs')])
    .executeTakeFirstOrThrow();
  return { total, mismatched, negative, transactions: Number(counts.txs), postings: Number(counts.postings) };
}
