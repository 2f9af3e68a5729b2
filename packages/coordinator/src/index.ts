export { startCoordinator, resolveCoordinatorOptions, type Coordinator, type CoordinatorOptions, type CoordinatorConfig } from './server.ts';
export { openDatabase, type Db, type DatabaseOptions } from './store/database.ts';
export { OrderBook, type BookProvider, type Order, type Match } from './market/order-book.ts';
export { verifyLedger, type LedgerAudit } from './ledger/ledger.ts';
export type { EconomicsConfig } from './ledger/lease-economics.ts';
