/**
 * A provider that speaks the wire protocol by hand, for tests that play a malicious or broken
 * agent: it sends exactly what the test says (any hello, any report) over a real signed
 * WebSocket, and records every message the coordinator sends back.
 */
import { randomBytes } from 'node:crypto';
import { canonicalJson } from '@gridwork/protocol';
import { generateIdentity, type Identity, signBytes, signRequest } from '@gridwork/protocol/node';
import WebSocket from 'ws';
import { until } from './index.ts';

export type WireMessage = Record<string, unknown> & { type: string };
export interface WireAssignment extends WireMessage {
  seq: number;
  lease: { leaseId: string; jobId: string; [k: string]: unknown };
}

export class RawProvider {
  readonly messages: WireMessage[] = [];
  closed = false;
  private seq = 0;
  private heartbeat: NodeJS.Timeout | undefined;
  private readonly taken = new Set<string>();

  private constructor(
    readonly url: string,
    readonly identity: Identity,
    readonly ws: WebSocket,
  ) {
    ws.on('message', (d) => this.messages.push(JSON.parse(d.toString()) as WireMessage));
    ws.on('close', () => {
      this.closed = true;
      clearInterval(this.heartbeat);
    });
  }

  get id(): string {
    return this.identity.publicKey;
  }

  static connect(url: string, identity: Identity = generateIdentity()): Promise<RawProvider> {
    const ws = new WebSocket(`${url.replace(/^http/, 'ws')}/v1/providers/connect`, { headers: signRequest(identity, 'GET', '/v1/providers/connect') });
    return new Promise((resolve, reject) => {
      ws.once('open', () => resolve(new RawProvider(url, identity, ws)));
      ws.once('unexpected-response', (_req, r) => reject(new Error(`upgrade refused: HTTP ${r.statusCode}`)));
      ws.once('error', reject);
    });
  }

  /** The first message, already received or future, matching `match`. */
  next(match: (m: WireMessage) => boolean, what: string, timeoutMs = 30_000): Promise<WireMessage> {
    return until(
      async () => this.messages.find(match),
      (m) => m !== undefined,
      { timeoutMs, what },
    ) as Promise<WireMessage>;
  }

  /** A valid hello (4 cores, 8 GiB, process runtime) with `overrides` applied, then heartbeats until closed. */
  async hello(overrides: Record<string, unknown> = {}): Promise<WireMessage> {
    const instance = randomBytes(12).toString('base64url');
    const asks = { cpuCoreHour: '0.01', memoryGiBHour: '0', gpuHour: {} };
    this.send({
      type: 'hello',
      protocol: 1,
      instance,
      name: 'raw',
      agentVersion: '0.1.0',
      runtime: 'process',
      slots: 2,
      hardware: { cpu: { model: 'x', cores: 4 }, memoryGiB: 8, diskGiB: 100, gpus: [] },
      attributes: {},
      asks,
      asksSignature: signBytes(this.identity, canonicalJson({ asks, instance })),
      benchmarks: { cpuMopsPerCore: 1000, gpu: {} },
      bids: false,
      lastApplied: 0,
      running: [],
      ...overrides,
    });
    const welcome = await this.next((m) => m.type === 'welcome' || m.type === 'error', 'the answer to hello');
    if (welcome.type === 'welcome') {
      this.heartbeat = setInterval(() => {
        if (!this.closed) this.send({ type: 'heartbeat', running: [] });
      }, Number(welcome.heartbeatIntervalMs) / 3);
    }
    return welcome;
  }

  send(m: Record<string, unknown>): void {
    this.ws.send(JSON.stringify(m));
  }

  /** The next lease assigned to this provider, acknowledged. */
  async assignment(what = 'an assignment'): Promise<WireAssignment> {
    const m = (await this.next((x) => x.type === 'lease.assign' && !this.taken.has((x as WireAssignment).lease.leaseId), what)) as WireAssignment;
    this.taken.add(m.lease.leaseId);
    this.send({ type: 'ack', seq: m.seq });
    return m;
  }

  /** Sends a sequenced report and waits for its ack; returns the error the coordinator answered with, if any. */
  async report(body: Record<string, unknown>): Promise<WireMessage | undefined> {
    const seq = ++this.seq;
    const from = this.messages.length;
    this.send({ seq, ...body });
    await this.next((m) => m.type === 'ack' && m.seq === seq, `ack of ${String(body.type)}`);
    return this.messages.slice(from).find((m) => m.type === 'error');
  }

  /** Stops heartbeating, the socket left open: a provider that hangs without closing. */
  silence(): void {
    clearInterval(this.heartbeat);
  }

  close(): void {
    clearInterval(this.heartbeat);
    this.ws.close();
  }
}
