/**
 * GPU passthrough: which GPUs a lease reserved (indices from the coordinator, UUIDs from this agent's
 * inventory) and what a sandboxed task needs to use exactly those and no other:
 *
 *   - device nodes, bound with `bwrap --dev-bind` over the sandbox's fresh /dev: `/dev/nvidia<minor>` of each
 *     reserved GPU, plus the control nodes `/dev/nvidiactl` (required), `/dev/nvidia-uvm`,
 *     `/dev/nvidia-uvm-tools` and `/dev/nvidia-modeset` where they exist. The minor number of a GPU is read
 *     from `/proc/driver/nvidia/gpus/<bus>/information` ("Device Minor", matched by "GPU UUID"), because it
 *     need not equal nvidia-smi's index (which is in PCI order); where that file is missing the index is used;
 *   - driver libraries, read-only: the sandbox already binds /usr whole (and the merged-/usr links), where
 *     Debian and Ubuntu drivers install them; only libraries outside those (a driver in /opt or
 *     /usr/local/nvidia bound elsewhere) are bound one by one. Which libraries: those of the NVIDIA
 *     container toolkit's `compute` and `utility` capabilities (CUDA driver, PTX JIT, NVVM, NVML, nvidia-smi's
 *     config library), as `ldconfig -p` lists them;
 *   - CUDA_VISIBLE_DEVICES and NVIDIA_VISIBLE_DEVICES = the reserved GPUs' UUIDs (runtime.ts, gpuVisibilityEnv).
 *
 * A CPU task (no GPUs) gets none of this: no device node, no library bind, both variables empty ("void" for
 * NVIDIA_VISIBLE_DEVICES). On a host without GPUs nothing here runs at all. Not covered: MIG instances
 * (/dev/nvidia-caps), which need the capability nodes as well.
 */
import { execFile } from 'node:child_process';
import { readdir, readFile, realpath, stat } from 'node:fs/promises';
import path from 'node:path';
import { GridworkError, type GpuInfo } from '@gridwork/protocol';
import type { TaskGpu } from './runtime.ts';

/** Nodes every CUDA process opens besides its GPUs' own; nvidiactl is the one without which nothing works. */
export const NVIDIA_CONTROL_DEVICES: readonly string[] = ['/dev/nvidiactl', '/dev/nvidia-uvm', '/dev/nvidia-uvm-tools', '/dev/nvidia-modeset'];

/**
 * Driver libraries a compute task may load (the container toolkit's `compute` + `utility` sets, without
 * OpenCL and graphics): matched on the library name ldconfig lists.
 */
export const NVIDIA_LIBRARY_PATTERN = /^lib(cuda|cudadebugger|nvidia-ml|nvidia-ptxjitcompiler|nvidia-nvvm|nvidia-gpucomp|nvidia-cfg)\.so(\.\d+)*$/;

/** What the host offers for passthrough, detected once by detectGpuHost. */
export interface GpuHost {
  /** NVIDIA device nodes that exist (`/dev/nvidia0`, `/dev/nvidiactl`, …). */
  devices: readonly string[];
  /** Device minor number of each GPU, by UUID (from /proc/driver/nvidia). */
  minors: ReadonlyMap<string, number>;
  /** Driver libraries (absolute paths) a task may need, from `ldconfig -p`. */
  libraries: readonly string[];
}

/** The lease's GPUs as the runtime needs them; an index this agent does not have is the agent's error. */
export function leaseGpus(indices: readonly number[], inventory: readonly GpuInfo[]): TaskGpu[] {
  return indices.map((index) => {
    const gpu = inventory.find((g) => g.index === index);
    if (!gpu) throw new GridworkError('INTERNAL', `the lease reserves GPU ${index}, which this provider does not have`);
    return { index, uuid: gpu.uuid };
  });
}

/**
 * Parses `/proc/driver/nvidia/gpus/<bus>/information` ("Key: \t value" lines). Returns the UUID and the device
 * minor, or undefined when either is missing.
 */
export function parseNvidiaProcInformation(text: string): { uuid: string; minor: number } | undefined {
  const field = (name: string) => new RegExp(`^${name}:\\s*(.+?)\\s*$`, 'm').exec(text)?.[1];
  const uuid = field('GPU UUID');
  const minor = field('Device Minor');
  if (!uuid || !/^GPU-[A-Za-z0-9-]+$/.test(uuid) || !minor || !/^\d+$/.test(minor)) return undefined;
  return { uuid, minor: Number(minor) };
}

/**
 * Driver libraries in `ldconfig -p` output (lines like `\tlibcuda.so.1 (libc6,x86-64) => /usr/lib/…/libcuda.so.1`)
 * whose name matches NVIDIA_LIBRARY_PATTERN and whose ABI tag is `arch` (x86-64 here; a 32-bit copy is never
 * what a 64-bit task loads). Each path once, in the order listed.
 */
export function parseLdconfigLibraries(output: string, arch = hostLdconfigArch()): string[] {
  const out: string[] = [];
  for (const line of output.split('\n')) {
    const m = /^\s*(\S+)\s+\(([^)]*)\)\s+=>\s+(\/\S+)\s*$/.exec(line);
    if (!m) continue;
    const [, name = '', tags = '', file = ''] = m;
    if (!NVIDIA_LIBRARY_PATTERN.test(name)) continue;
    if (arch && !tags.split(',').includes(arch)) continue;
    if (!out.includes(file)) out.push(file);
  }
  return out;
}

/** ldconfig's ABI tag for this process's architecture, or '' (accept any) where unknown. */
function hostLdconfigArch(): string {
  return ({ x64: 'x86-64', arm64: 'AArch64', ppc64: 'ppc64le' } as Record<string, string>)[process.arch] ?? '';
}

/** Whether p is one of the prefixes or below one. */
function under(p: string, prefixes: readonly string[]): boolean {
  return prefixes.some((pre) => p === pre || p.startsWith(pre.endsWith('/') ? pre : `${pre}/`));
}

/**
 * The bwrap arguments that give a task its GPUs (see the header): `--dev-bind` for each GPU's node and the
 * control nodes that exist, `--ro-bind` for driver libraries not under `alreadyBound`. Empty for no GPUs.
 * Throws SANDBOX_UNAVAILABLE when a reserved GPU's node or /dev/nvidiactl is missing: the task must not start
 * on the CPU believing it has a GPU.
 */
export function gpuBwrapArgs(gpus: readonly TaskGpu[], host: GpuHost, alreadyBound: readonly string[]): string[] {
  if (gpus.length === 0) return [];
  const args: string[] = [];
  const have = new Set(host.devices);
  for (const gpu of gpus) {
    const node = `/dev/nvidia${host.minors.get(gpu.uuid) ?? gpu.index}`;
    if (!have.has(node)) throw new GridworkError('SANDBOX_UNAVAILABLE', `GPU ${gpu.index} (${gpu.uuid}): device node ${node} does not exist`);
    args.push('--dev-bind', node, node);
  }
  if (!have.has('/dev/nvidiactl'))
    throw new GridworkError('SANDBOX_UNAVAILABLE', 'GPU passthrough: /dev/nvidiactl does not exist (is the NVIDIA driver loaded?)');
  for (const node of NVIDIA_CONTROL_DEVICES) if (have.has(node)) args.push('--dev-bind', node, node);
  for (const lib of host.libraries) if (!under(lib, alreadyBound)) args.push('--ro-bind', lib, lib);
  return args;
}

function run(file: string, args: string[]): Promise<string> {
  return new Promise((resolve) => {
    execFile(file, args, { timeout: 5000, killSignal: 'SIGKILL', maxBuffer: 8 * 1024 * 1024 }, (err, stdout) => resolve(err ? '' : stdout));
  });
}

/**
 * Looks at this host: NVIDIA device nodes in /dev, GPU minors from /proc/driver/nvidia, driver libraries from
 * `ldconfig -p` (their real paths too, when the listed one is a symlink elsewhere). Missing pieces are empty,
 * never an error: gpuBwrapArgs refuses a GPU task that cannot get its devices.
 */
export async function detectGpuHost(opts: { devDir?: string; procDir?: string; ldconfig?: string } = {}): Promise<GpuHost> {
  const devDir = opts.devDir ?? '/dev';
  const procDir = opts.procDir ?? '/proc/driver/nvidia/gpus';
  const devices: string[] = [];
  for (const name of await readdir(devDir).catch(() => [] as string[])) {
    if (!/^nvidia(\d+|ctl|-uvm|-uvm-tools|-modeset)$/.test(name)) continue;
    const st = await stat(path.join(devDir, name)).catch(() => undefined);
    if (st?.isCharacterDevice()) devices.push(path.join('/dev', name));
  }
  const minors = new Map<string, number>();
  for (const bus of await readdir(procDir).catch(() => [] as string[])) {
    const info = parseNvidiaProcInformation(await readFile(path.join(procDir, bus, 'information'), 'utf8').catch(() => ''));
    if (info) minors.set(info.uuid, info.minor);
  }
  const libraries: string[] = [];
  if (devices.length > 0) {
    for (const lib of parseLdconfigLibraries(await run(opts.ldconfig ?? '/sbin/ldconfig', ['-p']))) {
      const real = await realpath(lib).catch(() => undefined);
      if (!real) continue;
      for (const p of [lib, real]) if (!libraries.includes(p)) libraries.push(p);
    }
  }
  return { devices: devices.sort(), minors, libraries };
}
