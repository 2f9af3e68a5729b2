/**
 * The composition root: the one place that builds the coordinator's parts and wires them
 * together. Everything else receives its dependencies.
 */
import { hostname } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { GRIDWORK_VERSION, parseCredits } from '@gridwork/protocol';
import pino, { type Logger } from 'pino';
import { registerAccountRoutes } from './api/account-routes.ts';
import { registerBlobRoutes } from './api/blob-routes.ts';
import { registerConsoleRoutes } from './api/console-routes.ts';
import { createHttpApp } from './api/http-app.ts';
import { registerJobRoutes } from './api/job-routes.ts';
import { registerLiveRoutes } from './api/live-routes.ts';
import { registerMarketRoutes } from './api/market-routes.ts';
import { registerMetricsRoutes } from './api/metrics-routes.ts';
import { registerOperatorRoutes } from './api/operator-routes.ts';
import { registerNetworkRoutes } from './api/network-routes.ts';
import { registerProviderRoutes } from './api/provider-routes.ts';
import { registerSystemRoutes } from './api/system-routes.ts';
import { Authenticator } from './auth/authenticator.ts';
import { BlobService } from './blobs/blob-service.ts';
import { FileBlobStore } from './blobs/blob-store.ts';
import { InProcessBus } from './bus/in-process-bus.ts';
import { ReplicaDoorbell } from './bus/replica-doorbell.ts';
import { SubscriberRoster } from './bus/subscriber-roster.ts';
import { Housekeeping } from './housekeeping.ts';
import { registerInternals } from './internals.ts';
import { Leadership } from './leader/leadership.ts';
import { JobService } from './jobs/job-service.ts';
import { JobStreams } from './jobs/job-streams.ts';
import { AccountService } from './ledger/account-service.ts';
import { type EconomicsConfig, resolveEconomics } from './ledger/lease-economics.ts';
import { Lifecycle } from './lifecycle/lifecycle.ts';
import { registerRetention, Retention, type RetentionConfig, type RetentionOptions, resolveRetentionOptions } from './lifecycle/retention.ts';
import { Units } from './core/unit-of-work.ts';
import { AuctionRelay } from './market/auction-relay.ts';
import { Auctions } from './market/auctions.ts';
import { Market } from './market/market.ts';
import { MARKET_INDEX, marketIndexSubscriber } from './market/market-index-subscriber.ts';
import { MarketPresence } from './market/market-presence.ts';
import { CoordinatorMetrics } from './observe/coordinator-metrics.ts';
import { NetworkFeed, type NetworkFeedConfig, type NetworkFeedOptions, resolveNetworkFeedOptions } from './observe/network-feed.ts';
import { OperatorReports } from './observe/operator-report.ts';
import { PriceHistory } from './observe/price-history.ts';
import { FailureDetector } from './providers/failure-detector.ts';
import { outboxDelivery } from './providers/outbox-delivery.ts';
import { ProviderChannels } from './providers/provider-channels.ts';
import { ProviderService } from './providers/provider-service.ts';
import { auditCountsSubscriber, reputationSubscriber } from './providers/reputation.ts';
import { Scheduler } from './scheduler/scheduler.ts';
import { SCHEDULER, schedulerWakeups } from './scheduler/scheduler-wakeups.ts';
import { openDatabase } from './store/database.ts';
import { registerServiceRoutes } from './api/service-routes.ts';
import { registerVerifyRoutes } from './api/verify-routes.ts';
import { ServiceRouting } from './jobs/service-routing.ts';
import { CapacityChallenges } from './verify/capacity-challenges.ts';
import { type ChallengeConfig, type ChallengeOptions, resolveChallengeOptions } from './verify/challenge-sizing.ts';
import { Verifier } from './verify/verification.ts';
import { resolveVerification, slashFor, type VerificationConfig, type VerificationOptions } from './verify/verification-policy.ts';

export interface CoordinatorOptions {
  /** Directory for the embedded database and blobs. */
  dataDir: string;
  /** @default '127.0.0.1' */
  host?: string;
  /** 0 picks a free port. @default 7070 */
  port?: number;
  /** PostgreSQL URL; PGlite under dataDir when absent. @default process.env.GRIDWORK_DATABASE_URL */
  databaseUrl?: string;
  /** PostgreSQL schema (tests isolate themselves with it). @default 'public' */
  databaseSchema?: string;
  /**
   * NATS server(s), comma-separated, through which replicas on one PostgreSQL database tell each
   * other at once that they committed events (bus/replica-doorbell.ts). Ignored on PGlite.
   * @default process.env.GRIDWORK_NATS_URL
   */
  natsUrl?: string;
  /** On PostgreSQL, how often a follower tries to become the leader, and the leader checks it still is (leader/leadership.ts). @default 500 */
  leaderPollMs?: number;
  /**
   * On PostgreSQL, how often a replica reads the event head for events other replicas committed,
   * whether or not NATS rang. @default 1000 (5000 with NATS)
   */
  replicaPollMs?: number;
  /** Development mode (enables conveniences that must never run in production). @default false */
  dev?: boolean;
  /** How often providers heartbeat. @default 5000 */
  heartbeatIntervalMs?: number;
  /** Missed heartbeats before a provider is declared lost. @default 3 */
  heartbeatMisses?: number;
  /** @default 1 MiB */
  maxJsonBytes?: number;
  /** @default 256 MiB */
  maxBlobBytes?: number;
  /** A pino logger; one at `logLevel` on stderr is made otherwise. */
  logger?: Logger;
  /** @default 'info' */
  logLevel?: string;
  /** Fees, metering and escrow rules; see ledger/lease-economics.ts for each default. */
  economics?: Partial<EconomicsConfig>;
  /** Public keys allowed to credit accounts (`gridwork account credit`). @default [] */
  operators?: string[];
  /** Delay before unstaked credits are available again. @default 7 days */
  unbondingDelayMs?: number;
  /** Largest faucet deposit in credits (dev mode only). @default '1000' */
  faucetMax?: string;
  /** Capacity challenges (trust layer L1); see verify/challenge-sizing.ts for each default (mean interval 6 h). */
  challenges?: ChallengeOptions;
  /** Result verification (trust layers L3–L6: audit window, audit rate, canaries, slashing); see verify/verification-policy.ts for each default. */
  verification?: VerificationOptions;
  /** The web console's build output, served at `/`. @default packages/console/built of this checkout */
  consoleDir?: string;
  /**
   * How long a provider that never proved anything (no passed capacity challenge, completed lease,
   * passed audit or stake) may stay offline before it is listed and matched nowhere (its next
   * hello brings it back). @default 1 hour
   */
  providerExpiryMs?: number;
  /** The public network stream (/v1/network/events): frame rate, byte rate, open streams; see observe/network-feed.ts for each default. */
  networkFeed?: NetworkFeedOptions;
  /**
   * Whether to believe X-Forwarded-For for the client's address (Fastify's `trustProxy`: true,
   * or the proxies' addresses/CIDRs). Set it only behind a reverse proxy you run:
   * a provider's ingress must be on the address it connects from, and without a proxy that header is
   * the client's to forge. @default false
   */
  trustProxy?: boolean | string | string[];
  /** How long a provider's service ingress has to prove it is the provider's own agent. @default 3000 */
  ingressProofTimeoutMs?: number;
  /**
   * How long `events` and `task_logs` rows are kept once every subscriber has passed them (a
   * job's, once the job ended), and how often they are swept; see lifecycle/retention.ts for each
   * default (7 days, swept every 10 minutes).
   */
  retention?: RetentionOptions;
}

export type CoordinatorConfig = Required<Omit<CoordinatorOptions, 'databaseUrl' | 'natsUrl' | 'logger' | 'economics' | 'challenges' | 'verification' | 'networkFeed' | 'retention'>> &
  Pick<CoordinatorOptions, 'databaseUrl' | 'natsUrl'> & {
    economics: EconomicsConfig;
    challenges: ChallengeConfig;
    verification: VerificationConfig;
    networkFeed: NetworkFeedConfig;
    retention: RetentionConfig;
  };

export function resolveCoordinatorOptions(o: CoordinatorOptions): CoordinatorConfig {
  const challenges = resolveChallengeOptions(o.challenges);
  return {
    dataDir: o.dataDir,
    host: o.host ?? '127.0.0.1',
    port: o.port ?? 7070,
    databaseUrl: o.databaseUrl ?? process.env.GRIDWORK_DATABASE_URL,
    databaseSchema: o.databaseSchema ?? 'public',
    natsUrl: o.natsUrl ?? (process.env.GRIDWORK_NATS_URL || undefined),
    leaderPollMs: o.leaderPollMs ?? 500,
    replicaPollMs: o.replicaPollMs ?? ((o.natsUrl ?? process.env.GRIDWORK_NATS_URL) ? 5000 : 1000),
    dev: o.dev ?? false,
    heartbeatIntervalMs: o.heartbeatIntervalMs ?? 5000,
    heartbeatMisses: o.heartbeatMisses ?? 3,
    maxJsonBytes: o.maxJsonBytes ?? 1024 * 1024,
    maxBlobBytes: o.maxBlobBytes ?? 256 * 1024 * 1024,
    logLevel: o.logLevel ?? 'info',
    economics: resolveEconomics(o.economics),
    operators: o.operators ?? [],
    unbondingDelayMs: o.unbondingDelayMs ?? 7 * 24 * 3600 * 1000,
    faucetMax: o.faucetMax ?? '1000',
    challenges,
    // Missed challenges count as capacity fraud at the streak that also costs eligibility.
    verification: resolveVerification({ maxConsecutiveChallengeFailures: challenges.maxConsecutiveFailures, ...o.verification }, o.dev ?? false),
    consoleDir: o.consoleDir ?? fileURLToPath(new URL('../../console/built', import.meta.url)),
    providerExpiryMs: o.providerExpiryMs ?? 3600_000,
    networkFeed: resolveNetworkFeedOptions(o.networkFeed),
    trustProxy: o.trustProxy ?? false,
    ingressProofTimeoutMs: o.ingressProofTimeoutMs ?? 3000,
    retention: resolveRetentionOptions(o.retention),
  };
}

export interface Coordinator {
  readonly url: string;
  readonly config: CoordinatorConfig;
  /** Protocol fees and reserve collected so far (credits, decimal strings). */
  protocolBalances(): Promise<{ fees: string; reserve: string }>;
  close(): Promise<void>;
}

export async function startCoordinator(options: CoordinatorOptions): Promise<Coordinator> {
  const config = resolveCoordinatorOptions(options);
  const log = options.logger ?? pino({ level: config.logLevel }, pino.destination(2));
  const db = await openDatabase({ url: config.databaseUrl, dataDir: join(config.dataDir, 'db'), schema: config.databaseSchema });
  // PGlite is one process: no replica of an older release can be reading its event log, so an
  // embedded database migrated from one gives out positions without the lock (migration 0015).
  if (!config.databaseUrl) await db.updateTable('event_log').set({ ordered: false }).where('ordered', '=', true).execute();
  const { economics } = config;

  // The event log and its bus: every state change commits its typed events; the bus delivers them.
  const inProcessBus = new InProcessBus(db, log);
  // Replicas on one PostgreSQL database hear of each other's commits (PGlite has one process).
  const doorbell = config.databaseUrl
    ? new ReplicaDoorbell(
        { db, log, onRing: () => inProcessBus.refresh() },
        { natsUrl: config.natsUrl, schema: config.databaseSchema, pollMs: config.replicaPollMs },
      )
    : undefined;
  const units = new Units(db, {
    publish(events) {
      inProcessBus.publish(events);
      doorbell?.ring();
    },
  });
  await inProcessBus.start(units);
  await doorbell?.start();
  // Everyone subscribes through the roster: retention keeps what a durable subscriber has not passed.
  const bus = new SubscriberRoster(inProcessBus);
  const retention = new Retention({ db, bus, log }, config.retention);
  const lifecycle = new Lifecycle(economics, config.verification);

  // The leader runs the scheduler and the sweeps (housekeeping, below); every replica serves the rest.
  let housekeeping: Housekeeping | undefined;
  const leadership = new Leadership(
    {
      db,
      log,
      onChange(epoch) {
        if (epoch === null) return void housekeeping?.stop();
        housekeeping?.start(epoch);
        void scheduler.kick();
      },
    },
    { databaseUrl: config.databaseUrl, schema: config.databaseSchema, holder: `${hostname()}:${process.pid}`, pollMs: config.leaderPollMs },
  );
  const blobStore = new FileBlobStore(join(config.dataDir, 'blobs'));
  const market = new Market(db, config.challenges.maxConsecutiveFailures);
  const auth = new Authenticator(db);
  const accounts = new AccountService(
    db,
    {
      dev: config.dev,
      operators: config.operators,
      unbondingDelayMs: config.unbondingDelayMs,
      faucetMax: parseCredits(config.faucetMax),
      slashFor: (charged) => slashFor(charged, config.verification),
    },
    units,
  );
  let channels: ProviderChannels | undefined;
  const challenges = new CapacityChallenges({ units, log, config: config.challenges, isConnected: (id) => channels?.connectedIds().has(id) ?? false });
  const providers = new ProviderService({ db, units, lifecycle, log, challenges, ingressProofTimeoutMs: config.ingressProofTimeoutMs });
  const auctions = new Auctions({ log, announce: (msg) => relay.announce(msg), closed: () => void scheduler.kick() });
  const relay = new AuctionRelay({
    link: doorbell,
    bidders: () => market.bidders(),
    sendHere: (ids, msg) => channels?.announce(ids, msg) ?? 0,
    bidHere: (id, bid) => void auctions.bid(id, bid),
    isLeader: () => leadership.isLeader,
  });
  const scheduler = new Scheduler({ db, units, lifecycle, log, market, auctions, epoch: () => leadership.epoch });
  const presence = new MarketPresence(market, scheduler, log);
  channels = new ProviderChannels({
    db,
    log,
    providers,
    heartbeatIntervalMs: config.heartbeatIntervalMs,
    meteringIntervalMs: economics.meteringIntervalMs,
    onConnection: (id, connected, welcomedAt) => presence.setConnected(id, connected, welcomedAt),
    onBid: (id, bid) => relay.bid(id, bid),
  });
  const jobs = new JobService({ db, units, lifecycle, bus, economics, market, blobs: blobStore, scheduler: SCHEDULER });
  const streams = new JobStreams({ jobs, bus });
  const blobs = new BlobService(db, blobStore, config.maxBlobBytes);
  const verifier = new Verifier({ db, units, lifecycle, blobs: blobStore, log, config: config.verification });
  await market.load();
  presence.start(config.heartbeatIntervalMs);
  // A dev coordinator funds checks from the start (in production the operator credits sys:fees, and fees accrue).
  if (config.verification.genesisFees > 0n) await accounts.genesisFees(config.verification.genesisFees);

  // The subscribers, in one place. The matching index first: the scheduler waits for it.
  await bus.subscribe(marketIndexSubscriber(market));
  await bus.subscribe(schedulerWakeups(scheduler, bus, MARKET_INDEX));
  await bus.subscribe(outboxDelivery(channels));
  await bus.subscribe(channels.offlineElsewhere());
  await bus.subscribe(reputationSubscriber());
  await bus.subscribe(auditCountsSubscriber());
  await bus.subscribe(verifier.subscriber());
  await challenges.start();
  await bus.subscribe(challenges.subscriber());
  // (job streams subscribe per open request: jobs/job-streams.ts)
  const feed = new NetworkFeed({ db, market, history: new PriceHistory() }, config.networkFeed);
  await bus.subscribe(feed.subscriber());
  const metrics = new CoordinatorMetrics(db);
  await bus.subscribe(metrics.subscriber());

  const app = await createHttpApp({ log, auth, maxJsonBytes: config.maxJsonBytes, trustProxy: config.trustProxy, version: GRIDWORK_VERSION });
  registerMetricsRoutes(app, { metrics });
  registerSystemRoutes(app, { db, version: GRIDWORK_VERSION, leadership });
  registerBlobRoutes(app, { blobs });
  registerJobRoutes(app, { jobs, blobs: blobStore, streams, verifier });
  registerProviderRoutes(app, { channels });
  registerNetworkRoutes(app, { db });
  registerAccountRoutes(app, { accounts });
  registerMarketRoutes(app, { market, jobs });
  registerVerifyRoutes(app, { db, challenges: config.challenges, verification: config.verification });
  registerLiveRoutes(app, { feed });
  registerOperatorRoutes(app, { reports: new OperatorReports(db, config.operators) });
  registerServiceRoutes(app, { routing: new ServiceRouting(db), auth });
  registerConsoleRoutes(app, { dir: config.consoleDir });
  await app.listen({ host: config.host, port: config.port });
  const address = app.server.address();
  const port = typeof address === 'object' && address ? address.port : config.port;
  const url = `http://${config.host.includes(':') ? `[${config.host}]` : config.host}:${port}`;

  const connected = channels;
  const detector = new FailureDetector(
    { providers, db, log, disconnect: (id, reason) => connected.disconnect(id, reason), epoch: () => leadership.epoch },
    { intervalMs: config.heartbeatIntervalMs, misses: config.heartbeatMisses },
  );
  housekeeping = new Housekeeping(
    { jobs, accounts, auth, log, verifier, providers, retention },
    {
      intervalMs: Math.min(economics.meteringIntervalMs, 1000),
      lowBalanceGraceMs: economics.lowBalanceGraceMs,
      providerExpiryMs: config.providerExpiryMs,
      retentionIntervalMs: config.retention.intervalMs,
    },
  );
  detector.start();
  await leadership.start();
  const sweeps = housekeeping;
  void scheduler.kick();
  log.info(
    { url, dataDir: config.dataDir, database: config.databaseUrl ? 'postgresql' : 'pglite', nats: Boolean(config.databaseUrl && config.natsUrl), dev: config.dev },
    'coordinator listening',
  );

  let closing: Promise<void> | undefined;
  const handle: Coordinator = {
    url,
    config,
    protocolBalances: () => accounts.protocolBalances(),
    close() {
      closing ??= (async () => {
        await detector.stop();
        await presence.close();
        await leadership.close();
        await sweeps.stop();
        auctions.closeAll();
        feed.close();
        connected.closeAll();
        await connected.idle();
        await scheduler.close();
        await challenges.close();
        await doorbell?.close();
        await bus.close();
        await app.close();
        await db.destroy();
      })();
      return closing;
    },
  };
  registerInternals(handle, { db, app, accounts, market, bus, units, lifecycle, providers });
  registerRetention(handle, retention);
  return handle;
}
