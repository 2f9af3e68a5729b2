/**
 * The agent's side of the provider channel: one WebSocket to the coordinator, reconnected with
 * backoff, over which reports are sent with sequence numbers and kept until acknowledged, and
 * coordinator messages are applied in order, once, then acknowledged.
 *
 * No report bigger than MAX_MESSAGE_BYTES is sent, and one the coordinator still refuses as too
 * large is replaced rather than resent: resending it after every reconnect would wedge the channel.
 *
 * Given several coordinator URLs (replicas of one network, behind one database), a lost
 * connection or a failed connect moves on to the next URL at once; the backoff is waited once
 * per round of all of them. The hello resumes on any replica: it carries the last applied seq,
 * and unacked reports are resent, as after a reconnect to the same one.
 */
import {
  type CoordinatorMessage,
  GridworkError,
  type CoordinatorSequenced,
  MAX_MESSAGE_BYTES,
  type ProviderHello,
  type ProviderSequenced,
  RECONNECT_MAX_BACKOFF_MS,
} from '@gridwork/protocol';
import { type Identity, signRequest } from '@gridwork/protocol/node';
import type { Logger } from 'pino';
import WebSocket from 'ws';

type Unsequenced<T> = T extends unknown ? Omit<T, 'seq'> : never;
export type Report = Unsequenced<ProviderSequenced>;

/** Longest pause before trying the next coordinator URL after one failed (jitter: its providers do not all arrive at once). */
const FAILOVER_JITTER_MS = 200;

/**
 * The agent's coordinator setting as a list: one URL, several separated by commas, or an array of
 * them; in order, repeats dropped. Each must be an absolute URL.
 */
export function coordinatorUrlList(value: string | readonly string[]): string[] {
  const urls = [
    ...new Set(
      (typeof value === 'string' ? [value] : value)
        .flatMap((v) => v.split(/[\s,]+/))
        .filter((v) => v !== '')
        .map((v) => v.replace(/\/+$/, '')),
    ),
  ];
  if (urls.length === 0) throw new GridworkError('BAD_REQUEST', 'no coordinator URL given: expected something like http://127.0.0.1:7070 (several separated by commas)');
  for (const u of urls) {
    if (!URL.canParse(u)) throw new GridworkError('BAD_REQUEST', `invalid coordinator URL "${u}": expected something like http://127.0.0.1:7070`);
  }
  return urls;
}

export interface CoordinatorLinkOptions {
  /** The coordinator's URL, or several replicas' in order of preference (at least one). */
  urls: readonly string[];
  identity: Identity;
  log: Logger;
  /** The hello to send on every (re)connect, minus the fields the link fills in. */
  hello: () => Omit<ProviderHello, 'type' | 'lastApplied' | 'protocol'>;
  /** Applies one coordinator message; must be idempotent by content (it is called once per seq). */
  apply: (msg: CoordinatorSequenced) => Promise<void>;
  onConnected?: () => void;
  /** An auction announcement (unsequenced: a lost one costs only a bid). */
  onAnnounce?: (msg: Extract<CoordinatorMessage, { type: 'order.announce' }>) => void;
  /** Longest wait between reconnect attempts. @default 5000 */
  maxBackoffMs?: number;
}

export class CoordinatorLink {
  private socket: WebSocket | undefined;
  private ready = false;
  private outSeq = 0;
  private readonly unacked: { msg: ProviderSequenced; bytes: number }[] = [];
  /** The last seq resent after the latest welcome: the backoff starts over only once it is acked. */
  private resentUpTo = 0;
  private lastApplied = 0;
  private applying: Promise<void> = Promise.resolve();
  private heartbeat: NodeJS.Timeout | undefined;
  private reconnectTimer: NodeJS.Timeout | undefined;
  private backoffMs = 100;
  /** Which of `urls` the link is on (or trying). */
  private urlIndex = 0;
  /** Connections that failed (or were lost) since the channel was last healthy: the backoff is waited once per round of all URLs. */
  private failedInRound = 0;
  private closed = false;
  private drainedWaiters: (() => void)[] = [];
  /** From the coordinator's welcome. */
  meteringIntervalMs = 10_000;

  constructor(private readonly options: CoordinatorLinkOptions) {}

  get connected(): boolean {
    return this.ready;
  }

  /** The coordinator the link is connected to, or trying now. */
  get url(): string {
    return this.options.urls[this.urlIndex] as string;
  }

  start(): void {
    this.connect();
  }

  /**
   * Queues a report; it is delivered (again after reconnects) until the coordinator acks it.
   * Returns false, and sends nothing, for a report larger than MAX_MESSAGE_BYTES.
   */
  send(report: Report): boolean {
    const msg = { ...report, seq: this.outSeq + 1 } as ProviderSequenced;
    const bytes = Buffer.byteLength(JSON.stringify(msg));
    if (bytes > MAX_MESSAGE_BYTES) {
      this.options.log.error({ type: report.type, bytes, limit: MAX_MESSAGE_BYTES }, 'report too large for the provider channel: not sent');
      return false;
    }
    this.outSeq = msg.seq;
    this.unacked.push({ msg, bytes });
    if (this.ready) this.raw(msg);
    return true;
  }

  /** Resolves when every report sent so far has been acknowledged (or the timeout passes). */
  flushed(timeoutMs: number): Promise<boolean> {
    if (this.unacked.length === 0) return Promise.resolve(true);
    return new Promise((resolve) => {
      const t = setTimeout(() => resolve(false), timeoutMs);
      this.drainedWaiters.push(() => {
        clearTimeout(t);
        resolve(true);
      });
    });
  }

  /** Sends an unsequenced message now if connected (bids: late or lost ones simply do not count). */
  sendNow(msg: Record<string, unknown>): void {
    if (this.ready) this.raw(msg);
  }

  close(): void {
    this.closed = true;
    clearTimeout(this.reconnectTimer);
    clearInterval(this.heartbeat);
    this.socket?.close(1000, 'agent stopping');
    this.socket = undefined;
    this.ready = false;
  }

  private raw(msg: unknown): void {
    if (this.socket?.readyState === WebSocket.OPEN) this.socket.send(JSON.stringify(msg));
  }

  private connect(): void {
    if (this.closed) return;
    const { log } = this.options;
    const path = '/v1/providers/connect';
    const wsUrl = new URL(path, this.url);
    wsUrl.protocol = wsUrl.protocol === 'https:' ? 'wss:' : 'ws:';
    const socket = new WebSocket(wsUrl, { headers: signRequest(this.options.identity, 'GET', path), handshakeTimeout: 10_000 });
    this.socket = socket;

    socket.on('open', () => {
      this.raw({ type: 'hello', protocol: 1, lastApplied: this.lastApplied, ...this.options.hello() });
    });
    socket.on('message', (data) => {
      let msg: CoordinatorMessage;
      try {
        msg = JSON.parse(data.toString()) as CoordinatorMessage;
      } catch {
        log.warn('coordinator sent a non-JSON message');
        return;
      }
      this.onMessage(socket, msg);
    });
    socket.on('unexpected-response', (_req, res) => {
      log.warn({ status: res.statusCode }, 'coordinator refused the connection');
      socket.terminate();
    });
    socket.on('error', (err) => log.debug({ err: err.message }, 'coordinator connection error'));
    socket.on('close', (code) => {
      if (this.socket !== socket) return;
      // 1009: the coordinator (or a proxy before it) took one of our messages for too big.
      if (code === 1009) this.replaceBiggest();
      const wasReady = this.ready;
      this.ready = false;
      clearInterval(this.heartbeat);
      this.socket = undefined;
      if (this.closed) return;
      const from = this.url;
      const { urls } = this.options;
      this.urlIndex = (this.urlIndex + 1) % urls.length;
      this.failedInRound++;
      let delay: number;
      if (this.failedInRound < urls.length) {
        // A URL of this round is still untried: a dead replica costs one quick failover, not a backoff.
        delay = Math.random() * FAILOVER_JITTER_MS;
      } else {
        this.failedInRound = 0;
        const max = this.options.maxBackoffMs ?? RECONNECT_MAX_BACKOFF_MS;
        const backoff = Math.min(this.backoffMs, max);
        this.backoffMs = Math.min(backoff * 2, max);
        delay = backoff * (0.75 + Math.random() * 0.5);
      }
      const where = { coordinator: from, next: this.url, inMs: Math.round(delay) };
      if (wasReady) log.warn(where, urls.length > 1 ? 'lost the coordinator connection; trying the next coordinator' : 'lost the coordinator connection; reconnecting');
      else log.debug({ ...where, code }, 'could not connect to the coordinator');
      this.reconnectTimer = setTimeout(() => this.connect(), delay);
    });
  }

  private onMessage(socket: WebSocket, msg: CoordinatorMessage): void {
    const { log } = this.options;
    switch (msg.type) {
      case 'welcome': {
        this.ready = true;
        this.meteringIntervalMs = msg.meteringIntervalMs;
        this.dropAcked(msg.lastApplied);
        // The backoff starts over once what was resent is acked: a connection that a resent
        // report closes again each time must not be retried ten times a second.
        this.resentUpTo = this.unacked.at(-1)?.msg.seq ?? 0;
        if (this.resentUpTo === 0) this.healthy();
        for (const m of this.unacked) this.raw(m.msg);
        clearInterval(this.heartbeat);
        this.heartbeat = setInterval(() => this.raw({ type: 'heartbeat', running: this.options.hello().running }), msg.heartbeatIntervalMs);
        log.info({ providerId: msg.providerId, coordinator: this.url, lastApplied: this.lastApplied, resent: this.unacked.length }, 'connected to coordinator');
        this.options.onConnected?.();
        return;
      }
      case 'ack':
        this.dropAcked(msg.seq);
        if (msg.seq >= this.resentUpTo) this.healthy();
        return;
      case 'error':
        log.warn({ code: msg.code }, `coordinator: ${msg.message}`);
        if (msg.code === 'PAYLOAD_TOO_LARGE') {
          const replaced = this.replaceBiggest();
          if (replaced) this.raw(replaced);
        }
        return;
      case 'order.announce':
        this.options.onAnnounce?.(msg);
        return;
      default: {
        const seqMsg = msg as CoordinatorSequenced;
        this.applying = this.applying.then(async () => {
          if (seqMsg.seq <= this.lastApplied) {
            this.raw({ type: 'ack', seq: seqMsg.seq });
            return;
          }
          if (seqMsg.seq !== this.lastApplied + 1) {
            log.warn({ seq: seqMsg.seq, expected: this.lastApplied + 1 }, 'sequence gap from coordinator; reconnecting');
            socket.close(4000, 'sequence gap');
            return;
          }
          try {
            await this.options.apply(seqMsg);
          } catch (err) {
            log.error({ err }, 'could not apply a coordinator message; reconnecting to get it again');
            socket.close(4000, 'apply failed');
            return;
          }
          this.lastApplied = seqMsg.seq;
          this.raw({ type: 'ack', seq: seqMsg.seq });
        });
      }
    }
  }

  /**
   * The coordinator refused a message of ours as too large (its limit may be lower than ours): the
   * biggest unacked one is replaced, under the same seq, by a log line saying what was dropped.
   * A lease.log for a lease the coordinator does not know (a report that had none) is consumed
   * without effect, so the sequence goes on either way.
   */
  private replaceBiggest(): ProviderSequenced | undefined {
    let biggest: { msg: ProviderSequenced; bytes: number } | undefined;
    for (const m of this.unacked) if (!biggest || m.bytes > biggest.bytes) biggest = m;
    if (!biggest) return undefined;
    const { msg, bytes } = biggest;
    const data = `[gridwork: a ${msg.type} report of ${bytes} bytes was dropped: the coordinator refused it as too large]\n`;
    biggest.msg = { seq: msg.seq, type: 'lease.log', leaseId: 'leaseId' in msg ? msg.leaseId : '', chunks: [{ stream: 'system', data, ts: Date.now() }] };
    biggest.bytes = Buffer.byteLength(JSON.stringify(biggest.msg));
    this.options.log.error({ type: msg.type, seq: msg.seq, bytes }, 'the coordinator refused a report as too large: dropped');
    return biggest.msg;
  }

  /**
   * The channel works (nothing resent, or what was resent is acked): the backoff and the round
   * start over. Not at the welcome itself: a connection that a resent report closes each time
   * would otherwise cycle through the replicas without ever backing off.
   */
  private healthy(): void {
    this.backoffMs = 100;
    this.failedInRound = 0;
  }

  private dropAcked(seq: number): void {
    while (this.unacked.length > 0 && (this.unacked[0] as { msg: ProviderSequenced }).msg.seq <= seq) this.unacked.shift();
    if (this.unacked.length === 0) {
      const waiters = this.drainedWaiters;
      this.drainedWaiters = [];
      for (const w of waiters) w();
    }
  }
}
