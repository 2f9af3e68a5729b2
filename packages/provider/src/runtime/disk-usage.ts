import { lstat, readdir } from 'node:fs/promises';
import path from 'node:path';

/**
 * Disk usage of a task's writable directories (/outputs and /checkpoints, and a cluster member's delivered
 * exchange rounds), for the sandbox's and the container runtime's disk limit.
 *
 * Why a measurement and not a filesystem of its own: the task's directories are ordinary directories under the
 * agent's work root, which the agent reads (hashes, uploads) after the run, and a bind mount has no size of its
 * own. A size-limited tmpfs would hold outputs in RAM; a loop-mounted image needs loop devices, mkfs and root, and
 * a copy of everything back out after the run. So the limit is enforced in two layers that work on any host:
 *
 *   1. `prlimit --fsize=diskBytes`: the kernel refuses to grow any single file past the limit (the writer gets
 *      SIGXFSZ/EFBIG at once), so one huge file never overshoots, whatever the write speed;
 *   2. a watcher that measures the directories every DISK_POLL_MS and stops the task once their total exceeds
 *      the limit; many files written in parallel can overshoot by at most what the task writes in one poll
 *      interval (plus the time one walk takes), and the run ends with `limit: 'disk'`.
 *
 * A file counts with the larger of its apparent size and its allocated blocks (a sparse file would still be
 * uploaded whole); hard links count once; directories (but not the two top directories) and symlinks count
 * their own blocks; every entry counts at least MIN_ENTRY_BYTES, so a flood of empty files (each costs an inode
 * and makes every later walk slower) runs into the same limit. Entries that vanish during the walk are skipped.
 * The walk stops as soon as the total passes the limit it was given.
 *
 * Names are read as bytes (a name that is not UTF-8 would otherwise come back mangled, fail to stat and hide its
 * whole subtree), and a tree the walk cannot read for any other reason than an entry vanishing — nested deeper
 * than a path can name, say — measures as unbounded: the task that made it is over its limit, not under it.
 */

/** What one file or directory costs at least: one filesystem block. */
export const MIN_ENTRY_BYTES = 4096;

/** How often the sandbox measures a task's writable directories. */
export const DISK_POLL_MS = 500;

/**
 * Bytes used by the trees under dirs (see the header comment for what counts). With stopAbove, the walk ends
 * once the total exceeds it (the result is then only known to be larger).
 */
export async function diskUsage(dirs: readonly string[], stopAbove = Number.POSITIVE_INFINITY): Promise<number> {
  const seen = new Set<string>();
  let total = 0;
  const unreadable = (err: NodeJS.ErrnoException): undefined => {
    if (err.code !== 'ENOENT') total = Number.POSITIVE_INFINITY;
    return undefined;
  };
  const visit = async (p: Buffer, isRoot = false): Promise<void> => {
    if (total > stopAbove) return;
    const st = await lstat(p, { bigint: true }).catch(unreadable);
    if (!st) return;
    const key = `${st.dev}:${st.ino}`;
    if (seen.has(key)) return;
    seen.add(key);
    const allocated = Number(st.blocks) * 512;
    // The directories themselves were made by the agent; only what the task puts in them counts.
    if (!isRoot) total += Math.max(MIN_ENTRY_BYTES, st.isFile() ? Math.max(Number(st.size), allocated) : allocated);
    if (!st.isDirectory()) return;
    const entries = (await readdir(p, { encoding: 'buffer' }).catch(unreadable)) ?? [];
    for (const name of entries) await visit(Buffer.concat([p, SEP, name]));
  };
  for (const dir of dirs) await visit(Buffer.from(dir), true);
  return total;
}

const SEP = Buffer.from(path.sep);
