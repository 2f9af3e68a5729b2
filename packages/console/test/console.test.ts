/**
 * The web console in a real browser (playwright-core driving Debian's chromium) against a real
 * coordinator with providers: the public view without a key, signing in with an imported key
 * file, submitting a job from a spec file with its bundle picked in the browser, watching it
 * finish live, reading its logs, downloading an output, seeing the balance change, the operator
 * view, refusals of someone else's job and of a forged signature, and the phone layout.
 * GRIDWORK_CONSOLE_SCREENSHOTS=docs writes the README's screenshots into docs/.
 */
import assert from 'node:assert/strict';
import { existsSync } from 'node:fs';
import { mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
import { fileURLToPath } from 'node:url';
import { signRequest } from '@gridwork/protocol/node';
import { generateIdentity, startTestNetwork, type TestNetwork } from '@gridwork/testkit';
import { type BrowserContext, chromium, type Page } from 'playwright-core';
import { CONSOLE_ROOT, sourceHash } from '../scripts/stamp.ts';

const CHROMIUM = process.env.GRIDWORK_CHROMIUM ?? '/usr/bin/chromium';
const REPO = fileURLToPath(new URL('../../..', import.meta.url));
const shotsDir = process.env.GRIDWORK_CONSOLE_SCREENSHOTS === 'docs' ? join(REPO, 'docs') : undefined;

const alice = generateIdentity();
const operator = generateIdentity();
let net: TestNetwork;
let context: BrowserContext;
let page: Page;
let work: string;

/** A page of the console's menu. */
const nav = (name: string) => page.getByRole('navigation').getByRole('link', { name, exact: true });

async function shot(name: string): Promise<void> {
  if (shotsDir) await page.screenshot({ path: join(shotsDir, `console-${name}.png`) });
}

before(async () => {
  if (!existsSync(CHROMIUM)) return;
  net = await startTestNetwork({ providers: 2, coordinator: { operators: [operator.publicKey] } });
  await net.fundedClient('10', alice);
  work = await mkdtemp(join(tmpdir(), 'gridwork-console-'));
  context = await chromium.launchPersistentContext(join(work, 'profile'), {
    executablePath: CHROMIUM,
    headless: true,
    acceptDownloads: true,
    viewport: { width: 1100, height: 760 },
    // The closed network here refuses background connections: keep chromium from trying.
    args: [
      '--headless',
      '--no-sandbox',
      '--disable-gpu',
      '--disable-quic',
      '--no-first-run',
      '--disable-background-networking',
      '--disable-component-update',
      '--disable-sync',
    ],
  });
  page = context.pages()[0] ?? (await context.newPage());
  page.setDefaultTimeout(30_000);
});

after(async () => {
  await context?.close();
  await net?.close();
  if (work) await rm(work, { recursive: true, force: true });
});

test('the committed build exists and was built from these sources', async () => {
  const html = await readFile(join(CONSOLE_ROOT, 'built', 'index.html'), 'utf8');
  for (const asset of html.match(/\/console\/assets\/[^"]+/g) ?? []) assert.ok(existsSync(join(CONSOLE_ROOT, 'built', asset.replace('/console/', ''))), asset);
  const stamped = (await readFile(join(CONSOLE_ROOT, 'built', 'source-hash.txt'), 'utf8')).trim();
  assert.equal(stamped, sourceHash(), 'packages/console/built is older than its sources: run npm run build -w packages/console and commit built/');
});

const skip = !existsSync(CHROMIUM) && `no chromium at ${CHROMIUM} (Debian package chromium; .ci/run installs it)`;

const cspViolations: string[] = [];

test('the public view shows the network and the market without a key', { skip }, async () => {
  // The page runs under a strict content security policy: any violation is a bug.
  page.on('console', (m) => {
    if (/Content Security Policy/i.test(m.text())) cspViolations.push(m.text());
  });
  const res = await page.goto(net.coordinator.url);
  assert.match((await res?.allHeaders())?.['content-security-policy'] ?? '', /script-src 'self'/);
  await page.getByTestId('provider-row').nth(1).waitFor();
  assert.equal(await page.getByTestId('provider-row').count(), 2);
  assert.equal(await page.getByTestId('count-online').textContent(), '2');
  assert.match((await page.getByRole('link', { name: 'Sign in with a key' }).textContent()) ?? '', /Sign in/);
  await shot('network');
  await nav('Market').click();
  await page.getByTestId('ask-row').first().waitFor();
  await page.locator('.plot canvas').first().waitFor();
  await shot('market');
  // Account pages ask for a key instead of failing.
  await nav('Jobs').click();
  await page.getByRole('heading', { name: 'Sign in first' }).waitFor();
});

test('signs in with the CLI key file, submits a spec, watches it finish live, reads logs, downloads an output, sees the balance change', { skip }, async () => {
  const keyFile = join(work, 'key.json');
  await writeFile(keyFile, JSON.stringify(alice));
  await nav('Key').click();
  await page.getByLabel(/import the CLI's key file/).setInputFiles(keyFile);
  assert.equal(await page.getByTestId('account-id').textContent(), alice.publicKey);
  assert.equal(await page.evaluate<string>("JSON.parse(localStorage.getItem('gridwork.identity') ?? '{}').publicKey"), alice.publicKey);

  await nav('Money').click();
  assert.equal(await page.getByTestId('balance-available').textContent(), '10');

  await mkdir(join(work, 'job', 'work'), { recursive: true });
  const spec = join(work, 'job', 'job.yaml');
  await writeFile(
    spec,
    'version: 1\nname: console-e2e\nkind: batch\nruntime: { kind: bundle, path: ./work, command: [node, main.mjs] }\nresources: { cpu: 1, memoryGiB: 1 }\nprice: { maxPerHour: 5.00, budget: 1 }\n',
  );
  const main = join(work, 'job', 'work', 'main.mjs');
  await writeFile(
    main,
    // Runs half a second: at the providers' asks (0.024/h for 1 core and 1 GiB) a task under 150 ms costs
    // less than a micro-credit, and the spent figure below would read 0 on a fast machine.
    "import { writeFileSync } from 'node:fs';\nconsole.log('hello from the console');\nawait new Promise((r) => setTimeout(r, 500));\nwriteFileSync(process.env.GRIDWORK_OUTPUTS + '/result.txt', 'forty-two');\n",
  );
  await nav('Jobs').click();
  await page.getByLabel('Spec file (JSON or YAML)').setInputFiles(spec);
  await page.getByText('console-e2e').first().waitFor();
  await page.getByLabel(/Bundle files/).setInputFiles(main);
  await page.getByRole('button', { name: 'Submit' }).click();
  await page.waitForURL(/#\/jobs\/job_[a-z2-7]{16}$/);
  const jobId = page.url().split('/').pop()!;

  // Live: the state badge follows the job's event stream to its end.
  await page.locator('[data-testid="job-state"]', { hasText: 'succeeded' }).waitFor();
  await page.locator('[data-testid="logs"]', { hasText: 'hello from the console' }).waitFor();
  assert.notEqual(await page.getByTestId('job-spent').textContent(), '0');
  const row = page.getByTestId('task-row').first();
  assert.match((await row.textContent()) ?? '', /provider-\d/);
  await shot('job');

  const [download] = await Promise.all([page.waitForEvent('download'), page.getByRole('button', { name: 'Download result.txt of task 0' }).click()]);
  assert.equal(download.suggestedFilename(), 'result.txt');
  assert.equal(await readFile((await download.path())!, 'utf8'), 'forty-two');

  await nav('Money').click();
  await page.getByTestId('history-row').first().waitFor();
  const available = Number(await page.getByTestId('balance-available').textContent());
  assert.ok(available < 10 && available > 8, `available after the job: ${available}`);
  await shot('money');

  // The job list shows it too.
  await nav('Jobs').click();
  await page.getByRole('link', { name: 'console-e2e' }).first().waitFor();

  // Someone else's key: the job is not theirs, and a request forged with alice's account id is refused.
  const mallory = generateIdentity();
  const path = `/v1/jobs/${jobId}`;
  const theirs = await fetch(`${net.coordinator.url}${path}`, { headers: signRequest(mallory, 'GET', path) });
  assert.ok([403, 404].includes(theirs.status), `someone else's job answered ${theirs.status}`);
  const forged = { ...signRequest(mallory, 'GET', path), 'x-gridwork-key': alice.publicKey };
  const refused = await fetch(`${net.coordinator.url}${path}`, { headers: forged });
  assert.equal(refused.status, 401);
  assert.equal(((await refused.json()) as { error: { code: string } }).error.code, 'BAD_SIGNATURE');
  (globalThis as { consoleJobId?: string }).consoleJobId = jobId;
});

test('explains a spec, tops up and cancels a running job from its page', { skip }, async () => {
  await nav('Market').click();
  await page
    .getByLabel('Job spec (JSON or YAML)')
    .fill(
      'version: 1\nname: too-cheap\nkind: batch\nruntime: { kind: bundle, path: ., command: [node, x.mjs] }\nresources: { cpu: 1, memoryGiB: 1 }\nprice: { maxPerHour: 0.000001, budget: 1 }\n',
    );
  await page.getByRole('button', { name: 'Explain' }).click();
  await page.locator('[data-testid="explain-result"]', { hasText: 'Would not match now' }).waitFor();

  const client = net.client(alice);
  await mkdir(join(work, 'slow'), { recursive: true });
  await writeFile(join(work, 'slow', 'main.mjs'), "console.log('waiting'); setTimeout(() => {}, 120000);\n");
  const job = await client.submit(
    {
      version: 1,
      name: 'slow',
      kind: 'batch',
      runtime: { kind: 'bundle', path: './slow', command: ['node', 'main.mjs'] },
      resources: { cpu: 1, memoryGiB: 1 },
      price: { maxPerHour: '5', budget: '1' },
    } as never,
    { baseDir: work },
  );
  await page.goto(`${net.coordinator.url}/#/jobs/${job.id}`);
  await page.locator('[data-testid="job-state"]', { hasText: 'running' }).waitFor();
  await page.locator('[data-testid="logs"]', { hasText: 'waiting' }).waitFor();
  await page.getByLabel('Top up (credits)').fill('0.5');
  await page.getByRole('button', { name: 'Top up' }).click();
  await page.getByRole('status').filter({ hasText: 'Added 0.5 credits' }).waitFor();
  await page.getByRole('listitem').filter({ hasText: 'budget' }).getByText('1.5').waitFor();
  await page.getByRole('button', { name: 'Cancel job' }).click();
  await page.locator('[data-testid="job-state"]', { hasText: 'cancelled' }).waitFor();
});

test('the operator view shows totals by account class and the ledger check passing; others cannot open it', { skip }, async () => {
  await nav('Operator').click();
  await page
    .getByRole('alert')
    .filter({ hasText: /operators/ })
    .waitFor();
  await page.evaluate(`localStorage.setItem('gridwork.identity', ${JSON.stringify(JSON.stringify(operator))})`);
  await page.reload();
  await page.locator('[data-testid="ledger-check"]', { hasText: 'passing' }).waitFor();
  await page.getByRole('rowheader', { name: 'available balances' }).waitFor();
  await shot('operator');
  // Alice's job is not the operator's: the console says so instead of showing it.
  const jobId = (globalThis as { consoleJobId?: string }).consoleJobId;
  if (jobId) {
    await page.goto(`${net.coordinator.url}/#/jobs/${jobId}`);
    await page.getByText(`Cannot read job ${jobId}`).waitFor();
  }
});

test('a key made in the browser signs requests the coordinator accepts (dev faucet)', { skip }, async () => {
  await page.evaluate("localStorage.removeItem('gridwork.identity')");
  await page.goto(`${net.coordinator.url}/#/key`);
  await page.reload();
  await page.getByRole('button', { name: 'Create a new key in this browser' }).click();
  const made = await page.getByTestId('account-id').textContent();
  assert.match(made ?? '', /^[A-Za-z0-9_-]{43}$/);
  assert.notEqual(made, alice.publicKey);
  await nav('Money').click();
  assert.equal(await page.getByTestId('balance-available').textContent(), '0');
  await page.getByRole('button', { name: 'Get 10 test credits' }).click();
  await page.locator('[data-testid="balance-available"]', { hasText: '10' }).waitFor();
});

test('every form control has a label, and the layout fits a phone', { skip }, async () => {
  for (const hash of ['#/key', '#/jobs', '#/market']) {
    await page.goto(`${net.coordinator.url}/${hash}`);
    await page.locator('main h2').first().waitFor();
    // Browser-side code as text: this file is typechecked without the DOM library.
    const unlabelled = await page.evaluate<string[]>(
      "[...document.querySelectorAll('input, textarea, select')].filter((el) => el.labels?.length === 0 && !el.getAttribute('aria-label')).map((el) => el.outerHTML)",
    );
    assert.deepEqual(unlabelled, [], `unlabelled controls on ${hash}`);
  }
  await page.setViewportSize({ width: 390, height: 780 });
  await page.goto(`${net.coordinator.url}/#/network`);
  await page.reload();
  await page.getByTestId('provider-row').first().waitFor();
  const overflow = await page.evaluate<number>('document.documentElement.scrollWidth - window.innerWidth');
  assert.ok(overflow <= 0, `page wider than the phone by ${overflow}px`);
  await shot('phone');
  await page.keyboard.press('Tab');
  assert.equal(await page.evaluate<string | undefined>('document.activeElement?.textContent?.trim()'), 'Skip to content');
  assert.deepEqual(cspViolations, []);
});

test('the network page follows the stream’s deltas: a provider that joins appears without a reload', { skip }, async () => {
  await page.goto(`${net.coordinator.url}/#/network`);
  await page.reload();
  await page.getByTestId('provider-row').nth(1).waitFor();
  const rows = await page.getByTestId('provider-row').count();
  await net.addProvider();
  await page.getByTestId('provider-row').nth(rows).waitFor();
  await page.getByText(`provider-${rows}`).first().waitFor();
  assert.equal(await page.getByTestId('count-online').textContent(), String(rows + 1));
});
