/**
 * Auction windows. An order that asks for one is announced to connected providers that bid
 * (they run a pricing script); signed bids below their standing asks are collected until the
 * window closes, then the order matches on the best score among bids and standing asks.
 * Auctions live in memory only: after a coordinator restart an order simply opens a new window.
 */
import { canonicalJson, formatCredits, parseCredits } from '@gridwork/protocol';
import { verifyBytes } from '@gridwork/protocol/node';
import type { Logger } from 'pino';
import type { Order } from './order-book.ts';

export interface AuctionDeps {
  log: Logger;
  /** Sends the announcement to every connected bidding provider; returns how many were told. */
  announce: (msg: { type: 'order.announce'; orderId: string; resources: Order['resources']; maxPerHour: string; closesAt: number }) => number;
  /** Called when a window closes, so the scheduler looks again. */
  closed: () => void;
}

interface Auction {
  order: Order;
  closesAt: number;
  bids: Map<string, bigint>;
  timer: NodeJS.Timeout;
  done: boolean;
}

export class Auctions {
  private readonly auctions = new Map<string, Auction>();

  constructor(private readonly deps: AuctionDeps) {}

  /**
   * 'open' while bids are being collected (a new window opens on first sight); 'closed' with
   * the bids once the window has passed.
   */
  state(orderId: string, order: Order, windowMs: number): { open: true } | { open: false; bids: Map<string, bigint> } {
    let a = this.auctions.get(orderId);
    if (!a) {
      const closesAt = Date.now() + windowMs;
      a = { order, closesAt, bids: new Map(), done: false, timer: setTimeout(() => this.close(orderId), windowMs) };
      a.timer.unref();
      this.auctions.set(orderId, a);
      const told = this.deps.announce({ type: 'order.announce', orderId, resources: order.resources, maxPerHour: formatCredits(order.maxPerHour), closesAt });
      this.deps.log.debug({ orderId, told, windowMs }, 'auction opened');
      return { open: true };
    }
    return a.done ? { open: false, bids: a.bids } : { open: true };
  }

  private close(orderId: string): void {
    const a = this.auctions.get(orderId);
    if (!a) return;
    a.done = true;
    this.deps.closed();
  }

  /** Forgets an auction once its order has been placed (or its task left the queue). */
  finish(orderId: string): void {
    const a = this.auctions.get(orderId);
    if (a) clearTimeout(a.timer);
    this.auctions.delete(orderId);
  }

  /** A provider's bid; ignored unless its signature verifies and the window is open. */
  bid(providerId: string, bid: { orderId: string; pricePerHour: string; signature: string }): boolean {
    const a = this.auctions.get(bid.orderId);
    if (!a || a.done || Date.now() > a.closesAt) return false;
    if (!verifyBytes(providerId, canonicalJson({ orderId: bid.orderId, pricePerHour: bid.pricePerHour }), bid.signature)) {
      this.deps.log.warn({ providerId, orderId: bid.orderId }, 'bid with a bad signature ignored');
      return false;
    }
    let price: bigint;
    try {
      price = parseCredits(bid.pricePerHour, { allowZero: false });
    } catch {
      return false;
    }
    if (price > a.order.maxPerHour) return false;
    a.bids.set(providerId, price);
    return true;
  }

  closeAll(): void {
    for (const a of this.auctions.values()) clearTimeout(a.timer);
    this.auctions.clear();
  }
}
