export { ProviderAgent, type ProviderAgentOptions } from './agent.ts';
export { fixedPricing, scriptPricing, loadRates, type PricingPolicy, type FixedRates } from './pricing.ts';
export { detectHardware, parseNvidiaSmi, normalizeGpuModel } from './hardware.ts';
export type { Runtime, RunRequest, RunResult } from './runtime/runtime.ts';
export { type ChallengeSolver, honestSolver, type SolvedChallenge } from './challenge-solver.ts';
