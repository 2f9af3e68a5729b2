/**
 * Files a task publishes while it runs, from the agent's side: a watcher scans a directory for new
 * files of a numbered name (written atomically: a temporary name, then a rename), uploads each
 * and reports it. Two uses:
 *
 *  - checkpoints: `/checkpoints/step-<N>.<ext>`, reported signed (`lease.checkpoint`), so the
 *    coordinator can resume the task elsewhere from it if this provider fails, pays a lost lease
 *    up to it, and holds the provider to its digest (audits and disputes re-execute one segment);
 *  - cluster exchange: `$GRIDWORK_EXCHANGE/out/round-<r>.json` (`lease.exchange`), relayed by the
 *    coordinator to every member once all have published the round (`deliverRound`).
 */
import { chmod, mkdir, readdir, rename, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { checkpointMessage, checkpointStep, type FileRef, GridworkError, type LeaseAssignment } from '@gridwork/protocol';
import { type Identity, signBytes } from '@gridwork/protocol/node';
import type { Logger } from 'pino';
import type { Report } from './coordinator-link.ts';

export interface PublishedFilesDeps {
  identity: Identity;
  log: Logger;
  /** Uploads one file of the directory; returns its reference (path relative to the directory). */
  upload: (fullPath: string, name: string) => Promise<FileRef>;
  send: (report: Report) => void;
  /** Rewrites a checkpoint before it is hashed and uploaded (a cheating provider, for tests). */
  tamper?: CheckpointTamper;
}

export type CheckpointTamper = (file: string, step: number, lease: LeaseAssignment) => Promise<void>;

/** How often the directory is scanned while the task runs. */
const SCAN_MS = 1000;
const EXCHANGE_SCAN_MS = 100;
const ROUND = /^round-(\d{1,10})\.json$/;
const DIGEST = /^[0-9a-f]{64}$/;

/** What a watcher looks for and how it reports a find. */
interface Publication {
  scanMs: number;
  number(name: string): number | null;
  report(n: number, file: FileRef, usageMs: number): Report;
  tamper?: (full: string, n: number) => Promise<void>;
}

export class PublishedFiles {
  private readonly seen = new Set<string>();
  private timer: NodeJS.Timeout | undefined;
  private scanning: Promise<void> = Promise.resolve();
  private stopped = false;

  private constructor(
    private readonly deps: PublishedFilesDeps,
    private readonly dir: string,
    private readonly started: number,
    private readonly what: Publication,
    known: readonly string[] = [],
  ) {
    for (const k of known) this.seen.add(k);
  }

  /** The task's checkpoints (the one it resumed from is already known to the coordinator). */
  static checkpoints(deps: PublishedFilesDeps, lease: LeaseAssignment, dir: string, started: number): PublishedFiles {
    return new PublishedFiles(
      deps,
      dir,
      started,
      {
        scanMs: SCAN_MS,
        number: checkpointStep,
        report: (step, file, usageMs) => ({
          type: 'lease.checkpoint',
          leaseId: lease.leaseId,
          step,
          file,
          usageMs,
          signature: signBytes(deps.identity, checkpointMessage({ leaseId: lease.leaseId, step, digest: file.digest, usageMs, auditCommitment: lease.auditCommitment ?? '' })),
        }),
        ...(deps.tamper ? { tamper: (full: string, step: number) => (deps.tamper as CheckpointTamper)(full, step, lease) } : {}),
      },
      lease.resume ? [lease.resume.file.path] : [],
    );
  }

  /** A cluster member's exchange rounds (`out/round-<r>.json`). */
  static exchange(deps: PublishedFilesDeps, lease: LeaseAssignment, dir: string, started: number): PublishedFiles {
    return new PublishedFiles(deps, join(dir, 'out'), started, {
      scanMs: EXCHANGE_SCAN_MS,
      number: (name) => {
        const m = ROUND.exec(name);
        return m && Number(m[1]) >= 1 ? Number(m[1]) : null;
      },
      report: (round, file) => ({ type: 'lease.exchange', leaseId: lease.leaseId, round, file }),
    });
  }

  start(): void {
    const tick = () => {
      this.scanning = this.scanning.then(() => this.scan());
      if (!this.stopped) this.timer = setTimeout(tick, this.what.scanMs).unref();
    };
    this.timer = setTimeout(tick, this.what.scanMs).unref();
  }

  /** Stops watching; with `final`, one last scan reports what the task wrote at the end. */
  async stop(final: boolean): Promise<void> {
    this.stopped = true;
    clearTimeout(this.timer);
    await this.scanning;
    if (final) await this.scan();
  }

  private async scan(): Promise<void> {
    let names: string[];
    try {
      names = (await readdir(this.dir, { withFileTypes: true })).filter((e) => e.isFile()).map((e) => e.name);
    } catch {
      return;
    }
    const fresh = names
      .map((name) => ({ name, n: this.what.number(name) }))
      .filter((c): c is { name: string; n: number } => c.n !== null && !this.seen.has(c.name))
      .sort((a, b) => a.n - b.n);
    for (const c of fresh) {
      this.seen.add(c.name);
      const usageMs = Date.now() - this.started;
      try {
        await this.what.tamper?.(join(this.dir, c.name), c.n);
        const file = await this.deps.upload(join(this.dir, c.name), c.name);
        this.deps.send(this.what.report(c.n, file, usageMs));
      } catch (err) {
        // Not fatal: the task goes on; a later file (or the final outputs) still count.
        this.deps.log.warn({ err, file: c.name }, 'could not upload a file the task published');
      }
    }
  }
}

/**
 * A complete exchange round: every member's file, downloaded into `round-<r>/rank-<k>.json` of
 * `inDir`, then the empty `complete` marker the members wait for. `inDir` is the agent's own
 * directory (the task sees it read-only as `$GRIDWORK_EXCHANGE/in`), never one the task can write.
 */
export async function deliverRound(
  inDir: string,
  round: number,
  files: readonly { rank: number; digest: string; size: number }[],
  download: (file: FileRef, destDir: string) => Promise<void>,
): Promise<void> {
  // The round and ranks name files on this host: only numbers (and digests) the protocol allows, whoever sent them.
  if (!Number.isSafeInteger(round) || round < 1) throw new GridworkError('PROTOCOL_ERROR', `exchange round ${String(round).slice(0, 32)} is not a round number`);
  for (const f of files) {
    if (!Number.isSafeInteger(f.rank) || f.rank < 0 || !DIGEST.test(f.digest) || !Number.isSafeInteger(f.size) || f.size < 0) {
      throw new GridworkError('PROTOCOL_ERROR', `exchange round ${round} names a malformed file`);
    }
  }
  const into = join(inDir, `round-${round}`);
  await mkdir(into, { recursive: true, mode: 0o755 });
  await chmod(into, 0o755); // whatever the umask: the task (another uid) reads it
  for (const f of files) await download({ path: `rank-${f.rank}.json`, digest: f.digest, size: f.size }, into);
  await writeFile(join(into, '.complete.tmp'), '', { mode: 0o644 });
  await rename(join(into, '.complete.tmp'), join(into, 'complete'));
}
