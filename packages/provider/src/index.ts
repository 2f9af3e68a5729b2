export { ProviderAgent, type ProviderAgentOptions } from './agent.ts';
export { detectHardware, parseNvidiaSmi, normalizeGpuModel } from './hardware.ts';
export type { Runtime, RunRequest, RunResult } from './runtime/runtime.ts';
