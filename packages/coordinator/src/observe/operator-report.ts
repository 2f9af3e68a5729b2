/**
 * The operator's view of the ledger: credits by account class (available, held, escrow, stake,
 * fees, reserve, ...), and the double-entry check (verifyLedger) as passing or failing, for
 * the coordinator's operators (`operators` public keys) only. Read-only.
 */
import { formatCredits, GridworkError } from '@gridwork/protocol';
import { verifyLedger } from '../ledger/ledger.ts';
import type { Db } from '../store/database.ts';

export interface OperatorReport {
  /** Account class → total credits (decimal string). */
  totals: Record<string, string>;
  fees: string;
  reserve: string;
  ledger: { ok: boolean; total: string; mismatched: string[]; negative: string[]; transactions: number; postings: number };
}

/** `acct:<id>:available` → `available`, `job:<id>:hold` → `hold`, `sys:fees` → `fees`, `ext:world` → `world`. */
export function accountClassOf(account: string): string {
  const parts = account.split(':');
  return parts.length >= 3 ? parts.at(-1)! : (parts.at(-1) ?? account);
}

export async function operatorReport(db: Db): Promise<OperatorReport> {
  const rows = await db.selectFrom('ledger_balances').select(['account', 'balance']).execute();
  const sums = new Map<string, bigint>();
  for (const r of rows) {
    const cls = accountClassOf(r.account);
    sums.set(cls, (sums.get(cls) ?? 0n) + r.balance);
  }
  const audit = await verifyLedger(db);
  const totals = Object.fromEntries([...sums].sort(([a], [b]) => a.localeCompare(b)).map(([k, v]) => [k, formatCredits(v)]));
  return {
    totals,
    fees: totals.fees ?? '0',
    reserve: totals.reserve ?? '0',
    ledger: {
      ok: audit.total === 0n && audit.mismatched.length === 0 && audit.negative.length === 0,
      total: formatCredits(audit.total),
      mismatched: audit.mismatched.slice(0, 50),
      negative: audit.negative.slice(0, 50),
      transactions: audit.transactions,
      postings: audit.postings,
    },
  };
}

/** Answers operators only: everyone else gets FORBIDDEN. */
export class OperatorReports {
  constructor(
    private readonly db: Db,
    private readonly operators: readonly string[],
  ) {}

  async report(accountId: string): Promise<OperatorReport> {
    if (!this.operators.includes(accountId)) throw new GridworkError('FORBIDDEN', "only the coordinator's operators can read the operator report");
    return operatorReport(this.db);
  }
}
