import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { ID_PATTERN, type IdPrefix, newId } from './ids.ts';

describe('newId', () => {
  it('is the prefix, "_" and 16 lowercase base32 characters (80 random bits)', () => {
    for (const prefix of ['job', 'task', 'lease', 'req'] as IdPrefix[]) {
      const id = newId(prefix);
      assert.match(id, new RegExp(`^${prefix}_[a-z2-7]{16}$`));
    }
  });

  it('matches ID_PATTERN for the prefixes the API routes carry', () => {
    const pattern = new RegExp(ID_PATTERN);
    for (const prefix of ['job', 'task', 'lease'] as IdPrefix[]) assert.match(newId(prefix), pattern);
    assert.doesNotMatch('job_ABCDEFGHIJKLMNOP', pattern);
    assert.doesNotMatch('job_abcdefghijklmno', pattern);
    assert.doesNotMatch('foo_abcdefghijklmnop', pattern);
  });

  it('gives 10,000 distinct ids', () => {
    const ids = new Set<string>();
    for (let i = 0; i < 10_000; i++) ids.add(newId('job'));
    assert.equal(ids.size, 10_000);
  });

  it('uses the whole alphabet in every position (no stuck bits)', () => {
    const seen = Array.from({ length: 16 }, () => new Set<string>());
    for (let i = 0; i < 10_000; i++) {
      const body = newId('task').slice('task_'.length);
      for (let p = 0; p < 16; p++) seen[p]?.add(body[p] as string);
    }
    // With 10k samples per position, missing any of 32 symbols has probability ~32·(31/32)^10000 ≈ 0.
    for (const [p, s] of seen.entries()) assert.equal(s.size, 32, `position ${p} used only ${s.size} symbols`);
  });
});
