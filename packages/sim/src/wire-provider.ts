/**
 * A light simulated provider for end-to-end benchmarks and `gridwork sim load`: it speaks the real provider wire
 * protocol (packages/protocol/src/wire.ts) over a real WebSocket, as the agent's
 * CoordinatorLink does — signed upgrade request, hello with signed standing asks, sequenced
 * reports kept until acked, in-order application of coordinator messages with acks,
 * heartbeats at the interval the welcome gives — but runs nothing: on `lease.assign` it reports
 * `lease.started` at once and `lease.finished` (exit 0, no outputs) after `taskMs`.
 *
 * Like the real agent, it sends `lease.started` before acking the assignment (the agent's
 * apply() starts the lease, whose first act is that report, and acks when apply returns).
 *
 * The hooks give the benchmark its stage timestamps, all on this process's clock
 * (performance.timeOrigin + performance.now(), ms):
 *  - onAssign: the `lease.assign` message arrived;
 *  - onApplied('started' | 'finished'): the coordinator acked that report, i.e. its
 *    transaction committed (the coordinator acks only after applying).
 */
import { randomBytes } from 'node:crypto';
import {
  type Asks,
  type Benchmarks,
  canonicalJson,
  type CoordinatorMessage,
  type CoordinatorSequenced,
  type Hardware,
  type LeaseAssignment,
  type ProviderSequenced,
} from '@gridwork/protocol';
import { generateIdentity, type Identity, signBytes, signRequest } from '@gridwork/protocol/node';
import WebSocket from 'ws';
import { type Report, leaseReport } from './wire-reports.ts';

export const nowMs = () => performance.timeOrigin + performance.now();

export interface SimulatedProviderOptions {
  url: string;
  name: string;
  slots: number;
  /** @default slots */
  cores?: number;
  /** @default 4 × cores */
  memoryGiB?: number;
  /** @default cheap CPU asks, no GPUs */
  asks?: Asks;
  /** How long a task "runs" before lease.finished (ms). @default 0 */
  taskMs?: number;
  onAssign?: (lease: LeaseAssignment, at: number) => void;
  onApplied?: (leaseId: string, what: 'started' | 'finished', at: number) => void;
  /** Something broke (a refused report, a closed socket): the benchmark counts these. */
  onError?: (message: string) => void;
}

export class SimulatedProvider {
  readonly identity: Identity = generateIdentity();
  private socket: WebSocket | undefined;
  private outSeq = 0;
  private lastApplied = 0;
  private readonly unacked: { msg: ProviderSequenced; leaseId?: string; what?: 'started' | 'finished' }[] = [];
  private readonly running = new Set<string>();
  private readonly timers = new Set<NodeJS.Timeout>();
  private heartbeat: NodeJS.Timeout | undefined;
  private readonly instance = randomBytes(12).toString('base64url');
  private closing = false;
  private silent = false;
  /** Leases this provider finished. */
  finished = 0;

  constructor(private readonly o: SimulatedProviderOptions) {}

  get id(): string {
    return this.identity.publicKey;
  }

  /** Connects and says hello; resolves on the welcome. */
  connect(timeoutMs = 20_000): Promise<void> {
    const path = '/v1/providers/connect';
    const wsUrl = new URL(path, this.o.url);
    wsUrl.protocol = wsUrl.protocol === 'https:' ? 'wss:' : 'ws:';
    const socket = new WebSocket(wsUrl, { headers: signRequest(this.identity, 'GET', path), handshakeTimeout: 10_000 });
    this.socket = socket;
    const cores = this.o.cores ?? this.o.slots;
    const hardware: Hardware = { cpu: { model: 'Sim CPU', cores }, memoryGiB: this.o.memoryGiB ?? cores * 4, diskGiB: 256, gpus: [] };
    const asks: Asks = this.o.asks ?? { cpuCoreHour: '0.02', memoryGiBHour: '0.002', gpuHour: {} };
    const benchmarks: Benchmarks = { cpuMopsPerCore: 1000, gpu: {} };
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`${this.o.name}: no welcome within ${timeoutMs} ms`)), timeoutMs);
      socket.on('open', () => {
        this.raw({
          type: 'hello',
          protocol: 1,
          name: this.o.name,
          agentVersion: 'gridwork-sim',
          runtime: 'process',
          slots: this.o.slots,
          hardware,
          attributes: {},
          asks,
          asksSignature: signBytes(this.identity, canonicalJson({ asks, instance: this.instance })),
          benchmarks,
          bids: false,
          instance: this.instance,
          lastApplied: this.lastApplied,
          running: [],
        });
      });
      socket.on('message', (data) => {
        let msg: CoordinatorMessage;
        try {
          msg = JSON.parse(data.toString()) as CoordinatorMessage;
        } catch {
          this.o.onError?.('coordinator sent a non-JSON message');
          return;
        }
        if (msg.type === 'welcome') {
          clearTimeout(timer);
          this.heartbeat = setInterval(() => this.raw({ type: 'heartbeat', running: [...this.running] }), msg.heartbeatIntervalMs);
          resolve();
          return;
        }
        this.onMessage(msg);
      });
      socket.on('unexpected-response', (_req, res) => {
        clearTimeout(timer);
        reject(new Error(`${this.o.name}: connection refused (HTTP ${res.statusCode})`));
        socket.terminate();
      });
      socket.on('error', (err) => {
        clearTimeout(timer);
        reject(err);
      });
      socket.on('close', (code, reason) => {
        clearInterval(this.heartbeat);
        if (!this.closing) this.o.onError?.(`${this.o.name}: connection closed (${code} ${reason.toString()})`);
      });
    });
  }

  /** Goes silent without closing its socket (as a hung agent or a dead network path would): no heartbeats, no reports, no acks. */
  silence(): void {
    this.silent = true;
    clearInterval(this.heartbeat);
  }

  /** Stops timers and closes the socket; resolves when it is closed. */
  close(): Promise<void> {
    this.closing = true;
    clearInterval(this.heartbeat);
    for (const t of this.timers) clearTimeout(t);
    this.timers.clear();
    const s = this.socket;
    if (!s || s.readyState === WebSocket.CLOSED) return Promise.resolve();
    return new Promise((resolve) => {
      s.once('close', () => resolve());
      s.close(1000, 'bench done');
      setTimeout(() => {
        s.terminate();
        resolve();
      }, 2000).unref();
    });
  }

  private raw(msg: unknown): void {
    if (!this.silent && this.socket?.readyState === WebSocket.OPEN) this.socket.send(JSON.stringify(msg));
  }

  private send(report: Report, leaseId?: string, what?: 'started' | 'finished'): void {
    const msg = { ...report, seq: ++this.outSeq } as ProviderSequenced;
    this.unacked.push({ msg, leaseId, what });
    this.raw(msg);
  }

  private onMessage(msg: CoordinatorMessage): void {
    switch (msg.type) {
      case 'ack': {
        const at = nowMs();
        while (this.unacked.length > 0 && (this.unacked[0]?.msg.seq ?? Number.POSITIVE_INFINITY) <= msg.seq) {
          const u = this.unacked.shift();
          if (u?.leaseId && u.what) this.o.onApplied?.(u.leaseId, u.what, at);
        }
        return;
      }
      case 'error':
        this.o.onError?.(`${this.o.name}: coordinator error ${msg.code}: ${msg.message}`);
        return;
      case 'order.announce':
        return; // no bids: this provider does not run a pricing script
      default: {
        const seqMsg = msg as CoordinatorSequenced;
        if (seqMsg.seq <= this.lastApplied) {
          this.raw({ type: 'ack', seq: seqMsg.seq });
          return;
        }
        if (seqMsg.seq !== this.lastApplied + 1) {
          this.o.onError?.(`${this.o.name}: sequence gap (got ${seqMsg.seq}, expected ${this.lastApplied + 1})`);
          return;
        }
        if (seqMsg.type === 'lease.assign') this.start(seqMsg.lease);
        else if (seqMsg.type === 'lease.cancel') this.running.delete(seqMsg.leaseId); // nothing runs, nothing to stop
        // challenge.issue / challenge.open: a simulated provider does not answer capacity challenges (they count as missed)
        this.lastApplied = seqMsg.seq;
        this.raw({ type: 'ack', seq: seqMsg.seq });
      }
    }
  }

  private start(lease: LeaseAssignment): void {
    const at = nowMs();
    this.o.onAssign?.(lease, at);
    this.running.add(lease.leaseId);
    this.send(leaseReport(lease.leaseId, { kind: 'started' }), lease.leaseId, 'started');
    const finish = () => {
      if (!this.running.delete(lease.leaseId)) return; // cancelled meanwhile
      this.finished++;
      this.send(leaseReport(lease.leaseId, { kind: 'finished', durationMs: nowMs() - at }), lease.leaseId, 'finished');
    };
    const taskMs = this.o.taskMs ?? 0;
    if (taskMs <= 0) {
      finish();
      return;
    }
    const t = setTimeout(() => {
      this.timers.delete(t);
      finish();
    }, taskMs);
    this.timers.add(t);
  }
}
