/** The public surface: start a coordinator, and its options. Tests and benchmarks reach further through `./internal`. */
export { startCoordinator, resolveCoordinatorOptions, type Coordinator, type CoordinatorOptions, type CoordinatorConfig } from './server.ts';
export type { EconomicsConfig } from './ledger/lease-economics.ts';
