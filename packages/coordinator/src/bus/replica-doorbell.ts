/**
 * How a replica learns that another replica committed events. The `events` table is the log, and
 * each replica's bus reads it up from its settled position (core/event-log.ts), never skipping an
 * event that commits late. What crosses processes is therefore only a doorbell: after a commit a
 * replica rings (a NATS subject per database schema, core NATS, no payload that anyone trusts),
 * and every replica that hears it reads the log from its own database. A lost ring (NATS down, a
 * replica restarting) costs latency, never an event: each replica also reads the log every
 * `pollMs`.
 *
 * The same connection carries the few messages between replicas that are not state changes and
 * may be lost (`send`/`listen`): an auction's announcement, which the leader sends to the bidders
 * connected to every replica, and the bids, which the replica holding a bidder's socket passes to
 * the leader. Without NATS they stay on the replica where they began.
 *
 * Why not relay the events themselves through JetStream: with one ordered log already committed
 * in PostgreSQL, a second copy would need its own exactly-once relay and could disagree with
 * the first; the doorbell keeps one source of truth, and each reader settles its gaps itself.
 */
import { randomUUID } from 'node:crypto';
import { connect, type NatsConnection } from '@nats-io/transport-node';
import { sql } from 'kysely';
import type { Logger } from 'pino';
import type { Db } from '../store/database.ts';

export interface ReplicaDoorbellOptions {
  /** NATS server(s), comma-separated; without it only polling tells a replica about others' events. */
  natsUrl?: string;
  /** The schema the replicas share: with the database's name, the subject (rings of other databases or schemas wake nobody here). */
  schema: string;
  /** How often the log is read regardless of rings. */
  pollMs: number;
}

const SUBJECT_PREFIX = 'gridwork.events.committed.';
const TOPIC_PREFIX = 'gridwork.replicas.';

export class ReplicaDoorbell {
  private nats: NatsConnection | undefined;
  private timer: NodeJS.Timeout | undefined;
  private closed = false;
  /** This replica's rings, told apart from the others'. */
  private readonly id = randomUUID();
  private subject = SUBJECT_PREFIX;
  /** The database and schema, as a subject token. */
  private scope = '';
  private readonly listeners = new Map<string, (data: unknown) => void>();

  constructor(
    private readonly deps: { db: Db; log: Logger; onRing: () => void },
    private readonly options: ReplicaDoorbellOptions,
  ) {}

  /** Starts polling, and listening on NATS (connecting in the background: a NATS that is down now only delays rings). */
  async start(): Promise<void> {
    // Named by the database itself, not by how this replica's URL spells its host (an address, a name, a pooler).
    const { rows } = await sql<{ name: string }>`select current_database() as name`.execute(this.deps.db);
    this.scope = `${rows[0]?.name ?? ''}.${this.options.schema}`.replace(/[^A-Za-z0-9_-]/g, '_');
    this.subject = SUBJECT_PREFIX + this.scope;
    this.timer = setInterval(() => this.wake(), this.options.pollMs);
    this.timer.unref();
    if (this.options.natsUrl) void this.connect(this.options.natsUrl.split(',').map((s) => s.trim()).filter(Boolean));
  }

  /** Connects, retrying (on a timer that never keeps the process alive) until it does or the doorbell closes. */
  private async connect(servers: string[]): Promise<void> {
    for (let attempt = 0; !this.closed; attempt++) {
      try {
        const nc = await connect({ servers, name: 'gridwork-coordinator', maxReconnectAttempts: -1 });
        if (this.closed) return void (await nc.close());
        // A ring carries the ringing replica's id: its own ring wakes nobody here (it published its events itself).
        nc.subscribe(this.subject, {
          callback: (_err, msg) => {
            if (msg.string() !== this.id) this.wake();
          },
        });
        for (const [topic, fn] of this.listeners) this.subscribeTopic(nc, topic, fn);
        // Subscribed at the server before the log is read: no ring falls between the two.
        await nc.flush();
        this.nats = nc;
        this.wake();
        void nc.closed().then(() => {
          if (this.nats === nc) this.nats = undefined;
        });
        void (async () => {
          for await (const s of nc.status()) {
            if (s.type === 'disconnect' || s.type === 'reconnect') this.deps.log.warn({ nats: s.type }, 'replica doorbell: NATS connection changed');
            // Rings sent while disconnected are lost: read the log once back.
            if (s.type === 'reconnect') this.wake();
          }
        })();
        return;
      } catch (err) {
        if (attempt === 0) this.deps.log.error({ err }, 'replica doorbell: no NATS connection yet; other replicas are heard by polling until there is');
        await new Promise<void>((resolve) => setTimeout(resolve, 2000).unref());
      }
    }
  }

  /** Tells the other replicas that this one committed events (best effort: polling covers a ring that is lost). */
  ring(): void {
    try {
      this.nats?.publish(this.subject, this.id);
    } catch (err) {
      this.deps.log.warn({ err }, 'replica doorbell: ring failed');
    }
  }

  /** Sends `data` (JSON) to every replica listening on `topic`, this one included; false when there is no NATS connection now. */
  send(topic: string, data: unknown): boolean {
    if (!this.nats) return false;
    try {
      this.nats.publish(TOPIC_PREFIX + this.scope + '.' + topic, JSON.stringify(data));
      return true;
    } catch (err) {
      this.deps.log.warn({ err, topic }, 'replica doorbell: send failed');
      return false;
    }
  }

  /** Calls `fn` with what any replica sends on `topic` (parsed JSON: check its shape, it came over the wire). */
  listen(topic: string, fn: (data: unknown) => void): void {
    this.listeners.set(topic, fn);
    if (this.nats) this.subscribeTopic(this.nats, topic, fn);
  }

  private subscribeTopic(nc: NatsConnection, topic: string, fn: (data: unknown) => void): void {
    nc.subscribe(TOPIC_PREFIX + this.scope + '.' + topic, {
      callback: (err, msg) => {
        if (err) return;
        try {
          fn(msg.json());
        } catch (e) {
          this.deps.log.warn({ err: e, topic }, 'replica doorbell: a message was refused');
        }
      },
    });
  }

  async close(): Promise<void> {
    this.closed = true;
    clearInterval(this.timer);
    const nc = this.nats;
    this.nats = undefined;
    await nc?.close().catch(() => undefined);
  }

  /** Has the bus read the log (it reads one at a time, and again after a read a ring fell into). */
  private wake(): void {
    if (!this.closed) this.deps.onRing();
  }
}
