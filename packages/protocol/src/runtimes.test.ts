import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { Compile } from 'typebox/compile';
import { validateJobSpec } from './job-spec.ts';
import {
  formatRuntimeList,
  offeredRuntimes,
  offersWorkload,
  parseRuntimeList,
  RUNTIME_KINDS,
  RUNTIMES,
  RuntimeKindSchema,
  runtimeFor,
  runtimeNameFor,
  WORKLOAD_KINDS,
} from './runtimes.ts';
import { ProviderHello } from './wire.ts';

describe('runtime registry', () => {
  test('every runtime runs a known workload, and every workload has a runtime', () => {
    for (const k of RUNTIME_KINDS) assert.ok(WORKLOAD_KINDS.includes(RUNTIMES[k].runs), k);
    for (const w of WORKLOAD_KINDS)
      assert.ok(
        RUNTIME_KINDS.some((k) => RUNTIMES[k].runs === w),
        w,
      );
  });

  test('selection: the first offered runtime for the workload', () => {
    assert.equal(runtimeFor('bundle', ['container', 'sandbox']), 'sandbox');
    assert.equal(runtimeFor('container', ['container', 'sandbox']), 'container');
    assert.equal(runtimeFor('container', ['process', 'sandbox']), undefined);
    assert.equal(offersWorkload(['process'], 'bundle'), true);
    assert.equal(offersWorkload(['process'], 'container'), false);
    assert.equal(runtimeNameFor('container'), 'the container runtime');
    assert.equal(runtimeNameFor('bundle'), 'a bundle runtime (sandbox or process)');
  });

  test('the stored list round-trips; an old single name reads as a list of one; unknown names are dropped', () => {
    assert.equal(formatRuntimeList(['sandbox', 'container', 'sandbox']), 'sandbox,container');
    assert.deepEqual(parseRuntimeList('sandbox,container'), ['sandbox', 'container']);
    assert.deepEqual(parseRuntimeList('process'), ['process']);
    assert.deepEqual(parseRuntimeList('sandbox, wasm ,'), ['sandbox']);
    assert.deepEqual(offeredRuntimes({ runtime: 'sandbox' }), ['sandbox']);
    assert.deepEqual(offeredRuntimes({ runtime: 'sandbox', runtimes: ['container'] }), ['sandbox', 'container']);
  });

  test('the spec and the hello take their kinds from the registry', () => {
    const base = { version: 1, name: 'x', kind: 'batch', resources: { cpu: 1, memoryGiB: 1 } };
    assert.throws(
      () => validateJobSpec({ ...base, runtime: { kind: 'vm', command: ['x'] } }),
      (err: Error) => err.message.includes('must be one of bundle | container'),
    );
    assert.equal(validateJobSpec({ ...base, runtime: { kind: 'container', image: 'busybox', command: ['true'] } }).runtime.kind, 'container');
    const kind = Compile(RuntimeKindSchema);
    for (const k of RUNTIME_KINDS) assert.ok(kind.Check(k));
    assert.equal(kind.Check('bundle'), false);
    const hello = Compile(ProviderHello);
    const valid = {
      type: 'hello',
      protocol: 1,
      name: 'p',
      agentVersion: '0',
      runtime: 'sandbox',
      slots: 1,
      hardware: { cpu: { model: 'x', cores: 1 }, memoryGiB: 1, diskGiB: 1, gpus: [] },
      attributes: {},
      asks: { cpuCoreHour: '1', memoryGiBHour: '1', gpuHour: {} },
      asksSignature: 's',
      benchmarks: { cpuMopsPerCore: 1, gpu: {} },
      bids: false,
      instance: 'instance-1',
      lastApplied: 0,
      running: [],
    };
    assert.ok(hello.Check(valid));
    assert.ok(hello.Check({ ...valid, runtimes: ['sandbox', 'container'] }));
    assert.equal(hello.Check({ ...valid, runtimes: ['sandbox', 'sandbox'] }), false, 'each runtime once');
    assert.equal(hello.Check({ ...valid, runtimes: ['docker'] }), false);
    assert.equal(hello.Check({ ...valid, runtimes: [] }), false);
  });
});
