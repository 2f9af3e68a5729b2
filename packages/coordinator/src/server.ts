/**
 * The composition root: the one place that builds the coordinator's parts and wires them
 * together. Everything else receives its dependencies.
 */
import { join } from 'node:path';
import { GRIDWORK_VERSION, parseCredits, RECONNECT_MAX_BACKOFF_MS } from '@gridwork/protocol';
import type { FastifyInstance } from 'fastify';
import pino, { type Logger } from 'pino';
import { registerBlobRoutes } from './api/blob-routes.ts';
import { createHttpApp } from './api/http-app.ts';
import { registerJobRoutes } from './api/job-routes.ts';
import { registerProviderRoutes } from './api/provider-routes.ts';
import { registerSystemRoutes } from './api/system-routes.ts';
import { Authenticator } from './auth/authenticator.ts';
import { BlobService } from './blobs/blob-service.ts';
import { FileBlobStore } from './blobs/blob-store.ts';
import { EventBus } from './bus/event-bus.ts';
import { JobService } from './jobs/job-service.ts';
import type { Changes } from './jobs/lease-lifecycle.ts';
import { ProviderChannels } from './providers/provider-channels.ts';
import { ProviderService } from './providers/provider-service.ts';
import { Scheduler } from './scheduler/scheduler.ts';
import { registerAccountRoutes } from './api/account-routes.ts';
import { registerMarketRoutes } from './api/market-routes.ts';
import { AccountService } from './ledger/account-service.ts';
import { type EconomicsConfig, resolveEconomics } from './ledger/lease-economics.ts';
import { Auctions } from './market/auctions.ts';
import { Market } from './market/market.ts';
import { type Db, openDatabase } from './store/database.ts';

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
}

export type CoordinatorConfig = Required<Omit<CoordinatorOptions, 'databaseUrl' | 'logger' | 'economics'>> &
  Pick<CoordinatorOptions, 'databaseUrl'> & { economics: EconomicsConfig };

export function resolveCoordinatorOptions(o: CoordinatorOptions): CoordinatorConfig {
  return {
    dataDir: o.dataDir,
    host: o.host ?? '127.0.0.1',
    port: o.port ?? 7070,
    databaseUrl: o.databaseUrl ?? process.env.GRIDWORK_DATABASE_URL,
    databaseSchema: o.databaseSchema ?? 'public',
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
  };
}

export interface Coordinator {
  readonly url: string;
  readonly accounts: AccountService;
  readonly market: Market;
  readonly app: FastifyInstance;
  readonly db: Db;
  readonly config: CoordinatorConfig;
  close(): Promise<void>;
}

export async function startCoordinator(options: CoordinatorOptions): Promise<Coordinator> {
  const config = resolveCoordinatorOptions(options);
  const log = options.logger ?? pino({ level: config.logLevel }, pino.destination(2));
  const db = await openDatabase({ url: config.databaseUrl, dataDir: join(config.dataDir, 'db'), schema: config.databaseSchema });
  const startedAt = new Date();
  const bus = new EventBus();
  const blobStore = new FileBlobStore(join(config.dataDir, 'blobs'));

  const economics = config.economics;
  const market = new Market(db);

  // `publish` is how committed changes reach the outside: streams, providers, the matching
  // index, the scheduler (which runs after the index has caught up).
  let channels: ProviderChannels | undefined;
  let scheduler: Scheduler | undefined;
  const publish = (changes: Changes) => {
    for (const id of changes.leasesEnded) market.book.release(id);
    for (const id of changes.jobs) bus.emit('job.changed', id);
    for (const id of changes.providers) void channels?.flush(id);
    const refreshed = changes.providersChanged.size > 0 ? market.refreshProviders(changes.providersChanged) : Promise.resolve();
    refreshed.then(
      () => {
        if (changes.work) void scheduler?.kick();
      },
      (err) => log.error({ err }, 'market refresh failed'),
    );
  };

  const auth = new Authenticator(db);
  const jobs = new JobService({ db, blobs: blobStore, bus, publish, economics, market, schedule: () => scheduler?.kick() ?? Promise.resolve() });
  const providers = new ProviderService({ db, bus, log, publish, economics });
  const accounts = new AccountService(
    db,
    { dev: config.dev, operators: config.operators, unbondingDelayMs: config.unbondingDelayMs, faucetMax: parseCredits(config.faucetMax) },
    (id) => void market.refreshProviders([id]).then(() => scheduler?.kick()),
  );
  const auctions = new Auctions({
    log,
    announce: (msg) => {
      const bidders = market.bidders();
      channels?.broadcast(bidders, msg);
      return bidders.length;
    },
    closed: () => void scheduler?.kick(),
  });
  channels = new ProviderChannels({
    db,
    log,
    providers,
    heartbeatIntervalMs: config.heartbeatIntervalMs,
    meteringIntervalMs: economics.meteringIntervalMs,
    onConnection: (id, connected) =>
      void market
        .setConnected(id, connected)
        .then(() => scheduler?.kick())
        .catch((err) => log.error({ err }, 'market refresh failed')),
    onBid: (id, bid) => auctions.bid(id, bid),
  });
  const connected = channels;
  await market.load();
  scheduler = new Scheduler({ db, log, market, economics, auctions, publish });
  const blobs = new BlobService(db, blobStore, config.maxBlobBytes);

  const app = await createHttpApp({ log, auth, maxJsonBytes: config.maxJsonBytes, version: GRIDWORK_VERSION });
  registerSystemRoutes(app, { db, version: GRIDWORK_VERSION });
  registerBlobRoutes(app, { blobs });
  registerJobRoutes(app, { jobs, blobs: blobStore, bus });
  registerProviderRoutes(app, { channels, db });
  registerAccountRoutes(app, { accounts });
  registerMarketRoutes(app, { market, jobs });
  await app.listen({ host: config.host, port: config.port });
  const address = app.server.address();
  const port = typeof address === 'object' && address ? address.port : config.port;
  const url = `http://${config.host.includes(':') ? `[${config.host}]` : config.host}:${port}`;

  const timeoutMs = config.heartbeatIntervalMs * config.heartbeatMisses;
  // After a (re)start, providers reconnect with backoff (at most RECONNECT_MAX_BACKOFF_MS apart):
  // none is judged before it has had the time to find us again.
  const startupGraceMs = timeoutMs + RECONNECT_MAX_BACKOFF_MS * 1.25; // the backoff has ±25% jitter
  // If this process itself stalled (a long GC, an overloaded host), heartbeats may be waiting
  // unread in its sockets: a sweep that fires far too late judges nobody, and the grace starts over.
  let sweepSince = startedAt;
  let lastTick = Date.now();
  const sweepTimer = setInterval(() => {
    const now = Date.now();
    if (now - lastTick > 2 * config.heartbeatIntervalMs) sweepSince = new Date(now);
    lastTick = now;
    if (now - sweepSince.getTime() < startupGraceMs) return;
    providers
      .sweep(timeoutMs, sweepSince)
      .then((lost) => {
        for (const id of lost) connected.disconnect(id, 'missed heartbeats');
      })
      .catch((err) => log.error({ err }, 'provider sweep failed'));
  }, config.heartbeatIntervalMs);
  const moneyTimer = setInterval(
    () => {
      jobs.stopUnfunded(economics.lowBalanceGraceMs).catch((err) => log.error({ err }, 'low-balance sweep failed'));
      accounts.releaseUnbonded().catch((err) => log.error({ err }, 'unbonding sweep failed'));
    },
    Math.min(economics.meteringIntervalMs, 10_000),
  );
  moneyTimer.unref();
  const pruneTimer = setInterval(() => auth.prune().catch((err) => log.error({ err }, 'nonce prune failed')), 60_000);
  sweepTimer.unref();
  pruneTimer.unref();
  void scheduler.kick();
  log.info({ url, dataDir: config.dataDir, database: config.databaseUrl ? 'postgresql' : 'pglite', dev: config.dev }, 'coordinator listening');

  let closing: Promise<void> | undefined;
  return {
    url,
    app,
    db,
    config,
    accounts,
    market,
    close() {
      closing ??= (async () => {
        clearInterval(sweepTimer);
        clearInterval(moneyTimer);
        auctions.closeAll();
        clearInterval(pruneTimer);
        connected.closeAll();
        await connected.idle();
        await scheduler?.close();
        await app.close();
        await db.destroy();
      })();
      return closing;
    },
  };
}
