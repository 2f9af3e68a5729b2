import assert from 'node:assert/strict';
import { lstat, mkdtemp, readFile, rm, symlink, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { sha256Hex } from './signing.ts';
import { writeVerified } from './verified-download.ts';

describe('writeVerified', () => {
  let dir: string;
  before(async () => {
    dir = await mkdtemp(join(tmpdir(), 'gw-verified-'));
  });
  after(() => rm(dir, { recursive: true, force: true }));

  test('a symlink planted at the temporary name is never written through', async () => {
    // A task can write where its agent downloads (a cluster's exchange rounds): a link at
    // `<dest>.part` must not make the agent write the downloaded bytes into the link's target.
    const victim = join(dir, 'victim');
    await writeFile(victim, 'the agent’s own file');
    const dest = join(dir, 'round', 'rank-0.json');
    await writeVerified(new Response('x'), join(dir, 'round', 'warm'), sha256Hex('x')); // makes the directory
    await symlink(victim, `${dest}.part`);
    await writeVerified(new Response('exchange bytes'), dest, sha256Hex('exchange bytes'));
    assert.equal(await readFile(victim, 'utf8'), 'the agent’s own file');
    assert.equal(await readFile(dest, 'utf8'), 'exchange bytes');
    assert.ok((await lstat(dest)).isFile());
  });

  test('bytes that do not match their digest never land, and a leftover of an interrupted download does not block the next', async () => {
    const dest = join(dir, 'blob');
    await assert.rejects(writeVerified(new Response('forged'), dest, sha256Hex('genuine')), /DIGEST_MISMATCH|do not match/);
    await assert.rejects(lstat(dest), /ENOENT/);
    await writeFile(`${dest}.part`, 'half a download');
    await writeVerified(new Response('genuine'), dest, sha256Hex('genuine'));
    assert.equal(await readFile(dest, 'utf8'), 'genuine');
  });
});
