import assert from 'node:assert/strict';
import { test } from 'node:test';
import { formatLogLine } from './log-format.ts';

test('pino JSON lines become readable lines; anything else passes through', () => {
  const line = JSON.stringify({ level: 30, time: 0, pid: 1, hostname: 'h', msg: 'request completed', req: { method: 'GET', url: '/v1/jobs' }, res: { statusCode: 200 }, responseTime: 1.234, code: 'X Y' });
  assert.equal(formatLogLine(line), '00:00:00 INFO  request completed GET /v1/jobs → 200 1.2 ms code="X Y"\n');
  const err = JSON.stringify({ level: 50, time: 0, msg: 'failed', err: { message: 'boom' } });
  assert.match(formatLogLine(err), /^00:00:00 ERROR failed boom\n$/);
  assert.equal(formatLogLine('not json\n'), 'not json\n');
});
