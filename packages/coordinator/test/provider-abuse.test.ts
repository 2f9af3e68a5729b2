/**
 * Attacks the review of the issue-14 fixes found still getting through, replayed through the real
 * interfaces (a real coordinator on loopback, raw providers speaking the wire protocol). Each test
 * asserts the safe behaviour; A and B failed before their fixes.
 *
 *   A. Blind SSRF at hello: the ingress proof request is built by string concatenation from the
 *      provider's advertised ingress URL, whose path prefix is the provider's. A
 *      provider that appears on the coordinator's host (co-located, or every provider behind a
 *      local reverse proxy without trustProxy) makes the coordinator GET a path it chooses (then `/.gridwork/ingress-proof`) on any port of
 *      127.0.0.1 — e.g. `http://127.0.0.1:<admin>\\admin\\drop` (a backslash passes the hello schema
 *      `^https?://[^/?#]+$`, and WHATWG parsing reads it as `/`) fetches `/admin/drop/.gridwork/…`.
 *   B. No log cap on the coordinator's side: the 8 MiB per-lease cap lives only in the honest
 *      agent. A malicious provider holding any lease writes as much as it likes into
 *      `task_logs` (and into the requester's log stream), 1 MiB per message, without end.
 */
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { after, before, describe, test } from 'node:test';
import { internalsOf } from '@gridwork/coordinator/internal';
import { DEFAULT_LEASE_LOG_BYTES, type JobSpec, MAX_MESSAGE_BYTES, MAX_STORED_LEASE_LOG_BYTES } from '@gridwork/protocol';
import type { GridworkClient } from '@gridwork/sdk';
import { startTestNetwork, type TestNetwork } from '@gridwork/testkit';
import { RawProvider } from '@gridwork/testkit/raw-provider';

/** An HTTP server on loopback that records the request targets that reach it. */
async function recordingServer(): Promise<{ server: Server; url: string; seen: string[] }> {
  const seen: string[] = [];
  const server = createServer((req, res) => {
    seen.push(req.url ?? '');
    req.resume();
    res.writeHead(404).end();
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  return { server, url: `http://127.0.0.1:${(server.address() as AddressInfo).port}`, seen };
}

async function tinyBundle(client: GridworkClient): Promise<string> {
  const file = Buffer.from('process.exit(0);\n');
  const fileDigest = createHash('sha256').update(file).digest('hex');
  await client.uploadBlob(file, fileDigest);
  const manifest = Buffer.from(JSON.stringify({ files: [{ path: 'main.mjs', digest: fileDigest, size: file.length, executable: false }] }));
  const digest = createHash('sha256').update(manifest).digest('hex');
  await client.uploadBlob(manifest, digest);
  return digest;
}

function batch(region: string): JobSpec {
  return {
    version: 1,
    name: `batch-${region}`,
    kind: 'batch',
    runtime: { kind: 'bundle', path: '.', command: ['true'] },
    resources: { cpu: 1, memoryGiB: 1 },
    price: { maxPerHour: '36', budget: '20' },
    placement: { regions: [region] },
    maxRetries: 0,
  };
}

describe('issue 14 review: holes left by the fixes', { timeout: 240_000 }, () => {
  let network: TestNetwork;
  let url: string;
  let client: GridworkClient;
  let bundle: string;
  const closers: (() => void)[] = [];

  before(async () => {
    network = await startTestNetwork();
    url = network.coordinator.url;
    client = await network.fundedClient('500');
    bundle = await tinyBundle(client);
  });
  after(async () => {
    for (const c of closers) c();
    await network?.close();
  });

  // Was: the admin server saw `/admin/drop-all-tables/.gridwork/ingress-proof?challenge=…`. Now the
  // hello schema admits an origin only, and ingressOf takes only a URL that is its own origin.
  test('A: an advertised ingress URL cannot steer the proof request to another path on the host (blind SSRF at hello)', async () => {
    const admin = await recordingServer();
    closers.push(() => admin.server.close());
    // The hello schema (`^https?://[^/?#]+$`) means "an origin", but a backslash is not in its
    // excluded set and WHATWG URL parsing (new URL, fetch) reads it as `/` in http(s) URLs: the
    // host check of ingressOf still sees 127.0.0.1, and the proof GET goes to a path the provider
    // chose. (Tab and newline, also allowed by the pattern, are silently removed by the parser.)
    const ingressUrl = `${admin.url}\\admin\\drop-all-tables`;
    const p = await RawProvider.connect(url);
    closers.push(() => p.close());
    const answer = await p.hello({ attributes: { region: 'ssrf-path' }, ingressUrl });
    assert.equal(answer.type, 'error', JSON.stringify(answer));
    assert.equal(answer.code, 'PROTOCOL_ERROR');
    assert.match(String(answer.message), /ingressUrl/);
    const escaped = admin.seen.filter((u) => !u.startsWith('/.gridwork/ingress-proof?'));
    assert.deepEqual(escaped, [], `the coordinator requested a provider-chosen path on a loopback port: ${JSON.stringify(admin.seen)}`);
  });

  // PASSES (attack held): streams that hang up at once give their place back.
  test('C: clients that hang up right after asking for /v1/network/events do not use up the stream places', async () => {
    const { hostname, port } = new URL(url);
    const { connect } = await import('node:net');
    for (let i = 0; i < 130; i++) {
      const s = connect(Number(port), hostname);
      s.on('error', () => {});
      s.write(`GET /v1/network/events HTTP/1.1\r\nhost: x\r\n\r\n`);
      if (i % 2 === 0) s.destroy();
      else setTimeout(() => s.destroy(), 5);
    }
    await new Promise((r) => setTimeout(r, 1500));
    const ac = new AbortController();
    const res = await fetch(new URL('/v1/network/events', url), { signal: ac.signal });
    assert.equal(res.status, 200, await (res.status === 200 ? Promise.resolve('') : res.text()));
    ac.abort();
  });

  // Was: the coordinator stored every byte a malicious provider sent.
  test("B: the coordinator caps a lease's stored log even when the provider ignores the cap", async () => {
    const p = await RawProvider.connect(url);
    closers.push(() => p.close());
    assert.equal((await p.hello({ attributes: { region: 'log-flood' } })).type, 'welcome');
    const job = await client.submitPrepared({ spec: batch('log-flood'), bundle: { manifest: bundle }, inputs: [] });
    const a = await p.assignment('the flooded lease');
    assert.equal(a.lease.jobId, job.id);
    assert.equal(await p.report({ type: 'lease.started', leaseId: a.lease.leaseId }), undefined);

    // Each message just under the protocol's 1 MiB limit: accepted, acked, stored.
    const chunk = 'x'.repeat(16_000);
    const perMessage = 60; // 960,000 bytes of data, ~964 KB of JSON
    const messages = Math.ceil((DEFAULT_LEASE_LOG_BYTES * 1.5) / (chunk.length * perMessage));
    for (let i = 0; i < messages; i++) {
      const chunks = Array.from({ length: perMessage }, () => ({ stream: 'stdout', data: chunk, ts: Date.now() }));
      assert.ok(Buffer.byteLength(JSON.stringify({ seq: 1, type: 'lease.log', leaseId: a.lease.leaseId, chunks })) < MAX_MESSAGE_BYTES);
      const err = await p.report({ type: 'lease.log', leaseId: a.lease.leaseId, chunks });
      assert.equal(err, undefined, `message ${i}: ${JSON.stringify(err)}`);
    }
    const { db } = internalsOf(network.coordinator);
    const rows = await db.selectFrom('task_logs').select(['stream', 'data']).where('lease_id', '=', a.lease.leaseId).execute();
    const stored = rows.filter((r) => r.stream !== 'system').reduce((n, r) => n + Buffer.byteLength(r.data), 0);
    const sent = messages * perMessage * chunk.length;
    assert.ok(sent > MAX_STORED_LEASE_LOG_BYTES);
    const marker = rows.filter((r) => /log truncated by the coordinator/.test(r.data));
    assert.equal(marker.length, 1, 'one marker line says where the log was cut');
    const markerBytes = Buffer.byteLength(marker[0]?.data ?? '');
    assert.ok(
      stored - markerBytes <= MAX_STORED_LEASE_LOG_BYTES && stored - markerBytes > DEFAULT_LEASE_LOG_BYTES,
      `the coordinator stored ${stored} bytes of task output for one lease (cap ${MAX_STORED_LEASE_LOG_BYTES})`,
    );
    await client.cancel(job.id).catch(() => {});
  });
});
