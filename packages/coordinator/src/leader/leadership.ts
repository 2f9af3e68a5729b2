/**
 * Which replica is the leader: the one holding a PostgreSQL session-level advisory lock (one per
 * schema) on a connection of its own. Chosen over a NATS KV lease because the lock lives and dies
 * with the session — a leader that is killed, or whose connection drops, loses it at once,
 * without waiting for a TTL (which Debian's nats-server 2.9 does not even honour per key) — and
 * the database is what the leader's writes need anyway.
 *
 * A follower tries the lock every `pollMs`; the leader checks its session as often, and steps down
 * (`onChange(null)`) when the check fails. Each term gets the next `epoch` in
 * `coordinator_leader`, which its writes carry (leader/fence.ts). On PGlite (one process) this replica leads
 * from the start.
 *
 * The leader runs the scheduler and the sweeps (housekeeping.ts) that every replica used to run at once.
 */
import pg from 'pg';
import type { Logger } from 'pino';
import type { Db } from '../store/database.ts';

export interface LeadershipOptions {
  /** PostgreSQL; absent on PGlite (this replica leads at once). */
  databaseUrl?: string;
  schema: string;
  /** Who this replica is, for `coordinator_leader.holder` and logs (its URL). */
  holder: string;
  /** How often a follower tries the lock, and the leader checks its session. */
  pollMs: number;
}

export class Leadership {
  private client: pg.Client | undefined;
  private timer: NodeJS.Timeout | undefined;
  private ticking: Promise<void> | undefined;
  private closed = false;
  private term: bigint | null = null;

  constructor(
    private readonly deps: { db: Db; log: Logger; onChange: (epoch: bigint | null) => void },
    private readonly options: LeadershipOptions,
  ) {}

  /** The current term's epoch while this replica leads; null otherwise. */
  get epoch(): bigint | null {
    return this.term;
  }

  get isLeader(): boolean {
    return this.term !== null;
  }

  async start(): Promise<void> {
    if (!this.options.databaseUrl) {
      await this.begin();
      return;
    }
    await this.tick();
    this.timer = setInterval(() => {
      this.ticking ??= this.tick().finally(() => {
        this.ticking = undefined;
      });
    }, this.options.pollMs);
    this.timer.unref();
  }

  async close(): Promise<void> {
    this.closed = true;
    clearInterval(this.timer);
    await this.ticking;
    this.stepDown('closing');
    await this.client?.end().catch(() => undefined);
    this.client = undefined;
  }

  private async tick(): Promise<void> {
    if (this.closed) return;
    try {
      if (this.term !== null) {
        await this.client?.query('select 1');
        return;
      }
      this.client ??= await this.connect();
      const { rows } = await this.client.query<{ locked: boolean }>('select pg_try_advisory_lock(hashtext($1)) as locked', [`gridwork-leader:${this.options.schema}`]);
      if (rows[0]?.locked && !this.closed) await this.begin();
    } catch (err) {
      this.deps.log.warn({ err }, 'leadership: session check failed');
      this.lost();
    }
  }

  private async connect(): Promise<pg.Client> {
    const client = new pg.Client({
      connectionString: this.options.databaseUrl,
      // A half-open connection must not keep a leader in office (or a shutdown waiting) for minutes.
      keepAlive: true,
      connectionTimeoutMillis: Math.max(2000, 4 * this.options.pollMs),
      query_timeout: Math.max(2000, 4 * this.options.pollMs),
      ...(this.options.schema === 'public' ? {} : { options: `-c search_path=${this.options.schema}` }),
    });
    // The session is the lock: when it breaks, this replica no longer leads.
    client.on('error', (err) => {
      this.deps.log.warn({ err }, 'leadership: connection lost');
      if (this.client === client) this.lost();
    });
    await client.connect();
    return client;
  }

  /** A new term: the next epoch, recorded with who holds it (through the pool: the lock is the session's, not the row's). */
  private async begin(): Promise<void> {
    const { epoch } = await this.deps.db
      .insertInto('coordinator_leader')
      .values({ id: 1, epoch: 1n, holder: this.options.holder, since: new Date() })
      .onConflict((oc) => oc.column('id').doUpdateSet((eb) => ({ epoch: eb('coordinator_leader.epoch', '+', 1n), holder: this.options.holder, since: new Date() })))
      .returning('epoch')
      .executeTakeFirstOrThrow();
    this.term = BigInt(epoch);
    this.deps.log.info({ epoch: String(this.term), holder: this.options.holder }, 'this replica is the leader');
    this.deps.onChange(this.term);
  }

  private lost(): void {
    const client = this.client;
    this.client = undefined;
    client?.end().catch(() => undefined);
    this.stepDown('lost its database session');
  }

  private stepDown(why: string): void {
    if (this.term === null) return;
    this.deps.log.warn({ epoch: String(this.term), why }, 'this replica is no longer the leader');
    this.term = null;
    this.deps.onChange(null);
  }
}
