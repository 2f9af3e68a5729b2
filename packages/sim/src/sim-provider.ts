/**
 * A simulated provider that speaks the real provider wire protocol (packages/protocol/src/wire.ts)
 * over a real WebSocket, as the agent's CoordinatorLink does — signed upgrade request, hello with
 * signed standing asks, sequenced reports, in-order application of the coordinator's messages
 * with acks, heartbeats at the interval the welcome gives — and delivers results as the agent's
 * lease runner does: it uploads each output through the signed blob API during the lease and
 * ends the lease with `lease.finished` carrying the outputs and a signed result commitment
 * (a Merkle root over them, bound to the coordinator's audit commitment).
 *
 * Nothing runs: a task's output comes from its strategy (strategies.ts) at once, and the report
 * claims the run time the work would take (its `durationMs`), which is what the coordinator bills.
 * Capacity challenges are answered with the agent's own honest solver, or too late by a
 * provider whose hardware is not what it claims.
 */
import { randomBytes } from 'node:crypto';
import {
  type Asks,
  type Benchmarks,
  type CapacityChallenge,
  canonicalJson,
  type CoordinatorMessage,
  type CoordinatorSequenced,
  committedMessage,
  type FileRef,
  type Hardware,
  type LeaseAssignment,
  type LeaseEnd,
  leaseCommitmentMessage,
  outputsRoot,
  type ProviderSequenced,
} from '@gridwork/protocol';
import { type Identity, sha256Bytes, sha256Hex, signBytes, signedFetch, signRequest } from '@gridwork/protocol/node';
import { ChallengeResponder, honestSolver } from '@gridwork/provider';
import WebSocket from 'ws';
import { OUTPUT_PATH, type SimTask, taskOf } from './sim-task.ts';
import type { Behaviour } from './strategies.ts';

type Unsequenced<T> = T extends unknown ? Omit<T, 'seq'> : never;
type Report = Unsequenced<ProviderSequenced>;

/** One lease this provider ended, as it knows it (the coordinator's view is in its database). */
export interface LeaseRecord {
  leaseId: string;
  jobId: string;
  taskKey: string;
  workMs: number;
  billedMs: number;
  /** Its output was not the faithful one. */
  cheated: boolean;
}

export interface SimProviderOptions {
  url: string;
  identity: Identity;
  name: string;
  behaviour: Behaviour;
  /** The CPU benchmark an honest provider of this kind measures (the real one ÷ nothing). */
  cpuMopsPerCore: number;
  asks: Asks;
  /** @default 1 */
  slots?: number;
  /** Wall time a task "runs" before its result is delivered (its billed time is claimed, not waited). @default 2 */
  taskWallMs?: number;
  /** How long after issue a provider with slower hardware than it claims commits to a challenge. */
  lateAnswerMs?: (challenge: CapacityChallenge) => number;
  onFinished?: (r: LeaseRecord) => void;
  /** Something broke (a refused report, a closed socket): the simulation reports these. */
  onError?: (message: string) => void;
}

export class SimProvider {
  private socket: WebSocket | undefined;
  private outSeq = 0;
  private lastApplied = 0;
  private readonly running = new Set<string>();
  private readonly timers = new Set<NodeJS.Timeout>();
  private heartbeat: NodeJS.Timeout | undefined;
  private readonly instance = randomBytes(12).toString('base64url');
  private closing = false;
  /** Honest answers to capacity challenges: the agent's own responder and solver. */
  private readonly challenges: ChallengeResponder;
  /** Leases ended. */
  finished = 0;

  constructor(readonly o: SimProviderOptions) {
    this.challenges = new ChallengeResponder(
      o.identity,
      honestSolver,
      (report) => {
        if (!this.closing) this.send(report);
      },
      (obj, msg) => o.onError?.(`${o.name}: ${msg} ${JSON.stringify(obj)}`),
    );
  }

  get id(): string {
    return this.o.identity.publicKey;
  }

  /** Connects and says hello; resolves on the welcome. */
  connect(timeoutMs = 30_000): Promise<void> {
    const path = '/v1/providers/connect';
    const wsUrl = new URL(path, this.o.url);
    wsUrl.protocol = wsUrl.protocol === 'https:' ? 'wss:' : 'ws:';
    const socket = new WebSocket(wsUrl, { headers: signRequest(this.o.identity, 'GET', path), handshakeTimeout: 10_000 });
    this.socket = socket;
    const slots = this.o.slots ?? 1;
    const hardware: Hardware = { cpu: { model: 'Simulated CPU', cores: slots }, memoryGiB: slots * 4, diskGiB: 64, gpus: [] };
    const benchmarks: Benchmarks = { cpuMopsPerCore: this.o.cpuMopsPerCore * this.o.behaviour.claimFactor, gpu: {} };
    const asks = this.o.asks;
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`${this.o.name}: no welcome within ${timeoutMs} ms`)), timeoutMs);
      socket.on('open', () => {
        this.raw({
          type: 'hello',
          protocol: 1,
          name: this.o.name,
          agentVersion: 'gridwork-sim',
          runtime: 'process',
          slots,
          hardware,
          attributes: {},
          asks,
          asksSignature: signBytes(this.o.identity, canonicalJson({ asks, instance: this.instance })),
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
          this.o.onError?.(`${this.o.name}: the coordinator sent a non-JSON message`);
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

  /** Stops timers and closes the socket; resolves when it is closed. */
  close(): Promise<void> {
    this.closing = true;
    clearInterval(this.heartbeat);
    for (const t of this.timers) clearTimeout(t);
    this.timers.clear();
    const s = this.socket;
    if (!s || s.readyState === WebSocket.CLOSED) return Promise.resolve();
    return new Promise((resolve) => {
      const t = setTimeout(() => {
        s.terminate();
        resolve();
      }, 2000);
      t.unref();
      s.once('close', () => {
        clearTimeout(t);
        resolve();
      });
      s.close(1000, 'simulation done');
    });
  }

  private raw(msg: unknown): void {
    if (this.socket?.readyState === WebSocket.OPEN) this.socket.send(JSON.stringify(msg));
  }

  private send(report: Report): void {
    this.raw({ ...report, seq: ++this.outSeq });
  }

  private later(ms: number, fn: () => void): void {
    const t = setTimeout(() => {
      this.timers.delete(t);
      fn();
    }, ms);
    this.timers.add(t);
  }

  private onMessage(msg: CoordinatorMessage): void {
    switch (msg.type) {
      case 'ack':
        return; // reports are not resent: a simulated provider never reconnects
      case 'error':
        this.o.onError?.(`${this.o.name}: coordinator error ${msg.code}: ${msg.message}`);
        return;
      case 'order.announce':
        return; // no bids: standing asks only
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
        else if (seqMsg.type === 'lease.cancel') this.cancel(seqMsg.leaseId);
        else if (seqMsg.type === 'challenge.issue') this.challenge(seqMsg.challenge);
        else if (seqMsg.type === 'challenge.open') this.open(seqMsg.challengeId, seqMsg.openSeed);
        this.lastApplied = seqMsg.seq;
        this.raw({ type: 'ack', seq: seqMsg.seq });
      }
    }
  }

  // ---- leases ---------------------------------------------------------------------------------

  private start(lease: LeaseAssignment): void {
    this.running.add(lease.leaseId);
    this.send({ type: 'lease.started', leaseId: lease.leaseId });
    const task = taskOf(lease);
    if (!task) {
      this.later(this.o.taskWallMs ?? 2, () => this.end(lease, { kind: 'error', message: 'not a simulated task' }, 0, []));
      return;
    }
    this.later(this.o.taskWallMs ?? 2, () => {
      void this.deliver(lease, task).catch((err: Error) => {
        this.o.onError?.(`${this.o.name}: could not deliver lease ${lease.leaseId}: ${err.message}`);
        this.end(lease, { kind: 'error', message: `upload failed: ${err.message}`.slice(0, 4000) }, 0, []);
      });
    });
  }

  /** Uploads the output during the lease (the coordinator accepts only outputs uploaded since the lease began), then reports. */
  private async deliver(lease: LeaseAssignment, task: SimTask): Promise<void> {
    if (!this.running.has(lease.leaseId)) return;
    const answer = this.o.behaviour.answer(task);
    const digest = sha256Hex(answer.output);
    const res = await signedFetch(this.o.url, this.o.identity, 'PUT', `/v1/blobs/${digest}`, { body: { blob: answer.output, digest } });
    await res.arrayBuffer();
    const billedMs = Math.round(task.workMs * this.o.behaviour.billFactor);
    const outputs: FileRef[] = [{ path: OUTPUT_PATH, digest, size: answer.output.length }];
    if (this.end(lease, { kind: 'exited', exitCode: 0 }, billedMs, outputs)) {
      this.o.onFinished?.({ leaseId: lease.leaseId, jobId: lease.jobId, taskKey: task.key, workMs: task.workMs, billedMs, cheated: answer.cheated });
    }
  }

  /** The report that ends a lease, with the signed commitment over its outputs. */
  private end(lease: LeaseAssignment, outcome: LeaseEnd, durationMs: number, outputs: FileRef[]): boolean {
    if (!this.running.delete(lease.leaseId)) return false;
    const root = outputsRoot(sha256Bytes, outputs);
    const signature = signBytes(
      this.o.identity,
      leaseCommitmentMessage({ leaseId: lease.leaseId, outcome, durationMs, outputsRoot: root, auditCommitment: lease.auditCommitment ?? '' }),
    );
    this.send({ type: 'lease.finished', leaseId: lease.leaseId, outcome, durationMs, outputs, commitment: { outputsRoot: root, signature } });
    this.finished++;
    return true;
  }

  private cancel(leaseId: string): void {
    if (!this.running.delete(leaseId)) return;
    const root = outputsRoot(sha256Bytes, []);
    const outcome: LeaseEnd = { kind: 'cancelled' };
    const signature = signBytes(this.o.identity, leaseCommitmentMessage({ leaseId, outcome, durationMs: 0, outputsRoot: root, auditCommitment: '' }));
    this.send({ type: 'lease.finished', leaseId, outcome, durationMs: 0, outputs: [], commitment: { outputsRoot: root, signature } });
  }

  // ---- capacity challenges (the agent's ChallengeResponder; a fake-hardware provider answers late) ----

  private challenge(challenge: CapacityChallenge): void {
    if (this.o.behaviour.challenges === 'late') {
      // Hardware slower than claimed: by the time the product is done, the deadline has passed.
      // What it commits to then no longer counts, so the simulation does not compute it.
      const lateBy = this.o.lateAnswerMs?.(challenge) ?? challenge.deadlineMs * 2;
      this.later(lateBy, () => {
        const root = sha256Hex(`${challenge.challengeId}:late`);
        this.send({
          type: 'challenge.committed',
          challengeId: challenge.challengeId,
          matrixRoot: root,
          memoryRoot: root,
          signature: signBytes(this.o.identity, committedMessage(challenge.challengeId, root, root)),
        });
      });
      return;
    }
    this.challenges.issue(challenge);
  }

  private open(challengeId: string, openSeed: string): void {
    this.challenges.open(challengeId, openSeed);
  }
}
