/**
 * The composition root: the one place that builds the coordinator's parts and wires them
 * together. Everything else receives its dependencies.
 */
import { join } from 'node:path';
import { GRIDWORK_VERSION } from '@gridwork/protocol';
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
import { firstFitMatcher, type Matcher } from './scheduler/matcher.ts';
import { Scheduler } from './scheduler/scheduler.ts';
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
  matcher?: Matcher;
}

export type CoordinatorConfig = Required<Omit<CoordinatorOptions, 'databaseUrl' | 'logger' | 'matcher'>> & Pick<CoordinatorOptions, 'databaseUrl'>;

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
  };
}

export interface Coordinator {
  readonly url: string;
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

  // `publish` is how committed changes reach the outside: streams, providers, the scheduler.
  let channels: ProviderChannels | undefined;
  let scheduler: Scheduler | undefined;
  const publish = (changes: Changes) => {
    for (const id of changes.jobs) bus.emit('job.changed', id);
    for (const id of changes.providers) void channels?.flush(id);
    if (changes.work) void scheduler?.kick();
  };

  const auth = new Authenticator(db);
  const jobs = new JobService({ db, blobs: blobStore, bus, publish });
  const providers = new ProviderService({ db, bus, log, publish });
  channels = new ProviderChannels({ db, log, providers, heartbeatIntervalMs: config.heartbeatIntervalMs });
  const connected = channels;
  scheduler = new Scheduler({ db, log, matcher: options.matcher ?? firstFitMatcher, connected: () => connected.connectedIds(), publish });
  const blobs = new BlobService(db, blobStore, config.maxBlobBytes);

  const app = await createHttpApp({ log, auth, maxJsonBytes: config.maxJsonBytes, version: GRIDWORK_VERSION });
  registerSystemRoutes(app, { db, version: GRIDWORK_VERSION });
  registerBlobRoutes(app, { blobs });
  registerJobRoutes(app, { jobs, blobs: blobStore, bus });
  registerProviderRoutes(app, { channels, db });
  await app.listen({ host: config.host, port: config.port });
  const address = app.server.address();
  const port = typeof address === 'object' && address ? address.port : config.port;
  const url = `http://${config.host.includes(':') ? `[${config.host}]` : config.host}:${port}`;

  const timeoutMs = config.heartbeatIntervalMs * config.heartbeatMisses;
  const sweepTimer = setInterval(() => {
    providers
      .sweep(timeoutMs, startedAt)
      .then((lost) => {
        for (const id of lost) connected.disconnect(id, 'missed heartbeats');
      })
      .catch((err) => log.error({ err }, 'provider sweep failed'));
  }, config.heartbeatIntervalMs);
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
    close() {
      closing ??= (async () => {
        clearInterval(sweepTimer);
        clearInterval(pruneTimer);
        connected.closeAll();
        await scheduler?.close();
        await app.close();
        await db.destroy();
      })();
      return closing;
    },
  };
}
