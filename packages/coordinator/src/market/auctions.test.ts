import assert from 'node:assert/strict';
import { afterEach, describe, test } from 'node:test';
import { canonicalJson, parseCredits } from '@gridwork/protocol';
import { generateIdentity, type Identity, signBytes } from '@gridwork/protocol/node';
import { pino } from 'pino';
import { type AuctionDeps, Auctions } from './auctions.ts';
import type { Order } from './order-book.ts';

type Announcement = Parameters<AuctionDeps['announce']>[0];

const order: Order = { resources: { cpu: 2, memoryGiB: 4, gpu: { count: 1, models: ['l4'] } }, maxPerHour: parseCredits('1.5') };

function signed(id: Identity, orderId: string, pricePerHour: string) {
  return { orderId, pricePerHour, signature: signBytes(id, canonicalJson({ orderId, pricePerHour })) };
}

/** An Auctions with recorded announcements and a promise for each `closed()` call. */
function harness() {
  const announced: Announcement[] = [];
  let closedCount = 0;
  const waiters: (() => void)[] = [];
  const auctions = new Auctions({
    log: pino({ level: 'silent' }),
    announce: (msg) => {
      announced.push(msg);
      return 3;
    },
    closed: () => {
      closedCount++;
      for (const w of waiters.splice(0)) w();
    },
  });
  /** Resolves at the next `closed()`; fails after `limitMs` (a ref'd timer also keeps the loop alive). */
  const nextClose = (limitMs = 2000) =>
    new Promise<void>((resolve, reject) => {
      const t = setTimeout(() => reject(new Error(`closed() not called within ${limitMs} ms`)), limitMs);
      waiters.push(() => {
        clearTimeout(t);
        resolve();
      });
    });
  return { auctions, announced, nextClose, closedCount: () => closedCount };
}

let open: Auctions[] = [];
afterEach(() => {
  for (const a of open) a.closeAll();
  open = [];
});

describe('Auctions', () => {
  test('announces once per order, stays open for the window, then closes with the bids', async () => {
    const h = harness();
    open.push(h.auctions);
    const alice = generateIdentity();
    const bob = generateIdentity();
    const before = Date.now();
    const closing = h.nextClose();
    assert.deepEqual(h.auctions.state('o1', order, 50), { open: true });
    assert.equal(h.announced.length, 1);
    const msg = h.announced[0];
    assert.ok(msg);
    assert.equal(msg.type, 'order.announce');
    assert.equal(msg.orderId, 'o1');
    assert.deepEqual(msg.resources, order.resources);
    assert.equal(msg.maxPerHour, '1.5');
    assert.ok(msg.closesAt >= before + 50 && msg.closesAt <= Date.now() + 50, `closesAt ${msg.closesAt}`);

    // Asking again during the window neither re-announces nor closes it.
    assert.deepEqual(h.auctions.state('o1', order, 50), { open: true });
    assert.deepEqual(h.auctions.state('o1', order, 10_000), { open: true });
    assert.equal(h.announced.length, 1);

    assert.equal(h.auctions.bid(alice.publicKey, signed(alice, 'o1', '1.2')), true);
    assert.equal(h.auctions.bid(bob.publicKey, signed(bob, 'o1', '0.9')), true);
    assert.equal(h.auctions.bid(alice.publicKey, signed(alice, 'o1', '1.1')), true); // a provider's later bid replaces its earlier one
    assert.equal(h.closedCount(), 0);

    await closing;
    assert.equal(h.closedCount(), 1);
    assert.ok(Date.now() - before >= 45);
    const st = h.auctions.state('o1', order, 50);
    assert.equal(st.open, false);
    assert.ok(!st.open);
    assert.deepEqual(
      st.bids,
      new Map([
        [alice.publicKey, parseCredits('1.1')],
        [bob.publicKey, parseCredits('0.9')],
      ]),
    );
    assert.equal(h.announced.length, 1); // a closed window is not reopened
  });

  test('each order gets its own window and announcement', async () => {
    const h = harness();
    open.push(h.auctions);
    const first = h.nextClose();
    h.auctions.state('a', order, 30);
    h.auctions.state('b', { ...order, maxPerHour: parseCredits('0.25') }, 60_000);
    assert.deepEqual(
      h.announced.map((m) => [m.orderId, m.maxPerHour]),
      [
        ['a', '1.5'],
        ['b', '0.25'],
      ],
    );
    await first;
    assert.equal(h.auctions.state('a', order, 30).open, false);
    assert.equal(h.auctions.state('b', order, 30).open, true);
  });

  test('bad signatures, prices above the max, non-decimal prices and bids for unknown orders are ignored', async () => {
    const h = harness();
    open.push(h.auctions);
    const alice = generateIdentity();
    const mallory = generateIdentity();
    const closing = h.nextClose();
    h.auctions.state('o1', order, 50);

    // Signed by someone else.
    assert.equal(h.auctions.bid(alice.publicKey, signed(mallory, 'o1', '0.5')), false);
    // Signature over a different price.
    assert.equal(h.auctions.bid(alice.publicKey, { ...signed(alice, 'o1', '0.5'), pricePerHour: '0.4' }), false);
    // Signature over a different order.
    assert.equal(h.auctions.bid(alice.publicKey, { ...signed(alice, 'o2', '0.5'), orderId: 'o1' }), false);
    // Garbage signature and provider id.
    assert.equal(h.auctions.bid(alice.publicKey, { orderId: 'o1', pricePerHour: '0.5', signature: 'x'.repeat(86) }), false);
    assert.equal(h.auctions.bid('not-a-key', signed(alice, 'o1', '0.5')), false);
    // Correctly signed, but not an acceptable price.
    for (const p of ['1.500001', '2', '-0.5', '0', '0.5e0', '1,2', ' 0.5', '0.1234567', 'abc', '']) {
      assert.equal(h.auctions.bid(alice.publicKey, signed(alice, 'o1', p)), false, `price ${JSON.stringify(p)}`);
    }
    // Unknown order.
    assert.equal(h.auctions.bid(alice.publicKey, signed(alice, 'o9', '0.5')), false);
    // Exactly the max is fine.
    assert.equal(h.auctions.bid(mallory.publicKey, signed(mallory, 'o1', '1.5')), true);

    await closing;
    const st = h.auctions.state('o1', order, 50);
    assert.ok(!st.open);
    assert.deepEqual([...st.bids], [[mallory.publicKey, parseCredits('1.5')]]);
  });

  test('a bid after the window closed is ignored', async () => {
    const h = harness();
    open.push(h.auctions);
    const alice = generateIdentity();
    const closing = h.nextClose();
    h.auctions.state('o1', order, 20);
    await closing;
    assert.equal(h.auctions.bid(alice.publicKey, signed(alice, 'o1', '0.5')), false);
    const st = h.auctions.state('o1', order, 20);
    assert.ok(!st.open);
    assert.equal(st.bids.size, 0);
  });

  test('finish() forgets the order: no more bids, its timer is cancelled, a later state() opens a new window', async () => {
    const h = harness();
    open.push(h.auctions);
    const alice = generateIdentity();
    h.auctions.state('o1', order, 30);
    assert.equal(h.auctions.bid(alice.publicKey, signed(alice, 'o1', '1')), true);
    h.auctions.finish('o1');
    assert.equal(h.auctions.bid(alice.publicKey, signed(alice, 'o1', '1')), false);

    // A new window for o1: announced again, without the old bids, and not closed by the old timer.
    assert.deepEqual(h.auctions.state('o1', order, 250), { open: true });
    assert.deepEqual(
      h.announced.map((m) => m.orderId),
      ['o1', 'o1'],
    );
    const o2Closed = h.nextClose();
    h.auctions.state('o2', order, 60); // closes after the old o1 window would have
    await o2Closed;
    assert.equal(h.closedCount(), 1);
    assert.deepEqual(h.auctions.state('o1', order, 250), { open: true });

    const o1Closed = h.nextClose();
    await o1Closed;
    assert.equal(h.closedCount(), 2);
    const st = h.auctions.state('o1', order, 250);
    assert.ok(!st.open);
    assert.equal(st.bids.size, 0);
    h.auctions.finish('unknown'); // harmless
  });

  test('closeAll() cancels every window', async () => {
    const h = harness();
    open.push(h.auctions);
    h.auctions.state('o1', order, 20);
    h.auctions.state('o2', order, 20);
    h.auctions.closeAll();
    const alice = generateIdentity();
    assert.equal(h.auctions.bid(alice.publicKey, signed(alice, 'o1', '1')), false);
    // A later window closes after the cancelled ones would have: only its own closed() comes.
    const later = h.nextClose();
    h.auctions.state('o3', order, 60);
    await later;
    assert.equal(h.closedCount(), 1);
  });
});
