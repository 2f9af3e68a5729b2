/**
 * Bundle files by digest, kept for the agent's later leases: the tasks of a job (and jobs that
 * share code or a model) download each bundle file once per agent instead of once per task. A
 * 100-shard inference job over a 50 MB model fetched the model 100 times; a trivial task paid
 * two signed downloads (manifest and script) on every lease.
 *
 * The cache lives in the agent's work root (mode 0700 inside it: no task can reach it, and it is
 * gone with the agent) and holds at most `maxBytes`, least recently used out first. Each lease
 * gets a copy of its own (a reflink where the filesystem has them), so a task never touches the
 * cached bytes. Concurrent leases wanting the same file share one download (a lease whose shared
 * download failed tries its own). Bytes enter the cache only through `download`, which writes
 * them verified against their digest (and never through a planted symlink: writeVerified); they
 * are read-only there. A file larger than the whole cache is not kept. The agent empties the
 * cache when it starts (a killed agent's files would otherwise be counted by nobody).
 */
import { constants } from 'node:fs';
import { chmod, copyFile, mkdir, rm, stat } from 'node:fs/promises';
import { dirname, join } from 'node:path';

/** The cache's directory in the agent's work root (no lease id looks like it). */
export const BUNDLE_CACHE_DIR = '.bundle-cache';

/** Bytes of bundle files an agent keeps. @default 1 GiB */
export const DEFAULT_BUNDLE_CACHE_BYTES = 1024 ** 3;

const DIGEST = /^[0-9a-f]{64}$/;

export class BundleCache {
  /** digest → bytes, least recently used first (a Map keeps insertion order). */
  private readonly entries = new Map<string, number>();
  private readonly filling = new Map<string, Promise<void>>();
  private bytes = 0;

  constructor(
    private readonly dir: string,
    private readonly maxBytes = DEFAULT_BUNDLE_CACHE_BYTES,
  ) {}

  /** Total bytes held. */
  get size(): number {
    return this.bytes;
  }

  /**
   * Puts the file `digest` at `dest`: copied from the cache, or downloaded into it first by
   * `download(path)` (which must write `path` only with bytes whose sha256 is `digest`).
   */
  async place(digest: string, size: number, dest: string, download: (path: string) => Promise<void>): Promise<void> {
    await mkdir(dirname(dest), { recursive: true });
    // Never a file name of ours; never a file that alone would not fit.
    if (!DIGEST.test(digest) || size > this.maxBytes) return download(dest);
    for (let attempt = 0; ; attempt++) {
      await this.fill(digest, download);
      try {
        await copyFile(join(this.dir, digest), dest, constants.COPYFILE_FICLONE);
        return;
      } catch (err) {
        // Evicted between the look-up and the copy (another lease's file needed the room): once more.
        if ((err as NodeJS.ErrnoException).code !== 'ENOENT' || attempt > 0) throw err;
        this.forget(digest);
      }
    }
  }

  private async fill(digest: string, download: (path: string) => Promise<void>): Promise<void> {
    const held = this.entries.get(digest);
    if (held !== undefined) {
      this.entries.delete(digest);
      this.entries.set(digest, held); // most recently used now
      return;
    }
    const shared = this.filling.get(digest);
    if (shared) {
      // Another lease's download, under its signal and its job's right to the file: if that one
      // fails (cancelled, refused), this lease tries its own.
      try {
        await shared;
        if (this.entries.has(digest)) return;
      } catch {}
      return this.fill(digest, download);
    }
    const pending = (async () => {
      await mkdir(this.dir, { recursive: true, mode: 0o700 });
      const path = join(this.dir, digest);
      await download(path);
      await chmod(path, 0o444);
      const { size } = await stat(path);
      this.entries.set(digest, size);
      this.bytes += size;
      await this.evict(digest);
    })().finally(() => this.filling.delete(digest));
    this.filling.set(digest, pending);
    await pending;
  }

  /** Removes least recently used files until the cache fits (never `keep`, the one just added). */
  private async evict(keep: string): Promise<void> {
    for (const digest of [...this.entries.keys()]) {
      if (this.bytes <= this.maxBytes) return;
      if (digest === keep) continue;
      this.forget(digest);
      await rm(join(this.dir, digest), { force: true });
    }
  }

  private forget(digest: string): void {
    const size = this.entries.get(digest);
    if (size === undefined) return;
    this.entries.delete(digest);
    this.bytes -= size;
  }
}
