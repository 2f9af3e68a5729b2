/**
 * The provider agent: identity, hardware, runtime, the coordinator link, and the leases it
 * runs. Applying an assignment twice starts it once; a cancel aborts it; a drain stops taking
 * work, lets running tasks finish for a while, then hands the rest back.
 */
import { randomBytes } from 'node:crypto';
import { mkdir, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import {
  type Asks,
  type BalanceView,
  type Benchmarks,
  canonicalJson,
  type CoordinatorSequenced,
  DEFAULT_LEASE_LOG_BYTES,
  GRIDWORK_VERSION,
  GridworkError,
  type Hardware,
  RUNTIMES,
  type RuntimeKind,
  runtimeFor,
  runtimeNameFor,
  type WorkloadKind,
} from '@gridwork/protocol';
import { type Identity, loadOrCreateIdentity, signBytes, signedFetch } from '@gridwork/protocol/node';
import { benchmark } from './benchmark.ts';
import { ChallengeResponder, type ChallengeSolver, honestSolver } from './challenge-solver.ts';
import { type AnnouncedOrder, fixedPricing, type PricingPolicy } from './pricing.ts';
import pino, { type Logger } from 'pino';
import { CoordinatorLink, coordinatorUrlList } from './coordinator-link.ts';
import { detectHardware } from './hardware.ts';
import type { CheckpointTamper } from './checkpoints.ts';
import { ServiceIngress } from './service-ingress.ts';
import { type AbortReason, type ResultTamper, runLease, wellFormedAssignment } from './lease-runner.ts';
import { removeTaskTree } from './task-file.ts';
import { BUNDLE_CACHE_DIR, BundleCache } from './bundle-cache.ts';
import { dockerEndpoint } from './runtime/docker-endpoint.ts';
import { createProcessRuntime } from './runtime/process-runtime.ts';
import type { Runtime } from './runtime/runtime.ts';
import { createSandboxRuntime } from './runtime/sandbox-runtime.ts';
import { taskSlots } from './runtime/task-slots.ts';

/** The runtimes of the registry that run bundles (the agent runs bundles in exactly one of them). */
export type BundleRuntimeKind = { [K in RuntimeKind]: (typeof RUNTIMES)[K]['runs'] extends 'bundle' ? K : never }[RuntimeKind];

export interface ProviderAgentOptions {
  /**
   * The coordinator's URL; or several, replicas of one network in order of preference (a list, or
   * one string with the URLs separated by commas): the agent connects to one and moves to the next
   * when its connection is lost or cannot be made, resuming where it was. No default.
   */
  coordinatorUrl: string | readonly string[];
  /** Holds the agent's key (`provider-key.json`). */
  dataDir: string;
  /** @default the host name plus a short random suffix */
  name?: string;
  /** How bundles run. @default 'sandbox' */
  runtime?: BundleRuntimeKind;
  /**
   * Offer the container runtime: 'auto' where a Docker engine answers (DOCKER_HOST, else /var/run/docker.sock),
   * 'off' never. @default 'auto'
   */
  containers?: 'auto' | 'off';
  /**
   * The runtimes to offer, made by the caller (embedding, tests), instead of `runtime` and `containers`: each is
   * checked at start; a lease goes to the first one that runs its workload kind. @default from runtime and containers
   */
  runtimes?: readonly Runtime[];
  /** @default 'auto' */
  gpus?: 'auto' | 'none';
  /**
   * Tasks run at once. One where a runtime cannot hold each task to its memory limit (task-slots.ts), whatever is
   * asked here. @default number of CPU cores
   */
  slots?: number;
  /** Placement attributes, e.g. { region: 'eu' }. @default {} */
  attributes?: Record<string, string>;
  /** How this agent prices its work. @default fixedPricing() */
  pricing?: PricingPolicy;
  /** Throughput figures to publish instead of measuring them (external benchmarks, tests). @default measured at start */
  benchmarks?: Benchmarks;
  /** How long a drain waits for running tasks before handing them back. @default 60_000 */
  drainTimeoutMs?: number;
  /**
   * Task output (stdout and stderr, UTF-8 bytes) logged per lease. Beyond it the log ends with a
   * `[gridwork: log truncated after N bytes]` line and the rest of the output is discarded; the
   * task runs on and its outputs are unaffected. @default DEFAULT_LEASE_LOG_BYTES (8 MiB)
   */
  maxLogBytes?: number;
  /**
   * Parent of per-task directories. Must be reachable by the sandbox's unprivileged user, so it
   * is never inside the data directory (which holds the private key). @default a fresh dir in os.tmpdir()
   */
  workRoot?: string;
  logger?: Logger;
  /** How capacity challenges are answered (tests give a cheating one). @default honestSolver */
  challengeSolver?: ChallengeSolver;
  /**
   * Runs on a finished task's `/outputs` before they are hashed, committed and uploaded. Only
   * tests and the trust simulation set it, to play a provider that returns wrong results. @default none
   */
  resultTamper?: ResultTamper;
  /** Runs on each checkpoint before it is hashed and uploaded (tests: a provider whose training diverges). @default none */
  checkpointTamper?: CheckpointTamper;
  /**
   * The service ingress: where the coordinator reaches the service replicas this agent runs
   * (requests carry a per-replica secret). `host`/`port` to listen on, `url` to advertise when the
   * coordinator reaches it by another address. @default { host: '127.0.0.1', port: 0 (any free port) }
   */
  ingress?: { host?: string; port?: number; url?: string } | false;
}

export class ProviderAgent {
  /** The agent's key pair; never exposed: the private key stays in this object and its key file. */
  readonly #identity: Identity;
  readonly hardware: Hardware;
  readonly asks: Asks;
  private readonly benchmarks: Benchmarks;
  private readonly running = new Map<string, AbortController>();
  private readonly seen = new Set<string>();
  /** Bundle files kept for later leases, in the work root (bundle-cache.ts). */
  private readonly bundles: BundleCache;
  /** Running cluster members: where each one's complete exchange rounds go. */
  private readonly exchanges = new Map<string, (round: number, files: { rank: number; digest: string; size: number }[]) => Promise<void>>();
  private readonly link: CoordinatorLink;
  /** The coordinator URLs given, in order. */
  private readonly coordinatorUrls: readonly string[];
  private draining = false;
  private readonly instance = randomBytes(12).toString('base64url');
  private idleWaiters: (() => void)[] = [];
  private readonly pricing: PricingPolicy;
  private readonly challenges: ChallengeResponder;

  private constructor(
    private readonly options: ProviderAgentOptions & { name: string; slots: number; workRoot: string; maxLogBytes: number },
    identity: Identity,
    hardware: Hardware,
    /** Offered runtimes, bundles' first. */
    private readonly runtimeList: readonly Runtime[],
    private readonly log: Logger,
    private readonly ingress?: { server: ServiceIngress; url: string },
  ) {
    this.#identity = identity;
    this.hardware = hardware;
    this.bundles = new BundleCache(join(options.workRoot, BUNDLE_CACHE_DIR));
    this.pricing = options.pricing ?? fixedPricing();
    this.asks = this.pricing.asks(hardware);
    this.benchmarks = options.benchmarks ?? benchmark(hardware);
    this.challenges = new ChallengeResponder(
      identity,
      options.challengeSolver ?? honestSolver,
      (r) => this.link.send(r),
      (obj, msg) => log.warn(obj, msg),
    );
    const asksSignature = signBytes(identity, canonicalJson({ asks: this.asks, instance: this.instance }));
    this.coordinatorUrls = coordinatorUrlList(options.coordinatorUrl);
    this.link = new CoordinatorLink({
      urls: this.coordinatorUrls,
      identity,
      log,
      hello: () => ({
        instance: this.instance,
        name: options.name,
        agentVersion: GRIDWORK_VERSION,
        runtime: (runtimeList[0] as Runtime).kind,
        runtimes: runtimeList.map((r) => r.kind),
        slots: options.slots,
        hardware,
        attributes: options.attributes ?? {},
        asks: this.asks,
        asksSignature,
        benchmarks: this.benchmarks,
        bids: this.pricing.bid !== undefined,
        ...(ingress ? { ingressUrl: ingress.url } : {}),
        running: [...this.running.keys()],
      }),
      onAnnounce: (order) => void this.bid(order),
      apply: (msg) => this.apply(msg),
      onConnected: () => {
        if (this.draining) this.link.send({ type: 'provider.state', state: 'draining' });
      },
    });
  }

  static async create(options: ProviderAgentOptions): Promise<ProviderAgent> {
    coordinatorUrlList(options.coordinatorUrl); // a malformed URL fails before anything is set up
    const log = options.logger ?? pino({ level: 'info' }, pino.destination(2));
    await mkdir(options.dataDir, { recursive: true, mode: 0o700 });
    const identity = await loadOrCreateIdentity(join(options.dataDir, 'provider-key.json'));
    const hardware = await detectHardware({ gpus: options.gpus ?? 'auto', dataDir: options.dataDir });
    const runtimes = await offeredRuntimes(options, log);
    const workRoot = options.workRoot ?? join(tmpdir(), `gridwork-tasks-${randomBytes(6).toString('hex')}`);
    await mkdir(workRoot, { recursive: true, mode: 0o711 });
    await rm(join(workRoot, BUNDLE_CACHE_DIR), { recursive: true, force: true }); // a killed agent's, counted by nobody
    const name = options.name ?? `provider-${randomBytes(3).toString('hex')}`;
    const child = log.child({ provider: name });
    const bounded = await Promise.all(runtimes.map((r) => r.taskMemoryBounded?.() ?? true));
    const { slots, warning } = taskSlots({ requested: options.slots, cores: hardware.cpu.cores, memoryBounded: bounded.every(Boolean) });
    if (warning) child.warn(warning);
    let ingress: { server: ServiceIngress; url: string } | undefined;
    if (options.ingress !== false) {
      const server = new ServiceIngress(child, (message) => signBytes(identity, message));
      const url = await server.listen(options.ingress?.host ?? '127.0.0.1', options.ingress?.port ?? 0, options.ingress?.url);
      ingress = { server, url };
    }
    const maxLogBytes = options.maxLogBytes ?? DEFAULT_LEASE_LOG_BYTES;
    return new ProviderAgent({ ...options, name, slots, workRoot, maxLogBytes }, identity, hardware, runtimes, child, ingress);
  }

  get id(): string {
    return this.#identity.publicKey;
  }

  get name(): string {
    return this.options.name;
  }

  /** This provider's account at its coordinator: earnings available, stake, unbonding. */
  async balance(signal?: AbortSignal): Promise<BalanceView> {
    const res = await this.coordinatorGet('/v1/account', signal);
    const body = (await res.json()) as unknown;
    if (!res.ok) throw GridworkError.fromBody(body, res.status);
    return body as BalanceView;
  }

  /**
   * A signed GET to the coordinator the link is on; where it cannot be reached or fails (5xx), to
   * the other URLs given, in order (a GET is safe to repeat).
   */
  private async coordinatorGet(path: string, signal?: AbortSignal): Promise<Response> {
    const first = this.link.url;
    const urls = [first, ...this.coordinatorUrls.filter((u) => u !== first)];
    for (const [i, url] of urls.entries()) {
      try {
        return await signedFetch(url, this.#identity, 'GET', path, { ...(signal ? { signal } : {}) });
      } catch (err) {
        const elsewhere = err instanceof GridworkError && (err.code === 'NETWORK_ERROR' || err.httpStatus >= 500);
        if (!elsewhere || signal?.aborted || i === urls.length - 1) throw err;
      }
    }
    throw new GridworkError('INTERNAL', 'no coordinator URL');
  }

  /** The runtimes this agent offers (what its hello declares). */
  get runtimes(): RuntimeKind[] {
    return this.runtimeList.map((r) => r.kind);
  }

  /** The offered runtime for a workload kind; one that refuses the lease when none is (the coordinator should not send it). */
  private runtimeFor(workload: WorkloadKind): Runtime {
    const kind = runtimeFor(workload, this.runtimes);
    const runtime = this.runtimeList.find((r) => r.kind === kind);
    if (runtime) return runtime;
    const refuse = async (): Promise<never> => {
      throw new GridworkError('UNSUPPORTED_RUNTIME', `this provider does not offer ${runtimeNameFor(workload)}`);
    };
    return { kind: this.runtimes[0] as RuntimeKind, check: async () => {}, start: refuse, run: refuse };
  }

  get runningLeases(): string[] {
    return [...this.running.keys()];
  }

  start(): void {
    this.log.info(
      { coordinators: this.coordinatorUrls, runtimes: this.runtimes, slots: this.options.slots, gpus: this.hardware.gpus.length },
      'provider starting',
    );
    this.link.start();
  }

  /** Answers an auction announcement from the pricing script (if any); silence means no bid. */
  private async bid(order: { orderId: string; resources: AnnouncedOrder['resources']; maxPerHour: string }): Promise<void> {
    if (!this.pricing.bid || this.draining) return;
    const price = await this.pricing.bid(order, this.asks).catch(() => null);
    if (price === null) return;
    this.link.sendNow({
      type: 'bid',
      orderId: order.orderId,
      pricePerHour: price,
      signature: signBytes(this.#identity, canonicalJson({ orderId: order.orderId, pricePerHour: price })),
    });
  }

  private async apply(msg: CoordinatorSequenced): Promise<void> {
    // Challenges run beside the work (answered when computed), never holding up later messages.
    if (msg.type === 'challenge.issue') return this.challenges.issue(msg.challenge);
    if (msg.type === 'challenge.open') return this.challenges.open(msg.challengeId, msg.openSeed);
    if (msg.type === 'exchange.round') {
      // A member that has gone has nothing to deliver to (its cluster restarts without it).
      await this.exchanges.get(msg.leaseId)?.(msg.round, msg.files).catch((err: unknown) => this.log.warn({ err, leaseId: msg.leaseId, round: msg.round }, 'could not deliver an exchange round'));
      return;
    }
    if (msg.type === 'lease.cancel') {
      this.running.get(msg.leaseId)?.abort('cancelled' satisfies AbortReason);
      this.seen.add(msg.leaseId);
      return;
    }
    const lease: unknown = msg.lease;
    // Its ids name directories and URLs on this host: an assignment that is not well formed is
    // refused here (acknowledged, never run), whoever sent it.
    if (!wellFormedAssignment(lease)) {
      this.log.error({ leaseId: String((lease as { leaseId?: unknown } | null)?.leaseId).slice(0, 64) }, 'coordinator sent a malformed lease assignment: refused');
      return;
    }
    if (this.seen.has(lease.leaseId)) return; // applied before (or cancelled before it arrived)
    this.seen.add(lease.leaseId);
    if (this.draining) {
      this.link.send({ type: 'lease.released', leaseId: lease.leaseId, reason: 'provider draining' });
      return;
    }
    const ac = new AbortController();
    this.running.set(lease.leaseId, ac);
    const link = this.link;
    this.log.info({ leaseId: lease.leaseId, job: lease.jobId, task: lease.taskIndex }, 'lease started');
    void runLease(
      {
        // Read at each transfer: blobs go to the coordinator the link is on now, also after a failover.
        get coordinatorUrl() {
          return link.url;
        },
        meteringIntervalMs: () => this.link.meteringIntervalMs,
        identity: this.#identity,
        runtime: this.runtimeFor(lease.runtime.kind),
        gpus: this.hardware.gpus,
        workRoot: this.options.workRoot,
        bundles: this.bundles,
        send: (r) => this.link.send(r),
        maxLogBytes: this.options.maxLogBytes,
        log: this.log,
        ...(this.options.resultTamper ? { resultTamper: this.options.resultTamper } : {}),
        ...(this.options.checkpointTamper ? { checkpointTamper: this.options.checkpointTamper } : {}),
        ...(this.ingress ? { ingress: this.ingress.server } : {}),
        exchange: {
          register: (leaseId, deliver) => {
            this.exchanges.set(leaseId, deliver);
            return () => this.exchanges.delete(leaseId);
          },
        },
      },
      lease,
      ac.signal,
    ).finally(() => {
      this.running.delete(lease.leaseId);
      this.log.info({ leaseId: lease.leaseId }, 'lease ended');
      if (this.running.size === 0) for (const w of this.idleWaiters.splice(0)) w();
    });
  }

  private idle(timeoutMs: number): Promise<boolean> {
    if (this.running.size === 0) return Promise.resolve(true);
    return new Promise((resolve) => {
      const t = setTimeout(() => resolve(false), timeoutMs);
      this.idleWaiters.push(() => {
        clearTimeout(t);
        resolve(true);
      });
    });
  }

  /**
   * Graceful stop: no new work; running tasks get `drainTimeoutMs` to finish; the rest are
   * handed back to the coordinator (which requeues them elsewhere) before the agent leaves.
   */
  async drain(): Promise<void> {
    if (this.draining) return;
    this.draining = true;
    this.link.send({ type: 'provider.state', state: 'draining' });
    const timeout = this.options.drainTimeoutMs ?? 60_000;
    this.log.info({ running: this.running.size, timeoutMs: timeout }, 'draining');
    if (!(await this.idle(timeout))) {
      this.log.warn({ handingBack: this.running.size }, 'drain timeout: handing running tasks back');
      for (const ac of this.running.values()) ac.abort('drain' satisfies AbortReason);
      await this.idle(30_000);
    }
    this.link.send({ type: 'provider.state', state: 'offline' });
    await this.link.flushed(10_000);
    await this.close();
  }

  /** Stops at once (tests, fatal errors): running tasks are killed and not reported. */
  async close(): Promise<void> {
    this.link.close();
    for (const ac of this.running.values()) ac.abort('cancelled' satisfies AbortReason);
    await this.idle(10_000);
    await this.ingress?.server.close();
    await removeTaskTree(this.options.workRoot).catch(() => {});
  }
}

/**
 * The runtimes an agent offers: the caller's (options.runtimes), or the bundle runtime plus, with containers
 * 'auto', the container runtime where a Docker engine answers. Every one is checked: a bundle runtime that
 * fails its check fails the start (SANDBOX_UNAVAILABLE with the install hint); a container runtime that fails
 * is left out with a warning, so the agent still serves bundles.
 */
async function offeredRuntimes(options: ProviderAgentOptions, log: Logger): Promise<Runtime[]> {
  if (options.runtimes) {
    if (options.runtimes.length === 0) throw new GridworkError('INVALID_SPEC', 'runtimes: at least one');
    const kinds = options.runtimes.map((r) => r.kind);
    if (new Set(kinds).size !== kinds.length) throw new GridworkError('INVALID_SPEC', `runtimes: each kind once (got ${kinds.join(', ')})`);
    for (const r of options.runtimes) await r.check();
    // Bundles' runtime first: it is the hello's `runtime`.
    return [...options.runtimes].sort((a, b) => Number(RUNTIMES[b.kind].runs === 'bundle') - Number(RUNTIMES[a.kind].runs === 'bundle'));
  }
  const bundles =
    (options.runtime ?? 'sandbox') === 'process'
      ? createProcessRuntime({ warn: (m) => log.warn(m) })
      : createSandboxRuntime({ protectedPaths: [options.dataDir] });
  await bundles.check();
  const list: Runtime[] = [bundles];
  // The container runtime loads only where an engine might answer.
  const engine = (options.containers ?? 'auto') === 'auto' && dockerEndpoint() !== undefined ? await import('./runtime/container-runtime.ts') : undefined;
  if (engine && (await engine.dockerAnswers())) {
    const containers = engine.createContainerRuntime();
    try {
      await containers.check();
      list.push(containers);
    } catch (err) {
      log.warn({ err: (err as Error).message }, 'a Docker engine is there but the container runtime cannot use it: not offered');
    }
  }
  return list;
}
