/**
 * Test support: real coordinators (PGlite or PostgreSQL), real provider agents, real clients,
 * temporary directories that clean themselves up. Nothing here is a mock.
 */
import { randomBytes } from 'node:crypto';
import { mkdir, mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { type Coordinator, type CoordinatorOptions, startCoordinator } from '@gridwork/coordinator';
import { type Identity, generateIdentity, loadOrCreateIdentity, sha256Hex } from '@gridwork/protocol/node';
import { ProviderAgent, type ProviderAgentOptions } from '@gridwork/provider';
import { GridworkClient } from '@gridwork/sdk';
import pg from 'pg';
import pino from 'pino';

export type StoreKind = 'pglite' | 'postgres';

/** PostgreSQL for tests: GRIDWORK_TEST_DATABASE_URL, else the local service every machine here runs. */
export function postgresUrl(): string {
  return process.env.GRIDWORK_TEST_DATABASE_URL ?? 'postgres://postgres@127.0.0.1:5432/test';
}

/** The NATS server of the tests (with JetStream); `.ci/run` starts one. */
export function natsUrl(): string {
  return process.env.GRIDWORK_TEST_NATS_URL ?? 'nats://127.0.0.1:4222';
}

/** Drops a schema a test made on the tests' PostgreSQL (with everything in it). */
export async function dropSchema(schema: string): Promise<void> {
  const client = new pg.Client({ connectionString: postgresUrl() });
  await client.connect();
  try {
    await client.query(`drop schema if exists "${schema}" cascade`);
  } finally {
    await client.end();
  }
}

/** A schema name unique to this test run, so suites can share one PostgreSQL database. */
export function uniqueSchema(prefix = 'gw_test'): string {
  return `${prefix}_${process.pid}_${randomBytes(4).toString('hex')}`;
}

export const silentLogger = () => pino({ level: process.env.GRIDWORK_TEST_LOG ?? 'silent' });

export async function tempDir(prefix = 'gridwork-test-'): Promise<{ path: string; remove: () => Promise<void> }> {
  const path = await mkdtemp(join(tmpdir(), prefix));
  return { path, remove: () => rm(path, { recursive: true, force: true }) };
}

export interface TestNetwork {
  coordinator: Coordinator;
  providers: ProviderAgent[];
  dir: string;
  client(identity?: Identity): GridworkClient;
  /** A client whose account holds `amount` credits from the dev faucet. @default '100' */
  fundedClient(amount?: string, identity?: Identity): Promise<GridworkClient>;
  addProvider(options?: Partial<ProviderAgentOptions>): Promise<ProviderAgent>;
  /** The key pair of a provider of this network (tests act as its account: stake, balance). */
  identityOf(agent: ProviderAgent): Identity;
  /** Funds a provider's account from the dev faucet and stakes it all (checkers must hold stake). */
  stake(agent: ProviderAgent, amount: string): Promise<void>;
  close(): Promise<void>;
}

export interface TestNetworkOptions {
  store?: StoreKind;
  providers?: number;
  provider?: Partial<ProviderAgentOptions>;
  coordinator?: Partial<CoordinatorOptions>;
}

/** A coordinator on a free loopback port plus N connected providers. */
export async function startTestNetwork(options: TestNetworkOptions = {}): Promise<TestNetwork> {
  const dir = await tempDir();
  const logger = silentLogger();
  const coordinator = await startCoordinator({
    dataDir: join(dir.path, 'coordinator'),
    port: 0,
    logger,
    // A provider is declared dead after 4 s of silence: fast enough for tests that kill one, and
    // far from a CPU stall of a loaded 2-core machine (300 ms × 3 once flaked).
    heartbeatIntervalMs: 1000,
    heartbeatMisses: 4,
    dev: true,
    economics: { meteringIntervalMs: 500 },
    // No capacity challenge by surprise (each costs a core for seconds), not even the one that
    // proves a new claim at hello: tests of L1 ask for them.
    challenges: { meanIntervalMs: 365 * 24 * 3600_000, proveOnHello: false },
    ...(options.store === 'postgres' ? { databaseUrl: postgresUrl(), databaseSchema: uniqueSchema() } : { databaseUrl: '' }),
    ...options.coordinator,
    // Results are paid at once and audited only when a test asks (an audit needs a second
    // provider; a seeded verification fund would change the fee totals tests check).
    verification: { windowMs: 0, probationTasks: 0, minAuditRate: 0, maxAuditRate: 0, canaryRate: 0, genesisFees: '0', ...options.coordinator?.verification },
  });
  const providers: ProviderAgent[] = [];
  const identities = new Map<ProviderAgent, Identity>();
  let n = 0;
  const addProvider = async (extra: Partial<ProviderAgentOptions> = {}) => {
    const i = n++;
    const dataDir = extra.dataDir ?? options.provider?.dataDir ?? join(dir.path, `provider-${i}`);
    // The agent never hands out its key: the test makes the key file first and keeps the pair.
    await mkdir(dataDir, { recursive: true, mode: 0o700 });
    const identity = await loadOrCreateIdentity(join(dataDir, 'provider-key.json'));
    const agent = await ProviderAgent.create({
      coordinatorUrl: coordinator.url,
      dataDir,
      name: `provider-${i}`,
      gpus: 'none',
      slots: 2,
      logger,
      ...options.provider,
      ...extra,
    });
    agent.start();
    providers.push(agent);
    identities.set(agent, identity);
    return agent;
  };
  for (let i = 0; i < (options.providers ?? 0); i++) await addProvider();
  return {
    coordinator,
    providers,
    dir: dir.path,
    addProvider,
    identityOf(agent) {
      const identity = identities.get(agent);
      if (!identity) throw new Error(`provider ${agent.name} is not part of this test network`);
      return identity;
    },
    async stake(agent, amount) {
      const identity = identities.get(agent);
      if (!identity) throw new Error(`provider ${agent.name} is not part of this test network`);
      const c = new GridworkClient({ url: coordinator.url, identity });
      await c.deposit(amount);
      await c.stake(amount);
    },
    client: (identity = generateIdentity()) => new GridworkClient({ url: coordinator.url, identity }),
    async fundedClient(amount = '100', identity = generateIdentity()) {
      const c = new GridworkClient({ url: coordinator.url, identity });
      await c.deposit(amount);
      return c;
    },
    async close() {
      await Promise.all(providers.map((p) => p.close()));
      await coordinator.close();
      await dir.remove();
    },
  };
}

/** Resolves when `predicate` holds for a fresh read, re-checking on each `changed` notification or every `pollMs`. */
export async function until<T>(
  read: () => Promise<T>,
  predicate: (value: T) => boolean,
  options: { timeoutMs?: number; pollMs?: number; what?: string } = {},
): Promise<T> {
  const deadline = Date.now() + (options.timeoutMs ?? 20_000);
  for (;;) {
    const value = await read();
    if (predicate(value)) return value;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${options.what ?? 'condition'}; last value: ${JSON.stringify(value, (_k, v: unknown) => (typeof v === 'bigint' ? v.toString() : v))?.slice(0, 500)}`);
    await new Promise((r) => setTimeout(r, options.pollMs ?? 50));
  }
}

/** Uploads a one-file bundle (a script that exits 0) and its manifest as `client`'s blobs; `note` makes its bytes unique. */
export async function uploadTinyBundle(client: GridworkClient, note = ''): Promise<{ manifest: string }> {
  const file = Buffer.from(`process.exit(0);${note ? ` // ${note}` : ''}\n`);
  const fileDigest = sha256Hex(file);
  await client.uploadBlob(file, fileDigest);
  const manifest = Buffer.from(JSON.stringify({ files: [{ path: 'main.mjs', digest: fileDigest, size: file.length, executable: false }] }));
  const manifestDigest = sha256Hex(manifest);
  await client.uploadBlob(manifest, manifestDigest);
  return { manifest: manifestDigest };
}

export { generateIdentity };
