/**
 * Time-driven work, on timers: jobs whose low-balance grace ran out stop, jobs queued past their
 * `queueTimeoutSeconds` fail, leases their provider neither started nor ended in time are lost,
 * unbonded stake is released, results whose audit window closed are paid (and stale checks abandoned), old request nonces are pruned. Each
 * step is a command of the module that owns it; this file only keeps the clock.
 */
import type { Logger } from 'pino';
import type { Authenticator } from './auth/authenticator.ts';
import type { JobService } from './jobs/job-service.ts';
import type { AccountService } from './ledger/account-service.ts';
import type { Verifier } from './verify/verification.ts';

export interface HousekeepingDeps {
  jobs: JobService;
  accounts: AccountService;
  auth: Authenticator;
  log: Logger;
  verifier: Verifier;
}

export interface HousekeepingOptions {
  /** How often deadlines are checked. */
  intervalMs: number;
  /** How long a job may stay unfunded before it stops. */
  lowBalanceGraceMs: number;
  /** @default 60 s */
  pruneIntervalMs?: number;
  /** How long past its time limit a running lease may go unreported before it is lost. @default 60 s */
  overdueGraceMs?: number;
  /** How long a placed lease may wait to start (bundle and inputs download included). @default 15 min */
  startDeadlineMs?: number;
}

export class Housekeeping {
  private readonly timers: NodeJS.Timeout[] = [];
  private running: Promise<unknown> = Promise.resolve();

  constructor(
    private readonly deps: HousekeepingDeps,
    private readonly options: HousekeepingOptions,
  ) {}

  start(): void {
    const { jobs, accounts, auth, log, verifier } = this.deps;
    const every = (ms: number, step: () => Promise<unknown>, what: string) => {
      const t = setInterval(() => {
        this.running = Promise.all([this.running, step().catch((err) => log.error({ err }, `${what} failed`))]);
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
  }

  async stop(): Promise<void> {
    for (const t of this.timers) clearInterval(t);
    await this.running;
  }
}
