/**
 * `gridwork sim trust`: runs the real coordinator — market, scheduler, ledger, lifecycle,
 * verification, capacity challenges — in this process on a fresh embedded store, with simulated
 * providers (sim-provider.ts) connected over the real WebSocket protocol, some of them cheating
 * (strategies.ts). One requester submits one-task jobs in batches of one per provider; after
 * each batch the simulation waits until the coordinator is quiet (no task queued or running, no
 * check open, every bus subscriber caught up) so that the next batch meets the same state in
 * every run, as far as the coordinator's own randomness allows. A whitewasher that was caught
 * leaves between batches and comes back under a new key with fresh stake. At the end every
 * pending result is left to settle, and the coordinator's database is read for the report
 * (trust-metrics.ts).
 */
import { constants } from 'node:fs';
import { access, mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { type CoordinatorOptions, startCoordinator } from '@gridwork/coordinator';
import { internalsOf } from '@gridwork/coordinator/internal';
import type { Asks, JobSpec } from '@gridwork/protocol';
import { type Identity, sha256Hex } from '@gridwork/protocol/node';
import { GridworkClient } from '@gridwork/sdk';
import { seededIdentity, shuffled, unitOf } from './seeded.ts';
import { type LeaseRecord, SimProvider } from './sim-provider.ts';
import { taskCommand } from './sim-task.ts';
import { behaviourOf, GROUP_SIZE, type Operator, type Role, STRATEGIES, type Strategy } from './strategies.ts';
import { measure, type SimKey } from './trust-metrics.ts';
import type { TrustReport } from './trust-report.ts';

export interface TrustSimOptions {
  /** Simulated providers, honest and cheating. @default 20 */
  providers?: number;
  /** Share of them that cheat, spread over the strategies in groups (7 make one group of each). @default 0.35 */
  cheaters?: number;
  /** One-task jobs submitted. @default 300 */
  jobs?: number;
  /** Everything the simulation decides by chance derives from it. @default '1' */
  seed?: string;
  /** Strategies to simulate (one group each, more while cheaters are left). @default all of STRATEGIES */
  strategies?: readonly Strategy[];
  /** Chance that wrong-q, colluding and whitewashing providers make a result up. @default 0.3 */
  q?: number;
  /** Progress lines for people. */
  onProgress?: (line: string) => void;
  /** The coordinator's log level (its log goes to stderr). @default 'silent' */
  logLevel?: string;
  /** Where the coordinator's store and blobs live for the run (removed after). @default a new directory under /dev/shm where it exists (memory), else the system's temp directory */
  dir?: string;
  /** Stops the run between steps (the store is removed all the same). */
  signal?: AbortSignal;
  /** Run the coordinator on this PostgreSQL instead of the embedded PGlite (with `databaseSchema` to keep runs apart). @default PGlite */
  databaseUrl?: string;
  databaseSchema?: string;
}

/** The simulation's fixed economy and trust settings (reported in the JSON document's params). */
export const SIM = {
  stake: '10',
  deposit: '20',
  minStake: '5',
  asks: { cpuCoreHour: '1', memoryGiBHour: '0.1', gpuHour: {} } satisfies Asks,
  maxPerHour: '2',
  budget: '1',
  /** Every honest provider measures this CPU class; challenges are sized from it. */
  cpuMopsPerCore: 50,
  /** fake-hardware claims this many times its real class. */
  fakeFactor: 10,
  /** Work of a small task, a large one (billed ms), and the share of large ones. */
  smallMs: [20_000, 60_000] as const,
  largeMs: [120_000, 300_000] as const,
  largeShare: 0.4,
  lazyAboveMs: 100_000,
  verification: {
    windowMs: 200,
    probationTasks: 10,
    minAuditRate: 0.01,
    canaryRate: 0.05,
    genesisFees: '1000',
    checkTimeoutMs: 60_000,
    minSlash: '1',
    slashMultiple: 100,
  },
  challenges: { meanIntervalMs: 15_000, workMs: 800, slack: 4, latencyMs: 3000, maxMemoryBytes: 256 * 1024, maxConsecutiveFailures: 3 },
  /** Billed run time may be claimed up to one metering period beyond the wall clock: tasks are tens of ms of wall time. */
  meteringIntervalMs: 600_000,
  /** Longest wait for the coordinator to become quiet after a batch. */
  quietTimeoutMs: 90_000,
} as const;

const SUBSCRIBERS = ['market-index', 'scheduler', 'provider-outbox', 'reputation', 'audit-counts', 'verification', 'capacity-challenges'];

/** Which role each provider slot plays: `count` cheaters in groups over `strategies`, in order, then round-robin. */
export function assignRoles(
  providers: number,
  cheaters: number,
  strategies: readonly Strategy[],
): { roles: Role[]; simulated: Strategy[]; notSimulated: Strategy[] } {
  const roles: Role[] = [];
  const simulated: Strategy[] = [];
  let left = Math.min(cheaters, providers);
  for (let round = 0; left > 0; round++) {
    let placed = false;
    for (const s of strategies) {
      const size = GROUP_SIZE[s];
      if (size > left) continue;
      for (let i = 0; i < size; i++) roles.push(s);
      left -= size;
      placed = true;
      if (round === 0) simulated.push(s);
    }
    if (!placed) break;
  }
  while (roles.length < providers) roles.push('honest');
  return { roles, simulated, notSimulated: strategies.filter((s) => !simulated.includes(s)) };
}

interface Slot {
  name: string;
  role: Role;
  operator: string;
  generation: number;
  provider: SimProvider;
  keys: SimKey[];
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** A RAM-backed directory where the system has one: the embedded store never waits on a disk. */
async function memoryDir(): Promise<string> {
  try {
    await access('/dev/shm', constants.W_OK);
    return '/dev/shm';
  } catch {
    return tmpdir();
  }
}

export async function runTrustSimulation(options: TrustSimOptions = {}): Promise<TrustReport> {
  const started = Date.now();
  const providers = options.providers ?? 20;
  const cheaterShare = options.cheaters ?? 0.35;
  const jobs = options.jobs ?? 300;
  const seed = options.seed ?? '1';
  const q = options.q ?? 0.3;
  const wanted = options.strategies ?? STRATEGIES;
  const say = options.onProgress ?? (() => {});
  if (!Number.isInteger(providers) || providers < 3)
    throw new RangeError('providers: at least 3 (a check needs a provider other than the checked one, a referee a third)');
  if (!(cheaterShare >= 0 && cheaterShare < 1)) throw new RangeError('cheaters: a share in [0, 1)');
  if (!Number.isInteger(jobs) || jobs < 1) throw new RangeError('jobs: at least 1');
  if (!(q > 0 && q <= 1)) throw new RangeError('q: a probability in (0, 1]');
  const cheaterCount = Math.round(providers * cheaterShare);
  if (providers - cheaterCount < 2) throw new RangeError('cheaters: at least two providers must be honest');
  const { roles, simulated, notSimulated } = assignRoles(providers, cheaterCount, wanted);

  const dir = await mkdtemp(join(options.dir ?? (await memoryDir()), 'gridwork-sim-'));
  const signal = options.signal;
  const checkAborted = () => {
    if (signal?.aborted) throw new Error('the simulation was stopped');
  };
  const errors: string[] = [];
  const onError = (m: string) => {
    if (errors.length < 100) errors.push(m);
  };
  const records = new Map<string, LeaseRecord>();
  const coordinatorOptions: CoordinatorOptions = {
    dataDir: join(dir, 'coordinator'),
    databaseUrl: options.databaseUrl ?? '',
    ...(options.databaseSchema ? { databaseSchema: options.databaseSchema } : {}),
    port: 0,
    dev: true,
    logLevel: options.logLevel ?? 'silent',
    // Each heartbeat is a write to the store: the default interval, and room for a stalled event loop.
    heartbeatIntervalMs: 5000,
    heartbeatMisses: 4,
    economics: { meteringIntervalMs: SIM.meteringIntervalMs },
    challenges: { ...SIM.challenges },
    verification: { ...SIM.verification },
  };
  say(options.databaseUrl ? 'starting a coordinator (PostgreSQL)' : `starting a coordinator (embedded PGlite under ${dir})`);
  const coordinator = await startCoordinator(coordinatorOptions);
  const slots: Slot[] = [];
  try {
    const url = coordinator.url;
    const requester = new GridworkClient({ url, identity: seededIdentity(seed, 'requester') });
    await requester.deposit('1000');
    const manifest = Buffer.from(JSON.stringify({ files: [] }));
    const manifestDigest = sha256Hex(manifest);
    await requester.uploadBlob(manifest, manifestDigest);

    // Which slot plays which role: a seeded shuffle, so roles do not follow names.
    const order = shuffled(
      roles.map((_, i) => i),
      seed,
      'roles',
    );
    const operators = new Map<string, Operator>();
    let collusionPair = 0;
    let inPair = 0;
    const enlist = async (slot: Omit<Slot, 'provider' | 'keys'> & { keys?: SimKey[] }): Promise<Slot> => {
      const label = `${slot.name}#${slot.generation}`;
      const identity: Identity = seededIdentity(seed, label);
      const account = new GridworkClient({ url, identity });
      await account.deposit(SIM.deposit);
      await account.stake(SIM.stake);
      const operator = slot.role === 'colluding' ? operators.get(slot.operator) : undefined;
      const behaviour = behaviourOf(slot.role, {
        seed,
        name: label,
        q,
        lazyAboveMs: SIM.lazyAboveMs,
        fakeFactor: SIM.fakeFactor,
        ...(operator ? { operator } : {}),
      });
      const provider = new SimProvider({
        url,
        identity,
        name: slot.name,
        behaviour,
        cpuMopsPerCore: SIM.cpuMopsPerCore,
        asks: SIM.asks,
        lateAnswerMs: (c) => (SIM.fakeFactor * (c.deadlineMs - SIM.challenges.latencyMs)) / SIM.challenges.slack,
        onFinished: (r) => records.set(r.leaseId, r),
        onError,
      });
      await provider.connect();
      const key: SimKey = { id: identity.publicKey, name: label, role: slot.role, operator: slot.operator, joinedAt: new Date(), leftAt: null };
      return { ...slot, provider, keys: [...(slot.keys ?? []), key] };
    };
    for (let i = 0; i < providers; i++) {
      const role = roles[order[i] as number] as Role;
      const name = `sim-${String(i).padStart(2, '0')}`;
      let operator = name;
      if (role === 'colluding') {
        operator = `operator-${collusionPair}`;
        if (!operators.has(operator)) operators.set(operator, { name: operator, answers: new Map() });
        if (++inPair === 2) {
          inPair = 0;
          collusionPair++;
        }
      }
      slots.push({ name, role, operator, generation: 0, provider: undefined as unknown as SimProvider, keys: [] });
    }
    say(`connecting ${providers} providers (${cheaterCount} cheating: ${simulated.join(', ') || 'none'})`);
    for (let i = 0; i < slots.length; i += 8) {
      const group = slots.slice(i, i + 8);
      const joined = await Promise.all(group.map((s) => enlist(s)));
      joined.forEach((s, k) => {
        slots[i + k] = s;
      });
    }

    const { db, bus } = internalsOf(coordinator);
    const quiet = async (what: string): Promise<void> => {
      const deadline = Date.now() + SIM.quietTimeoutMs;
      for (;;) {
        checkAborted();
        const head = bus.head();
        await Promise.all(SUBSCRIBERS.map((n) => bus.reached(n, head)));
        // The store is asked only once every subscriber has caught up: no query while events flow.
        if (bus.head() === head) {
          const busy = await db.selectFrom('tasks').select('id').where('state', 'in', ['queued', 'assigned', 'running']).limit(1).executeTakeFirst();
          const open = await db.selectFrom('verifications').select('id').where('state', '=', 'open').limit(1).executeTakeFirst();
          if (!busy && !open && bus.head() === head) return;
        }
        if (Date.now() > deadline) {
          onError(`${what}: the coordinator did not become quiet within ${SIM.quietTimeoutMs / 1000} s`);
          return;
        }
        await sleep(50);
      }
    };

    const batchSize = providers;
    const batches = Math.ceil(jobs / batchSize);
    for (let b = 0; b < batches; b++) {
      checkAborted();
      const from = b * batchSize;
      const to = Math.min(jobs, from + batchSize);
      await Promise.all(
        Array.from({ length: to - from }, (_, k) => {
          const i = from + k;
          const large = unitOf(seed, 'size', i) < SIM.largeShare;
          const [lo, hi] = large ? SIM.largeMs : SIM.smallMs;
          const workMs = Math.round(lo + unitOf(seed, 'work', i) * (hi - lo));
          const spec: JobSpec = {
            version: 1,
            name: `sim-${i}`,
            kind: 'batch',
            runtime: { kind: 'bundle', path: '.', command: taskCommand(seed, i, workMs) },
            resources: { cpu: 1, memoryGiB: 1 },
            price: { maxPerHour: SIM.maxPerHour, budget: SIM.budget },
            placement: { minStake: SIM.minStake },
            verification: { mode: 'exact' },
            queueTimeoutSeconds: 120,
          };
          return requester.submitPrepared({ spec, bundle: { manifest: manifestDigest }, inputs: [] }, { idempotencyKey: `sim-${seed}-${i}` });
        }),
      );
      await quiet(`batch ${b + 1}`);
      // Caught whitewashers leave and come back under a new key with fresh stake.
      for (const [i, slot] of slots.entries()) {
        if (slot.role !== 'whitewashing') continue;
        const current = slot.keys[slot.keys.length - 1] as SimKey;
        const p = await db.selectFrom('providers').select(['faults_proven', 'stake_slashed']).where('id', '=', current.id).executeTakeFirst();
        if (!p || (p.faults_proven === 0 && p.stake_slashed === 0n)) continue;
        await slot.provider.close();
        current.leftAt = new Date();
        // Whatever stake is not locked behind open work is unbonded on the way out.
        const old = new GridworkClient({ url, identity: seededIdentity(seed, current.name) });
        const bal = await old.balance();
        if (bal.stake !== '0') await old.unstake(bal.stake).catch(() => undefined);
        slots[i] = await enlist({ ...slot, generation: slot.generation + 1 });
        say(`  ${slot.name} (whitewashing) was caught: back as a new key`);
      }
      say(`batch ${b + 1}/${batches}: ${to} of ${jobs} jobs submitted`);
    }

    // Every result still pending settles once its window closes (the sweep runs each second).
    say('waiting for pending results to settle');
    const settleBy = Date.now() + SIM.quietTimeoutMs;
    for (;;) {
      await quiet('settling');
      const pending = await db.selectFrom('leases').select('id').where('verification', 'in', ['pending', 'disputed']).limit(1).executeTakeFirst();
      if (!pending) break;
      if (Date.now() > settleBy) {
        onError('results were still pending verification at the end');
        break;
      }
      await sleep(200);
    }
    const keys = slots.flatMap((s) => s.keys);
    return await measure({
      db,
      coordinator,
      keys,
      records,
      errors,
      started,
      params: {
        providers,
        cheaterShare,
        cheaters: cheaterCount,
        honest: providers - cheaterCount,
        jobs,
        seed,
        q,
        batchSize,
        strategies: simulated,
        notSimulated,
        stake: SIM.stake,
        minStake: SIM.minStake,
        verification: {
          windowMs: SIM.verification.windowMs,
          probationTasks: SIM.verification.probationTasks,
          minAuditRate: SIM.verification.minAuditRate,
          canaryRate: SIM.verification.canaryRate,
          minSlash: SIM.verification.minSlash,
          slashMultiple: SIM.verification.slashMultiple,
        },
        challenges: { meanIntervalMs: SIM.challenges.meanIntervalMs, maxConsecutiveFailures: SIM.challenges.maxConsecutiveFailures },
      },
    });
  } finally {
    await Promise.all(slots.map((s) => s.provider?.close()));
    await coordinator.close();
    await rm(dir, { recursive: true, force: true });
  }
}
