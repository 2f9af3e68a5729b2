/**
 * What the web console and Prometheus read from a real coordinator with providers: the console's
 * static files at / and /console/*, the public live network stream, the operator-only ledger
 * report, and /metrics checked with `promtool check metrics` after a job has run.
 */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { mkdir, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
import { internalsOf } from '@gridwork/coordinator/internal';
import { signRequest } from '@gridwork/protocol/node';
import { generateIdentity, startTestNetwork, type TestNetwork, until } from '@gridwork/testkit';

const operator = generateIdentity();
let net: TestNetwork;
before(async () => {
  net = await startTestNetwork({ providers: 2, coordinator: { operators: [operator.publicKey] } });
});
after(async () => {
  await net?.close();
});

async function runJob(): Promise<string> {
  const work = join(net.dir, 'work');
  await mkdir(work, { recursive: true });
  await writeFile(
    join(work, 'main.mjs'),
    "import { writeFileSync } from 'node:fs';\nconsole.log('hello');\nwriteFileSync(process.env.GRIDWORK_OUTPUTS + '/r.txt', 'ok');\n",
  );
  const client = await net.fundedClient('10');
  const job = await client.submit(
    {
      version: 1,
      name: 'observe',
      kind: 'batch',
      runtime: { kind: 'bundle', path: './work', command: ['node', 'main.mjs'] },
      resources: { cpu: 1, memoryGiB: 1 },
      price: { maxPerHour: '5', budget: '1' },
    } as never,
    { baseDir: net.dir },
  );
  const done = await client.wait(job.id);
  assert.equal(done.state, 'succeeded');
  return job.id;
}

test('the console is served at / and its hashed assets are immutable', async () => {
  const page = await fetch(`${net.coordinator.url}/`);
  assert.equal(page.status, 200);
  assert.match(page.headers.get('content-type') ?? '', /text\/html/);
  const html = await page.text();
  const asset = html.match(/\/console\/assets\/[^"]+\.js/)?.[0];
  assert.ok(asset, 'index.html names its script');
  const js = await fetch(`${net.coordinator.url}${asset}`);
  assert.equal(js.status, 200);
  assert.match(js.headers.get('cache-control') ?? '', /immutable/);
  assert.match(js.headers.get('content-type') ?? '', /javascript/);
  assert.equal((await fetch(`${net.coordinator.url}/console/assets/nope.js`)).status, 404);
  assert.equal((await fetch(`${net.coordinator.url}/console/..%2f..%2fpackage.json`)).status, 404);
});

test('the public network stream sends a snapshot now, then a delta with what changed', async () => {
  const ac = new AbortController();
  const res = await fetch(`${net.coordinator.url}/v1/network/events`, { signal: ac.signal });
  assert.equal(res.status, 200);
  const reader = res.body!.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = '';
  type Frame = { type: string; providers?: { id: string; name?: string; hardware?: unknown }[]; market?: unknown[]; history?: unknown[] };
  const next = async (): Promise<Frame> => {
    for (;;) {
      const nl = buffer.indexOf('\n');
      if (nl >= 0) {
        const line = buffer.slice(0, nl).trim();
        buffer = buffer.slice(nl + 1);
        if (line) return JSON.parse(line);
        continue;
      }
      const { value, done } = await reader.read();
      assert.ok(!done, 'stream ended early');
      buffer += value;
    }
  };
  const first = await next();
  assert.equal(first.type, 'network');
  assert.equal(first.providers?.length, 2);
  assert.ok(first.market?.length && first.history?.length);
  const known = new Set(first.providers?.map((p) => p.id));
  await net.addProvider();
  // Deltas from now on: a new provider comes whole, the others only with what changed of them.
  let added: { name?: string; hardware?: unknown } | undefined;
  while (!added) {
    const delta = await next();
    assert.equal(delta.type, 'network.delta');
    added = delta.providers?.find((p) => !known.has(p.id));
    for (const p of delta.providers ?? []) if (known.has(p.id)) assert.equal(p.hardware, undefined, 'an unchanged record is not sent again');
  }
  assert.equal(added.name, 'provider-2');
  assert.ok(added.hardware, 'a new provider comes with its whole record');
  ac.abort();
});

test('the operator report answers operators only, with the ledger check passing', async () => {
  await runJob();
  const path = '/v1/operator/ledger';
  const res = await fetch(`${net.coordinator.url}${path}`, { headers: signRequest(operator, 'GET', path) });
  assert.equal(res.status, 200);
  const report = (await res.json()) as { totals: Record<string, string>; fees: string; ledger: { ok: boolean; total: string } };
  assert.equal(report.ledger.ok, true);
  assert.equal(report.ledger.total, '0');
  assert.match(report.fees, /^\d+(\.\d+)?$/);
  assert.ok(report.totals.available && report.totals.world);
  // A balance that no longer matches its postings turns the check red, naming the account.
  const { db } = internalsOf(net.coordinator);
  const row = await db.selectFrom('ledger_balances').select(['account', 'balance']).where('account', 'like', 'acct:%:available').executeTakeFirstOrThrow();
  await db
    .updateTable('ledger_balances')
    .set({ balance: row.balance + 1n })
    .where('account', '=', row.account)
    .execute();
  try {
    const bad = (await (await fetch(`${net.coordinator.url}${path}`, { headers: signRequest(operator, 'GET', path) })).json()) as {
      ledger: { ok: boolean; mismatched: string[] };
    };
    assert.equal(bad.ledger.ok, false);
    assert.deepEqual(bad.ledger.mismatched, [row.account]);
  } finally {
    await db.updateTable('ledger_balances').set({ balance: row.balance }).where('account', '=', row.account).execute();
  }
  const someone = generateIdentity();
  const refused = await fetch(`${net.coordinator.url}${path}`, { headers: signRequest(someone, 'GET', path) });
  assert.equal(refused.status, 403);
  assert.equal(((await refused.json()) as { error: { code: string } }).error.code, 'FORBIDDEN');
});

test('/metrics passes promtool check metrics and counts placements, outcomes and requests', async (t) => {
  const promtool = spawnSync('promtool', ['--version']);
  if (promtool.error) return t.skip('promtool is not installed (Debian package prometheus; .ci/run installs it)');
  await until(
    () => fetch(`${net.coordinator.url}/metrics`).then((r) => r.text()),
    (text) => /gridwork_lease_outcomes_total\{outcome="completed"\} [1-9]/.test(text),
    { what: 'a completed lease in the metrics' },
  );
  const res = await fetch(`${net.coordinator.url}/metrics`);
  assert.equal(res.status, 200);
  assert.match(res.headers.get('content-type') ?? '', /text\/plain/);
  const text = await res.text();
  for (const name of [
    'gridwork_placements_total',
    'gridwork_queue_depth',
    'gridwork_providers{state="online"}',
    'gridwork_provider_heartbeat_age_seconds',
    'gridwork_http_request_duration_seconds_bucket',
  ]) {
    assert.ok(text.includes(name), `${name} in /metrics`);
  }
  assert.match(text, /gridwork_placements_total [1-9]/);
  assert.match(text, /route="\/v1\/jobs\/:id\/events"/);
  const check = spawnSync('promtool', ['check', 'metrics'], { input: text, encoding: 'utf8' });
  assert.equal(check.status, 0, `promtool check metrics: ${check.stdout}${check.stderr}`);
});
