/**
 * A coordinator closes quietly: the matching index's presence updates (a database read each, for a
 * socket that said hello or closed) finish before the database closes, and those of sockets that
 * close or say hello during the shutdown are not started. (`gridwork demo` printed a stack trace
 * per provider after every claim had held: "market presence update failed: driver has already
 * been destroyed".) On the embedded store, with the real index.
 */
import assert from 'node:assert/strict';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';
import pino from 'pino';
import { Market } from '../src/market/market.ts';
import { MarketPresence } from '../src/market/market-presence.ts';
import { openDatabase } from '../src/store/database.ts';

test('presence: close() waits for the updates under way, and later ones start nothing', async () => {
  const dir = await mkdtemp(join(tmpdir(), 'gw-shutdown-'));
  const db = await openDatabase({ url: '', dataDir: join(dir, 'db') });
  const lines: { level: number; msg: string }[] = [];
  const log = pino({ level: 'info' }, { write: (s: string) => void lines.push(JSON.parse(s)) });
  let kicks = 0;
  try {
    const market = new Market(db);
    await market.load();
    const presence = new MarketPresence(market, { kick: async () => void kicks++ }, log);
    presence.setConnected('provider-a', true, Date.now());
    presence.setConnected('provider-b', false, Date.now());
    assert.equal(kicks, 0, 'the updates read the database first');
    await presence.close();
    assert.equal(kicks, 1, 'the hello’s update finished (and woke the scheduler) before close() resolved');
    presence.setConnected('provider-c', true, Date.now());
    await db.destroy();
    await new Promise((r) => setImmediate(r));
    assert.equal(kicks, 1, 'a hello during the shutdown starts nothing');
    assert.deepEqual(
      lines.filter((l) => l.level >= 50).map((l) => l.msg),
      [],
      'no error logged',
    );
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
});
