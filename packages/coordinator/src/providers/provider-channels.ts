/**
 * The live WebSocket of each connected provider: hello/welcome, in-order application of
 * sequenced reports, acks, heartbeats, and delivery of the durable outbox. A connection holds
 * no state that the database does not: after a crash of either side, the next hello resumes.
 *
 * A message over MAX_MESSAGE_BYTES is refused with PAYLOAD_TOO_LARGE, the socket kept. A provider
 * whose channel keeps failing is taken out of matching for a while (as if disconnected): work
 * placed on it would wait behind a channel that does not carry it.
 */
import { type CoordinatorMessage, GridworkError, MAX_MESSAGE_BYTES, ProviderMessage, type ProviderSequenced } from '@gridwork/protocol';
import { Compile } from 'typebox/compile';
import type { Logger } from 'pino';
import type { RawData, WebSocket } from 'ws';
import type { Subscriber } from '../bus/bus.ts';
import type { Db } from '../store/database.ts';
import type { ApplyResult, ProviderInput, ProviderService } from './provider-service.ts';

const check = Compile(ProviderMessage);

/** Channel faults within FAULT_WINDOW_MS that take a provider out of matching for FAULT_PAUSE_MS. */
const FAULTS_TO_PAUSE = 5;
const FAULT_WINDOW_MS = 60_000;
const FAULT_PAUSE_MS = 5 * 60_000;
/** Close codes of the WebSocket layer for a peer that broke the protocol (1009: a message over maxPayload). */
const PROTOCOL_CLOSE_CODES = new Set([1002, 1007, 1009]);
/** Most reports and acks of one provider applied in one command, and most bytes of them (a run of big log reports stays small). */
const MAX_RUN = 64;
const MAX_RUN_BYTES = 256 * 1024;

export interface ProviderChannelsDeps {
  db: Db;
  log: Logger;
  providers: ProviderService;
  heartbeatIntervalMs: number;
  meteringIntervalMs: number;
  /** Told when a provider's live connection, welcomed at `welcomedAt` (ms), appears or goes (the matching index lists only connected providers). */
  onConnection?: (providerId: string, connected: boolean, welcomedAt: number) => void;
  /** A signed bid for an open auction. */
  onBid?: (providerId: string, bid: { orderId: string; pricePerHour: string; signature: string }) => void;
  /** Max time between connect and hello. @default 10_000 */
  helloTimeoutMs?: number;
}

class Channel {
  sentUpTo = 0;
  ackedUpTo = 0;
  /** Closed by this coordinator (a protocol error, a newer connection): what it still has queued is not applied (the agent sends it again). */
  stopped = false;
  /** When its hello was answered (ms). */
  welcomedAt = 0;
  private queue: Promise<void> = Promise.resolve();
  private outbox: Promise<void> = Promise.resolve();
  private nextFlush: Promise<void> | undefined;
  constructor(
    readonly providerId: string,
    readonly socket: WebSocket,
  ) {}

  send(msg: CoordinatorMessage | Record<string, unknown>): void {
    if (this.socket.readyState === this.socket.OPEN) this.socket.send(JSON.stringify(msg));
  }

  /** Runs tasks for this connection strictly one after another. */
  serial(task: () => Promise<void>): Promise<void> {
    this.queue = this.queue.then(task, task);
    return this.queue;
  }

  /**
   * Runs `flush` after the one in progress, apart from the message queue (an assignment must not
   * wait behind the application of a report). Calls before the queued one starts share it: it
   * reads whatever has committed by then.
   */
  flushOutbox(flush: () => Promise<void>): Promise<void> {
    if (this.nextFlush) return this.nextFlush;
    const next = this.outbox.then(() => {
      this.nextFlush = undefined;
      return flush();
    });
    this.nextFlush = next;
    this.outbox = next.catch(() => {});
    return next;
  }

  /** Resolves when the outbox flushes asked for so far are done. */
  flushed(): Promise<void> {
    return this.outbox;
  }
}

export class ProviderChannels {
  private readonly channels = new Map<string, Channel>();
  /** Every open connection, also before its hello (it may be handling one). */
  private readonly all = new Set<Channel>();
  private closing = false;
  /** Recent channel faults per provider (times), and until when each provider it paused is out of matching (ms). */
  private readonly faults = new Map<string, number[]>();
  private readonly pausedUntil = new Map<string, number>();

  constructor(private readonly deps: ProviderChannelsDeps) {}

  connectedIds(): ReadonlySet<string> {
    return new Set(this.channels.keys());
  }

  /** Sends outbox messages that this connection has not been sent yet. */
  async flush(providerId: string): Promise<void> {
    const ch = this.channels.get(providerId);
    if (!ch) return;
    await ch.flushOutbox(async () => {
      const rows = await this.deps.db
        .selectFrom('provider_outbox')
        .select(['seq', 'message'])
        .where('provider_id', '=', providerId)
        .where('seq', '>', BigInt(ch.sentUpTo))
        .orderBy('seq')
        .execute();
      for (const r of rows) {
        ch.send(r.message);
        ch.sentUpTo = Number(r.seq);
      }
    });
  }

  /** Closes the provider's connection here, if it has one (only one welcomed before `before`, ms, when given). */
  disconnect(providerId: string, reason: string, before = Number.POSITIVE_INFINITY): void {
    const ch = this.channels.get(providerId);
    if (ch && ch.welcomedAt < before) ch.socket.close(4000, reason.slice(0, 120));
  }

  /**
   * Another replica declared a provider offline that still has a connection here (it judged by a
   * last_seen_at this replica had not flushed yet): closing it makes the agent say hello again,
   * which brings it back online. A connection welcomed after the verdict is left alone.
   */
  offlineElsewhere(): Subscriber {
    return {
      name: 'provider-offline-disconnect',
      types: ['provider.offline'],
      handle: (events) => {
        for (const e of events) if (e.type === 'provider.offline') this.disconnect(e.providerId, 'declared offline', e.at.getTime());
      },
    };
  }

  /** Sends an unsequenced message to connected providers (auction announcements: losing one is harmless); returns how many got it. */
  announce(providerIds: Iterable<string>, msg: CoordinatorMessage): number {
    let told = 0;
    for (const id of providerIds) {
      const ch = this.channels.get(id);
      if (!ch) continue;
      ch.send(msg);
      told++;
    }
    return told;
  }

  closeAll(): void {
    this.closing = true;
    for (const ch of this.channels.values()) ch.socket.close(1001, 'coordinator shutting down');
    this.channels.clear();
  }

  /** Resolves when every message received so far has been handled (before the database closes). */
  async idle(): Promise<void> {
    const all = [...this.all];
    await Promise.all(all.map((ch) => ch.serial(async () => {})));
    await Promise.all(all.map((ch) => ch.flushed()));
  }

  /** Takes over an authenticated socket (the upgrade request was signed by `providerId`, from `remoteAddress`). */
  accept(providerId: string, socket: WebSocket, remoteAddress: string | null = null): void {
    const { log, providers } = this.deps;
    let channel: Channel | undefined;
    const helloTimer = setTimeout(() => socket.close(4001, 'no hello'), this.deps.helloTimeoutMs ?? 10_000);
    const fail = (code: string, message: string, close: boolean) => {
      socket.send(JSON.stringify({ type: 'error', code, message }));
      // Counted for providers past their hello only (known ones); our own failures (INTERNAL) are not theirs.
      if (channel && (code === 'PAYLOAD_TOO_LARGE' || (close && code !== 'INTERNAL'))) this.fault(providerId, code);
      if (close) {
        pending.stopped = true;
        socket.close(4002, message.slice(0, 120));
      }
    };
    const pending = new Channel(providerId, socket);
    if (this.closing) {
      socket.close(1001, 'coordinator shutting down');
      return;
    }
    this.all.add(pending);

    /**
     * What has arrived and waits its turn (`pending.serial`), kept as received (off the JS heap) and
     * read when its turn comes; a run of the reports waiting behind one being applied is then
     * applied in one command (`applyMany`). One drain at a time goes through the queue.
     */
    type Received = { bad: { code: string; message: string; close: boolean } } | { msg: ProviderMessage; receivedAt: number; bytes: number };
    const inbox: { data: RawData; receivedAt: number }[] = [];
    let draining = false;
    const read = (data: RawData, receivedAt: number): Received => {
      const bytes = byteLength(data);
      // Refused unread and unapplied: the sender must not send it again (the agent never sends one).
      if (bytes > MAX_MESSAGE_BYTES) {
        return { bad: { code: 'PAYLOAD_TOO_LARGE', message: `message of ${bytes} bytes refused: one message may carry at most ${MAX_MESSAGE_BYTES}`, close: false } };
      }
      let msg: unknown;
      try {
        msg = JSON.parse(data.toString());
      } catch {
        return { bad: { code: 'PROTOCOL_ERROR', message: 'message is not JSON', close: true } };
      }
      if (!check.Check(msg)) {
        const e = check.Errors(msg)[0];
        return { bad: { code: 'PROTOCOL_ERROR', message: `invalid message: ${e?.instancePath ?? ''} ${e?.message ?? ''}`, close: true } };
      }
      return { msg, receivedAt, bytes };
    };
    /** The next message, read (the one after it is read only when a run asks for it). */
    let head: Received | undefined;
    const peek = (): Received | undefined => {
      if (!head) {
        const next = inbox.shift();
        if (next) head = read(next.data, next.receivedAt);
      }
      return head;
    };
    const take = (): Received | undefined => {
      const r = peek();
      head = undefined;
      return r;
    };
    /** What changes the database, of a message past hello: a sequenced report or an ack. */
    const inputOf = (r: Received): ProviderInput | null => {
      if (!('msg' in r) || !channel) return null;
      const { msg } = r;
      if (msg.type === 'ack') return { kind: 'ack', seq: msg.seq };
      if (msg.type === 'hello' || msg.type === 'heartbeat' || msg.type === 'bid') return null;
      return { kind: 'report', msg: msg as ProviderSequenced, receivedAt: r.receivedAt };
    };
    const bid = (msg: Extract<ProviderMessage, { type: 'bid' }>): void => {
      try {
        this.deps.onBid?.(providerId, msg);
      } catch (err) {
        log.warn({ err, providerId }, 'a bid could not be taken');
      }
    };
    /** Applies one input alone, answering as the protocol says (an ack for a report; an error, and maybe a close). */
    const applyOne = async (input: ProviderInput): Promise<void> => {
      try {
        if (input.kind === 'ack') return await providers.ack(providerId, input.seq);
        const result = await providers.apply(providerId, input.msg, input.receivedAt).catch((err) => {
          if (err instanceof GridworkError && (err.code === 'NOT_LEASE_OWNER' || err.code === 'LEASE_NOT_FOUND' || err.code === 'BAD_SIGNATURE')) {
            fail(err.code, err.message, false);
            return 'applied' as const;
          }
          throw err;
        });
        answer(input.msg.seq, result);
      } catch (err) {
        failed(err);
      }
    };
    const answer = (seq: number, result: ApplyResult): void => {
      if (result === 'gap') fail('PROTOCOL_ERROR', `sequence gap at ${seq}: reconnect and resend`, true);
      else channel?.send({ type: 'ack', seq });
    };
    const failed = (err: unknown): void => {
      if (err instanceof GridworkError && err.httpStatus < 500) fail(err.code, err.message, true);
      else {
        log.error({ err, providerId }, 'provider message failed');
        fail('INTERNAL', 'message could not be applied; reconnect to resend', true);
      }
    };
    /** Applies a run of inputs in one command; if that fails, one by one (each then gets its exact answer). */
    const applyRun = async (run: ProviderInput[]): Promise<void> => {
      if (run.length === 1) return applyOne(run[0] as ProviderInput);
      let outcomes: (ApplyResult | 'acked')[];
      try {
        outcomes = await providers.applyMany(providerId, run);
      } catch (err) {
        log.debug({ err, providerId, inputs: run.length }, 'a run of reports failed together: applying them one by one');
        for (const input of run) {
          if (pending.stopped) return;
          await applyOne(input);
        }
        return;
      }
      for (const [i, input] of run.entries()) {
        if (input.kind === 'ack') continue;
        answer(input.msg.seq, outcomes[i] as ApplyResult);
        if (outcomes[i] === 'gap') return; // the socket closes: what follows the gap is sent again
      }
    };
    /** Handles what has arrived, in order: hello, errors, heartbeats and bids one by one, reports and acks in runs. */
    const drain = async (): Promise<void> => {
      for (let r = take(); r; r = take()) {
        if (pending.stopped) break;
        if ('bad' in r) {
          fail(r.bad.code, r.bad.message, r.bad.close);
          continue;
        }
        const { msg } = r;
        if (msg.type === 'hello') {
          try {
            if (channel) {
              fail('PROTOCOL_ERROR', 'hello sent twice', true);
              continue;
            }
            clearTimeout(helloTimer);
            const { lastApplied, outbox } = await providers.hello(providerId, msg, remoteAddress);
            const replaced = this.channels.get(providerId);
            if (replaced) {
              // Its queue must not be applied after this hello (a new agent instance starts its seqs over).
              replaced.stopped = true;
              replaced.socket.close(4003, 'replaced by a newer connection');
            }
            channel = pending;
            channel.welcomedAt = Date.now();
            this.channels.set(providerId, channel);
            channel.send({
              type: 'welcome',
              providerId,
              lastApplied,
              heartbeatIntervalMs: this.deps.heartbeatIntervalMs,
              meteringIntervalMs: this.deps.meteringIntervalMs,
            });
            channel.ackedUpTo = msg.lastApplied;
            this.deps.onConnection?.(providerId, true, channel.welcomedAt);
            for (const m of outbox) {
              channel.send(m);
              channel.sentUpTo = Number(m.seq);
            }
            log.info({ providerId, name: msg.name, slots: msg.slots, resent: outbox.length }, 'provider connected');
          } catch (err) {
            failed(err);
          }
          continue;
        }
        if (!channel) {
          fail('PROTOCOL_ERROR', 'say hello first', true);
          continue;
        }
        if (msg.type === 'heartbeat') {
          providers.heartbeat(providerId);
          continue;
        }
        if (msg.type === 'bid') {
          bid(msg);
          continue;
        }
        // A run: this input and the inputs right behind it (heartbeats and bids among them are taken as they come).
        const run = [inputOf(r) as ProviderInput];
        let bytes = r.bytes;
        for (let next = peek(); next && run.length < MAX_RUN && bytes < MAX_RUN_BYTES; next = peek()) {
          const input = inputOf(next);
          if (input) {
            run.push(input);
            bytes += (next as { bytes: number }).bytes;
          } else if ('msg' in next && next.msg.type === 'heartbeat') providers.heartbeat(providerId);
          else if ('msg' in next && next.msg.type === 'bid') bid(next.msg);
          else break;
          take();
        }
        for (const input of run) if (input.kind === 'ack') channel.ackedUpTo = Math.max(channel.ackedUpTo, input.seq);
        await applyRun(run);
      }
      // Closed by us: nothing more of this connection is applied (the agent resends what was not acked).
      if (pending.stopped) {
        inbox.length = 0;
        head = undefined;
      }
    };

    socket.on('message', (data) => {
      if (this.closing) return;
      // Any message shows the provider alive, also while those before it still wait their turn
      // (reports are applied in shared commits: a slow one must not make everyone look silent).
      const receivedAt = Date.now();
      if (channel) providers.heartbeat(providerId);
      if (pending.stopped) return;
      inbox.push({ data, receivedAt });
      if (draining) return;
      draining = true;
      void pending.serial(async () => {
        try {
          await drain();
        } finally {
          draining = false;
        }
      });
    });
    socket.on('close', (code) => {
      clearTimeout(helloTimer);
      // Gone without a close frame (1006) while our messages to it were unacknowledged: work sent to it is stuck.
      if (channel && (PROTOCOL_CLOSE_CODES.has(code) || (code === 1006 && channel.sentUpTo > channel.ackedUpTo))) {
        this.fault(providerId, `socket closed (${code})`);
      }
      void pending.serial(async () => {
        this.all.delete(pending);
      });
      if (channel && this.channels.get(providerId) === channel) {
        this.channels.delete(providerId);
        const welcomedAt = channel.welcomedAt;
        this.deps.onConnection?.(providerId, false, welcomedAt);
        log.info({ providerId }, 'provider disconnected');
        // Told to every replica (the leader matches on it), unless this replica is shutting down:
        // then its providers say hello to another at once, and that tells them.
        if (!this.closing) {
          void pending.serial(() => providers.disconnected(providerId, welcomedAt)).catch((err) => log.warn({ err, providerId }, 'could not record a disconnection'));
        }
      }
    });
    socket.on('error', (err) => log.warn({ err, providerId }, 'provider socket error'));
  }

  /**
   * Counts a channel fault of a provider; FAULTS_TO_PAUSE within FAULT_WINDOW_MS take it out of
   * matching for FAULT_PAUSE_MS — on every replica (a `provider.paused` event: the leader matches).
   */
  private fault(providerId: string, what: string): void {
    if (this.closing) return;
    const now = Date.now();
    const recent = (this.faults.get(providerId) ?? []).filter((t) => now - t < FAULT_WINDOW_MS);
    recent.push(now);
    this.faults.set(providerId, recent);
    if (recent.length < FAULTS_TO_PAUSE || (this.pausedUntil.get(providerId) ?? 0) > now) return;
    this.faults.delete(providerId);
    const until = now + FAULT_PAUSE_MS;
    this.pausedUntil.set(providerId, until);
    this.deps.log.warn({ providerId, faults: recent.length, what, pauseMs: FAULT_PAUSE_MS }, 'provider channel keeps failing: out of matching for a while');
    this.deps.providers.paused(providerId, until).catch((err) => this.deps.log.warn({ err, providerId }, 'could not record a pause'));
  }
}

function byteLength(data: RawData): number {
  return Array.isArray(data) ? data.reduce((n, b) => n + b.length, 0) : data.byteLength;
}
