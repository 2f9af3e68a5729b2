/**
 * @gridwork/sim — simulations that run the real coordinator in-process with simulated providers
 * speaking the real provider wire protocol. `runTrustSimulation` is `gridwork sim trust`: honest
 * and cheating providers, what the trust layers catch, what cheating earns and costs.
 * `runLoadSimulation` is `gridwork sim load`: a fleet of light providers against coordinator
 * replicas (processes the caller starts), for G3, G4, G6 and G7.
 */
export { runTrustSimulation, assignRoles, SIM, type TrustSimOptions } from './trust-sim.ts';
export { formatTrustReport, type TrustReport, type StrategyResult, type Overhead, type Goal } from './trust-report.ts';
export { STRATEGIES, isStrategy, type Strategy, type Role } from './strategies.ts';
export { SimProvider, type SimProviderOptions, type LeaseRecord } from './sim-provider.ts';
export { identityFromSeed, seededIdentity } from './seeded.ts';
export { runLoadSimulation, formatLoadReport, type LoadSimOptions, type LoadReport, type ReplicaHandle } from './load-sim.ts';
export { SimulatedProvider, type SimulatedProviderOptions } from './wire-provider.ts';
