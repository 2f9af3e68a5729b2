export { type BundleRuntimeKind, ProviderAgent, type ProviderAgentOptions } from './agent.ts';
export { fixedPricing, scriptPricing, loadRates, type PricingPolicy, type FixedRates } from './pricing.ts';
export { detectHardware, parseNvidiaSmi, normalizeGpuModel } from './hardware.ts';
export type { ExposedPort, HealthCheck, RunningTask, Runtime, RunRequest, RunResult, TaskGpu, TaskHealth } from './runtime/runtime.ts';
export { createProcessRuntime } from './runtime/process-runtime.ts';
export { createSandboxRuntime } from './runtime/sandbox-runtime.ts';
export { ChallengeResponder, type ChallengeSolver, honestSolver, type SolvedChallenge } from './challenge-solver.ts';
