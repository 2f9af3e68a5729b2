/**
 * Authenticates signed requests: signature and clock window (protocol), then replay. A nonce
 * of a request that can change something is stored in `request_nonces` before the request
 * runs, so a replay is refused even across a restart; read-only requests keep their nonces in
 * memory only (a replayed read returns nothing the replayer did not already see).
 */
import { GridworkError, MAX_CLOCK_SKEW_MS } from '@gridwork/protocol';
import { type SignedBody, verifyRequest } from '@gridwork/protocol/node';
import type { Db } from '../store/database.ts';

export interface AuthInput {
  method: string;
  url: string;
  headers: Record<string, string | string[] | undefined>;
  body: SignedBody;
}

export class Authenticator {
  private readonly readNonces = new Map<string, number>();
  private readonly knownAccounts = new Set<string>();

  constructor(private readonly db: Db) {}

  async authenticate(req: AuthInput): Promise<string> {
    const now = Date.now();
    const { accountId, nonce } = verifyRequest(req.headers, req.method, req.url, req.body, now);
    if (req.method === 'GET' || req.method === 'HEAD') {
      const key = `${accountId}:${nonce}`;
      if (this.readNonces.has(key)) throw new GridworkError('REPLAYED_REQUEST', 'this request was already received (nonce reused)');
      this.readNonces.set(key, now);
      if (this.readNonces.size > 100_000) this.pruneMemory(now);
    } else {
      const inserted = await this.db
        .insertInto('request_nonces')
        .values({ account_id: accountId, nonce, seen_at: new Date(now) })
        .onConflict((oc) => oc.doNothing())
        .executeTakeFirst();
      if (inserted.numInsertedOrUpdatedRows === 0n) {
        throw new GridworkError('REPLAYED_REQUEST', 'this request was already received (nonce reused)');
      }
      // Only requests that may write need the account row. A read (and a provider's socket
      // upgrade: its hello registers the account) writes nothing, so a flood of fresh keys costs
      // no database write — on the embedded store every write runs on the event loop's thread.
      if (!this.knownAccounts.has(accountId)) {
        await this.db
          .insertInto('accounts')
          .values({ id: accountId })
          .onConflict((oc) => oc.doNothing())
          .execute();
        if (this.knownAccounts.size > 100_000) this.knownAccounts.clear();
        this.knownAccounts.add(accountId);
      }
    }
    return accountId;
  }

  private pruneMemory(now: number): void {
    for (const [k, t] of this.readNonces) if (now - t > 2 * MAX_CLOCK_SKEW_MS) this.readNonces.delete(k);
  }

  /** Nonces older than twice the clock window can never be replayed (the timestamp check refuses them). */
  async prune(): Promise<void> {
    const now = Date.now();
    this.pruneMemory(now);
    await this.db
      .deleteFrom('request_nonces')
      .where('seen_at', '<', new Date(now - 2 * MAX_CLOCK_SKEW_MS))
      .execute();
  }
}
