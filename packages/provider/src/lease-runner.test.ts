import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import type { LeaseAssignment } from '@gridwork/protocol';
import { wellFormedAssignment } from './lease-runner.ts';

const good: LeaseAssignment = {
  leaseId: 'lease_abcdefghijklmnop',
  taskId: 'task_abcdefghijklmnop',
  jobId: 'job_abcdefghijklmnop',
  taskIndex: 0,
  taskCount: 1,
  runtime: { kind: 'bundle', command: ['true'], env: {}, network: false },
  bundle: null,
  inputs: [],
  resources: { cpu: 1, memoryGiB: 1 },
  gpus: [],
  timeoutSeconds: 60,
};

describe('wellFormedAssignment', () => {
  test('an assignment as the coordinator makes it is run', () => {
    assert.equal(wellFormedAssignment(good), true);
  });

  test('ids that would name another directory or URL, and assignments of the wrong shape, are refused', () => {
    for (const leaseId of ['../../..', 'lease_abcdefghijklmnop/..', '/etc', '', 'lease_ABCDEFGHIJKLMNOP']) {
      assert.equal(wellFormedAssignment({ ...good, leaseId }), false, leaseId);
    }
    for (const jobId of ['../x', 'job_abcdefghijklmnop?x=1', 'job_abcdefghijklmnop/blobs']) {
      assert.equal(wellFormedAssignment({ ...good, jobId }), false, jobId);
    }
    assert.equal(wellFormedAssignment({ ...good, gpus: [-1] }), false);
    assert.equal(wellFormedAssignment({ ...good, taskIndex: '0' }), false);
    assert.equal(wellFormedAssignment(null), false);
    assert.equal(wellFormedAssignment('lease'), false);
  });
});
