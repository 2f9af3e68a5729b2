import { randomBytes } from 'node:crypto';
import { mkdir, readdir, readFile, rmdir, stat, writeFile } from 'node:fs/promises';
import path from 'node:path';

/**
 * Per-task cgroups: the sandbox runtime puts every task in a group of its own that caps its number of
 * processes/threads (pids controller), its CPU time (cpu controller: a CFS quota of `cpu` cores) and its memory
 * (memory controller), and removes the group when the task has ended. This module owns finding where the agent
 * may create such groups and the files it writes there; it knows nothing about bubblewrap.
 *
 * Memory: the limit holds for all of the task's processes together, and for its tmpfs (/tmp, /dev/shm) too:
 * the kernel charges a tmpfs page to the group of the process that first writes it, and every process that can
 * write the task's tmpfs is in the task's group. Swap is not a way around it (memsw / memory.swap.max). At the
 * limit the kernel reclaims what it can and then OOM-kills inside the group only; the killer is left on (a
 * group with it disabled would just hang at the limit), and its kills are counted in the group (v1
 * memory.oom_control `oom_kill`, v2 memory.events `oom_kill`, both since Linux 4.13), which memoryLimitHit()
 * reads so the run can end with the memory limit. v2 also gets memory.oom.group: the whole task ends at once
 * instead of limping on without the process the kernel chose.
 *
 * cgroup v1 (each controller its own hierarchy, e.g. /sys/fs/cgroup/pids and /sys/fs/cgroup/cpu): a group
 * `gridwork/task-…` is made under the agent's own group of each controller (from /proc/self/cgroup). Root can do
 * that; an unprivileged agent only where the directory was delegated to it.
 *
 * cgroup v2 (one hierarchy): groups are made under the agent's own group, which must be delegated to it (systemd
 * Delegate=yes, or root). v2 forbids processes in a group that hands controllers to its children ("no internal
 * processes"), so when the agent's own group does not already enable pids/cpu/memory for its children, the agent
 * moves itself (only itself) into a leaf `<own>/agent` first and then enables them. A hybrid host whose v2 hierarchy
 * has none of them (like these CI machines: /sys/fs/cgroup/unified) uses v1.
 *
 * Whatever cannot be created is reported as unavailable (`detectCgroups` never throws); the runtime then falls back
 * (per-slot uids with prlimit --nproc for processes, nice for CPU, fewer slots for memory) and says so in a warning.
 *
 * Joining: the launcher is `sh -c 'echo $$ > …/cgroup.procs; exec …'`, so the task's first process is inside its
 * group before it can fork; nothing escapes the limit by forking early. Processes cannot leave the group: the task
 * runs unprivileged in its own cgroup namespace.
 */

/** CFS period for the CPU quota (100 ms, the kernel default). */
export const CPU_PERIOD_US = 100_000;
/** The kernel refuses quotas below 1 ms. */
const MIN_CPU_QUOTA_US = 1000;

export type CgroupController = 'pids' | 'cpu' | 'memory';

const CONTROLLERS: readonly CgroupController[] = ['pids', 'cpu', 'memory'];

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
  /** memory.limit_in_bytes (v1) / memory.max (v2), swap included */
  memoryBytes: number;
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
  const need: Record<CgroupController, string[]> = {
    pids: ['pids.max', 'pids.events'],
    cpu: ['cpu.cfs_quota_us', 'cpu.cfs_period_us'],
    memory: ['memory.limit_in_bytes', 'memory.oom_control'],
  };
  for (const controller of CONTROLLERS) {
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
  const wanted = CONTROLLERS.filter((c) => available.includes(c));
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
  const files: Record<CgroupController, string> = { pids: 'pids.max', cpu: 'cpu.max', memory: 'memory.max' };
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
 * Finds where this agent may make task groups. v1 is preferred where one of its hierarchies is mounted (on a
 * hybrid host the v2 hierarchy usually has no controller). Never throws; undefined when nothing is usable.
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

/**
 * The limit of a new, empty group. Swap counts against the same figure: on v1 memsw (memory + swap) may not be
 * below the memory limit, so it is set equal, after it; the files exist only where the kernel accounts swap.
 */
async function writeMemoryLimit(version: 1 | 2, dir: string, bytes: number): Promise<void> {
  const limit = String(Math.max(1, Math.floor(bytes)));
  const optional = async (file: string, value: string) => {
    if (await exists(path.join(dir, file))) await writeFile(path.join(dir, file), value);
  };
  if (version === 1) {
    await writeFile(path.join(dir, 'memory.limit_in_bytes'), limit);
    await optional('memory.memsw.limit_in_bytes', limit);
  } else {
    await writeFile(path.join(dir, 'memory.max'), limit);
    await optional('memory.swap.max', '0');
    await optional('memory.oom.group', '1');
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
      for (const controller of CONTROLLERS) {
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
      if (dirs.memory) await writeMemoryLimit(host.version, dirs.memory, limits.memoryBytes);
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

  /**
   * Whether the kernel OOM-killed a process of the group: its memory limit was reached with nothing left to reclaim.
   * A kill by the host-wide OOM killer counts too (the counter is the victim's group's, as for Docker's OOMKilled);
   * with every task held to its own limit that is not expected to come first.
   */
  async memoryLimitHit(): Promise<boolean> {
    if (!this.dirs.memory) return false;
    const file = this.version === 1 ? 'memory.oom_control' : 'memory.events';
    const text = await readFile(path.join(this.dirs.memory, file), 'utf8').catch(() => '');
    return Number(/^oom_kill (\d+)$/m.exec(text)?.[1] ?? 0) > 0;
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
