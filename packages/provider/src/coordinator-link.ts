/**
 * The agent's side of the provider channel: one WebSocket to the coordinator, reconnected with
 * backoff, over which reports are sent with sequence numbers and kept until acknowledged, and
 * coordinator messages are applied in order, once, then acknowledged.
 */
import { type CoordinatorMessage, type CoordinatorSequenced, type ProviderHello, type ProviderSequenced, RECONNECT_MAX_BACKOFF_MS } from '@gridwork/protocol';
import { type Identity, signRequest } from '@gridwork/protocol/node';
import type { Logger } from 'pino';
import WebSocket from 'ws';

type Unsequenced<T> = T extends unknown ? Omit<T, 'seq'> : never;
export type Report = Unsequenced<ProviderSequenced>;

export interface CoordinatorLinkOptions {
  url: string;
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
  private readonly unacked: ProviderSequenced[] = [];
  private lastApplied = 0;
  private applying: Promise<void> = Promise.resolve();
  private heartbeat: NodeJS.Timeout | undefined;
  private reconnectTimer: NodeJS.Timeout | undefined;
  private backoffMs = 100;
  private closed = false;
  private drainedWaiters: (() => void)[] = [];
  /** From the coordinator's welcome. */
  meteringIntervalMs = 10_000;

  constructor(private readonly options: CoordinatorLinkOptions) {}

  get connected(): boolean {
    return this.ready;
  }

  start(): void {
    this.connect();
  }

  /** Queues a report; it is delivered (again after reconnects) until the coordinator acks it. */
  send(report: Report): void {
    const msg = { ...report, seq: ++this.outSeq } as ProviderSequenced;
    this.unacked.push(msg);
    if (this.ready) this.raw(msg);
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
    const wsUrl = new URL(path, this.options.url);
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
    socket.on('close', () => {
      if (this.socket !== socket) return;
      const wasReady = this.ready;
      this.ready = false;
      clearInterval(this.heartbeat);
      this.socket = undefined;
      if (this.closed) return;
      if (wasReady) log.warn('lost the coordinator connection; reconnecting');
      const delay = Math.min(this.backoffMs, this.options.maxBackoffMs ?? RECONNECT_MAX_BACKOFF_MS);
      this.backoffMs = Math.min(delay * 2, this.options.maxBackoffMs ?? RECONNECT_MAX_BACKOFF_MS);
      this.reconnectTimer = setTimeout(() => this.connect(), delay * (0.75 + Math.random() * 0.5));
    });
  }

  private onMessage(socket: WebSocket, msg: CoordinatorMessage): void {
    const { log } = this.options;
    switch (msg.type) {
      case 'welcome': {
        this.ready = true;
        this.backoffMs = 100;
        this.meteringIntervalMs = msg.meteringIntervalMs;
        this.dropAcked(msg.lastApplied);
        for (const m of this.unacked) this.raw(m);
        clearInterval(this.heartbeat);
        this.heartbeat = setInterval(() => this.raw({ type: 'heartbeat', running: this.options.hello().running }), msg.heartbeatIntervalMs);
        log.info({ providerId: msg.providerId, resent: this.unacked.length }, 'connected to coordinator');
        this.options.onConnected?.();
        return;
      }
      case 'ack':
        this.dropAcked(msg.seq);
        return;
      case 'error':
        log.warn({ code: msg.code }, `coordinator: ${msg.message}`);
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

  private dropAcked(seq: number): void {
    while (this.unacked.length > 0 && (this.unacked[0] as ProviderSequenced).seq <= seq) this.unacked.shift();
    if (this.unacked.length === 0) {
      const waiters = this.drainedWaiters;
      this.drainedWaiters = [];
      for (const w of waiters) w();
    }
  }
}
