import assert from 'node:assert/strict';
import { mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { describe, test } from 'node:test';
import { fileURLToPath } from 'node:url';
import { GridworkError } from '@gridwork/protocol';
import { parseNvidiaSmi } from '../hardware.ts';
import { detectGpuHost, type GpuHost, gpuBwrapArgs, leaseGpus, parseLdconfigLibraries, parseNvidiaProcInformation } from './gpu-passthrough.ts';
import { buildTaskEnv, type RunRequest } from './runtime.ts';
import { buildSandboxArgv } from './sandbox-runtime.ts';

// Fixtures in the shape driver 550 prints them (no GPU on this machine or CI): `nvidia-smi
// --query-gpu=index,uuid,name,memory.total --format=csv,noheader,nounits` on a 4× H100 host, its
// /proc/driver/nvidia/gpus/<bus>/information files (GPUs 2 and 3 have swapped device minors: nvidia-smi's index
// is PCI order, the minor is the driver's), and `ldconfig -p` with 32-bit copies, graphics libraries and a
// driver outside /usr.
const fixtures = path.join(path.dirname(fileURLToPath(import.meta.url)), 'fixtures', 'gpu');
const read = (name: string) => readFile(path.join(fixtures, name), 'utf8');
const procDir = path.join(fixtures, 'proc-driver-nvidia-gpus');

/** A host as detectGpuHost would see the fixture machine, with the device nodes listed. */
async function fixtureHost(devices: string[]): Promise<GpuHost> {
  const noDevices = await mkdtemp(path.join(os.tmpdir(), 'gw-nodev-'));
  try {
    const host = await detectGpuHost({ devDir: noDevices, procDir, ldconfig: '/nonexistent' });
    return { ...host, devices, libraries: parseLdconfigLibraries(await read('ldconfig-p.txt'), 'x86-64') };
  } finally {
    await rm(noDevices, { recursive: true, force: true });
  }
}

const ALL_NODES = [
  '/dev/nvidia0',
  '/dev/nvidia1',
  '/dev/nvidia2',
  '/dev/nvidia3',
  '/dev/nvidiactl',
  '/dev/nvidia-uvm',
  '/dev/nvidia-uvm-tools',
  '/dev/nvidia-modeset',
];

describe('GPU passthrough', () => {
  test('the /proc information file gives UUID and device minor; anything else gives nothing', async () => {
    const info = await read('proc-driver-nvidia-gpus/0000:3a:00.0/information');
    assert.deepEqual(parseNvidiaProcInformation(info), { uuid: 'GPU-2f6c8b41-7e9a-4d03-9c5b-8a1e3f7d2b64', minor: 3 });
    assert.equal(parseNvidiaProcInformation(''), undefined);
    assert.equal(parseNvidiaProcInformation('GPU UUID: \t GPU-1\nDevice Minor: \t ?\n'), undefined);
    assert.equal(parseNvidiaProcInformation('GPU UUID: \t $(reboot)\nDevice Minor: \t 1\n'), undefined);
  });

  test('ldconfig: only the compute and utility libraries of the host architecture, each once', async () => {
    assert.deepEqual(parseLdconfigLibraries(await read('ldconfig-p.txt'), 'x86-64'), [
      '/lib/x86_64-linux-gnu/libnvidia-ptxjitcompiler.so.1',
      '/lib/x86_64-linux-gnu/libnvidia-nvvm.so.4',
      '/lib/x86_64-linux-gnu/libnvidia-ml.so.1',
      '/lib/x86_64-linux-gnu/libnvidia-gpucomp.so.550.127.05',
      '/lib/x86_64-linux-gnu/libnvidia-cfg.so.1',
      '/lib/x86_64-linux-gnu/libcudadebugger.so.1',
      '/lib/x86_64-linux-gnu/libcuda.so.1',
      '/lib/x86_64-linux-gnu/libcuda.so',
      '/opt/nvidia/driver/lib64/libcuda.so',
    ]);
    assert.deepEqual(parseLdconfigLibraries(''), []);
  });

  test('a lease of GPUs 2 and 3 binds exactly their nodes (by device minor), the control nodes and the libraries outside /usr', async () => {
    const inventory = parseNvidiaSmi(await read('nvidia-smi-4x-h100.csv'));
    assert.equal(inventory.length, 4);
    const gpus = leaseGpus([2, 3], inventory);
    assert.deepEqual(gpus, [
      { index: 2, uuid: 'GPU-2f6c8b41-7e9a-4d03-9c5b-8a1e3f7d2b64' },
      { index: 3, uuid: 'GPU-c71d5e92-4a3b-48f0-a6e2-0d9b7c1f5a83' },
    ]);
    const host = await fixtureHost(ALL_NODES);
    assert.equal(host.minors.size, 4);
    const args = gpuBwrapArgs(gpus, host, ['/usr', '/lib', '/lib64', '/bin', '/sbin']);
    assert.deepEqual(args, [
      '--dev-bind',
      '/dev/nvidia3',
      '/dev/nvidia3',
      '--dev-bind',
      '/dev/nvidia2',
      '/dev/nvidia2',
      '--dev-bind',
      '/dev/nvidiactl',
      '/dev/nvidiactl',
      '--dev-bind',
      '/dev/nvidia-uvm',
      '/dev/nvidia-uvm',
      '--dev-bind',
      '/dev/nvidia-uvm-tools',
      '/dev/nvidia-uvm-tools',
      '--dev-bind',
      '/dev/nvidia-modeset',
      '/dev/nvidia-modeset',
      '--ro-bind',
      '/opt/nvidia/driver/lib64/libcuda.so',
      '/opt/nvidia/driver/lib64/libcuda.so',
    ]);
    // Never another GPU's node.
    for (const other of ['/dev/nvidia0', '/dev/nvidia1']) assert.ok(!args.includes(other));
  });

  test('the full sandbox argv of a 2-GPU lease: device binds over the fresh /dev, UUIDs in both variables', async () => {
    const inventory = parseNvidiaSmi(await read('nvidia-smi-4x-h100.csv'));
    const gpus = leaseGpus([0, 1], inventory);
    const host = await fixtureHost(['/dev/nvidia0', '/dev/nvidia1', '/dev/nvidia2', '/dev/nvidia3', '/dev/nvidiactl', '/dev/nvidia-uvm']);
    const gpuArgs = gpuBwrapArgs(gpus, host, ['/usr', '/lib', '/lib64', '/bin', '/sbin']);
    const req: RunRequest = {
      bundleDir: '/w/b',
      inputsDir: '/w/i',
      outputsDir: '/w/o',
      checkpointsDir: '/w/c',
      command: ['python3', 'train.py'],
      env: { CUDA_VISIBLE_DEVICES: '0,1,2,3' },
      network: false,
      timeoutMs: 1000,
      memoryBytes: 2 * 1024 ** 3,
      cpu: 1,
      diskBytes: 1024,
      onOutput: () => {},
      gpus,
    };
    const argv = await buildSandboxArgv(
      req,
      { bundle: '/w/b', inputs: '/w/i', outputs: '/w/o', checkpoints: '/w/c' },
      { bwrapPath: 'bwrap', setprivPath: 'setpriv', prlimitPath: 'prlimit', etcPaths: [], dropRoot: false },
      { uid: 65534, cgroupProcs: [], nicePath: 'nice', gpuArgs },
    );
    const dev = argv.indexOf('/dev', argv.indexOf('--dev'));
    const first = argv.indexOf('--dev-bind');
    assert.ok(dev > 0 && first > dev, 'device binds come after the fresh /dev, or it would hide them');
    const binds = argv.flatMap((a, i) => (a === '--dev-bind' ? [argv[i + 1]] : []));
    assert.deepEqual(binds, ['/dev/nvidia0', '/dev/nvidia1', '/dev/nvidiactl', '/dev/nvidia-uvm']);
    const setenv = new Map(argv.flatMap((a, i) => (a === '--setenv' ? [[argv[i + 1], argv[i + 2]] as const] : [])));
    const uuids = 'GPU-4b0e1c7a-93d2-5f16-8a0e-2c9d4f1e7b30,GPU-9e3a7d25-0b8c-4e61-b7f4-51d8a2c6e9f1';
    // The spec's own CUDA_VISIBLE_DEVICES is overridden: the agent decides which GPUs a task sees.
    assert.equal(setenv.get('CUDA_VISIBLE_DEVICES'), uuids);
    assert.equal(setenv.get('NVIDIA_VISIBLE_DEVICES'), uuids);
  });

  test('CPU fallback: no GPUs means no binds and no visible device, even if the spec names one', async () => {
    const host = await fixtureHost(ALL_NODES);
    assert.deepEqual(gpuBwrapArgs([], host, ['/usr']), []);
    assert.deepEqual(gpuBwrapArgs([], { devices: [], minors: new Map(), libraries: [] }, ['/usr']), []);
    const dirs = { inputs: '/inputs', outputs: '/outputs', checkpoints: '/checkpoints' };
    const plain = buildTaskEnv({ env: {} }, dirs);
    assert.equal(plain.CUDA_VISIBLE_DEVICES, undefined);
    assert.equal(plain.NVIDIA_VISIBLE_DEVICES, undefined);
    const sneaky = buildTaskEnv({ env: { CUDA_VISIBLE_DEVICES: '0' } }, dirs);
    assert.equal(sneaky.CUDA_VISIBLE_DEVICES, '');
    assert.equal(sneaky.NVIDIA_VISIBLE_DEVICES, 'void');
  });

  test('a reserved GPU whose node is missing, or a host without nvidiactl, refuses the task', async () => {
    const gpus = [{ index: 1, uuid: 'GPU-9e3a7d25-0b8c-4e61-b7f4-51d8a2c6e9f1' }];
    const refuses = (host: GpuHost, what: RegExp) =>
      assert.throws(
        () => gpuBwrapArgs(gpus, host, ['/usr']),
        (err: unknown) => err instanceof GridworkError && err.code === 'SANDBOX_UNAVAILABLE' && what.test(err.message),
      );
    refuses(await fixtureHost(['/dev/nvidia0', '/dev/nvidiactl']), /\/dev\/nvidia1 does not exist/);
    refuses(await fixtureHost(['/dev/nvidia1']), /nvidiactl/);
    // Without /proc information the index stands in for the minor.
    assert.deepEqual(gpuBwrapArgs(gpus, { devices: ['/dev/nvidia1', '/dev/nvidiactl'], minors: new Map(), libraries: [] }, ['/usr']).slice(0, 3), [
      '--dev-bind',
      '/dev/nvidia1',
      '/dev/nvidia1',
    ]);
  });

  test('a lease naming a GPU this agent does not have is refused', () => {
    assert.throws(() => leaseGpus([5], []), /does not have/);
  });

  test('detectGpuHost on this machine and on a directory of look-alikes: only character devices count', async () => {
    const fake = await mkdtemp(path.join(os.tmpdir(), 'gw-dev-'));
    try {
      await writeFile(path.join(fake, 'nvidia0'), '');
      await writeFile(path.join(fake, 'nvidiactl'), '');
      await mkdir(path.join(fake, 'nvidia-caps'));
      const host = await detectGpuHost({ devDir: fake, procDir: path.join(fake, 'none') });
      assert.deepEqual(host, { devices: [], minors: new Map(), libraries: [] });
    } finally {
      await rm(fake, { recursive: true, force: true });
    }
    const real = await detectGpuHost();
    // Whatever this host has, every listed node is an NVIDIA one (none on CI).
    for (const d of real.devices) assert.match(d, /^\/dev\/nvidia/);
  });
});
