import { execFile } from 'node:child_process';
import { statfs } from 'node:fs/promises';
import os from 'node:os';
import type { GpuInfo, Hardware } from '@gridwork/protocol';

export interface DetectHardwareOptions {
  gpus: 'auto' | 'none';
  /** Directory whose filesystem's free space is reported as diskGiB. */
  dataDir: string;
  /** @default 'nvidia-smi' */
  nvidiaSmi?: string;
}

const GiB = 1024 ** 3;
const NVIDIA_SMI_ARGS = ['--query-gpu=index,uuid,name,memory.total', '--format=csv,noheader,nounits'];
const NVIDIA_SMI_TIMEOUT_MS = 5000;

const round = (value: number, decimals: number) => Number(value.toFixed(decimals));

/**
 * Describes this machine. CPU cores are os.availableParallelism() (what tasks can actually be scheduled
 * on, honouring CPU affinity), memory is total RAM, disk is the space available to unprivileged users on
 * dataDir's filesystem. GPUs come from nvidia-smi; a missing binary, a driver failure or a timeout means
 * "no GPUs", never an error. A missing dataDir is an error (the agent creates it before calling this).
 */
export async function detectHardware(opts: DetectHardwareOptions): Promise<Hardware> {
  const fs = await statfs(opts.dataDir);
  const gpus = opts.gpus === 'none' ? [] : await queryNvidiaSmi(opts.nvidiaSmi ?? 'nvidia-smi');
  return {
    cpu: { model: (os.cpus()[0]?.model ?? '').trim().slice(0, 256) || 'unknown', cores: Math.max(1, os.availableParallelism()) },
    memoryGiB: round(os.totalmem() / GiB, 2),
    diskGiB: round((fs.bavail * fs.bsize) / GiB, 2),
    gpus,
  };
}

function queryNvidiaSmi(binary: string): Promise<GpuInfo[]> {
  return new Promise((resolve) => {
    execFile(binary, NVIDIA_SMI_ARGS, { timeout: NVIDIA_SMI_TIMEOUT_MS, killSignal: 'SIGKILL', maxBuffer: 1024 * 1024 }, (err, stdout) => {
      resolve(err ? [] : parseNvidiaSmi(stdout));
    });
  });
}

/**
 * Parses `nvidia-smi --query-gpu=index,uuid,name,memory.total --format=csv,noheader,nounits`.
 * Lines that do not look like a GPU (driver error messages, "[N/A]" memory, a header) are skipped.
 * The name is everything between the uuid and the memory column, so a comma in a name survives.
 */
export function parseNvidiaSmi(csv: string): GpuInfo[] {
  const gpus: GpuInfo[] = [];
  for (const line of csv.split(/\r?\n/)) {
    const fields = line.split(',').map((f) => f.trim());
    if (fields.length < 4) continue;
    const [indexText, uuid] = fields;
    const memText = fields[fields.length - 1] ?? '';
    const name = fields.slice(2, -1).join(', ');
    if (!indexText || !/^\d+$/.test(indexText)) continue;
    if (!uuid || !/^(GPU|MIG)-[A-Za-z0-9-]+$/.test(uuid) || uuid.length > 128) continue;
    if (!/^\d+(\.\d+)?$/.test(memText)) continue;
    if (name === '' || name.length > 256) continue;
    const vramMiB = Number(memText);
    gpus.push({
      index: Number(indexText),
      uuid,
      model: normalizeGpuModel(name, vramMiB),
      name,
      vramGiB: round(vramMiB / 1024, 1),
    });
  }
  return gpus.sort((a, b) => a.index - b.index);
}

/** Words that say nothing about which GPU it is: vendor and product-line prefixes, form factors, memory types. */
const NOISE_TOKENS = new Set([
  'nvidia',
  'geforce',
  'tesla',
  'gpu',
  'generation',
  'sxm',
  'sxm2',
  'sxm3',
  'sxm4',
  'sxm5',
  'sxm6',
  'pcie',
  'nvl',
  'hgx',
  'dgx',
  'oam',
  'hbm',
  'hbm2',
  'hbm2e',
  'hbm3',
  'hbm3e',
  'gddr6',
  'gddr6x',
]);

/**
 * Families sold with several memory sizes under one name; their model always carries the size, taken
 * from the name when it states one ("A100-SXM4-80GB") and from the reported VRAM otherwise ("H100 PCIe").
 */
const SIZED_FAMILIES = new Set(['a100', 'a800', 'h100', 'h800', 'h200', 'h20', 'gh200', 'b100', 'b200', 'gb200', 'v100', 'v100s', 'p100']);

/** Marketing sizes (GB) that driver-reported MiB are snapped to: H100 81559 MiB → 80, H200 143771 MiB → 141. */
const NOMINAL_SIZES_GB = [12, 16, 24, 32, 40, 48, 64, 80, 94, 96, 120, 141, 144, 180, 186, 192, 288];

/** Reported MiB → marketing GB: the nearest nominal size within 3 %, else whole GiB. */
export function nominalMemoryGb(vramMiB: number): number {
  const gib = vramMiB / 1024;
  let best: number | undefined;
  for (const size of NOMINAL_SIZES_GB) {
    if (Math.abs(gib - size) / size <= 0.03 && (best === undefined || Math.abs(gib - size) < Math.abs(gib - best))) best = size;
  }
  return best ?? Math.round(gib);
}

/**
 * Driver name → stable model id used for matching jobs to providers.
 * Rule: lowercase; split on anything that is not a letter or digit; drop the NOISE_TOKENS (vendor,
 * "GeForce"/"Tesla", form factor, memory type); join with '-'. For SIZED_FAMILIES append "<N>gb" unless the
 * name already has a size token, with N from nominalMemoryGb. "Quadro" and "RTX" are kept: "Quadro RTX 6000"
 * and "RTX 6000 Ada" are different cards.
 *   "NVIDIA GeForce RTX 4090" → rtx-4090        "NVIDIA A100-SXM4-80GB" → a100-80gb
 *   "NVIDIA H100 80GB HBM3" → h100-80gb         "Tesla T4" → t4
 *   "NVIDIA H200" (143771 MiB) → h200-141gb     "NVIDIA H100 PCIe" (81559 MiB) → h100-80gb
 *   "NVIDIA RTX 6000 Ada Generation" → rtx-6000-ada
 */
export function normalizeGpuModel(name: string, vramMiB: number): string {
  const tokens = name
    .toLowerCase()
    .split(/[^a-z0-9]+/)
    .filter((t) => t !== '' && !NOISE_TOKENS.has(t));
  const family = tokens[0];
  if (family && SIZED_FAMILIES.has(family) && !tokens.some((t) => /^\d+gb$/.test(t)) && vramMiB > 0) {
    tokens.push(`${nominalMemoryGb(vramMiB)}gb`);
  }
  return (tokens.join('-') || 'unknown-gpu').slice(0, 128);
}
