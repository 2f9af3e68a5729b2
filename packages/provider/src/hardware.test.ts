import assert from 'node:assert/strict';
import { chmod, mkdtemp, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { detectHardware, nominalMemoryGb, normalizeGpuModel, parseNvidiaSmi } from './hardware.ts';

// Output of `nvidia-smi --query-gpu=index,uuid,name,memory.total --format=csv,noheader,nounits`,
// in the shape drivers 535–560 print it (", " separators, MiB without unit, trailing newline).
const RTX_4090 = '0, GPU-5f3a2b1c-8d4e-4f6a-9b7c-1e2d3c4b5a69, NVIDIA GeForce RTX 4090, 24564\n';

const A100_X8 = `${[
  '0, GPU-0a1b2c3d-1111-4e5f-8a9b-0c1d2e3f4a01, NVIDIA A100-SXM4-80GB, 81920',
  '1, GPU-0a1b2c3d-2222-4e5f-8a9b-0c1d2e3f4a02, NVIDIA A100-SXM4-80GB, 81920',
  '2, GPU-0a1b2c3d-3333-4e5f-8a9b-0c1d2e3f4a03, NVIDIA A100-SXM4-80GB, 81920',
  '3, GPU-0a1b2c3d-4444-4e5f-8a9b-0c1d2e3f4a04, NVIDIA A100-SXM4-80GB, 81920',
  '4, GPU-0a1b2c3d-5555-4e5f-8a9b-0c1d2e3f4a05, NVIDIA A100-SXM4-80GB, 81920',
  '5, GPU-0a1b2c3d-6666-4e5f-8a9b-0c1d2e3f4a06, NVIDIA A100-SXM4-80GB, 81920',
  '6, GPU-0a1b2c3d-7777-4e5f-8a9b-0c1d2e3f4a07, NVIDIA A100-SXM4-80GB, 81920',
  '7, GPU-0a1b2c3d-8888-4e5f-8a9b-0c1d2e3f4a08, NVIDIA A100-SXM4-80GB, 81920',
].join('\n')}\n`;

const H100 = '0, GPU-9d8c7b6a-5f4e-3d2c-1b0a-998877665544, NVIDIA H100 80GB HBM3, 81559\n';

const MIXED = [
  '0, GPU-11111111-2222-3333-4444-555555555555, NVIDIA GeForce RTX 3090, 24576',
  '1, GPU-66666666-7777-8888-9999-aaaaaaaaaaaa, Tesla T4, 15360',
  '2, GPU-bbbbbbbb-cccc-dddd-eeee-ffffffffffff, NVIDIA L4, 23034',
  '3, GPU-12345678-9abc-def0-1234-56789abcdef0, NVIDIA H200, 143771',
].join('\r\n');

const GARBAGE = [
  "NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver. Make sure that the latest NVIDIA driver is installed and running.",
  'index, uuid, name, memory.total [MiB]',
  'Unable to determine the device handle for GPU0000:3B:00.0: Unknown Error',
  '0, GPU-aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee, NVIDIA A100-SXM4-40GB, [N/A]',
  'x, GPU-aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee, NVIDIA A100-SXM4-40GB, 40960',
  '1, not-a-uuid, NVIDIA A100-SXM4-40GB, 40960',
  '2, GPU-aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee, , 40960',
  '',
  'No devices were found',
  '5, GPU-fedcba98-7654-3210-fedc-ba9876543210, NVIDIA A100-PCIE-40GB, 40960',
].join('\n');

describe('parseNvidiaSmi', () => {
  test('1× RTX 4090', () => {
    assert.deepEqual(parseNvidiaSmi(RTX_4090), [
      { index: 0, uuid: 'GPU-5f3a2b1c-8d4e-4f6a-9b7c-1e2d3c4b5a69', model: 'rtx-4090', name: 'NVIDIA GeForce RTX 4090', vramGiB: 24 },
    ]);
  });

  test('8× A100 80GB', () => {
    const gpus = parseNvidiaSmi(A100_X8);
    assert.equal(gpus.length, 8);
    assert.deepEqual(
      gpus.map((g) => g.index),
      [0, 1, 2, 3, 4, 5, 6, 7],
    );
    assert.equal(new Set(gpus.map((g) => g.uuid)).size, 8);
    for (const g of gpus) {
      assert.equal(g.model, 'a100-80gb');
      assert.equal(g.vramGiB, 80);
      assert.equal(g.name, 'NVIDIA A100-SXM4-80GB');
    }
  });

  test('1× H100', () => {
    assert.deepEqual(parseNvidiaSmi(H100), [
      { index: 0, uuid: 'GPU-9d8c7b6a-5f4e-3d2c-1b0a-998877665544', model: 'h100-80gb', name: 'NVIDIA H100 80GB HBM3', vramGiB: 79.6 },
    ]);
  });

  test('mixed cards, CRLF line ends', () => {
    const gpus = parseNvidiaSmi(MIXED);
    assert.deepEqual(
      gpus.map((g) => [g.index, g.model, g.vramGiB]),
      [
        [0, 'rtx-3090', 24],
        [1, 't4', 15],
        [2, 'l4', 22.5],
        [3, 'h200-141gb', 140.4],
      ],
    );
  });

  test('garbage lines are skipped, valid lines among them kept', () => {
    const gpus = parseNvidiaSmi(GARBAGE);
    assert.deepEqual(
      gpus.map((g) => [g.index, g.model]),
      [[5, 'a100-40gb']],
    );
    assert.deepEqual(parseNvidiaSmi(''), []);
    assert.deepEqual(parseNvidiaSmi('No devices were found\n'), []);
  });

  test('results are ordered by index', () => {
    const gpus = parseNvidiaSmi(
      '1, GPU-bbbbbbbb-cccc-dddd-eeee-ffffffffffff, NVIDIA L4, 23034\n0, GPU-aaaaaaaa-cccc-dddd-eeee-ffffffffffff, NVIDIA L4, 23034\n',
    );
    assert.deepEqual(
      gpus.map((g) => g.index),
      [0, 1],
    );
  });
});

describe('normalizeGpuModel', () => {
  const cases: [string, number, string][] = [
    ['NVIDIA GeForce RTX 4090', 24564, 'rtx-4090'],
    ['NVIDIA GeForce RTX 3080 Ti', 12288, 'rtx-3080-ti'],
    ['NVIDIA GeForce RTX 4060 Laptop GPU', 8188, 'rtx-4060-laptop'],
    ['NVIDIA A100-SXM4-80GB', 81920, 'a100-80gb'],
    ['NVIDIA A100-PCIE-40GB', 40960, 'a100-40gb'],
    ['NVIDIA A100 80GB PCIe', 81920, 'a100-80gb'],
    ['NVIDIA H100 80GB HBM3', 81559, 'h100-80gb'],
    ['NVIDIA H100 PCIe', 81559, 'h100-80gb'],
    ['NVIDIA H100 NVL', 95830, 'h100-94gb'],
    ['NVIDIA H200', 143771, 'h200-141gb'],
    ['NVIDIA B200', 183359, 'b200-180gb'],
    ['Tesla T4', 15360, 't4'],
    ['Tesla V100-SXM2-16GB', 16384, 'v100-16gb'],
    ['NVIDIA L40S', 46068, 'l40s'],
    ['NVIDIA A10G', 23028, 'a10g'],
    ['NVIDIA RTX A6000', 49140, 'rtx-a6000'],
    ['NVIDIA RTX 6000 Ada Generation', 49140, 'rtx-6000-ada'],
    ['Quadro RTX 8000', 49152, 'quadro-rtx-8000'],
    ['???', 1000, 'unknown-gpu'],
  ];
  for (const [name, mib, model] of cases) {
    test(`${name} (${mib} MiB) → ${model}`, () => assert.equal(normalizeGpuModel(name, mib), model));
  }

  test('nominal sizes snap within 3 %, otherwise whole GiB', () => {
    assert.equal(nominalMemoryGb(81559), 80);
    assert.equal(nominalMemoryGb(97871), 96); // GH200 96GB
    assert.equal(nominalMemoryGb(143771), 141);
    assert.equal(nominalMemoryGb(56 * 1024), 56);
  });
});

describe('detectHardware', () => {
  let dir = '';
  before(async () => {
    dir = await mkdtemp(path.join(os.tmpdir(), 'gw-hw-'));
  });
  after(async () => {
    await rm(dir, { recursive: true, force: true });
  });

  test("gpus: 'none' gives no GPUs and sane cpu, memory and disk", async () => {
    const hw = await detectHardware({ gpus: 'none', dataDir: dir, nvidiaSmi: path.join(dir, 'must-not-be-run') });
    assert.deepEqual(hw.gpus, []);
    assert.ok(hw.cpu.cores >= 1 && Number.isInteger(hw.cpu.cores));
    assert.ok(hw.cpu.model.length > 0);
    assert.ok(hw.memoryGiB > 0.1 && hw.memoryGiB < 100_000, `memoryGiB ${hw.memoryGiB}`);
    assert.equal(hw.memoryGiB, Number(hw.memoryGiB.toFixed(2)));
    assert.ok(hw.diskGiB > 0 && hw.diskGiB < 1_000_000, `diskGiB ${hw.diskGiB}`);
  });

  test('a missing nvidia-smi means no GPUs, not an error', async () => {
    const hw = await detectHardware({ gpus: 'auto', dataDir: dir, nvidiaSmi: path.join(dir, 'no-such-nvidia-smi') });
    assert.deepEqual(hw.gpus, []);
  });

  test('a failing nvidia-smi means no GPUs', async () => {
    const fake = path.join(dir, 'failing-nvidia-smi');
    await writeFile(fake, '#!/bin/sh\necho "NVIDIA-SMI has failed because it couldn\'t communicate with the NVIDIA driver."\nexit 9\n');
    await chmod(fake, 0o755);
    const hw = await detectHardware({ gpus: 'auto', dataDir: dir, nvidiaSmi: fake });
    assert.deepEqual(hw.gpus, []);
  });

  test('GPUs come from nvidia-smi with the documented query', async () => {
    const fake = path.join(dir, 'fake-nvidia-smi');
    // The fake checks its arguments so a changed query does not go unnoticed.
    await writeFile(
      fake,
      `#!/bin/sh\n[ "$1" = "--query-gpu=index,uuid,name,memory.total" ] && [ "$2" = "--format=csv,noheader,nounits" ] || exit 2\ncat <<'EOF'\n${MIXED}\nEOF\n`,
    );
    await chmod(fake, 0o755);
    const hw = await detectHardware({ gpus: 'auto', dataDir: dir, nvidiaSmi: fake });
    assert.deepEqual(
      hw.gpus.map((g) => g.model),
      ['rtx-3090', 't4', 'l4', 'h200-141gb'],
    );
  });

  test('a missing data directory is reported', async () => {
    await assert.rejects(detectHardware({ gpus: 'none', dataDir: path.join(dir, 'missing') }), { code: 'ENOENT' });
  });
});
