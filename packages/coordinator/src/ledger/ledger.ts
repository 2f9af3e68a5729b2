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
 *   ver:<verificationId>:bond  a dispute's bond, until the dispute is decided
 *   sys:fees, sys:reserve      the protocol fee (which pays for checks: verify/) and the reserve share
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
export const bondOf = (verificationId: string) => `ver:${verificationId}:bond`;

const ACCOUNT =
  /^(ext:world|sys:(fees|reserve)|acct:[A-Za-z0-9_-]{43}:(available|stake|unbonding)|job:job_[a-z2-7]{16}:hold|lease:lease_[a-z2-7]{16}:(escrow|earned)|ver:ver_[a-z2-7]{16}:bond)$/;

export type PostResult = 'posted' | 'duplicate';

/**
 * Posts one transaction inside the caller's database transaction. Throws INSUFFICIENT_FUNDS.
 *
 * Two statements (it is on every hot path: a job moves money four to six times; it took seven).
 * The first reads whether the key was used and, if not, locks the balances the transaction moves
 * (creating missing ones at zero) in account order, returning them. The funds check comes next,
 * before anything is written, so a caller may catch a refusal (INSUFFICIENT_FUNDS) and go on with
 * its transaction. The second records the transaction under its key, applies the changes and
 * writes the postings, all only if the key is still new (a concurrent twin may have taken it).
 */
export async function post(trx: Trx, tx: LedgerTx): Promise<PostResult> {
  const deltas = netChanges(tx);
  const accounts = [...deltas.keys()].sort();
  const read = await sql<{ used: boolean; account: string | null; balance: string | null }>`
    with prior as (select request_digest from ledger_transactions where idempotency_key = ${tx.key}),
    locked as (
      insert into ledger_balances (account, balance)
      select a, 0 from unnest(${accounts}::text[]) as a where not exists (select 1 from prior) order by a
      on conflict (account) do update set balance = ledger_balances.balance
      returning account, balance
    )
    select true as used, request_digest as account, null as balance from prior
    union all select false, account, balance::text from locked`.execute(trx);
  const used = read.rows.find((r) => r.used);
  if (used) return duplicateOf(tx, used.account);
  const balances = new Map(read.rows.map((r) => [r.account as string, BigInt(r.balance as string)]));
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
  const amounts = accounts.map((a) => String(deltas.get(a)));
  const written = await sql<{ id: string }>`
    with t as (
      insert into ledger_transactions (kind, idempotency_key, request_digest, memo)
      values (${tx.kind}, ${tx.key}, ${tx.requestDigest ?? null}, ${JSON.stringify(tx.memo ?? {})}::jsonb)
      on conflict (idempotency_key) do nothing
      returning id
    ),
    u as (
      update ledger_balances as b set balance = b.balance + d.delta
      from unnest(${accounts}::text[], ${amounts}::bigint[]) as d(account, delta)
      where b.account = d.account and exists (select 1 from t)
    ),
    p as (
      insert into ledger_postings (tx_id, account, amount)
      select t.id, d.account, d.delta from t, unnest(${accounts}::text[], ${amounts}::bigint[]) as d(account, delta)
    )
    select id::text as id from t`.execute(trx);
  if (written.rows.length > 0) return 'posted';
  // A concurrent twin posted the key between the two statements.
  const prior = await trx.selectFrom('ledger_transactions').select('request_digest').where('idempotency_key', '=', tx.key).executeTakeFirst();
  return duplicateOf(tx, prior?.request_digest ?? null);
}

/** A key already posted: the same request again is a duplicate, another request with it a conflict. */
function duplicateOf(tx: LedgerTx, priorDigest: string | null): PostResult {
  if (tx.requestDigest !== undefined && priorDigest !== tx.requestDigest) {
    throw new GridworkError('IDEMPOTENCY_CONFLICT', 'this idempotency key was already used for a different request');
  }
  return 'duplicate';
}

export type BatchResult = 'posted' | 'duplicate' | 'refused';

/** Validates a transaction's accounts and balance; returns its net change per account. */
function netChanges(tx: LedgerTx): Map<string, bigint> {
  const deltas = new Map<string, bigint>();
  let sum = 0n;
  for (const p of tx.postings) {
    if (!ACCOUNT.test(p.account)) throw new GridworkError('INTERNAL', `bad ledger account ${p.account}`);
    sum += p.amount;
    deltas.set(p.account, (deltas.get(p.account) ?? 0n) + p.amount);
  }
  if (sum !== 0n) throw new GridworkError('INTERNAL', `unbalanced ledger transaction ${tx.kind} (${sum})`);
  for (const [a, d] of deltas) if (d === 0n) deltas.delete(a);
  return deltas;
}

/**
 * Posts many transactions in one database transaction with a fixed number of statements
 * (each takes its rows as arrays expanded by `unnest`): the batched path for high-volume
 * movements such as metering. Same rules as `post()`, applied in order: a key already posted is
 * a duplicate, a transaction that would overdraw an account is refused (and moves nothing), the
 * rest are posted. Returns one result per transaction.
 */
export async function postMany(trx: Trx, txs: readonly LedgerTx[]): Promise<BatchResult[]> {
  const changes = txs.map(netChanges);
  const keys = txs.map((t) => t.key);
  const prior = await sql<{ k: string }>`select idempotency_key as k from ledger_transactions where idempotency_key = any(${keys}::text[])`.execute(trx);
  const seen = new Set(prior.rows.map((r) => r.k));
  const results: BatchResult[] = txs.map(() => 'duplicate');
  const fresh: number[] = [];
  txs.forEach((t, i) => {
    if (!seen.has(t.key)) fresh.push(i);
  });
  if (fresh.length === 0) return results;
  const accounts = [...new Set(fresh.flatMap((i) => [...(changes[i] as Map<string, bigint>).keys()]))].sort();
  const balances = new Map<string, bigint>();
  if (accounts.length > 0) {
    await sql`insert into ledger_balances (account, balance) select a, 0 from unnest(${accounts}::text[]) as a on conflict (account) do nothing`.execute(trx);
    const locked = await sql<{ account: string; balance: string }>`
      select account, balance::text as balance from ledger_balances where account = any(${accounts}::text[]) order by account for update`.execute(trx);
    for (const r of locked.rows) balances.set(r.account, BigInt(r.balance));
  }
  const accepted: number[] = [];
  for (const i of fresh) {
    // A refused transaction does not use up its key (as with post()); a posted one does.
    if (seen.has((txs[i] as LedgerTx).key)) continue;
    const d = changes[i] as Map<string, bigint>;
    let ok = true;
    for (const [a, delta] of d) if (a !== WORLD && (balances.get(a) ?? 0n) + delta < 0n) ok = false;
    if (!ok) {
      results[i] = 'refused';
      continue;
    }
    for (const [a, delta] of d) balances.set(a, (balances.get(a) ?? 0n) + delta);
    results[i] = 'posted';
    seen.add((txs[i] as LedgerTx).key);
    accepted.push(i);
  }
  if (accepted.length === 0) return results;
  const acc = accepted.map((i) => txs[i] as LedgerTx);
  const ids = await sql<{ id: string; k: string }>`
    insert into ledger_transactions (kind, idempotency_key, request_digest, memo)
    select kind, key, digest, memo::jsonb
    from unnest(${acc.map((t) => t.kind)}::text[], ${acc.map((t) => t.key)}::text[], ${acc.map((t) => t.requestDigest ?? null)}::text[], ${acc.map((t) => JSON.stringify(t.memo ?? {}))}::text[]) as u(kind, key, digest, memo)
    on conflict (idempotency_key) do nothing
    returning id::text as id, idempotency_key as k`.execute(trx);
  if (ids.rows.length !== acc.length) {
    // A concurrent twin posted some of these keys first: retry the whole batch, which will
    // then see them as duplicates (transact() retries serialization failures).
    throw Object.assign(new Error('concurrent duplicate idempotency keys in a ledger batch'), { code: '40001' });
  }
  const idOf = new Map(ids.rows.map((r) => [r.k, r.id]));
  const touched = [...new Set(accepted.flatMap((i) => [...(changes[i] as Map<string, bigint>).keys()]))].sort();
  if (touched.length > 0) {
    await sql`update ledger_balances as b set balance = v.balance
      from unnest(${touched}::text[], ${touched.map((a) => String(balances.get(a)))}::bigint[]) as v(account, balance)
      where b.account = v.account`.execute(trx);
  }
  const txIds: string[] = [];
  const accts: string[] = [];
  const amounts: string[] = [];
  for (const i of accepted) {
    for (const [a, delta] of changes[i] as Map<string, bigint>) {
      txIds.push(idOf.get((txs[i] as LedgerTx).key) as string);
      accts.push(a);
      amounts.push(String(delta));
    }
  }
  if (txIds.length > 0) {
    await sql`insert into ledger_postings (tx_id, account, amount) select * from unnest(${txIds}::bigint[], ${accts}::text[], ${amounts}::bigint[])`.execute(
      trx,
    );
  }
  return results;
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
