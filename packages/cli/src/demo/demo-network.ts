/**
 * The full demo's network on this machine: an embedded coordinator (PGlite, dev mode) tuned so
 * that a couple of minutes show what takes hours on a real network, and provider agents that
 * each have their own key, account and stake. It owns everything it starts: `close()` stops it.
 *
 * Tuning, and why: heartbeats every second (a dead provider is noticed within 3 s); a 3-second
 * audit window; every new provider on probation until one audit of its results passed, and no
 * random audits after that (so the demo audits what it shows and no more, on 2 cores);
 * no canaries (a canary the cheater answered honestly would end its probation); one small capacity
 * challenge per provider as it joins (a benchmark counts only once proven), none at random.
 */
import { mkdir } from 'node:fs/promises';
import { join } from 'node:path';
import type { Coordinator } from '@gridwork/coordinator';
import type { Identity } from '@gridwork/protocol/node';
import type { ProviderAgent, ProviderAgentOptions } from '@gridwork/provider';
import type { GridworkClient } from '@gridwork/sdk';
import type pino from 'pino';

export interface ProviderProfile {
  name: string;
  /** Ask per core-hour, credits. */
  cpuCoreHour: string;
  /** The CPU benchmark it publishes (millions of integer multiply-adds per second per core). */
  cpuMopsPerCore: number;
  /** Fakes the results of the requester's batch jobs (cheater.ts). */
  cheats: boolean;
  /** What it is in the demo's story. */
  story: string;
}

/**
 * The market: price per unit of benchmark throughput decides who works first (lower is better).
 * provider-1 is the best buy (it gets the training, and dies); the cheater asks the lowest price
 * and comes next, so it gets real batch work; provider-5 replaces provider-1.
 */
export const ROSTER: readonly ProviderProfile[] = [
  { name: 'provider-1', cpuCoreHour: '3.00', cpuMopsPerCore: 200, cheats: false, story: 'fast; killed mid-training' },
  { name: 'provider-2', cpuCoreHour: '2.00', cpuMopsPerCore: 100, cheats: true, story: 'cheapest; fakes batch results' },
  { name: 'provider-3', cpuCoreHour: '3.50', cpuMopsPerCore: 150, cheats: false, story: 'honest' },
  { name: 'provider-4', cpuCoreHour: '4.00', cpuMopsPerCore: 160, cheats: false, story: 'honest' },
];
export const REPLACEMENT: ProviderProfile = {
  name: 'provider-5',
  cpuCoreHour: '3.20',
  cpuMopsPerCore: 210,
  cheats: false,
  story: 'joins to replace provider-1',
};

/** Credits each provider gets from the faucet, and how many of them it stakes. */
export const PROVIDER_FUNDS = '20';
export const PROVIDER_STAKE = '10';
/** Tasks a demo provider runs at once: one, so work (and a cluster's members) spreads across providers. */
const SLOTS = 1;

export const DEMO_VERIFICATION = {
  windowMs: 3000,
  probationTasks: 1,
  minAuditRate: 0,
  maxAuditRate: 1,
  canaryRate: 0,
  genesisFees: '100',
  checkTimeoutMs: 90_000,
} as const;

export interface DemoProvider {
  profile: ProviderProfile;
  agent: ProviderAgent;
  /** The provider's own account, signed with its key: balance, stake, its record (GET /v1/providers/me). */
  account: GridworkClient;
  /** Available and staked credits once staked, before any work. */
  start: { available: string; stake: string };
  killed: boolean;
}

/** Called just before a checkpoint a task wrote is uploaded: which provider, job, lease and step. */
export type CheckpointListener = (provider: string, jobId: string, leaseId: string, step: number) => void;

export interface DemoNetworkOptions {
  dataDir: string;
  logger: pino.Logger;
  /** @default sandbox, falling back to process where bubblewrap cannot run */
  runtime?: 'sandbox' | 'process';
  warn: (line: string) => void;
  resultTamperFor: (profile: ProviderProfile) => ProviderAgentOptions['resultTamper'];
  onCheckpoint: CheckpointListener;
}

export class DemoNetwork {
  readonly providers: DemoProvider[] = [];
  private constructor(
    readonly coordinator: Coordinator,
    private readonly options: DemoNetworkOptions,
    public runtime: 'sandbox' | 'process',
  ) {}

  static async start(options: DemoNetworkOptions): Promise<DemoNetwork> {
    const { startCoordinator } = await import('@gridwork/coordinator');
    const coordinator = await startCoordinator({
      dataDir: join(options.dataDir, 'coordinator'),
      port: 0,
      logger: options.logger,
      dev: true,
      heartbeatIntervalMs: 1000,
      heartbeatMisses: 3,
      economics: { meteringIntervalMs: 1000 },
      // One small capacity challenge at each provider's hello (a published benchmark counts for
      // its score only once proven), and none at random afterwards (each takes a core for a while).
      challenges: { meanIntervalMs: 365 * 24 * 3600_000, workMs: 1000, maxMemoryBytes: 16 * 1024 * 1024, proveOnHello: true },
      verification: DEMO_VERIFICATION,
    });
    return new DemoNetwork(coordinator, options, options.runtime ?? 'sandbox');
  }

  get url(): string {
    return this.coordinator.url;
  }

  byName(name: string): DemoProvider {
    const p = this.providers.find((x) => x.profile.name === name);
    if (!p) throw new Error(`no demo provider ${name}`);
    return p;
  }

  byId(id: string | null | undefined): DemoProvider | undefined {
    return this.providers.find((p) => p.agent.id === id);
  }

  /** A client for an account of this coordinator. */
  async client(identity: Identity): Promise<GridworkClient> {
    const { GridworkClient } = await import('@gridwork/sdk');
    return new GridworkClient({ url: this.url, identity });
  }

  /**
   * Creates a provider — its key file first (the agent never hands its key out), its account
   * funded from the faucet and staked — then its agent; `start` connects it to the market.
   */
  async prepareProvider(profile: ProviderProfile): Promise<DemoProvider> {
    const { loadOrCreateIdentity } = await import('@gridwork/sdk');
    const dataDir = join(this.options.dataDir, profile.name);
    await mkdir(dataDir, { recursive: true, mode: 0o700 });
    const identity = await loadOrCreateIdentity(join(dataDir, 'provider-key.json'));
    const account = await this.client(identity);
    await account.deposit(PROVIDER_FUNDS, { idempotencyKey: `demo-faucet-${profile.name}` });
    const staked = await account.stake(PROVIDER_STAKE, { idempotencyKey: `demo-stake-${profile.name}` });
    const agent = await this.createAgent(profile, dataDir);
    const p: DemoProvider = { profile, agent, account, start: { available: staked.available, stake: staked.stake }, killed: false };
    this.providers.push(p);
    return p;
  }

  async addProvider(profile: ProviderProfile): Promise<DemoProvider> {
    const p = await this.prepareProvider(profile);
    await this.start(p);
    return p;
  }

  /** Connects a prepared provider and waits until its capacity challenge proved its benchmark. */
  async start(p: DemoProvider): Promise<void> {
    p.agent.start();
    const deadline = Date.now() + 90_000;
    for (;;) {
      const s = await p.account.providerStatus().catch(() => null);
      if (s && s.challenges.passed >= 1) return;
      if (s && s.challenges.failed >= 1) throw new Error(`${p.profile.name} failed its capacity challenge (is the machine overloaded?)`);
      if (Date.now() > deadline) throw new Error(`${p.profile.name} did not prove its benchmark within 90 s`);
      await new Promise((r) => setTimeout(r, 200));
    }
  }

  /** Abrupt death: the agent stops at once, its running task is killed and never reported. */
  async kill(p: DemoProvider): Promise<void> {
    p.killed = true;
    await p.agent.close();
  }

  private async createAgent(profile: ProviderProfile, dataDir: string): Promise<ProviderAgent> {
    const { GridworkError } = await import('@gridwork/protocol');
    const { fixedPricing, ProviderAgent } = await import('@gridwork/provider');
    const tamper = this.options.resultTamperFor(profile);
    const create = () =>
      ProviderAgent.create({
        coordinatorUrl: this.url,
        dataDir,
        name: profile.name,
        runtime: this.runtime,
        containers: 'off',
        gpus: 'auto',
        slots: SLOTS,
        logger: this.options.logger,
        pricing: fixedPricing({ cpuCoreHour: profile.cpuCoreHour, memoryGiBHour: '0.01' }),
        benchmarks: { cpuMopsPerCore: profile.cpuMopsPerCore, gpu: {} },
        ...(tamper ? { resultTamper: tamper } : {}),
        // Not a tamper: it only watches (the demo kills a provider once its checkpoints are up).
        checkpointTamper: async (_file, step, lease) => this.options.onCheckpoint(profile.name, lease.jobId, lease.leaseId, step),
      });
    try {
      return await create();
    } catch (err) {
      if (!(err instanceof GridworkError && err.code === 'SANDBOX_UNAVAILABLE') || this.options.runtime) throw err;
      this.options.warn(`bubblewrap sandbox unavailable (${err.message}); the demo falls back to the UNSANDBOXED process runtime`);
      this.runtime = 'process';
      return create();
    }
  }

  async close(): Promise<void> {
    await Promise.all(this.providers.filter((p) => !p.killed).map((p) => p.agent.close()));
    await this.coordinator.close();
  }
}
