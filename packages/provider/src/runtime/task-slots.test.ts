import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { taskSlots } from './task-slots.ts';

describe('task slots', () => {
  test('with tasks held to their memory, the operator decides, else one per core', () => {
    assert.deepEqual(taskSlots({ requested: 6, cores: 2, memoryBounded: true }), { slots: 6 });
    assert.deepEqual(taskSlots({ requested: undefined, cores: 16, memoryBounded: true }), { slots: 16 });
  });

  test('without, one task at a time, whatever was asked, and the operator is told why', () => {
    for (const requested of [undefined, 2, 64]) {
      const { slots, warning } = taskSlots({ requested, cores: 16, memoryBounded: false });
      assert.equal(slots, 1);
      assert.match(warning ?? '', new RegExp(`instead of ${requested ?? 16}\\b.*no memory cgroup`));
    }
  });

  test('one slot asked for (or one core) needs no warning', () => {
    assert.deepEqual(taskSlots({ requested: 1, cores: 16, memoryBounded: false }), { slots: 1 });
    assert.deepEqual(taskSlots({ requested: undefined, cores: 1, memoryBounded: false }), { slots: 1 });
  });

  test('never fewer than one slot', () => {
    assert.equal(taskSlots({ requested: 0, cores: 0, memoryBounded: true }).slots, 1);
  });
});
