/**
 * For tests and benchmarks of this repository only (`@gridwork/coordinator/internal`): the
 * internals of a running coordinator, the store, the matching index and the ledger check.
 * Nothing here is a stable API.
 */
export { internalsOf, type CoordinatorInternals } from './internals.ts';
export { openDatabase, type Db, type DatabaseOptions } from './store/database.ts';
export { OrderBook, type BookProvider, type Order, type Match } from './market/order-book.ts';
export { verifyLedger, type LedgerAudit } from './ledger/ledger.ts';
export type { DomainEvent, StoredEvent } from './core/events.ts';
export { readEvents } from './core/event-log.ts';
export { canTransition, JOB_TRANSITIONS, TASK_TRANSITIONS, LEASE_TRANSITIONS } from './core/state-machine.ts';
