import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { mkdir, mkdtemp, rm, stat, symlink, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { nestDeep } from './runtime/fixtures/deep-tree.ts';
import { GridworkError } from '@gridwork/protocol';
import { openTaskFile, removeTaskTree } from './task-file.ts';

// A task owns the directory the agent reads from; these are the tricks it can play between the
// agent's listing and its open.

let base = '';
let root = '';
let secret = '';

before(async () => {
  base = await mkdtemp(path.join(os.tmpdir(), 'gw-task-file-'));
  root = path.join(base, 'checkpoints');
  await mkdir(path.join(root, 'exchange', 'out'), { recursive: true });
  secret = path.join(base, 'agent.key');
  await writeFile(secret, 'PRIVATE KEY');
});
after(async () => {
  await rm(base, { recursive: true, force: true });
});

async function refused(full: string, why: RegExp): Promise<void> {
  await assert.rejects(openTaskFile(root, full), (err: unknown) => {
    assert.ok(err instanceof GridworkError, String(err));
    assert.equal(err.code, 'FORBIDDEN');
    assert.match(err.message, why);
    return true;
  });
}

describe('openTaskFile', () => {
  test('a regular file of the task is opened, and read through the descriptor', async () => {
    const full = path.join(root, 'step-1.bin');
    await writeFile(full, 'checkpoint');
    const file = await openTaskFile(root, full);
    try {
      assert.equal((await file.readFile()).toString(), 'checkpoint');
    } finally {
      await file.close();
    }
  });

  test('a symlink in place of the file is refused, whatever it points at', async () => {
    const link = path.join(root, 'step-2.bin');
    await symlink(secret, link);
    await refused(link, /symbolic link/);
    const inside = path.join(root, 'step-3.bin');
    await symlink(path.join(root, 'step-1.bin'), inside);
    await refused(inside, /symbolic link/);
  });

  test('a file reached through a directory swapped for a symlink is refused when it lies outside', async () => {
    // exchange/out replaced by a link to the agent's directory: out/agent.key is the agent's key.
    const swapped = path.join(root, 'exchange', 'swapped');
    await symlink(base, swapped);
    await refused(path.join(swapped, 'agent.key'), /outside/);
    // A link that stays inside the task's directory is the task's own business.
    await symlink(path.join(root, 'exchange', 'out'), path.join(root, 'exchange', 'alias'));
    await writeFile(path.join(root, 'exchange', 'out', 'round-1.json'), '{}');
    const file = await openTaskFile(root, path.join(root, 'exchange', 'alias', 'round-1.json'));
    await file.close();
  });

  test('a FIFO is refused at once instead of blocking the agent', async () => {
    const fifo = path.join(root, 'step-4.bin');
    execFileSync('mkfifo', [fifo]);
    await refused(fifo, /not a regular file/);
  });

  test('a directory is refused', async () => {
    await refused(path.join(root, 'exchange'), /not a regular file/);
  });

  test('removeTaskTree removes a tree nested deeper than a path can name', async () => {
    const dir = path.join(base, 'lease-dir');
    await mkdir(dir);
    nestDeep(dir);
    await assert.rejects(rm(dir, { recursive: true, force: true }), /ENAMETOOLONG/, "node's own rm cannot (the reason for the helper)");
    await removeTaskTree(dir);
    await assert.rejects(stat(dir), /ENOENT/);
  });
});
