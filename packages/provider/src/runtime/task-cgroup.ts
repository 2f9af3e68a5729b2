import { randomBytes } from 'node:crypto';
import { mkdir, readdir, readFile, rmdir, stat, writeFile } from 'node:fs/promises';
import path from 'node:path';

/**
 * Per-task cgroups: the sandbox runtime puts every task in a group of its own that caps its number of
 * processes/threads (pids controller) and its CPU time (cpu controller: a CFS quota of `cpu` cores), and removes
 * the group when the task has ended. This module owns finding where the agent may create such groups and the
 * files it writes there; it knows nothing about bubblewrap.
 *
 * cgroup v1 (each controller its own hierarchy, e.g. /sys/fs/cgroup/pids and /sys/fs/cgroup/cpu): a group
 * `gridwork/task-…` is made under the agent's own group of each controller (from /proc/self/cgroup). Root can do
 * that; an unprivileged agent only where the directory was delegated to it.
 *
 * cgroup v2 (one hierarchy): groups are made under the agent's own group, which must be delegated to it (systemd
 * Delegate=yes, or root). v2 forbids processes in a group that hands controllers to its children ("no internal
 * processes"), so when the agent's own group does not already enable pids/cpu for its children, the agent moves
 * itself (only itself) into a leaf `<own>/agent` first and then enables them. A hybrid host whose v2 hierarchy has no pids/cpu
 * controller (like these CI machines: /sys/fs/cgroup/unified) uses v1.
 *
 * Whatever cannot be created is reported as unavailable (`detectCgroups` never throws); the runtime then falls back
 * (per-slot uids with prlimit --nproc for processes, nice for CPU) and says so in a warning.
 *
 * Joining: the launcher is `sh -c 'echo $$ > …/cgroup.procs; exec …'`, so the task's first process is inside its
 * group before it can fork; nothing escapes the limit by forking early. Processes cannot leave the group: the task
 * runs unprivileged in its own cgroup namespace.
 */

/** CFS period for the CPU quota (100 ms, the kernel default). */
export const CPU_PERIOD_US = 100_000;
/** The kernel refuses quotas below 1 ms. */
const MIN_CPU_QUOTA_US = 1000;

export type CgroupController = 'pids' | 'cpu';

/** Where task groups can be made, per controller. */
export interface CgroupHost {
  version: 1 | 2;
  /** Parent directory for task groups of each usable controller. */
  bases: Partial<Record<CgroupController, string>>;
}

export interface TaskCgroupLimits {
  /** pids.max */
  maxProcesses: number;
  /** cores; the quota is cpu × period */
  cpu: number;
}

interface MountInfo {
  mountPoint: string;
  fsType: string;
  options: string[];
}

async function mounts(): Promise<MountInfo[]> {
  const text = await readFile('/proc/self/mounts', 'utf8').catch(() => '');
  return text
    .split('\n')
    .map((line) => line.split(' '))
    .filter((f) => f.length >= 4)
    .map((f) => ({ mountPoint: (f[1] ?? '').replace(/\\040/g, ' '), fsType: f[2] ?? '', options: (f[3] ?? '').split(',') }));
}

/** /proc/self/cgroup lines: "id:controllers:path". */
async function ownGroups(): Promise<{ controllers: string[]; path: string }[]> {
  const text = await readFile('/proc/self/cgroup', 'utf8').catch(() => '');
  return text
    .trim()
    .split('\n')
    .map((line) => {
      const [, controllers = '', ...rest] = line.split(':');
      return { controllers: controllers === '' ? [] : controllers.split(','), path: rest.join(':') };
    });
}

async function exists(p: string): Promise<boolean> {
  return (await stat(p).catch(() => undefined)) !== undefined;
}

/** Makes base and a probe group below it, then removes the probe: proves we may create groups there. */
async function usableBase(base: string, files: string[]): Promise<boolean> {
  try {
    await mkdir(base, { recursive: true });
    const probe = path.join(base, `probe-${process.pid}-${randomBytes(4).toString('hex')}`);
    await mkdir(probe);
    try {
      for (const f of files) if (!(await exists(path.join(probe, f)))) return false;
      return true;
    } finally {
      await rmdir(probe).catch(() => {});
    }
  } catch {
    return false;
  }
}

async function detectV1(all: MountInfo[]): Promise<CgroupHost | undefined> {
  const own = await ownGroups();
  const bases: Partial<Record<CgroupController, string>> = {};
  const need: Record<CgroupController, string[]> = { pids: ['pids.max', 'pids.events'], cpu: ['cpu.cfs_quota_us', 'cpu.cfs_period_us'] };
  for (const controller of ['pids', 'cpu'] as const) {
    const mount = all.find((m) => m.fsType === 'cgroup' && m.options.includes(controller));
    const mine = own.find((g) => g.controllers.includes(controller));
    if (!mount || !mine) continue;
    const base = path.join(mount.mountPoint, mine.path, 'gridwork');
    if (await usableBase(base, need[controller])) bases[controller] = base;
  }
  return Object.keys(bases).length > 0 ? { version: 1, bases } : undefined;
}

async function detectV2(all: MountInfo[]): Promise<CgroupHost | undefined> {
  const mount = all.find((m) => m.fsType === 'cgroup2');
  const mine = (await ownGroups()).find((g) => g.controllers.length === 0 && g.path.startsWith('/'));
  if (!mount || !mine) return undefined;
  const own = path.join(mount.mountPoint, mine.path);
  const available = (await readFile(path.join(own, 'cgroup.controllers'), 'utf8').catch(() => '')).trim().split(/\s+/);
  const wanted = (['pids', 'cpu'] as const).filter((c) => available.includes(c));
  if (wanted.length === 0) return undefined;
  try {
    const enabled = (await readFile(path.join(own, 'cgroup.subtree_control'), 'utf8')).trim().split(/\s+/);
    const missing = wanted.filter((c) => !enabled.includes(c));
    if (missing.length > 0) {
      // No internal processes (except in the root group): the agent moves itself into a leaf before handing
      // controllers to children. Only itself: if other processes share its group, enabling fails and the
      // fallbacks are used.
      if (mine.path !== '/') {
        const leaf = path.join(own, 'agent');
        await mkdir(leaf, { recursive: true });
        await writeFile(path.join(leaf, 'cgroup.procs'), String(process.pid));
      }
      await writeFile(path.join(own, 'cgroup.subtree_control'), missing.map((c) => `+${c}`).join(' '));
    }
  } catch {
    return undefined;
  }
  const files: Record<CgroupController, string> = { pids: 'pids.max', cpu: 'cpu.max' };
  const bases: Partial<Record<CgroupController, string>> = {};
  const base = path.join(own, 'gridwork');
  try {
    await mkdir(base, { recursive: true });
    const enabled = (await readFile(path.join(base, 'cgroup.subtree_control'), 'utf8')).trim().split(/\s+/);
    const missing = wanted.filter((c) => !enabled.includes(c));
    if (missing.length > 0) await writeFile(path.join(base, 'cgroup.subtree_control'), missing.map((c) => `+${c}`).join(' '));
  } catch {
    return undefined;
  }
  for (const c of wanted) if (await usableBase(base, [files[c]])) bases[c] = base;
  return Object.keys(bases).length > 0 ? { version: 2, bases } : undefined;
}

/**
 * Removes empty task groups left by agents that died before cleaning up (their tasks died with them:
 * bwrap --die-with-parent). Groups of live agents, and groups that still hold processes, are left alone.
 */
async function removeStale(host: CgroupHost): Promise<void> {
  for (const base of new Set(Object.values(host.bases))) {
    for (const name of await readdir(base).catch(() => [] as string[])) {
      const owner = /^task-(\d+)-/.exec(name)?.[1];
      if (owner === undefined || (await exists(`/proc/${owner}`))) continue;
      await rmdir(path.join(base, name)).catch(() => {});
    }
  }
}

/**
 * Finds where this agent may make task groups. v1 is preferred where its pids or cpu hierarchy is mounted (on a
 * hybrid host the v2 hierarchy usually has neither controller). Never throws; undefined when nothing is usable.
 */
export async function detectCgroups(): Promise<CgroupHost | undefined> {
  try {
    const all = await mounts();
    const host = (await detectV1(all)) ?? (await detectV2(all));
    if (host) await removeStale(host);
    return host;
  } catch {
    return undefined;
  }
}

let sequence = 0;

/** One task's group(s): created with limits, joined by the launcher, checked while running, removed after. */
export class TaskCgroup {
  private constructor(
    readonly version: 1 | 2,
    /** Directory of each controller's group (v2: the same directory for both). */
    readonly dirs: Partial<Record<CgroupController, string>>,
  ) {}

  /** Creates the task's groups and writes its limits. Throws if the host's groups cannot be made. */
  static async create(host: CgroupHost, limits: TaskCgroupLimits): Promise<TaskCgroup> {
    const name = `task-${process.pid}-${++sequence}-${randomBytes(3).toString('hex')}`;
    const dirs: Partial<Record<CgroupController, string>> = {};
    const group = new TaskCgroup(host.version, dirs);
    try {
      for (const controller of ['pids', 'cpu'] as const) {
        const base = host.bases[controller];
        if (!base) continue;
        const dir = path.join(base, name);
        if (!Object.values(dirs).includes(dir)) await mkdir(dir);
        dirs[controller] = dir;
      }
      if (dirs.pids) await writeFile(path.join(dirs.pids, 'pids.max'), String(Math.max(1, Math.floor(limits.maxProcesses))));
      if (dirs.cpu) {
        const quota = Math.max(MIN_CPU_QUOTA_US, Math.round(limits.cpu * CPU_PERIOD_US));
        if (host.version === 1) {
          await writeFile(path.join(dirs.cpu, 'cpu.cfs_period_us'), String(CPU_PERIOD_US));
          await writeFile(path.join(dirs.cpu, 'cpu.cfs_quota_us'), String(quota));
        } else {
          await writeFile(path.join(dirs.cpu, 'cpu.max'), `${quota} ${CPU_PERIOD_US}`);
        }
      }
    } catch (err) {
      await group.remove();
      throw err;
    }
    return group;
  }

  /** The cgroup.procs files the launcher writes its pid into. */
  procsFiles(): string[] {
    return [...new Set(Object.values(this.dirs))].map((d) => path.join(d, 'cgroup.procs'));
  }

  /** Whether a fork was refused because pids.max was reached ("max N" in pids.events, N > 0). */
  async processLimitHit(): Promise<boolean> {
    if (!this.dirs.pids) return false;
    const text = await readFile(path.join(this.dirs.pids, 'pids.events'), 'utf8').catch(() => '');
    const m = /^max (\d+)$/m.exec(text);
    return m !== null && Number(m[1]) > 0;
  }

  /** Processes still in the group (none once the sandbox has ended). */
  async members(): Promise<number[]> {
    const pids = new Set<number>();
    for (const file of this.procsFiles()) {
      const text = await readFile(file, 'utf8').catch(() => '');
      for (const line of text.split('\n')) if (/^\d+$/.test(line)) pids.add(Number(line));
    }
    return [...pids];
  }

  /**
   * Kills whatever is left and removes the groups. An empty group can still be busy for a moment while its last
   * processes are reaped, so rmdir is retried for a while.
   */
  async remove(): Promise<void> {
    const dirs = [...new Set(Object.values(this.dirs))];
    for (let attempt = 0; attempt < 50 && dirs.length > 0; attempt++) {
      for (const pid of await this.members()) {
        try {
          process.kill(pid, 'SIGKILL');
        } catch {
          // already gone
        }
      }
      for (const dir of [...dirs]) {
        try {
          await rmdir(dir);
          dirs.splice(dirs.indexOf(dir), 1);
        } catch (err) {
          if ((err as NodeJS.ErrnoException).code === 'ENOENT') dirs.splice(dirs.indexOf(dir), 1);
        }
      }
      if (dirs.length > 0) await new Promise((r) => setTimeout(r, 100));
    }
  }
}
