/**
 * What tests and benchmarks of other packages may reach inside a running coordinator (through
 * the `@gridwork/coordinator/internal` entry, never the public one): its database, its HTTP app,
 * its services. The public handle exposes none of them.
 */
import type { FastifyInstance } from 'fastify';
import type { Bus, LocalProgress } from './bus/bus.ts';
import type { AccountService } from './ledger/account-service.ts';
import type { Lifecycle } from './lifecycle/lifecycle.ts';
import type { Units } from './core/unit-of-work.ts';
import type { Market } from './market/market.ts';
import type { ProviderService } from './providers/provider-service.ts';
import type { Coordinator } from './server.ts';
import type { Db } from './store/database.ts';

export interface CoordinatorInternals {
  db: Db;
  app: FastifyInstance;
  accounts: AccountService;
  market: Market;
  bus: Bus & LocalProgress;
  units: Units;
  lifecycle: Lifecycle;
  providers: ProviderService;
}

const registry = new WeakMap<Coordinator, CoordinatorInternals>();

export function registerInternals(handle: Coordinator, internals: CoordinatorInternals): void {
  registry.set(handle, internals);
}

export function internalsOf(handle: Coordinator): CoordinatorInternals {
  const found = registry.get(handle);
  if (!found) throw new Error('not a coordinator started in this process');
  return found;
}
