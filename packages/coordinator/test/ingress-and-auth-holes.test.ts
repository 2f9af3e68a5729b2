/**
 * Holes an attacker found (issue 14), replayed through the real interfaces: a real coordinator
 * on a loopback port, raw providers speaking the wire protocol, raw HTTP requests.
 *
 * 1. SSRF through the service ingress: a provider on the coordinator's host advertised an
 *    internal admin port as its ingress and climbed out of the lease prefix with `..`.
 * 6. Bodies were parsed before the signature was checked.
 * 7. Another account's job answered 403 where a missing one answered 404.
 */
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { createServer, type IncomingHttpHeaders, request, type Server } from 'node:http';
import net from 'node:net';
import type { AddressInfo } from 'node:net';
import { after, before, describe, test } from 'node:test';
import { internalsOf } from '@gridwork/coordinator/internal';
import { ingressProofMessage, type JobSpec, newId } from '@gridwork/protocol';
import { generateIdentity, type Identity, signBytes, signRequest } from '@gridwork/protocol/node';
import type { GridworkClient } from '@gridwork/sdk';
import { startTestNetwork, type TestNetwork, until } from '@gridwork/testkit';
import { RawProvider } from '@gridwork/testkit/raw-provider';
import { forwardablePath } from '../src/api/service-routes.ts';
import { nestsDeeperThan } from '../src/api/http-app.ts';

interface Seen {
  url: string;
  headers: IncomingHttpHeaders;
}

/** An HTTP server on loopback that records what reaches it; `answer` decides the reply. */
async function recordingServer(answer: (url: string, res: import('node:http').ServerResponse) => void): Promise<{ server: Server; url: string; seen: Seen[] }> {
  const seen: Seen[] = [];
  const server = createServer((req, res) => {
    seen.push({ url: req.url ?? '', headers: req.headers });
    req.resume();
    answer(req.url ?? '', res);
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  return { server, url: `http://127.0.0.1:${(server.address() as AddressInfo).port}`, seen };
}

/** A GET with the path sent exactly as written (no `..` resolution: curl --path-as-is). */
function rawGet(base: string, path: string): Promise<{ status: number; text: string }> {
  const { hostname, port } = new URL(base);
  return new Promise((resolve, reject) => {
    const req = request({ host: hostname, port, path, method: 'GET' }, (res) => {
      let text = '';
      res.setEncoding('utf8');
      res.on('data', (c: string) => {
        text += c;
      });
      res.on('end', () => resolve({ status: res.statusCode ?? 0, text }));
    });
    req.on('error', reject);
    req.end();
  });
}

const TRAVERSALS = ['../../admin/secret', '..%2F..%2Fadmin/secret', '%2e%2e/%2e%2e/admin/secret', '.%2E/.%2e/admin/secret', 'x/..%5C..%5Cadmin', '%2E'];

function publicService(region: string): JobSpec {
  return {
    version: 1,
    name: `svc-${region}`,
    kind: 'service',
    runtime: { kind: 'bundle', path: '.', command: ['true'] },
    resources: { cpu: 1, memoryGiB: 1 },
    price: { maxPerHour: '36', budget: '20' },
    placement: { regions: [region] },
    service: { port: 8080, public: true },
  };
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

describe('issue 14: ingress SSRF, authentication before parsing, job ids', { timeout: 180_000 }, () => {
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

  /** A raw provider in its own region whose public service replica is running and reported healthy. */
  async function healthyReplica(region: string, ingressUrl: string, identity: Identity = generateIdentity()) {
    const p = await RawProvider.connect(url, identity);
    closers.push(() => p.close());
    const welcome = await p.hello({ attributes: { region }, ingressUrl });
    assert.equal(welcome.type, 'welcome');
    const job = await client.submitPrepared({ spec: publicService(region), bundle: { manifest: bundle }, inputs: [] });
    const a = await p.assignment(`the ${region} replica`);
    assert.equal(a.lease.jobId, job.id);
    assert.equal(await p.report({ type: 'lease.started', leaseId: a.lease.leaseId }), undefined);
    assert.equal(await p.report({ type: 'lease.service', leaseId: a.lease.leaseId, health: 'healthy' }), undefined);
    return { p, job, leaseId: a.lease.leaseId };
  }

  const ingressOfProvider = async (id: string) =>
    (await internalsOf(network.coordinator).db.selectFrom('providers').select('ingress_url').where('id', '=', id).executeTakeFirstOrThrow()).ingress_url;

  test('a provider cannot point the ingress at an internal service of its host, nor climb out of the lease prefix', async () => {
    const admin = await recordingServer((u, res) => {
      if (u === '/admin/secret') res.end('ADMIN-SECRET');
      else res.writeHead(404).end();
    });
    closers.push(() => admin.server.close());
    const { p, job } = await healthyReplica('ssrf', admin.url);
    assert.equal(await ingressOfProvider(p.id), null, 'the admin port never proved itself as the agent');

    for (const path of ['admin/secret', ...TRAVERSALS]) {
      const r = await rawGet(url, `/services/${job.id}/${path}`);
      assert.doesNotMatch(r.text, /ADMIN-SECRET/, path);
      assert.ok(r.status === 400 || r.status === 503, `${path}: ${r.status} ${r.text}`);
    }
    // The only thing the admin port ever saw is the proof request, with no token and nothing forwarded.
    assert.ok(admin.seen.length >= 1);
    for (const s of admin.seen) {
      assert.match(s.url, /^\/\.gridwork\/ingress-proof\?challenge=[A-Za-z0-9_-]+$/);
      assert.equal(s.headers['x-gridwork-service-token'], undefined);
    }
  });

  test("an ingress that signs with another key is not the provider's", async () => {
    const impostor = generateIdentity();
    let ingressUrl = '';
    const fake = await recordingServer((u, res) => {
      const challenge = /challenge=([^&]+)/.exec(u)?.[1] ?? '';
      res.setHeader('content-type', 'application/json');
      res.end(JSON.stringify({ signature: signBytes(impostor, ingressProofMessage(ingressUrl, challenge)) }));
    });
    ingressUrl = fake.url;
    closers.push(() => fake.server.close());
    const p = await RawProvider.connect(url);
    closers.push(() => p.close());
    assert.equal((await p.hello({ attributes: { region: 'impostor' }, ingressUrl })).type, 'welcome');
    assert.equal(await ingressOfProvider(p.id), null);
    assert.equal(fake.seen.length, 1, 'asked once, at hello');
  });

  test("a proven ingress gets requests only below the lease's prefix; dot segments and encoded separators are refused", async () => {
    const identity = generateIdentity();
    let ingressUrl = '';
    const ingress = await recordingServer((u, res) => {
      const proof = /^\/\.gridwork\/ingress-proof\?challenge=(.+)$/.exec(u);
      res.setHeader('content-type', 'application/json');
      if (proof) res.end(JSON.stringify({ signature: signBytes(identity, ingressProofMessage(ingressUrl, proof[1] as string)) }));
      else res.end(JSON.stringify({ path: u }));
    });
    ingressUrl = ingress.url;
    closers.push(() => ingress.server.close());
    const { p, job, leaseId } = await healthyReplica('proven', ingressUrl, identity);
    assert.equal(await ingressOfProvider(p.id), ingressUrl);

    const ok = await rawGet(url, `/services/${job.id}/v1/echo?x=1`);
    assert.equal(ok.status, 200, ok.text);
    assert.deepEqual(JSON.parse(ok.text), { path: `/${leaseId}/v1/echo?x=1` });
    const before = ingress.seen.length;
    for (const path of TRAVERSALS) {
      const r = await rawGet(url, `/services/${job.id}/${path}`);
      assert.equal(r.status, 400, `${path}: ${r.text}`);
      assert.equal((JSON.parse(r.text) as { error: { code: string } }).error.code, 'BAD_REQUEST');
    }
    assert.equal(ingress.seen.length, before, 'nothing was forwarded');
    for (const s of ingress.seen.slice(1)) assert.ok(s.url.startsWith(`/${leaseId}/`), s.url);
  });

  test('forwardablePath keeps percent-encoding and refuses every spelling of a dot segment', () => {
    const id = newId('job');
    assert.equal(forwardablePath(`/services/${id}/a/b%20c?q=1`, id), 'a/b%20c');
    assert.equal(forwardablePath(`/services/${id}`, id), '');
    assert.equal(forwardablePath(`/services/${id}/`, id), '');
    for (const bad of ['..', '.', '%2e', '%2E%2e', 'a/../b', 'a%2Fb', 'a%5Cb', 'a%00', '%zz']) {
      assert.throws(() => forwardablePath(`/services/${id}/${bad}`, id), /service path/, bad);
    }
  });

  test('an unsigned request is refused before its body is read', async () => {
    // Headers promise 1 MB that never comes: only a server that answers before reading can reply.
    const { hostname, port } = new URL(url);
    const socket = net.connect(Number(port), hostname);
    closers.push(() => socket.destroy());
    const reply = new Promise<string>((resolve) => {
      let text = '';
      socket.on('data', (d) => {
        text += d.toString();
        if (text.includes('\r\n\r\n') && text.includes('}')) resolve(text);
      });
    });
    socket.write(`POST /v1/jobs HTTP/1.1\r\nhost: ${hostname}\r\ncontent-type: application/json\r\ncontent-length: 1000000\r\n\r\n{"spec":`);
    const text = await reply;
    assert.match(text, /^HTTP\/1\.1 401/);
    assert.match(text, /UNAUTHENTICATED/);
  });

  test('a body is authenticated before it is parsed; deep nesting and oversized small-route bodies are refused', async () => {
    const post = async (path: string, body: string, identity: Identity | null, tamper = false) => {
      const headers: Record<string, string> = { 'content-type': 'application/json', ...(identity ? signRequest(identity, 'POST', path, tamper ? `${body} ` : body) : {}) };
      const res = await fetch(new URL(path, url), { method: 'POST', headers, body });
      return { status: res.status, code: ((await res.json()) as { error?: { code: string; message: string } }).error };
    };
    const me = generateIdentity();
    // Malformed JSON: a stranger learns only that it must sign; a wrong signature is refused unparsed.
    assert.equal((await post('/v1/jobs', '{"not json', null)).code?.code, 'UNAUTHENTICATED');
    assert.equal((await post('/v1/jobs', '{"not json', me, true)).code?.code, 'BAD_SIGNATURE');
    assert.equal((await post('/v1/jobs', '{"not json', me)).code?.code, 'BAD_REQUEST');
    const deep = `{"spec":${'['.repeat(5000)}${']'.repeat(5000)}}`;
    assert.equal((await post('/v1/jobs', deep, null)).code?.code, 'UNAUTHENTICATED');
    const nested = await post('/v1/jobs', deep, me);
    assert.equal(nested.status, 400);
    assert.match(nested.code?.message ?? '', /nests deeper/);
    // Routes with small bodies take small bodies; job submission still takes large ones.
    const padded = JSON.stringify({ amount: '1', pad: 'x'.repeat(64 * 1024) });
    assert.deepEqual([(await post('/v1/account/deposit', padded, me)).status], [413]);
    const bigSpec = JSON.stringify({ spec: { name: 'x'.repeat(64 * 1024) }, inputs: [] });
    const submitted = await post('/v1/jobs', bigSpec, me);
    assert.equal(submitted.status, 400, 'read and validated, not refused for its size');
    assert.equal(submitted.code?.code, 'INVALID_SPEC');
  });

  test('nestsDeeperThan counts brackets outside strings only', () => {
    assert.equal(nestsDeeperThan(Buffer.from('[[[]]]'), 3), false);
    assert.equal(nestsDeeperThan(Buffer.from('[[[[]]]]'), 3), true);
    assert.equal(nestsDeeperThan(Buffer.from('{"a":"[[[[[[\\"[[["}'), 1), false);
    assert.equal(nestsDeeperThan(Buffer.from('[{"a":[{}]}]'), 4), false);
  });

  test("another account's job and a job that does not exist get the same answer", async () => {
    const job = await client.submitPrepared({ spec: { ...publicService('nowhere'), kind: 'batch', service: undefined } as unknown as JobSpec, bundle: { manifest: bundle }, inputs: [] });
    const mallory = generateIdentity();
    const ghost = newId('job');
    const get = async (path: string, method = 'GET') => {
      const res = await fetch(new URL(path, url), { method, headers: signRequest(mallory, method, path) });
      return { status: res.status, body: (await res.json()) as { error: { code: string; message: string } } };
    };
    for (const [method, suffix] of [
      ['GET', ''],
      ['GET', '/events'],
      ['GET', '/logs'],
      ['POST', '/cancel'],
      ['GET', `/blobs/${bundle}`],
    ] as const) {
      const theirs = await get(`/v1/jobs/${job.id}${suffix}`, method);
      const none = await get(`/v1/jobs/${ghost}${suffix}`, method);
      assert.equal(theirs.status, 404, `${method} ${suffix}`);
      assert.deepEqual({ ...theirs.body.error, message: theirs.body.error.message.replace(job.id, 'ID') }, { ...none.body.error, message: none.body.error.message.replace(ghost, 'ID') });
    }
    await until(() => client.get(job.id), (j) => j.state !== 'cancelled', { what: 'the job untouched' });
  });
});
