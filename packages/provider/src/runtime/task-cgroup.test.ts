import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { mkdir, readFile, stat } from 'node:fs/promises';
import path from 'node:path';
import { describe, test } from 'node:test';
import { detectCgroups, TaskCgroup } from './task-cgroup.ts';

// Real cgroups: these run where the agent may create groups (root on cgroup v1 here) and skip elsewhere.

describe('task cgroup', () => {
  test('limits are written, a member is killed and the group removed', async (ctx) => {
    const host = await detectCgroups();
    if (!host) return ctx.skip('no cgroup can be created here');
    const group = await TaskCgroup.create(host, { maxProcesses: 32, cpu: 1.5 });
    const dirs = Object.values(group.dirs);
    if (group.dirs.pids) assert.equal((await readFile(path.join(group.dirs.pids, 'pids.max'), 'utf8')).trim(), '32');
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
    await group.remove();
    await exited;
    for (const dir of dirs) assert.equal(await stat(dir).catch(() => undefined), undefined, dir);
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
