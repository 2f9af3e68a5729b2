/**
 * A task's checkpoints, from the agent's side. The task writes `step-<N>.<ext>` files into its
 * checkpoints directory (atomically: a temporary name, then a rename); the watcher finds each
 * new one, uploads it, and reports it signed (`lease.checkpoint`), so the coordinator can resume
 * the task elsewhere from it if this provider fails, pays a lost lease up to it, and holds the
 * provider to its digest (audits and disputes re-execute one segment between two checkpoints).
 */
import { readdir } from 'node:fs/promises';
import { join } from 'node:path';
import { checkpointMessage, checkpointStep, type FileRef, type LeaseAssignment } from '@gridwork/protocol';
import { type Identity, signBytes } from '@gridwork/protocol/node';
import type { Logger } from 'pino';

export interface CheckpointWatcherDeps {
  identity: Identity;
  log: Logger;
  /** Uploads one file of the directory; returns its reference (path relative to the directory). */
  upload: (fullPath: string, name: string) => Promise<FileRef>;
  send: (report: { type: 'lease.checkpoint'; leaseId: string; step: number; file: FileRef; usageMs: number; signature: string }) => void;
  /** Rewrites a checkpoint before it is hashed and uploaded (a cheating provider, for tests). */
  tamper?: CheckpointTamper;
}

export type CheckpointTamper = (file: string, step: number, lease: LeaseAssignment) => Promise<void>;

/** How often the directory is scanned while the task runs. */
const SCAN_MS = 1000;

export class CheckpointWatcher {
  private readonly seen = new Set<string>();
  private timer: NodeJS.Timeout | undefined;
  private scanning: Promise<void> = Promise.resolve();
  private stopped = false;

  constructor(
    private readonly deps: CheckpointWatcherDeps,
    private readonly lease: LeaseAssignment,
    private readonly dir: string,
    private readonly started: number,
  ) {
    // The checkpoint this lease resumes from is already known to the coordinator.
    if (lease.resume) this.seen.add(lease.resume.file.path);
  }

  start(): void {
    const tick = () => {
      this.scanning = this.scanning.then(() => this.scan());
      if (!this.stopped) this.timer = setTimeout(tick, SCAN_MS).unref();
    };
    this.timer = setTimeout(tick, SCAN_MS).unref();
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
      .map((name) => ({ name, step: checkpointStep(name) }))
      .filter((c): c is { name: string; step: number } => c.step !== null && !this.seen.has(c.name))
      .sort((a, b) => a.step - b.step);
    for (const c of fresh) {
      this.seen.add(c.name);
      const usageMs = Date.now() - this.started;
      try {
        await this.deps.tamper?.(join(this.dir, c.name), c.step, this.lease);
        const file = await this.deps.upload(join(this.dir, c.name), c.name);
        const signature = signBytes(
          this.deps.identity,
          checkpointMessage({ leaseId: this.lease.leaseId, step: c.step, digest: file.digest, usageMs, auditCommitment: this.lease.auditCommitment ?? '' }),
        );
        this.deps.send({ type: 'lease.checkpoint', leaseId: this.lease.leaseId, step: c.step, file, usageMs, signature });
      } catch (err) {
        // Not fatal: the task goes on; a later checkpoint (or the final outputs) still count.
        this.deps.log.warn({ err, leaseId: this.lease.leaseId, checkpoint: c.name }, 'could not upload a checkpoint');
      }
    }
  }
}
