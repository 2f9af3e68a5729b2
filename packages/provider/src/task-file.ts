/**
 * Files a task wrote, from the agent's side: opening one to read it, and removing a tree of them.
 *
 * Opening a file that a task wrote. The task owns the directories it writes
 * (outputs, checkpoints, its exchange rounds) and may still be running while the agent reads them,
 * so a name that was a regular file when the directory was listed can be a symlink (to the agent's
 * key), a FIFO (to hang the agent) or reached through a swapped directory by the time it is opened.
 * The file is therefore opened once, without following a last symlink and without blocking, and
 * then checked on the open descriptor itself: a regular file, whose real path (the kernel's, from
 * /proc/self/fd) lies inside the task's directory. Everything the agent reads of it (its digest,
 * its upload) comes from that descriptor. The agent runs on Linux only (bubblewrap, cgroups).
 */
import { execFile } from 'node:child_process';
import { constants } from 'node:fs';
import { type FileHandle, open, readlink, realpath, rm } from 'node:fs/promises';
import { promisify } from 'node:util';
import { sep } from 'node:path';
import { GridworkError } from '@gridwork/protocol';

const FLAGS = constants.O_RDONLY | constants.O_NOFOLLOW | constants.O_NONBLOCK;

/** Opens `full` for reading if it is a regular file inside `root` (a directory only the agent can rename). */
export async function openTaskFile(root: string, full: string): Promise<FileHandle> {
  const realRoot = await realpath(root);
  let handle: FileHandle;
  try {
    handle = await open(full, FLAGS);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ELOOP') throw refused(full, 'it is a symbolic link');
    throw err;
  }
  try {
    if (!(await handle.stat()).isFile()) throw refused(full, 'it is not a regular file');
    const real = await readlink(`/proc/self/fd/${handle.fd}`);
    if (!real.startsWith(realRoot + sep)) throw refused(full, `it lies outside ${root}`);
    return handle;
  } catch (err) {
    await handle.close();
    throw err;
  }
}

function refused(full: string, why: string): GridworkError {
  return new GridworkError('FORBIDDEN', `not reading ${full}: ${why}`);
}

/**
 * Removes a lease's directory, whatever its task left in it. Node's recursive rm names every entry by its full
 * path, so a tree nested deeper than a path can name (a task can build one with relative chdirs) fails with
 * ENAMETOOLONG and would stay on disk for good; GNU rm walks by descriptor and removes it. Never follows links.
 */
export async function removeTaskTree(dir: string): Promise<void> {
  try {
    await rm(dir, { recursive: true, force: true });
  } catch {
    await promisify(execFile)('rm', ['-rf', '--one-file-system', '--', dir]);
  }
}
