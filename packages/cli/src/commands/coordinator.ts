/** `gridwork coordinator start`. The coordinator's modules load only when it starts. */
import { join } from 'node:path';
import { setFlagsFromString } from 'node:v8';
import type { Command } from 'commander';
import { gridworkHome } from '../context.ts';
import { CliExit, EXIT_USAGE, info, isTty, parseDuration } from '../output.ts';
import { intOption, waitForSignal } from './shared.ts';

export function registerCoordinatorCommands(program: Command): void {
  const coordinator = program.command('coordinator').description('run the network coordinator (market, scheduler, API)');
  coordinator
    .command('start')
    .description(
      'start a coordinator; PGlite in --data unless GRIDWORK_DATABASE_URL names a PostgreSQL database (schema: GRIDWORK_DATABASE_SCHEMA, default public)',
    )
    .option('--host <host>', 'address to listen on', '127.0.0.1')
    .option('--port <port>', 'port to listen on (0: any free port)', intOption, 7070)
    .option('--data <dir>', 'data directory (database, blobs)', join(gridworkHome(), 'coordinator'))
    .option('--dev', 'development mode: enables the faucet (gridwork account deposit)', false)
    .option('--operator-key <file>', 'operator key (may credit accounts); created on first use (default: DATA/operator-key.json)')
    .option('--metering-ms <ms>', 'how often providers report usage; escrow covers 2 periods ahead', intOption, 10_000)
    .option('--fee-bps <n>', 'protocol fee in basis points of provider earnings', intOption, 200)
    .option('--reserve-bps <n>', 'reserve share in basis points', intOption, 25)
    .option('--unbonding-hours <h>', 'delay before unstaked credits are available', intOption, 168)
    .option('--heartbeat-ms <ms>', 'provider heartbeat interval; a provider is lost after 3 missed', intOption, 5000)
    .option('--audit-window <duration>', "how long a finished task's earnings stay pending, open to audits and disputes; e.g. 90s, 10m", '10m')
    .option('--no-verification', 'do not verify results (no audits, canaries or disputes; earnings paid at once): development and tests only')
    .option(
      '--trust-proxy <proxies>',
      "behind your own reverse proxy: believe its X-Forwarded-For ('true' for any, or its addresses/CIDRs, comma-separated); never without one",
    )
    .option(
      '--retention <duration>',
      "how long events and task logs are kept once every subscriber has passed them (a job's: after it ended); e.g. 7d, 12h, or 'forever'",
      '7d',
    )
    .option('--log-level <level>', 'trace|debug|info|warn|error', 'info')
    .action(
      async (opts: {
        host: string;
        port: number;
        data: string;
        dev: boolean;
        heartbeatMs: number;
        logLevel: string;
        operatorKey?: string;
        meteringMs: number;
        feeBps: number;
        reserveBps: number;
        unbondingHours: number;
        auditWindow: string;
        verification: boolean;
        trustProxy?: string;
        retention: string;
      }) => {
        const windowMs = parseDuration(opts.auditWindow, '--audit-window');
        const retentionMs = opts.retention === 'forever' ? Number.POSITIVE_INFINITY : parseDuration(opts.retention, '--retention');
        if (opts.feeBps + opts.reserveBps > 10_000) throw new CliExit(EXIT_USAGE, '--fee-bps plus --reserve-bps must not exceed 10000');
        if (opts.meteringMs < 100) throw new CliExit(EXIT_USAGE, '--metering-ms must be at least 100');
        limitWasmCompilation();
        const { startCoordinator } = await import('@gridwork/coordinator');
        const { loadOrCreateIdentity } = await import('@gridwork/sdk');
        const operatorKeyFile = opts.operatorKey ?? join(opts.data, 'operator-key.json');
        const operator = await loadOrCreateIdentity(operatorKeyFile);
        // GRIDWORK_DATABASE_SCHEMA: PostgreSQL schema (default public), so several coordinators can share one database.
        const schema = process.env.GRIDWORK_DATABASE_SCHEMA;
        // On a terminal, readable lines instead of JSON (see log-format.ts).
        const logger = isTty ? (await import('pino')).default({ level: opts.logLevel }, (await import('../log-format.ts')).prettyStderr) : undefined;
        const c = await startCoordinator({
          ...(logger ? { logger } : {}),
          host: opts.host,
          port: opts.port,
          dataDir: opts.data,
          dev: opts.dev,
          heartbeatIntervalMs: opts.heartbeatMs,
          logLevel: opts.logLevel,
          operators: [operator.publicKey],
          economics: { meteringIntervalMs: opts.meteringMs, feeBps: opts.feeBps, reserveBps: opts.reserveBps },
          unbondingDelayMs: opts.unbondingHours * 3600_000,
          verification: { enabled: opts.verification, windowMs },
          retention: { eventsMs: retentionMs, taskLogsMs: retentionMs },
          ...(opts.trustProxy ? { trustProxy: opts.trustProxy === 'true' ? true : opts.trustProxy.split(',').map((s) => s.trim()) } : {}),
          ...(schema ? { databaseSchema: schema } : {}),
        });
        info(`operator key: ${operatorKeyFile} (account ${operator.publicKey})`);
        info(`coordinator listening on ${c.url} (data: ${opts.data}, store: ${c.config.databaseUrl ? 'postgresql' : 'pglite'})`);
        // A line on stdout that scripts (and tests) can wait for.
        process.stdout.write(`${JSON.stringify({ event: 'listening', url: c.url })}\n`);
        const signal = await waitForSignal();
        info(`${signal}: shutting down`);
        await c.close();
      },
    );
}

/**
 * Idle memory (issue 9, item 6; bench/pglite-memory.ts): V8 recompiles PGlite's hot WebAssembly
 * functions with its optimizing compiler on background threads, by default several at once, and
 * that compiler's scratch memory, once freed, stays resident in those threads' malloc arenas.
 * One compilation task at a time kept an idle coordinator 20–45 MiB smaller (arenas ~75 → ~40
 * MiB) and leaves the functions as fast once compiled: bench/ledger.ts on PGlite showed no change
 * beyond its noise, where `--liftoff-only` (never optimizing) cost 2–3×. A process-wide V8
 * setting, so the `gridwork` process chooses it, not the coordinator library; it must precede
 * the first WebAssembly compilation (PGlite's, in startCoordinator).
 */
function limitWasmCompilation(): void {
  setFlagsFromString('--wasm-num-compilation-tasks=1');
}
