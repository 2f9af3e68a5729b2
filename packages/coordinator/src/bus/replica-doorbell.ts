/**
 * How a replica learns that another replica committed events. The `events` table is the log:
 * positions are assigned under the `event_head` row lock (unit-of-work.ts), so when a committed
 * head reads N, every event up to N is committed and readable — a reader going up to the head
 * never skips one. What crosses processes is therefore only a doorbell: after a commit a replica
 * rings (a NATS subject per database schema, core NATS, no payload that anyone trusts), and every
 * replica that hears it reads the head from its own database and delivers up to there from the
 * table. A lost ring (NATS down, a replica restarting) costs latency, never an event: each
 * replica also reads the head every `pollMs`.
 *
 * Why not relay the events themselves through JetStream: with one ordered log already committed
 * in PostgreSQL, a second copy would need its own exactly-once relay and could disagree with
 * the first; the doorbell keeps one source of truth. (A relay becomes worth its cost once
 * positions stop being assigned under one lock.)
 */
import { connect, type NatsConnection } from '@nats-io/transport-node';
import type { Logger } from 'pino';
import { eventHead } from '../lifecycle/unit-of-work.ts';
import type { Db } from '../store/database.ts';

export interface ReplicaDoorbellOptions {
  /** NATS server(s), comma-separated; without it only polling tells a replica about others' events. */
  natsUrl?: string;
  /** Rings of replicas on other databases or schemas must not wake this one: part of the subject. */
  channel: string;
  /** How often the head is read regardless of rings. */
  pollMs: number;
}

const SUBJECT_PREFIX = 'gridwork.events.committed.';

export class ReplicaDoorbell {
  private nats: NatsConnection | undefined;
  private timer: NodeJS.Timeout | undefined;
  private reading: Promise<void> | undefined;
  private again = false;
  private closed = false;
  private readonly subject: string;

  constructor(
    private readonly deps: { db: Db; log: Logger; onHead: (position: bigint) => void },
    private readonly options: ReplicaDoorbellOptions,
  ) {
    this.subject = SUBJECT_PREFIX + options.channel.replace(/[^A-Za-z0-9_-]/g, '_');
  }

  /** Starts polling, and listening on NATS (connecting in the background: a NATS that is down now only delays rings). */
  start(): void {
    this.timer = setInterval(() => this.readHead(), this.options.pollMs);
    this.timer.unref();
    if (!this.options.natsUrl) return;
    const servers = this.options.natsUrl.split(',').map((s) => s.trim()).filter(Boolean);
    void connect({ servers, name: 'gridwork-coordinator', waitOnFirstConnect: true, maxReconnectAttempts: -1 })
      .then((nc) => {
        if (this.closed) return void nc.close();
        this.nats = nc;
        nc.subscribe(this.subject, { callback: () => this.readHead() });
        // Whatever was committed while this replica was not listening.
        this.readHead();
        void (async () => {
          for await (const s of nc.status()) {
            if (s.type === 'disconnect' || s.type === 'reconnect') this.deps.log.warn({ nats: s.type, server: s.server }, 'replica doorbell: NATS connection changed');
            // Rings sent while disconnected are lost: read the head once back.
            if (s.type === 'reconnect') this.readHead();
          }
        })();
      })
      .catch((err: Error) => {
        if (!this.closed) this.deps.log.error({ err }, 'replica doorbell: no NATS connection; other replicas are heard by polling only');
      });
  }

  /** Tells the other replicas that this one committed events. */
  ring(): void {
    this.nats?.publish(this.subject);
  }

  async close(): Promise<void> {
    this.closed = true;
    clearInterval(this.timer);
    await this.nats?.close().catch(() => undefined);
    await this.reading;
  }

  /** Reads the committed head (one at a time; a ring during a read reads again after it). */
  private readHead(): void {
    if (this.closed) return;
    if (this.reading) {
      this.again = true;
      return;
    }
    this.reading = (async () => {
      do {
        this.again = false;
        try {
          this.deps.onHead(await eventHead(this.deps.db));
        } catch (err) {
          if (!this.closed) this.deps.log.warn({ err }, 'replica doorbell: could not read the event head');
        }
      } while (this.again && !this.closed);
    })().finally(() => {
      this.reading = undefined;
    });
  }
}
