import assert from 'node:assert/strict';
import { chmod, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { type Asks, GridworkError, type Hardware } from '@gridwork/protocol';
import { type AnnouncedOrder, fixedPricing, loadRates, scriptPricing } from './pricing.ts';

function hardware(models: string[]): Hardware {
  return {
    cpu: { model: 'test', cores: 8 },
    memoryGiB: 32,
    diskGiB: 100,
    gpus: models.map((model, index) => ({ index, uuid: `GPU-${index}`, model, name: model, vramGiB: 24 })),
  };
}

const isCode = (code: string, message?: RegExp) => (err: unknown) => {
  assert.ok(err instanceof GridworkError, `expected a GridworkError, got ${String(err)}`);
  assert.equal(err.code, code);
  if (message) assert.match(err.message, message);
  return true;
};

describe('fixedPricing', () => {
  test('defaults, for hardware without GPUs', () => {
    assert.deepEqual(fixedPricing().asks(hardware([])), { cpuCoreHour: '0.02', memoryGiBHour: '0.004', gpuHour: {} });
  });

  test('GPUs: the default GPU price, overridden per model; one entry per model present', () => {
    const hw = hardware(['rtx-4090', 'a100-80gb', 'rtx-4090', 'l4']);
    assert.deepEqual(fixedPricing().asks(hw).gpuHour, { 'rtx-4090': '0.6', 'a100-80gb': '0.6', l4: '0.6' });
    const asks = fixedPricing({ cpuCoreHour: '0.015', memoryGiBHour: '0.0030', gpuDefault: '0.45', gpuHour: { 'a100-80gb': '1.80', 'h100-80gb': '3' } }).asks(
      hw,
    );
    // Normalized decimals; h100 is not on this machine, so it is not asked.
    assert.deepEqual(asks, { cpuCoreHour: '0.015', memoryGiBHour: '0.003', gpuHour: { 'rtx-4090': '0.45', 'a100-80gb': '1.8', l4: '0.45' } });
  });

  test('invalid rates throw INVALID_AMOUNT naming the field', () => {
    assert.throws(() => fixedPricing({ cpuCoreHour: '-1' }), isCode('INVALID_AMOUNT', /cpuCoreHour/));
    assert.throws(() => fixedPricing({ cpuCoreHour: '+1' }), isCode('INVALID_AMOUNT', /cpuCoreHour/));
    assert.throws(() => fixedPricing({ cpuCoreHour: '1.' }), isCode('INVALID_AMOUNT', /cpuCoreHour/));
    assert.throws(() => fixedPricing({ memoryGiBHour: 'cheap' }), isCode('INVALID_AMOUNT', /memoryGiBHour/));
    assert.throws(() => fixedPricing({ memoryGiBHour: '0.0000001' }), isCode('INVALID_AMOUNT', /memoryGiBHour.*6 decimal/));
    assert.throws(() => fixedPricing({ gpuDefault: '1e3' }), isCode('INVALID_AMOUNT', /gpuDefault/));
    assert.throws(() => fixedPricing({ gpuHour: { l4: '0.5', 'a100-80gb': '' } }), isCode('INVALID_AMOUNT', /gpuHour\.a100-80gb/));
    assert.throws(() => fixedPricing({ cpuCoreHour: 0.02 as unknown as string }), isCode('INVALID_AMOUNT', /cpuCoreHour/));
    assert.throws(() => scriptPricing({ script: '/bin/true', rates: { gpuDefault: 'x' } }), isCode('INVALID_AMOUNT', /gpuDefault/));
  });
});

describe('loadRates', () => {
  let dir: string;
  before(async () => {
    dir = await mkdtemp(path.join(os.tmpdir(), 'gridwork-rates-'));
  });
  after(async () => {
    await rm(dir, { recursive: true, force: true });
  });
  const file = async (name: string, text: string) => {
    const p = path.join(dir, name);
    await writeFile(p, text);
    return p;
  };

  test('reads a rates file', async () => {
    const p = await file('ok.json', JSON.stringify({ cpuCoreHour: '0.03', gpuHour: { l4: '0.5' } }));
    const rates = await loadRates(p);
    assert.deepEqual(rates, { cpuCoreHour: '0.03', gpuHour: { l4: '0.5' } });
    assert.deepEqual(fixedPricing(rates).asks(hardware(['l4'])), { cpuCoreHour: '0.03', memoryGiBHour: '0.004', gpuHour: { l4: '0.5' } });
  });

  test('rejects unknown fields, naming the file and the field', async () => {
    const p = await file('typo.json', JSON.stringify({ cpuCoreHour: '0.03', gpuPrice: '1' }));
    await assert.rejects(loadRates(p), isCode('BAD_REQUEST', new RegExp(`${p.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}.*unknown field gpuPrice`)));
  });

  test('rejects bad JSON, a non-object and a missing file with a clear message', async () => {
    const bad = await file('bad.json', '{ "cpuCoreHour": "0.03", }');
    await assert.rejects(loadRates(bad), isCode('BAD_REQUEST', /pricing config .*bad\.json: .*JSON/));
    const arr = await file('arr.json', '["0.03"]');
    await assert.rejects(loadRates(arr), isCode('BAD_REQUEST', /arr\.json must be a JSON object/));
    const nul = await file('null.json', 'null');
    await assert.rejects(loadRates(nul), isCode('BAD_REQUEST', /must be a JSON object/));
    await assert.rejects(loadRates(path.join(dir, 'missing.json')), isCode('BAD_REQUEST', /missing\.json.*ENOENT/));
  });
});

describe('scriptPricing', () => {
  let dir: string;
  before(async () => {
    dir = await mkdtemp(path.join(os.tmpdir(), 'gridwork-pricing-'));
  });
  after(async () => {
    await rm(dir, { recursive: true, force: true });
  });

  let n = 0;
  const script = async (body: string) => {
    const p = path.join(dir, `bid-${n++}.sh`);
    await writeFile(p, `#!/bin/sh\n${body}\n`);
    await chmod(p, 0o755);
    return p;
  };
  const order: AnnouncedOrder = { orderId: 'ord_1', resources: { cpu: 2, memoryGiB: 4, gpu: { count: 1, models: ['l4'] } }, maxPerHour: '1.5' };
  const standing: Asks = { cpuCoreHour: '0.02', memoryGiBHour: '0.004', gpuHour: { l4: '0.6' } };
  const bidWith = async (body: string, opts: { timeoutMs?: number; o?: AnnouncedOrder } = {}) => {
    const policy = scriptPricing({ script: await script(body), timeoutMs: opts.timeoutMs ?? 5000 });
    assert.ok(policy.bid);
    return policy.bid(opts.o ?? order, standing);
  };

  test('standing asks come from the fixed rates', () => {
    const p = scriptPricing({ script: '/nonexistent', rates: { gpuDefault: '0.7' } });
    assert.deepEqual(p.asks(hardware(['l4'])), { cpuCoreHour: '0.02', memoryGiBHour: '0.004', gpuHour: { l4: '0.7' } });
    assert.equal(fixedPricing().bid, undefined); // fixed pricing never bids
  });

  test('a plain decimal on stdout is the bid', async () => {
    assert.equal(await bidWith('echo 0.42'), '0.42');
    assert.equal(await bidWith('printf "  1.20\\n\\n"'), '1.2');
    assert.equal(await bidWith('echo 1.5'), '1.5'); // exactly the max
  });

  test('JSON with pricePerHour is the bid', async () => {
    assert.equal(await bidWith(`echo '{"pricePerHour":"0.5"}'`), '0.5');
    assert.equal(await bidWith(`echo '{"pricePerHour":"0.25","note":"x"}'`), '0.25');
  });

  test('the script reads the order from stdin', async () => {
    const body = `exec "${process.execPath}" -e '
let s = "";
process.stdin.on("data", (d) => (s += d)).on("end", () => {
  const { order, standingAsks } = JSON.parse(s);
  if (order.orderId === undefined || standingAsks.gpuHour.l4 !== "0.6") { console.log("no bid"); return; }
  console.log(JSON.stringify({ pricePerHour: String(Number(order.maxPerHour) / 2) }));
});'`;
    assert.equal(await bidWith(body), '0.75');
    assert.equal(await bidWith(body, { o: { ...order, maxPerHour: '3' } }), '1.5');
    // Stdin lands on the script intact.
    const out = path.join(dir, 'stdin.json');
    assert.equal(await bidWith(`cat > '${out}'; echo 0.1`), '0.1');
    assert.deepEqual(JSON.parse(await readFile(out, 'utf8')), { order, standingAsks: standing });
  });

  test('"no bid" or empty output means no bid', async () => {
    for (const body of ['echo no bid', 'echo "No Bid"', 'echo nobid', 'echo no-bid', 'true', 'echo', 'echo "   "']) {
      assert.equal(await bidWith(body), null, body);
    }
  });

  test('failures and garbage mean no bid, never a throw', async () => {
    const cases: [string, string][] = [
      ['non-zero exit', 'echo 0.42; exit 1'],
      ['garbage', 'echo cheap'],
      ['two numbers', 'echo 0.1 0.2'],
      ['negative', 'echo -0.5'],
      ['zero', 'echo 0'],
      ['too precise', 'echo 0.1234567'],
      ['exponent', 'echo 1e-1'],
      ['broken JSON', `echo '{"pricePerHour":'`],
      ['JSON without a price', `echo '{"price":"0.5"}'`],
      ['JSON number (not a decimal string)', `echo '{"pricePerHour":0.5}'`],
      ['JSON garbage price', `echo '{"pricePerHour":"lots"}'`],
      ['above maxPerHour', 'echo 1.500001'],
      ['JSON above maxPerHour', `echo '{"pricePerHour":"2"}'`],
      ['killed by a signal', 'echo 0.5; kill -9 $$'],
    ];
    for (const [name, body] of cases) assert.equal(await bidWith(body), null, name);
  });

  test('more than 4 KiB of output means no bid', async () => {
    const t0 = Date.now();
    // 10 KB, then a valid price at the end.
    assert.equal(await bidWith(`head -c 10240 /dev/zero | tr '\\0' ' '; echo 0.5`), null);
    // Keeps printing (then lingers): cut off at the limit, not at the timeout or the exit.
    assert.equal(await bidWith('yes 0.5 | head -c 1000000; sleep 8', { timeoutMs: 10_000 }), null);
    assert.ok(Date.now() - t0 < 5000, `took ${Date.now() - t0} ms`);
    // Just under the limit is still read.
    assert.equal(await bidWith(`head -c 4000 /dev/zero | tr '\\0' ' '; echo 0.5`), '0.5');
  });

  test('a script past its time limit means no bid, quickly, and leaves no process behind', async () => {
    const pids = path.join(dir, 'pids');
    // The script and a background child it starts both record their pids, then hang.
    const body = `echo $$ > '${pids}'; sleep 10 & echo $! >> '${pids}'; sleep 10`;
    const t0 = Date.now();
    assert.equal(await bidWith(body, { timeoutMs: 300 }), null);
    const elapsed = Date.now() - t0;
    assert.ok(elapsed < 2000, `took ${elapsed} ms`);
    assert.ok(elapsed >= 250, `returned after ${elapsed} ms, before the time limit`);
    const list = (await readFile(pids, 'utf8')).trim().split('\n').map(Number);
    assert.equal(list.length, 2);
    for (const pid of list) assert.ok(Number.isInteger(pid) && pid > 1);
    // SIGKILL is asynchronous: give the kernel a moment, then every recorded process is gone (or a zombie).
    const alive = async (pid: number) => {
      try {
        const stat = await readFile(`/proc/${pid}/stat`, 'utf8');
        return stat.slice(stat.lastIndexOf(')') + 2, stat.lastIndexOf(')') + 3) !== 'Z';
      } catch {
        return false;
      }
    };
    const deadline = Date.now() + 1000;
    let left = list;
    while (Date.now() < deadline) {
      left = [];
      for (const pid of list) if (await alive(pid)) left.push(pid);
      if (left.length === 0) break;
      await new Promise((r) => setTimeout(r, 20));
    }
    assert.deepEqual(left, [], `still running: ${left.join(', ')}`);
  });

  test('a missing or non-executable script means no bid', async () => {
    const missing = scriptPricing({ script: path.join(dir, 'does-not-exist.sh') });
    assert.equal(await missing.bid?.(order, standing), null);
    const p = path.join(dir, 'not-exec.sh');
    await writeFile(p, '#!/bin/sh\necho 0.5\n');
    await chmod(p, 0o644);
    // root may execute files without an x bit only if some x bit is set: 0644 never runs.
    assert.equal(await scriptPricing({ script: p }).bid?.(order, standing), null);
  });
});
