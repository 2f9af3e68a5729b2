/**
 * A whole network of processes for the fault tests and the soak: a private PostgreSQL and NATS
 * (private-services.ts), R coordinator replicas (`gridwork coordinator start`, one shared blob
 * directory) and P provider agents (`gridwork provider start`, process runtime), agent i
 * connecting to replica i mod R first with every other URL after it. Each piece can be killed
 * and started again; `audit` checks what must hold after any of it.
 *
 * Import this file directly; it is deliberately not re-exported from the testkit's index.
 */
import { mkdir, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { type Db, openDatabase } from '@gridwork/coordinator/internal';
import { generateIdentity } from '@gridwork/protocol/node';
import { GridworkClient, type JobSpec, type JobView } from '@gridwork/sdk';
import { sql } from 'kysely';
import { tempDir, until } from './index.ts';
import { type PrivateNats, type PrivatePostgres, startPrivateNats, startPrivatePostgres } from './private-services.ts';
import { type CoordinatorProcess, freePort, type ProviderProcess, startCoordinatorProcess, startProviderProcess, stopAll } from './processes.ts';

export interface ReplicaClusterOptions {
  replicas: number;
  providers: number;
  /** Task slots per provider. @default 2 */
  slots?: number;
  /** Provider heartbeat interval (lost after 3 missed). @default 1000 */
  heartbeatMs?: number;
}

/** What must hold after any fault, once every job has ended. */
export interface ClusterAudit {
  jobs: number;
  succeeded: number;
  tasks: number;
  leases: number;
  lostLeases: number;
  /** Tasks not completed exactly once (each should be). */
  tasksNotCompletedOnce: string[];
  /** Leases still offered, starting or running. */
  activeLeases: number;
  /** Sum of all postings (0 in double entry) and accounts whose cached balance differs from its postings. */
  ledgerTotal: bigint;
  ledgerMismatched: string[];
  /** Ended leases without exactly one settlement. */
  unsettled: string[];
  /** Escrow, job holds or unpaid earnings left behind by ended jobs. */
  leftover: string[];
  /** Providers whose reputation counters differ from the lease endings in the event log (a durable subscriber lost or doubled an event). */
  reputationDrift: { id: string; completed: number; faulted: number; endedInLog: number; lostInLog: number }[];
}

const rotate = <T>(xs: readonly T[], i: number): T[] => [...xs.slice(i), ...xs.slice(0, i)];

export class ReplicaCluster {
  readonly replicas: (CoordinatorProcess | undefined)[] = [];
  readonly providers: (ProviderProcess | undefined)[] = [];
  readonly client: GridworkClient;
  private readonly jobs = new Set<string>();
  private db: Db | undefined;

  private constructor(
    readonly options: Required<ReplicaClusterOptions>,
    readonly pg: PrivatePostgres,
    readonly nats: PrivateNats,
    private readonly dir: { path: string; remove: () => Promise<void> },
    private readonly ports: readonly number[],
  ) {
    this.client = new GridworkClient({ url: this.urls(), identity: generateIdentity() });
  }

  static async start(o: ReplicaClusterOptions): Promise<ReplicaCluster> {
    const options = { slots: 2, heartbeatMs: 1000, ...o };
    const [pg, nats, dir] = await Promise.all([startPrivatePostgres(), startPrivateNats(), tempDir('gridwork-cluster-')]);
    const ports = await Promise.all(Array.from({ length: options.replicas }, () => freePort()));
    const c = new ReplicaCluster(options, pg, nats, dir, ports);
    try {
      // One after the other: the first migrates the database.
      for (let i = 0; i < options.replicas; i++) await c.startReplica(i);
      for (let i = 0; i < options.providers; i++) await c.startProvider(i);
      await mkdir(join(dir.path, 'bundle'));
      await writeFile(join(dir.path, 'bundle', 'README'), 'a bundle needs a file\n');
      await c.client.deposit('1000');
      await c.waitProviders();
    } catch (err) {
      await c.close();
      throw err;
    }
    return c;
  }

  urls(): string[] {
    return this.ports.map((p) => `http://127.0.0.1:${p}`);
  }

  async startReplica(i: number): Promise<CoordinatorProcess> {
    const p = await startCoordinatorProcess({
      label: `replica-${i}`,
      dataDir: join(this.dir.path, 'coordinator'),
      port: this.ports[i] as number,
      heartbeatMs: this.options.heartbeatMs,
      args: ['--dev', '--no-verification', '--metering-ms', '500'],
      env: { GRIDWORK_DATABASE_URL: this.pg.url, GRIDWORK_NATS_URL: this.nats.url },
    });
    this.replicas[i] = p;
    return p;
  }

  async killReplica(i: number): Promise<void> {
    await this.replicas[i]?.kill9();
    this.replicas[i] = undefined;
  }

  /** The index of the replica that says it leads (waits until one does). */
  async leader(): Promise<number> {
    const roles = await until(
      () =>
        Promise.all(
          this.replicas.map(async (r) => {
            if (!r?.alive) return 'down';
            try {
              return ((await (await fetch(`${r.url}/healthz`, { signal: AbortSignal.timeout(2000) })).json()) as { role: string }).role;
            } catch {
              return 'down';
            }
          }),
        ),
      (rs) => rs.filter((r) => r === 'leader').length === 1,
      { what: 'one leader', timeoutMs: 30_000 },
    );
    return roles.indexOf('leader');
  }

  async startProvider(i: number): Promise<ProviderProcess> {
    const p = await startProviderProcess({
      label: `provider-${i}`,
      coordinatorUrl: rotate(this.urls(), i % this.options.replicas).join(','),
      dataDir: join(this.dir.path, `provider-${i}`),
      name: `provider-${i}`,
      slots: this.options.slots,
      runtime: 'process',
    });
    this.providers[i] = p;
    return p;
  }

  async killProvider(i: number): Promise<void> {
    await this.providers[i]?.kill9();
    this.providers[i] = undefined;
  }

  /** SIGSTOP: the provider's socket stays open and goes silent. */
  pauseProvider(i: number): void {
    this.providers[i]?.child.kill('SIGSTOP');
  }

  resumeProvider(i: number): void {
    this.providers[i]?.child.kill('SIGCONT');
  }

  /** Waits until every running provider is online. */
  async waitProviders(): Promise<void> {
    const ids = this.providers.filter((p) => p?.alive).map((p) => p?.id as string);
    await until(
      () => this.client.providers(),
      (rows) => ids.every((id) => rows.some((r) => r.id === id && r.state === 'online')),
      { what: 'the providers online', timeoutMs: 60_000 },
    );
  }

  spec(name: string, tasks: number, taskMs: number): JobSpec {
    return {
      version: 1,
      name,
      kind: 'batch',
      runtime: { kind: 'bundle', path: '.', command: ['sh', '-c', `sleep ${taskMs / 1000}; echo ok > "$GRIDWORK_OUTPUTS/out.txt"`] },
      resources: { cpu: 1, memoryGiB: 1 },
      price: { maxPerHour: '0.50', budget: '2.00' },
      shards: tasks,
      // Faults lose leases; a task runs again elsewhere rather than fail the job.
      maxRetries: 20,
      timeoutSeconds: 300,
    };
  }

  async submit(name: string, tasks: number, taskMs: number): Promise<JobView> {
    const job = await this.client.submit(this.spec(name, tasks, taskMs), { baseDir: join(this.dir.path, 'bundle') });
    this.jobs.add(job.id);
    return job;
  }

  /** Waits until every job submitted so far has ended; returns them. */
  async waitJobs(timeoutMs = 180_000): Promise<JobView[]> {
    const ended = await Promise.all(
      [...this.jobs].map((id) =>
        until(
          // A read may fail while every replica it tries is down: try again.
          () => this.client.get(id).catch(() => undefined),
          (j) => j !== undefined && ['succeeded', 'failed', 'cancelled'].includes(j.state),
          { timeoutMs, pollMs: 250, what: `job ${id} to end` },
        ),
      ),
    );
    return ended as JobView[];
  }

  private async database(): Promise<Db> {
    this.db ??= await openDatabase({ url: this.pg.url });
    return this.db;
  }

  /** The leader's current epoch (coordinator_leader). */
  async epoch(): Promise<bigint> {
    const row = await (await this.database()).selectFrom('coordinator_leader').select('epoch').executeTakeFirst();
    return BigInt(row?.epoch ?? 0);
  }

  /** Leases lost so far. */
  async lostLeases(): Promise<number> {
    return (await (await this.database()).selectFrom('leases').select('id').where('state', '=', 'lost').execute()).length;
  }

  /** Reads the database: every check of `ClusterAudit` (call when every job has ended). */
  async audit(): Promise<ClusterAudit> {
    const db = await this.database();
    const jobs = await db.selectFrom('jobs').select(['id', 'state']).execute();
    const tasks = await db.selectFrom('tasks').select(['id']).execute();
    const leases = await db.selectFrom('leases').select(['id', 'task_id', 'state']).execute();
    const completed = new Map<string, number>();
    for (const l of leases) if (l.state === 'completed') completed.set(l.task_id, (completed.get(l.task_id) ?? 0) + 1);
    const { rows: totals } = await sql<{ total: string | null }>`select sum(amount)::text as total from ledger_postings`.execute(db);
    const { rows: mismatched } = await sql<{ account: string }>`
      select coalesce(b.account, p.account) as account from ledger_balances b
      full join (select account, sum(amount) as posted from ledger_postings group by account) p on p.account = b.account
      where coalesce(b.balance, 0) <> coalesce(p.posted, 0)`.execute(db);
    const { rows: settles } = await sql<{ key: string; n: string }>`
      select idempotency_key as key, count(*)::text as n from ledger_transactions where kind = 'lease.settle' group by idempotency_key`.execute(db);
    const settled = new Map(settles.map((s) => [s.key, Number(s.n)]));
    const ended = leases.filter((l) => !['offered', 'starting', 'running'].includes(l.state));
    const { rows: leftover } = await sql<{ account: string }>`
      select account from ledger_balances where balance <> 0 and (account like 'lease:%' or account like 'job:%')`.execute(db);
    const { rows: drift } = await sql<{ id: string; completed: number; faulted: number; done: string | null; lost: string | null }>`
      select p.id, p.leases_completed as completed, p.leases_faulted as faulted, e.done::text as done, e.lost::text as lost from providers p
      left join (
        select provider_id,
               count(*) filter (where data->>'outcome' in ('completed', 'failed')) as done,
               count(*) filter (where data->>'outcome' = 'lost') as lost
        from events where type = 'lease.ended' group by provider_id
      ) e on e.provider_id = p.id
      where p.leases_completed <> coalesce(e.done, 0) or p.leases_faulted <> coalesce(e.lost, 0)`.execute(db);
    return {
      jobs: jobs.length,
      succeeded: jobs.filter((j) => j.state === 'succeeded').length,
      tasks: tasks.length,
      leases: leases.length,
      lostLeases: leases.filter((l) => l.state === 'lost').length,
      tasksNotCompletedOnce: tasks.filter((t) => completed.get(t.id) !== 1).map((t) => t.id),
      activeLeases: leases.length - ended.length,
      ledgerTotal: BigInt(totals[0]?.total ?? '0'),
      ledgerMismatched: mismatched.map((r) => r.account),
      unsettled: ended.filter((l) => settled.get(`settle:${l.id}`) !== 1).map((l) => l.id),
      leftover: leftover.map((r) => r.account),
      reputationDrift: drift.map((r) => ({ id: r.id, completed: r.completed, faulted: r.faulted, endedInLog: Number(r.done ?? 0), lostInLog: Number(r.lost ?? 0) })),
    };
  }

  async close(): Promise<void> {
    for (const p of this.providers) if (p?.alive) p.child.kill('SIGCONT');
    await stopAll([...this.providers, ...this.replicas]);
    await this.db?.destroy();
    await this.nats.stop();
    await this.pg.remove();
    await this.dir.remove();
  }
}
