/**
 * The provider directory: who is on the network, with what hardware, asks, benchmarks,
 * reputation and stake — a read-only query for `GET /v1/providers` (`gridwork providers`).
 * It writes nothing and owns no table.
 */
import { formatCredits, type ProviderListing } from '@gridwork/protocol';
import { balancesOf, stakeOf } from '../ledger/ledger.ts';
import type { Db } from '../store/database.ts';
import { reputationOfProvider } from './market.ts';

export interface ListProvidersOptions {
  /** Include offline providers. @default false */
  all?: boolean;
  /** @default 500 */
  limit?: number;
}

/** Online (and draining) providers first, then by name; offline ones only when asked for. */
export async function listProviders(db: Db, options: ListProvidersOptions = {}): Promise<ProviderListing[]> {
  // Expired registrations (never proven, long offline) are listed nowhere, even with `all`.
  let q = db.selectFrom('providers').selectAll().where('expired_at', 'is', null);
  if (!options.all) q = q.where('state', '!=', 'offline');
  const rows = await q
    .orderBy('state', 'desc')
    .orderBy('name')
    .orderBy('id')
    .limit(options.limit ?? 500)
    .execute();
  const stakes = await balancesOf(
    db,
    rows.map((r) => stakeOf(r.id)),
  );
  return rows.map((r) => ({
    id: r.id,
    name: r.name,
    state: r.state,
    connected: r.state !== 'offline',
    hardware: r.hardware,
    attributes: r.attributes,
    asks: r.asks,
    benchmarks: r.benchmarks,
    slots: r.slots,
    reputation: reputationOfProvider(r),
    leasesCompleted: r.leases_completed,
    leasesFaulted: r.leases_faulted,
    stake: formatCredits(stakes.get(stakeOf(r.id)) ?? 0n),
    lastSeenAt: new Date(r.last_seen_at).toISOString(),
  }));
}
