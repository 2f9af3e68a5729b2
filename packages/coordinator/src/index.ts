export { startCoordinator, resolveCoordinatorOptions, type Coordinator, type CoordinatorOptions, type CoordinatorConfig } from './server.ts';
export { openDatabase, type Db, type DatabaseOptions } from './store/database.ts';
export type { Matcher, Candidate, Placement } from './scheduler/matcher.ts';
