import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { mkdir, readFile, stat } from 'node:fs/promises';
import path from 'node:path';
import { describe, test } from 'node:test';
import { detectCgroups, TaskCgroup } from './task-cgroup.ts';

// Real cgroups: these run where the agent may create groups (root on cgroup v1 here) and skip elsewhere.

const MiB = 2 ** 20;
const exists = (p: string) =>
  stat(p).then(
    () => true,
    () => false,
  );

describe('task cgroup', () => {
  test('limits are written, a member is killed and the group removed', async (ctx) => {
    const host = await detectCgroups();
    if (!host) return ctx.skip('no cgroup can be created here');
    const group = await TaskCgroup.create(host, { maxProcesses: 32, cpu: 1.5, memoryBytes: 256 * MiB });
    const dirs = Object.values(group.dirs);
    if (group.dirs.pids) assert.equal((await readFile(path.join(group.dirs.pids, 'pids.max'), 'utf8')).trim(), '32');
    if (group.dirs.memory) {
      const read = (f: string) => readFile(path.join(group.dirs.memory as string, f), 'utf8').then((t) => t.trim());
      if (host.version === 1) {
        assert.equal(await read('memory.limit_in_bytes'), String(256 * MiB));
        // Swap is no way around the limit.
        if (await exists(path.join(group.dirs.memory, 'memory.memsw.limit_in_bytes')))
          assert.equal(await read('memory.memsw.limit_in_bytes'), String(256 * MiB));
      } else {
        assert.equal(await read('memory.max'), String(256 * MiB));
      }
    }
    if (group.dirs.cpu) {
      const quota =
        host.version === 1
          ? (await readFile(path.join(group.dirs.cpu, 'cpu.cfs_quota_us'), 'utf8')).trim()
          : (await readFile(path.join(group.dirs.cpu, 'cpu.max'), 'utf8')).trim().split(' ')[0];
      assert.equal(quota, '150000');
    }
    // A process joins the way the launcher does, before it does anything else.
    const [procs] = group.procsFiles();
    assert.ok(procs);
    const child = spawn('/bin/sh', ['-c', `echo $$ > ${procs} && exec sleep 600`], { stdio: 'ignore' });
    const exited = new Promise((resolve) => child.on('exit', resolve));
    for (let i = 0; i < 500 && (await group.members()).length === 0; i++) await new Promise((r) => setTimeout(r, 10));
    assert.deepEqual(await group.members(), [child.pid]);
    assert.equal(await group.processLimitHit(), false);
    assert.equal(await group.memoryLimitHit(), false);
    await group.remove();
    await exited;
    for (const dir of dirs) assert.equal(await stat(dir).catch(() => undefined), undefined, dir);
  });

  test('a member past the memory limit is OOM-killed inside the group, and that is reported', async (ctx) => {
    const host = await detectCgroups();
    if (!host?.bases.memory) return ctx.skip('no memory cgroup can be created here');
    const group = await TaskCgroup.create(host, { maxProcesses: 32, cpu: 1, memoryBytes: 64 * MiB });
    try {
      const [procs] = group.procsFiles().filter((f) => f.startsWith(group.dirs.memory as string));
      assert.ok(procs);
      // 256 MiB touched page by page: only the OOM killer can end it early.
      const script = 'const b = Buffer.alloc(256 * 2 ** 20); for (let i = 0; i < b.length; i += 4096) b[i] = 1; process.exit(3)';
      const child = spawn('/bin/sh', ['-c', `echo $$ > ${procs} && exec "$0" -e "$1"`, process.execPath, script], { stdio: 'ignore' });
      const [code, signal] = await new Promise<[number | null, string | null]>((resolve) => child.on('exit', (c, s) => resolve([c, s])));
      assert.equal(signal, 'SIGKILL', `exit ${code}`);
      assert.equal(await group.memoryLimitHit(), true);
    } finally {
      await group.remove();
    }
  });

  test('empty groups of agents that are gone are cleaned up', async (ctx) => {
    const host = await detectCgroups();
    const base = host?.bases.pids ?? host?.bases.cpu;
    if (!base) return ctx.skip('no cgroup can be created here');
    // No process has a pid this large (pid_max is at most 2^22).
    const stale = path.join(base, 'task-2147483646-1-abcdef');
    await mkdir(stale);
    await detectCgroups();
    assert.equal(await stat(stale).catch(() => undefined), undefined);
  });
});
