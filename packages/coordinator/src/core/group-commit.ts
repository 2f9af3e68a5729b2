/**
 * Group commit: many small commands share one unit of work. Each command runs behind its own
 * savepoint, so one that fails is undone alone (its writes and its events) and its caller gets
 * its error; the others commit together, with one commit (one WAL flush, one append of events)
 * for the whole batch. A command waits for the commit before its promise resolves, so
 * a caller that acknowledges after `run()` never acknowledges what a crash could lose.
 *
 * Under light load a command runs at once in a unit of work of its own (up to `maxDirect` side
 * by side): a batch would make it wait for the others' commands, and a provider sends its next
 * report only after the last one is answered. Batches take over when commands queue up: one
 * batch is in flight at a time, commands that arrive meanwhile form the next one, and they no
 * longer wait on each other's row locks (nor deadlock against each other) as that many separate
 * transactions did.
 *
 * A batch waits for no lock longer than LOCK_TIMEOUT_MS: a command that would (a row another
 * transaction holds for long), or that PostgreSQL picks to break a deadlock, is undone alone (its
 * savepoint) and runs again at the head of the next batch, up to MAX_ATTEMPTS times — so one
 * stuck command never holds up the commands of every other caller. Such a command may thus run
 * after commands given later: a caller that needs its commands in order gives the next one once
 * the previous has resolved (a provider's channel does). A batch aborted whole (its commit) fails
 * every command in it.
 *
 * Edge work only: batches run outside any leader term (a fenced command must keep its own
 * unit of work, or a deposed leader's command would commit inside a batch of others).
 */
import { sql } from 'kysely';
import { unfenced } from '../leader/fence.ts';
import { isRetryable } from '../store/transact.ts';
import type { UnitOfWork, Units } from './unit-of-work.ts';

/** Longest wait of a batch for a row lock before the waiting command is put off to the next batch. */
const LOCK_TIMEOUT_MS = 2000;
/** Batches a command may be put off from (deadlock, lock timeout) before it fails. */
const MAX_ATTEMPTS = 6;

interface Command {
  fn: (uow: UnitOfWork) => Promise<unknown>;
  resolve: (value: unknown) => void;
  reject: (err: unknown) => void;
  attempts: number;
}

export interface GroupCommitOptions {
  /** Most commands in one transaction. @default 200 */
  maxBatch?: number;
  /** Commands run in units of their own while nothing is queued, at most this many at once; then they batch. @default 4 */
  maxDirect?: number;
}

export class GroupCommit {
  private queue: Command[] = [];
  private loop: Promise<void> | undefined;
  private direct = 0;
  private readonly maxBatch: number;
  private readonly maxDirect: number;

  constructor(
    private readonly units: Units,
    options: GroupCommitOptions = {},
  ) {
    this.maxBatch = options.maxBatch ?? 200;
    this.maxDirect = options.maxDirect ?? 4;
  }

  /** Runs `fn` in the next batch's transaction; resolves with its value once that transaction has committed. */
  run<T>(fn: (uow: UnitOfWork) => Promise<T>): Promise<T> {
    // Light load: a unit of work of its own, at once and side by side with the others (a batch
    // would make a provider's next report wait for everyone's commands). Batches take over when
    // commands queue up.
    if (this.queue.length === 0 && !this.loop && this.direct < this.maxDirect) {
      this.direct++;
      return unfenced(() => this.units.run(fn)).finally(() => {
        this.direct--;
      });
    }
    return new Promise<T>((resolve, reject) => {
      this.queue.push({ fn, resolve: resolve as (v: unknown) => void, reject, attempts: 0 });
      // Started a microtask later: the commands given in the same turn form the first batch.
      this.loop ??= unfenced(() => Promise.resolve().then(() => this.drain()));
    });
  }

  /** Resolves when every command given so far has committed or failed. */
  async idle(): Promise<void> {
    while (this.loop) await this.loop;
  }

  private async drain(): Promise<void> {
    try {
      while (this.queue.length > 0) {
        const batch = this.queue.splice(0, this.maxBatch);
        await this.commit(batch);
      }
    } finally {
      this.loop = undefined;
    }
  }

  private async commit(batch: readonly Command[]): Promise<void> {
    type Outcome = { ok: true; value: unknown } | { ok: false; err: unknown } | { again: unknown };
    let outcomes: Outcome[] = [];
    try {
      await this.units.run(async (uow) => {
        // A retried transaction runs every command again: only the last attempt's outcomes count.
        outcomes = [];
        await sql`set local lock_timeout = ${sql.lit(`${LOCK_TIMEOUT_MS}ms`)}`.execute(uow.trx);
        for (const c of batch) {
          try {
            outcomes.push({ ok: true, value: await uow.savepoint(() => c.fn(uow)) });
          } catch (err) {
            // Undone at its savepoint; a deadlock or a lock timeout is worth another batch.
            outcomes.push(isRetryable(err) && c.attempts + 1 < MAX_ATTEMPTS ? { again: err } : { ok: false, err });
          }
        }
      });
    } catch (err) {
      // Nothing of the batch committed (the commit itself failed, or retries ran out).
      for (const c of batch) c.reject(err);
      return;
    }
    const again: Command[] = [];
    batch.forEach((c, i) => {
      const o = outcomes[i];
      if (!o) c.reject(new Error('group commit lost a command'));
      else if ('again' in o) again.push({ ...c, attempts: c.attempts + 1 });
      else if (o.ok) c.resolve(o.value);
      else c.reject(o.err);
    });
    this.queue.unshift(...again);
  }
}
