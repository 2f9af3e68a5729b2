/** Account (money) payloads. Amounts are decimal strings of credits; every request is idempotent. */
import Type from 'typebox';

export const IdempotencyKey = Type.String({ minLength: 8, maxLength: 128, pattern: '^[A-Za-z0-9_.:-]+$' });

export const AmountRequest = Type.Object({ amount: Type.String({ maxLength: 40 }), idempotencyKey: IdempotencyKey }, { additionalProperties: false });
export type AmountRequest = Type.Static<typeof AmountRequest>;

export const CreditRequest = Type.Object(
  { account: Type.String({ pattern: '^[A-Za-z0-9_-]{43}$' }), amount: Type.String({ maxLength: 40 }), idempotencyKey: IdempotencyKey },
  { additionalProperties: false },
);
export type CreditRequest = Type.Static<typeof CreditRequest>;

export interface BalanceView {
  account: string;
  available: string;
  /** Held for your running jobs (budgets and lease escrows). */
  held: string;
  stake: string;
  unbonding: string;
  unbondings: { amount: string; releaseAt: string }[];
}

export interface HistoryEntry {
  id: string;
  kind: string;
  at: string;
  /** Net change of your available balance. */
  change: string;
  postings: { account: string; amount: string }[];
  memo: Record<string, unknown>;
}
