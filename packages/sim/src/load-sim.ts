/**
 * `gridwork sim load` (issue 15, item 5): a fleet of light simulated providers (wire-provider.ts:
 * real WebSockets, the real wire protocol, nothing run) against R real coordinator processes on
 * one PostgreSQL schema and NATS, and requesters submitting one-task jobs at a steady rate through
 * the signed API. What it measures, on this machine, with the fleet stated next to each figure:
 *
 *  - G6: coordinator memory per connected provider: the replicas' resident memory with the fleet
 *    connected and idle, less before it connected, per 1,000 providers (and scaled to 10,000);
 *  - G7: coordinator CPU spent while the fleet only heartbeats, as a share of one core, scaled to
 *    10,000 providers;
 *  - G3: placements committed per second under the offered rate (a lease reaching its provider);
 *  - G4: submit → running (the provider's `lease.started` applied) p50 and p99 under that load;
 *  - failure detection: providers that go silent without closing their sockets, until their
 *    rows say offline;
 *  - leader failover (R > 1): SIGKILL of the leader until another replica says it leads.
 *
 * Processes are the caller's (the CLI spawns `gridwork coordinator start`); CPU and memory are
 * read from /proc (Linux). The schema is created for the run and dropped after it.
 */
import { randomBytes } from 'node:crypto';
import { mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { JobSpec } from '@gridwork/protocol';
import { generateIdentity, GridworkClient, packBundle } from '@gridwork/sdk';
import pg from 'pg';
import { nowMs, SimulatedProvider } from './wire-provider.ts';

export interface ReplicaHandle {
  readonly url: string;
  readonly pid: number;
  kill9(): Promise<void>;
  stop(): Promise<void>;
}

export interface LoadSimOptions {
  providers: number;
  replicas: number;
  /** Jobs submitted per second during the load phase. */
  rate: number;
  seconds: number;
  /** @default 4 */
  slots?: number;
  /** How long a simulated task "runs". @default 200 */
  taskMs?: number;
  /** The replicas' provider heartbeat interval (lost after 3 missed). @default 5000 */
  heartbeatMs?: number;
  /** Length of each idle CPU window (without the fleet, then with it). @default max(10 s, two heartbeats) */
  idleMs?: number;
  /** Providers silenced to time failure detection. @default 10 (at most a tenth of the fleet) */
  silenced?: number;
  databaseUrl: string;
  natsUrl?: string;
  /** Starts replica `i` as a process with `env` added (database, schema, NATS, heartbeat); resolves when it listens. */
  startReplica: (i: number, env: Record<string, string>, heartbeatMs: number) => Promise<ReplicaHandle>;
  onProgress?: (line: string) => void;
  signal?: AbortSignal;
}

export interface LoadReport {
  fleet: { providers: number; replicas: number; slots: number; heartbeatMs: number; connected: number; connectSeconds: number };
  memory: { baselineMiB: number; withFleetMiB: number; perThousandProvidersMiB: number; perTenThousandMiB: number };
  /** CPU of the replicas with the fleet connected and idle, less without it (`idleShareOfCore`), as a share of one core. */
  heartbeats: { windowSeconds: number; idleShareOfCore: number; cpuShareOfCore: number; perTenThousandShareOfCore: number };
  /** `placed`: jobs whose task reached a provider; `leases`: placements (more when a lease was lost and its task placed again). */
  load: { offeredPerSecond: number; seconds: number; submitted: number; placed: number; leases: number; placementsPerSecond: number; submitToRunningMs: Percentiles; errors: number };
  failureDetection: { silenced: number; detectedMs: Percentiles | null; undetected: number };
  failover: { ms: number | null };
  goals: { id: string; target: string; measured: string; met: boolean }[];
  errors: string[];
}

export interface Percentiles {
  n: number;
  p50: number;
  p99: number;
  max: number;
}

const CLK_TCK = 100; // Linux's USER_HZ: /proc/<pid>/stat counts CPU time in 1/100 s

async function cpuSeconds(pid: number): Promise<number> {
  const stat = await readFile(`/proc/${pid}/stat`, 'utf8');
  // Fields after the command name (which may hold spaces, in parentheses): utime is field 14, stime 15.
  const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  return (Number(fields[11]) + Number(fields[12])) / CLK_TCK;
}

/** The replicas' CPU over `ms`, as a share of one core. */
async function cpuShareOver(replicas: readonly ReplicaHandle[], ms: number, signal?: AbortSignal): Promise<number> {
  const before = await Promise.all(replicas.map((r) => cpuSeconds(r.pid)));
  const t0 = nowMs();
  await sleep(ms, signal);
  const after = await Promise.all(replicas.map((r) => cpuSeconds(r.pid)));
  return after.reduce((sum, x, k) => sum + (x - (before[k] ?? 0)), 0) / ((nowMs() - t0) / 1000);
}

async function rssMiB(pid: number): Promise<number> {
  const status = await readFile(`/proc/${pid}/status`, 'utf8');
  const kb = Number(/VmRSS:\s+(\d+)/.exec(status)?.[1] ?? 0);
  return kb / 1024;
}

function percentiles(values: number[]): Percentiles {
  const s = [...values].sort((a, b) => a - b);
  const at = (p: number) => s[Math.min(s.length - 1, Math.floor(p * s.length))] ?? 0;
  return { n: s.length, p50: round(at(0.5)), p99: round(at(0.99)), max: round(s[s.length - 1] ?? 0) };
}

const round = (x: number, digits = 1) => Math.round(x * 10 ** digits) / 10 ** digits;
const sleep = (ms: number, signal?: AbortSignal) =>
  new Promise<void>((resolve) => {
    const done = () => {
      clearTimeout(t);
      signal?.removeEventListener('abort', done);
      resolve();
    };
    const t = setTimeout(done, ms);
    signal?.addEventListener('abort', done, { once: true });
  });

export async function runLoadSimulation(o: LoadSimOptions): Promise<LoadReport> {
  const slots = o.slots ?? 4;
  const taskMs = o.taskMs ?? 200;
  const heartbeatMs = o.heartbeatMs ?? 5000;
  if (o.providers < 1 || o.replicas < 1 || o.rate <= 0 || o.seconds <= 0) throw new RangeError('--providers, --replicas, --rate and --seconds must be positive');
  const progress = o.onProgress ?? (() => {});
  const schema = `gw_simload_${randomBytes(4).toString('hex')}`;
  const env: Record<string, string> = { GRIDWORK_DATABASE_URL: o.databaseUrl, GRIDWORK_DATABASE_SCHEMA: schema, ...(o.natsUrl ? { GRIDWORK_NATS_URL: o.natsUrl } : {}) };
  const admin = new pg.Client({ connectionString: o.databaseUrl });
  await admin.connect();
  const dir = await mkdtemp(join(tmpdir(), 'gridwork-simload-'));
  const replicas: (ReplicaHandle | undefined)[] = [];
  const fleet: SimulatedProvider[] = [];
  const errors: string[] = [];
  // Closed sockets are expected once providers are silenced and the leader killed: not errors then.
  let faulting = false;
  const onError = (m: string) => {
    if (!faulting && errors.length < 100) errors.push(m);
  };
  // By lease: when it reached its provider (and its job) and when its start was applied; by job: when its submit began.
  const assigned = new Map<string, { jobId: string; at: number }>();
  const started = new Map<string, number>();
  const submittedAt = new Map<string, number>();
  try {
    // Replicas, one after the other (the first creates and migrates the schema).
    for (let i = 0; i < o.replicas; i++) {
      replicas.push(await o.startReplica(i, env, heartbeatMs));
      progress(`replica ${i} listening at ${replicas[i]?.url}`);
    }
    const live = () => replicas.filter((r): r is ReplicaHandle => r !== undefined);
    // Idle without a fleet, over the same window as with it below: what the replicas spend anyway (polls, sweeps).
    const windowMs = o.idleMs ?? Math.max(10_000, 2 * heartbeatMs);
    await sleep(2000, o.signal);
    const idleCpu = await cpuShareOver(live(), windowMs, o.signal);
    const baseline = (await Promise.all(live().map((r) => rssMiB(r.pid)))).reduce((a, b) => a + b, 0);

    // The fleet: provider i on replica i mod R, connected 100 at a time.
    const c0 = nowMs();
    for (let i = 0; i < o.providers && !o.signal?.aborted; i += 100) {
      const batch = Array.from({ length: Math.min(100, o.providers - i) }, (_, k) => {
        const n = i + k;
        return new SimulatedProvider({
          url: live()[n % live().length]?.url as string,
          name: `sim-${n}`,
          slots,
          cores: slots,
          taskMs,
          onAssign: (lease, at) => assigned.set(lease.leaseId, { jobId: lease.jobId, at }),
          onApplied: (leaseId, what, at) => {
            if (what === 'started') started.set(leaseId, at);
          },
          onError,
        });
      });
      const results = await Promise.allSettled(batch.map((p) => p.connect(60_000)));
      for (const [k, r] of results.entries()) {
        if (r.status === 'fulfilled') fleet.push(batch[k] as SimulatedProvider);
        else onError(`sim-${i + k}: ${String(r.reason)}`);
      }
      if ((i / 100) % 10 === 9) progress(`${fleet.length} providers connected`);
    }
    const connectSeconds = (nowMs() - c0) / 1000;
    progress(`${fleet.length} of ${o.providers} providers connected in ${round(connectSeconds)} s`);

    // Idle: only heartbeats. Two heartbeat intervals to settle (and the first flushes), then measure.
    await sleep(2 * heartbeatMs, o.signal);
    const fleetCpu = await cpuShareOver(live(), windowMs, o.signal);
    const cpuShare = Math.max(0, fleetCpu - idleCpu);
    const withFleet = (await Promise.all(live().map((r) => rssMiB(r.pid)))).reduce((a, b) => a + b, 0);
    const perThousand = fleet.length > 0 ? ((withFleet - baseline) / fleet.length) * 1000 : 0;
    progress(
      `idle with the fleet: ${round(fleetCpu * 100)}% of a core (${round(idleCpu * 100)}% without it), ${round(withFleet)} MiB resident (${round(baseline)} before)`,
    );

    // Load: one-task jobs at `rate` per second for `seconds`, from requesters spread over the replicas.
    const requesters = Array.from({ length: Math.min(16, Math.max(1, Math.ceil(o.rate / 10))) }, (_, k) => {
      const urls = live().map((r) => r.url);
      return new GridworkClient({ url: [...urls.slice(k % urls.length), ...urls.slice(0, k % urls.length)], identity: generateIdentity() });
    });
    await mkdir(join(dir, 'bundle'));
    await writeFile(join(dir, 'bundle', 'task.mjs'), 'console.log("a simulated task");\n');
    const bundle = await packBundle(join(dir, 'bundle'));
    for (const c of requesters) {
      await c.deposit('1000');
      for (const f of bundle.files) await c.uploadBlob(await readFile(f.absPath), f.digest);
      await c.uploadBlob(bundle.manifestBytes, bundle.manifestDigest);
    }
    const spec = (key: string): JobSpec => ({
      version: 1,
      name: `load-${key}`,
      kind: 'batch',
      runtime: { kind: 'bundle', path: './bundle', command: ['node', 'task.mjs'] },
      resources: { cpu: 1, memoryGiB: 1 },
      price: { maxPerHour: '1', budget: '0.05' },
    });
    const total = Math.round(o.rate * o.seconds);
    let submitErrors = 0;
    const inFlight: Promise<void>[] = [];
    const l0 = nowMs();
    for (let n = 0; n < total && !o.signal?.aborted; n++) {
      // Paced: job n leaves at n / rate seconds (an open loop: a slow coordinator does not slow the offer).
      const due = l0 + (n / o.rate) * 1000;
      const wait = due - nowMs();
      if (wait > 1) await sleep(wait, o.signal);
      const key = String(n);
      const client = requesters[n % requesters.length] as GridworkClient;
      const at = nowMs();
      inFlight.push(
        client
          .submitPrepared({ spec: spec(key), bundle: { manifest: bundle.manifestDigest }, inputs: [] })
          .then((view) => {
            submittedAt.set(view.id, at);
          })
          .catch((err: Error) => {
            submitErrors++;
            onError(`submit ${key}: ${err.message}`);
          }),
      );
    }
    await Promise.all(inFlight);
    // Until every submitted job's task runs, or 30 s more (a saturated network leaves some queued).
    const deadline = nowMs() + 30_000;
    while (nowMs() < deadline && started.size < submittedAt.size && !o.signal?.aborted) await sleep(100, o.signal);
    const loadSeconds = (nowMs() - l0) / 1000;
    // Per job: from its submit until its task first ran (a job whose lease was lost and placed again counts once).
    const firstRun = new Map<string, number>();
    for (const [leaseId, a] of assigned) {
      const s = started.get(leaseId);
      const t = submittedAt.get(a.jobId);
      if (s !== undefined && t !== undefined) firstRun.set(a.jobId, Math.min(s - t, firstRun.get(a.jobId) ?? Number.POSITIVE_INFINITY));
    }
    const latencies = [...firstRun.values()];
    const placedJobs = new Set([...assigned.values()].map((a) => a.jobId)).size;
    const placementTimes = [...assigned.values()].map((a) => a.at).sort((a, b) => a - b);
    const span = placementTimes.length > 1 ? ((placementTimes.at(-1) as number) - (placementTimes[0] as number)) / 1000 : loadSeconds;
    const placementsPerSecond = span > 0 ? placementTimes.length / span : 0;
    progress(`load: ${submittedAt.size} submitted, ${placedJobs} placed (${assigned.size} leases), ${round(placementsPerSecond)} placements/s`);

    // Failure detection: providers silent with their sockets open, until their rows say offline.
    const silenced = fleet.slice(0, Math.min(o.silenced ?? 10, Math.max(1, Math.floor(fleet.length / 10))));
    faulting = true;
    const s0 = nowMs();
    for (const p of silenced) p.silence();
    const detected = new Map<string, number>();
    const detectDeadline = s0 + 6 * heartbeatMs + 30_000;
    while (detected.size < silenced.length && nowMs() < detectDeadline && !o.signal?.aborted) {
      const { rows } = await admin.query<{ id: string }>(`select id from "${schema}".providers where state = 'offline' and id = any($1)`, [silenced.map((p) => p.id)]);
      for (const r of rows) if (!detected.has(r.id)) detected.set(r.id, nowMs() - s0);
      await sleep(100, o.signal);
    }
    progress(`failure detection: ${detected.size} of ${silenced.length} silent providers offline`);

    // Leader failover: SIGKILL the leader, until another replica says it leads.
    let failoverMs: number | null = null;
    if (live().length > 1) {
      const roles = await Promise.all(live().map((r) => roleOf(r.url)));
      const leaderAt = roles.indexOf('leader');
      const leader = live()[leaderAt];
      if (leader) {
        const rest = live().filter((r) => r !== leader);
        const k0 = nowMs();
        await leader.kill9();
        replicas[replicas.indexOf(leader)] = undefined;
        while (nowMs() - k0 < 30_000 && !o.signal?.aborted) {
          if ((await Promise.all(rest.map((r) => roleOf(r.url)))).includes('leader')) {
            failoverMs = nowMs() - k0;
            break;
          }
          await sleep(20, o.signal);
        }
        progress(`leader failover: ${failoverMs === null ? 'none within 30 s' : `${Math.round(failoverMs)} ms`}`);
      }
    }

    const g4 = percentiles(latencies);
    const perTen = cpuShare * (10_000 / Math.max(1, fleet.length));
    const goals = [
      { id: 'G3', target: '≥ 2,000 placements/s', measured: `${round(placementsPerSecond)}/s at ${o.rate} jobs/s offered`, met: placementsPerSecond >= 2000 },
      { id: 'G4', target: 'submit→running p50 ≤ 5 ms, p99 ≤ 50 ms', measured: `p50 ${g4.p50} ms, p99 ${g4.p99} ms (under load)`, met: g4.n > 0 && g4.p50 <= 5 && g4.p99 <= 50 },
      { id: 'G6', target: '≤ 256 MiB per 10,000 providers', measured: `${round(perThousand * 10)} MiB per 10,000 (from ${fleet.length})`, met: perThousand * 10 <= 256 },
      { id: 'G7', target: '10,000 providers ≤ 10% of a core', measured: `${round(perTen * 100)}% per 10,000 (from ${fleet.length})`, met: perTen <= 0.1 },
    ];
    return {
      fleet: { providers: o.providers, replicas: o.replicas, slots, heartbeatMs, connected: fleet.length, connectSeconds: round(connectSeconds) },
      memory: { baselineMiB: round(baseline), withFleetMiB: round(withFleet), perThousandProvidersMiB: round(perThousand), perTenThousandMiB: round(perThousand * 10) },
      heartbeats: { windowSeconds: round(windowMs / 1000), idleShareOfCore: round(idleCpu, 4), cpuShareOfCore: round(cpuShare, 4), perTenThousandShareOfCore: round(perTen, 4) },
      load: {
        offeredPerSecond: o.rate,
        seconds: round(loadSeconds),
        submitted: submittedAt.size,
        placed: placedJobs,
        leases: assigned.size,
        placementsPerSecond: round(placementsPerSecond),
        submitToRunningMs: g4,
        errors: submitErrors,
      },
      failureDetection: { silenced: silenced.length, detectedMs: detected.size > 0 ? percentiles([...detected.values()]) : null, undetected: silenced.length - detected.size },
      failover: { ms: failoverMs === null ? null : Math.round(failoverMs) },
      goals,
      errors,
    };
  } finally {
    await Promise.all(fleet.map((p) => p.close()));
    await Promise.all(replicas.map((r) => r?.stop()));
    await admin.query(`drop schema if exists "${schema}" cascade`).catch(() => undefined);
    await admin.end();
    await rm(dir, { recursive: true, force: true });
  }
}

async function roleOf(url: string): Promise<string> {
  try {
    return ((await (await fetch(`${url}/healthz`, { signal: AbortSignal.timeout(1000) })).json()) as { role: string }).role;
  } catch {
    return 'down';
  }
}

/** The report as lines for a terminal. */
export function formatLoadReport(r: LoadReport): string[] {
  const f = r.fleet;
  return [
    `fleet: ${f.connected} of ${f.providers} simulated providers × ${f.slots} slots on ${f.replicas} replica(s), heartbeat ${f.heartbeatMs} ms, connected in ${f.connectSeconds} s`,
    `memory: ${r.memory.withFleetMiB} MiB resident with the fleet (${r.memory.baselineMiB} before): ${r.memory.perThousandProvidersMiB} MiB per 1,000 providers`,
    `heartbeats: ${(r.heartbeats.cpuShareOfCore * 100).toFixed(2)}% of a core over ${r.heartbeats.windowSeconds} s with the fleet idle, above ${(r.heartbeats.idleShareOfCore * 100).toFixed(2)}% without it (${(r.heartbeats.perTenThousandShareOfCore * 100).toFixed(2)}% per 10,000)`,
    `load: ${r.load.submitted} jobs submitted at ${r.load.offeredPerSecond}/s, ${r.load.placed} placed, ${r.load.placementsPerSecond} placements/s; submit→running p50 ${r.load.submitToRunningMs.p50} ms, p99 ${r.load.submitToRunningMs.p99} ms; ${r.load.errors} submit error(s)`,
    `failure detection: ${r.failureDetection.silenced} silent providers, offline after p50 ${r.failureDetection.detectedMs?.p50 ?? '-'} ms, max ${r.failureDetection.detectedMs?.max ?? '-'} ms; ${r.failureDetection.undetected} not detected`,
    `leader failover: ${r.failover.ms === null ? 'not measured (one replica)' : `${r.failover.ms} ms`}`,
    '',
    'goal  target                                   measured                                      met',
    ...r.goals.map((g) => `${g.id.padEnd(5)} ${g.target.padEnd(40)} ${g.measured.padEnd(45)} ${g.met ? 'yes' : 'no'}`),
    ...(r.errors.length > 0 ? ['', `errors (${r.errors.length}, first 5):`, ...r.errors.slice(0, 5).map((e) => `  ${e}`)] : []),
  ];
}
