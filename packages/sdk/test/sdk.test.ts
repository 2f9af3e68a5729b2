/**
 * The SDK against a real coordinator (testkit): submitFile, wait, log lines, results, typed
 * errors, fromEnv. Plus its two parsers, fed the byte streams a coordinator sends: NDJSON
 * with keepalive lines, and log chunks that split lines anywhere.
 */
import assert from 'node:assert/strict';
import { mkdir, writeFile } from 'node:fs/promises';
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { TERMINAL_JOB_STATES as PROTOCOL_TERMINAL, type LogEntry } from '@gridwork/protocol';
import { generateIdentity, startTestNetwork, type TestNetwork, tempDir } from '@gridwork/testkit';
import { freePort } from '../../testkit/src/processes.ts';
import {
  CoordinatorUnreachableError,
  GridworkClient,
  GridworkError,
  LogLineSplitter,
  LostContactError,
  loadOrCreateIdentity,
  NotACoordinatorError,
  resolveConfig,
  TERMINAL_JOB_STATES,
} from '../src/index.ts';
import { readNdjsonLines } from '../src/http.ts';

function streamOf(chunks: string[]): Response {
  const enc = new TextEncoder();
  return new Response(
    new ReadableStream<Uint8Array>({
      start(c) {
        for (const chunk of chunks) c.enqueue(enc.encode(chunk));
        c.close();
      },
    }),
  );
}

test("the SDK's copy of the terminal job states is the protocol's", () => {
  assert.deepEqual([...TERMINAL_JOB_STATES].sort(), [...PROTOCOL_TERMINAL].sort());
});

describe('NDJSON reader', () => {
  test('skips keepalive (empty) lines and joins lines split across chunks', async () => {
    const res = streamOf(['{"a":1}\n', '\n', '\n{"a"', ':2}\n\n', '  \n{"a":3}']);
    const got: unknown[] = [];
    for await (const v of readNdjsonLines(res.body as unknown as AsyncIterable<Uint8Array>)) got.push(v);
    assert.deepEqual(got, [{ a: 1 }, { a: 2 }, { a: 3 }]);
  });
});

describe('log lines', () => {
  const entry = (seq: number, data: string, taskIndex = 0, stream: LogEntry['stream'] = 'stdout'): LogEntry => ({
    taskIndex,
    leaseId: 'l',
    seq,
    stream,
    data,
    ts: '2026-01-01T00:00:00.000Z',
  });
  test('whole lines per task and stream, whatever the chunking; a last partial line is flushed', () => {
    const s = new LogLineSplitter();
    const lines = [
      ...s.push(entry(1, 'hel')),
      ...s.push(entry(2, 'oops\n', 0, 'stderr')),
      ...s.push(entry(3, 'lo\nwor')),
      ...s.push(entry(4, 'other task\n', 1)),
      ...s.push(entry(5, 'ld\r\nend')),
      ...s.flush(),
    ].map((l) => `${l.taskIndex}/${l.stream}/${l.seq}: ${l.line}`);
    assert.deepEqual(lines, ['0/stderr/2: oops', '0/stdout/3: hello', '1/stdout/4: other task', '0/stdout/5: world', '0/stdout/5: end']);
  });
});

describe('configuration (fromEnv, profiles)', () => {
  test('flags beat environment variables, which beat the profile, which beats the defaults', async () => {
    const home = await tempDir('gridwork-sdk-config-');
    try {
      await writeFile(
        join(home.path, 'config.json'),
        JSON.stringify({ defaultProfile: 'lab', profiles: { lab: { coordinator: 'http://lab:7070', keyFile: 'lab-key.json' }, other: { coordinator: 'http://other:1' } } }),
      );
      const env = { GRIDWORK_HOME: home.path };
      assert.deepEqual(await resolveConfig({ env }), {
        coordinator: 'http://lab:7070',
        keyFile: join(home.path, 'lab-key.json'),
        home: home.path,
        configFile: join(home.path, 'config.json'),
        profile: 'lab',
      });
      assert.equal((await resolveConfig({ env: { ...env, GRIDWORK_PROFILE: 'other' } })).coordinator, 'http://other:1');
      assert.equal((await resolveConfig({ env: { ...env, GRIDWORK_COORDINATOR: 'http://env:2' } })).coordinator, 'http://env:2');
      assert.equal((await resolveConfig({ env: { ...env, GRIDWORK_COORDINATOR: 'http://env:2' }, coordinator: 'http://flag:3' })).coordinator, 'http://flag:3');
      await assert.rejects(resolveConfig({ env, profile: 'nope' }), /no profile "nope"/);
      const client = await GridworkClient.fromEnv({ env: { ...env, GRIDWORK_COORDINATOR: 'http://127.0.0.1:7070/' } });
      assert.equal(client.url, 'http://127.0.0.1:7070');
      assert.equal(client.accountId, (await loadOrCreateIdentity(join(home.path, 'lab-key.json'))).publicKey, 'the key file is created and reused');
      await assert.rejects(GridworkClient.fromEnv({ env: { GRIDWORK_HOME: home.path, GRIDWORK_CONFIG: join(home.path, 'none.json'), GRIDWORK_COORDINATOR: 'ftp://x' } }), (err: unknown) => {
        assert.ok(err instanceof GridworkError);
        assert.equal(err.code, 'BAD_REQUEST');
        assert.match(err.message, /invalid coordinator URL "ftp:\/\/x"/);
        return true;
      });
    } finally {
      await home.remove();
    }
  });
});

describe('typed errors', () => {
  test('nothing listening → CoordinatorUnreachableError (refused); waiting there gives up with LostContactError', async () => {
    const url = `http://127.0.0.1:${await freePort()}`;
    const client = new GridworkClient({ url, identity: generateIdentity() });
    await assert.rejects(client.list(), (err: unknown) => {
      assert.ok(err instanceof CoordinatorUnreachableError);
      assert.equal(err.reason, 'refused');
      assert.equal(err.code, 'NETWORK_ERROR');
      return true;
    });
    const events: string[] = [];
    await assert.rejects(
      client.wait('job_aaaaaaaaaaaaaaaa', { giveUpAfterMs: 300, retryDelayMs: 20, onConnection: (e) => events.push(e.state) }),
      (err: unknown) => {
        assert.ok(err instanceof LostContactError);
        assert.equal(err.jobId, 'job_aaaaaaaaaaaaaaaa');
        assert.ok(err.cause instanceof CoordinatorUnreachableError);
        return true;
      },
    );
    assert.ok(events.length > 0 && events.every((e) => e === 'lost'));
  });

  test('a web server that is not a coordinator → NotACoordinatorError', async () => {
    const server: Server = createServer((_req, res) => res.writeHead(200, { 'content-type': 'text/html' }).end('<html></html>'));
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
    try {
      const client = new GridworkClient({ url: `http://127.0.0.1:${(server.address() as AddressInfo).port}`, identity: generateIdentity() });
      await assert.rejects(client.balance(), NotACoordinatorError);
    } finally {
      server.close();
    }
  });
});

describe('against a coordinator', () => {
  let net: TestNetwork;
  let dir: { path: string; remove: () => Promise<void> };
  before(async () => {
    net = await startTestNetwork({ providers: 1 });
    dir = await tempDir('gridwork-sdk-');
  });
  after(async () => {
    await net?.close();
    await dir?.remove();
  });

  test('submitFile, wait, logLines, results; API errors keep their code', async () => {
    await mkdir(join(dir.path, 'work'), { recursive: true });
    await writeFile(
      join(dir.path, 'work', 'main.mjs'),
      "import { writeFileSync } from 'node:fs';\nprocess.stdout.write('one\\ntw');\nprocess.stdout.write('o\\nthree');\nconsole.error('warn');\nwriteFileSync(process.env.GRIDWORK_OUTPUTS + '/r.txt', 'ok');\n",
    );
    await writeFile(
      join(dir.path, 'job.yaml'),
      'version: 1\nname: sdk-test\nkind: batch\nruntime: { kind: bundle, path: ./work, command: [node, main.mjs] }\nresources: { cpu: 1, memoryGiB: 1 }\nprice: { maxPerHour: 1, budget: 0.5 }\n',
    );
    const client = await net.fundedClient('10');
    const key = `sdk-test-${Date.now()}`;
    const submitted = await client.submitFile(join(dir.path, 'job.yaml'), { idempotencyKey: key });
    const again = await client.submitFile(join(dir.path, 'job.yaml'), { idempotencyKey: key });
    assert.equal(again.id, submitted.id, 'a retried submit with the same key is the same job');
    assert.equal((await client.list()).length, 1);
    const seen: string[] = [];
    const final = await client.wait(submitted.id, { onUpdate: (j) => seen.push(j.state) });
    assert.equal(final.state, 'succeeded');
    assert.equal(seen.at(-1), 'succeeded');
    const lines: string[] = [];
    for await (const l of client.logLines(submitted.id)) if (l.stream !== 'system') lines.push(`${l.stream}: ${l.line}`);
    assert.deepEqual(
      lines.filter((l) => l.startsWith('stdout')),
      ['stdout: one', 'stdout: two', 'stdout: three'],
    );
    assert.ok(lines.includes('stderr: warn'));
    const files = await client.results(submitted.id, join(dir.path, 'out'));
    assert.deepEqual(files, [join(dir.path, 'out', 'task-0', 'r.txt')]);
    await assert.rejects(client.get('job_aaaaaaaaaaaaaaaa'), (err: unknown) => err instanceof GridworkError && err.code === 'JOB_NOT_FOUND');
  });
});
