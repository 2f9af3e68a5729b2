/**
 * Time-driven work, on timers: jobs whose low-balance grace ran out stop, jobs queued past their
 * `queueTimeoutSeconds` fail, leases their provider neither started nor ended in time are lost,
 * unbonded stake is released, results whose audit window closed are paid (and stale checks abandoned), old request nonces are pruned,
 * providers that never proved anything and stayed offline expire, old events and logs of ended
 * jobs are deleted (lifecycle/retention.ts). Each
 * step is a command of the module that owns it; this file only keeps the clock.
 *
 * Only the leader runs them, each under its term's fencing epoch (leader/fence.ts): a sweep of a
 * term that has ended commits no transaction. (Retention's and the nonce prune's batched deletes
 * are single statements outside transactions, unfenced: deleting what is already gone is harmless.)
 */
import type { Logger } from 'pino';
import type { Authenticator } from './auth/authenticator.ts';
import type { JobService } from './jobs/job-service.ts';
import type { AccountService } from './ledger/account-service.ts';
import type { Retention } from './lifecycle/retention.ts';
import type { ProviderService } from './providers/provider-service.ts';
import type { Verifier } from './verify/verification.ts';
import { asLeader, Deposed } from './leader/fence.ts';

export interface HousekeepingDeps {
  jobs: JobService;
  accounts: AccountService;
  auth: Authenticator;
  log: Logger;
  verifier: Verifier;
  providers: ProviderService;
  retention: Retention;
}

export interface HousekeepingOptions {
  /** How often deadlines are checked. */
  intervalMs: number;
  /** How long a job may stay unfunded before it stops. */
  lowBalanceGraceMs: number;
  /** How long an unproven provider may stay offline before it expires (ProviderService.expireUnproven). */
  providerExpiryMs: number;
  /** How often nonces are pruned and unproven offline providers expired. @default 60 s */
  pruneIntervalMs?: number;
  /** How long past its time limit a running lease may go unreported before it is lost. @default 60 s */
  overdueGraceMs?: number;
  /** How long a placed lease may wait to start (bundle and inputs download included). @default 15 min */
  startDeadlineMs?: number;
  /** How often old events and logs are deleted (the coordinator's `retention.intervalMs`). */
  retentionIntervalMs: number;
}

export class Housekeeping {
  private readonly timers: NodeJS.Timeout[] = [];
  private running: Promise<unknown> = Promise.resolve();

  constructor(
    private readonly deps: HousekeepingDeps,
    private readonly options: HousekeepingOptions,
  ) {}

  /** Starts the sweeps for the leader's term `epoch`. */
  start(epoch: bigint): void {
    const { jobs, accounts, auth, log, verifier, providers, retention } = this.deps;
    if (this.timers.length > 0) return;
    retention.resume();
    const every = (ms: number, step: () => Promise<unknown>, what: string) => {
      const t = setInterval(() => {
        const run = asLeader(epoch, step).catch((err) =>
          err instanceof Deposed ? log.warn({ err }, `${what} refused: this replica no longer leads`) : log.error({ err }, `${what} failed`),
        );
        this.running = Promise.all([this.running, run]);
      }, ms);
      t.unref();
      this.timers.push(t);
    };
    every(this.options.intervalMs, () => jobs.stopUnfunded(this.options.lowBalanceGraceMs), 'low-balance sweep');
    every(this.options.intervalMs, () => jobs.expireQueued(), 'queue-timeout sweep');
    every(
      this.options.intervalMs,
      () => jobs.expireOverdueLeases(this.options.overdueGraceMs ?? 60_000, this.options.startDeadlineMs ?? 15 * 60_000),
      'overdue-lease sweep',
    );
    every(this.options.intervalMs, () => accounts.releaseUnbonded(), 'unbonding sweep');
    every(this.options.intervalMs, () => verifier.sweep(), 'verification sweep');
    every(this.options.pruneIntervalMs ?? 60_000, () => auth.prune(), 'nonce prune');
    every(
      this.options.pruneIntervalMs ?? 60_000,
      async () => {
        const expired = await providers.expireUnproven(this.options.providerExpiryMs);
        if (expired.length > 0) log.info({ expired: expired.length }, 'unproven offline providers expired');
      },
      'provider expiry sweep',
    );
    every(this.options.retentionIntervalMs, () => retention.sweep(), 'retention sweep');
  }

  async stop(): Promise<void> {
    for (const t of this.timers.splice(0)) clearInterval(t);
    // A long sweep stops between two batches instead of holding the shutdown.
    this.deps.retention.stop();
    await this.running;
  }
}
