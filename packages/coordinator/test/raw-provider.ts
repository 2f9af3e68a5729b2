/**
 * A provider speaking the wire protocol by hand, as an attacker would: it says hello with whatever
 * it likes, acknowledges and reports what it chooses, and signs with its own key. Shared by the
 * adversarial tests (not a test file itself).
 */
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { canonicalJson, checkpointMessage, type FileRef, leaseCommitmentMessage, outputsRoot } from '@gridwork/protocol';
import { generateIdentity, type Identity, sha256Bytes, sha256Hex, signBytes, signRequest } from '@gridwork/protocol/node';
import { until } from '@gridwork/testkit';
import WebSocket from 'ws';

const WAIT_MS = 90_000;

export type Msg = Record<string, unknown> & { type: string };
export type Assignment = Msg & {
  seq: number;
  lease: {
    leaseId: string;
    jobId: string;
    taskId: string;
    taskIndex: number;
    auditCommitment: string;
    resume?: { step: number };
    stopStep?: number;
    runtime: { env: Record<string, string> };
  };
};

export class RawProvider {
  readonly messages: Msg[] = [];
  readonly raw: string[] = [];
  private seq = 0;
  private heartbeat: NodeJS.Timeout | undefined;
  private readonly taken = new Set<string>();
  closed = false;
  private constructor(
    readonly url: string,
    readonly identity: Identity,
    readonly ws: WebSocket,
  ) {
    ws.on('message', (d) => {
      const text = d.toString();
      this.raw.push(text);
      this.messages.push(JSON.parse(text) as Msg);
    });
    ws.on('close', () => {
      this.closed = true;
      clearInterval(this.heartbeat);
    });
  }

  get id(): string {
    return this.identity.publicKey;
  }

  static async connect(url: string, identity = generateIdentity()): Promise<RawProvider> {
    const ws = new WebSocket(`${url.replace(/^http/, 'ws')}/v1/providers/connect`, { headers: signRequest(identity, 'GET', '/v1/providers/connect') });
    return new Promise((res, rej) => {
      ws.once('open', () => res(new RawProvider(url, identity, ws)));
      ws.once('error', rej);
    });
  }

  next(match: (m: Msg) => boolean, what: string, timeoutMs = WAIT_MS): Promise<Msg> {
    return until(
      async () => this.messages.find(match),
      (m) => m !== undefined,
      { timeoutMs, what },
    ) as Promise<Msg>;
  }

  /** Says hello (a new instance each time: a reconnect); `cpuCoreHour` is its ask in credits. */
  async hello(region: string, slots = 2, attributes: Record<string, string> = {}, cpuCoreHour = '0.01'): Promise<void> {
    const instance = randomBytes(12).toString('base64url');
    const asks = { cpuCoreHour, memoryGiBHour: '0', gpuHour: {} };
    this.ws.send(
      JSON.stringify({
        type: 'hello',
        protocol: 1,
        instance,
        name: `raw-${region}`,
        agentVersion: '0.1.0',
        runtime: 'process',
        slots,
        hardware: { cpu: { model: 'x', cores: 4 }, memoryGiB: 8, diskGiB: 100, gpus: [] },
        attributes: { region, ...attributes },
        asks,
        asksSignature: signBytes(this.identity, canonicalJson({ asks, instance })),
        benchmarks: { cpuMopsPerCore: 1000, gpu: {} },
        bids: false,
        lastApplied: 0,
        running: [],
      }),
    );
    const welcome = await this.next((m) => m.type === 'welcome', 'welcome');
    this.heartbeat = setInterval(() => {
      if (!this.closed) this.ws.send(JSON.stringify({ type: 'heartbeat', running: [] }));
    }, Number(welcome.heartbeatIntervalMs) / 3);
  }

  /** The next lease assigned to this provider (acknowledged). */
  async assignment(what = 'an assignment'): Promise<Assignment> {
    const m = (await this.next((x) => x.type === 'lease.assign' && !this.taken.has(String((x as Assignment).lease.leaseId)), what)) as Assignment;
    this.taken.add(m.lease.leaseId);
    this.ws.send(JSON.stringify({ type: 'ack', seq: m.seq }));
    return m;
  }

  /** Sends a sequenced report and waits for its ack; returns the error the coordinator answered with, if any. */
  async report(body: Record<string, unknown>): Promise<Msg | undefined> {
    const seq = ++this.seq;
    const from = this.messages.length;
    this.ws.send(JSON.stringify({ seq, ...body }));
    await this.next((m) => m.type === 'ack' && m.seq === seq, `ack of ${String(body.type)}`);
    return this.messages.slice(from).find((m) => m.type === 'error');
  }

  /** Sends a sequenced report without waiting (for reports the coordinator may refuse by closing). */
  sendRaw(body: Record<string, unknown>): void {
    const seq = ++this.seq;
    this.ws.send(JSON.stringify({ seq, ...body }));
  }

  async upload(bytes: Buffer | string): Promise<FileRef & { path: string }> {
    const buf = Buffer.isBuffer(bytes) ? bytes : Buffer.from(bytes);
    const digest = sha256Hex(buf);
    const res = await fetch(`${this.url}/v1/blobs/${digest}`, {
      method: 'PUT',
      headers: { 'content-type': 'application/octet-stream', ...signRequest(this.identity, 'PUT', `/v1/blobs/${digest}`, { digest }) },
      body: buf,
    });
    assert.ok(res.status === 201 || res.status === 200, await res.text());
    return { path: '', digest, size: buf.length };
  }

  /** A checkpoint report signed by `signer` (this provider unless given). */
  checkpoint(a: Assignment, step: number, file: FileRef, usageMs = 100, signer: Identity = this.identity): Record<string, unknown> {
    const signature = signBytes(
      signer,
      checkpointMessage({ leaseId: a.lease.leaseId, step, digest: file.digest, usageMs, auditCommitment: a.lease.auditCommitment }),
    );
    return { type: 'lease.checkpoint', leaseId: a.lease.leaseId, step, file, usageMs, signature };
  }

  /** A `lease.finished` report with a valid commitment (or, `commit: false`, none: the wire allows it). */
  finished(
    a: Assignment,
    outputs: FileRef[],
    outcome: Record<string, unknown> = { kind: 'exited', exitCode: 0 },
    durationMs = 2000,
    commit = true,
  ): Record<string, unknown> {
    if (!commit) return { type: 'lease.finished', leaseId: a.lease.leaseId, outcome, durationMs, outputs };
    const root = outputsRoot(sha256Bytes, outputs);
    const signature = signBytes(
      this.identity,
      leaseCommitmentMessage({ leaseId: a.lease.leaseId, outcome: outcome as never, durationMs, outputsRoot: root, auditCommitment: a.lease.auditCommitment }),
    );
    return { type: 'lease.finished', leaseId: a.lease.leaseId, outcome, durationMs, outputs, commitment: { outputsRoot: root, signature } };
  }

  /**
   * From now on answers every assignment with `answer(a)` as its one output file, result.txt
   * (made up, or right), after `durationMs` of claimed run time; `null` drops the lease:
   * acknowledged, never started. Runs until the socket closes.
   */
  serve(answer: (a: Assignment) => string | null, durationMs = 100): void {
    const loop = async () => {
      while (!this.closed) {
        const a = await this.assignment().catch(() => null);
        if (!a) continue;
        const text = answer(a);
        if (text === null) continue;
        await this.report({ type: 'lease.started', leaseId: a.lease.leaseId });
        const out = await this.upload(text);
        await this.report(this.finished(a, [{ path: 'result.txt', digest: out.digest, size: out.size }], { kind: 'exited', exitCode: 0 }, durationMs));
      }
    };
    loop().catch(() => {});
  }

  async get(path: string): Promise<{ status: number; text: string }> {
    const res = await fetch(new URL(path, this.url), { headers: signRequest(this.identity, 'GET', path) });
    return { status: res.status, text: await res.text() };
  }

  close(): void {
    clearInterval(this.heartbeat);
    if (!this.closed) this.ws.close();
  }
}
