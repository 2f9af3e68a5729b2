/**
 * Auctions across replicas. The leader's scheduler opens the auctions (auctions.ts), but a
 * bidding provider's socket may be held by any replica: the announcement goes to every replica
 * over the replicas' NATS line (bus/replica-doorbell.ts), each passes it to the bidders whose
 * sockets it holds, and a bid that reaches a replica other than the leader is passed to the
 * leader the same way. Both may be lost, as an announcement to a socket may: a provider that did
 * not bid is matched on its standing ask. Without NATS (one replica, or replicas that only poll)
 * an auction reaches the leader's own sockets only.
 *
 * The leader's own bidders are told directly (a NATS outage costs the other replicas' bidders only).
 * What comes over the line is checked for shape and an announcement rebuilt from its fields; a
 * bid's signature is checked by the auction itself, so a relayed bid is worth no more than the
 * provider's own signature.
 */
import { randomBytes } from 'node:crypto';
import type { CoordinatorMessage } from '@gridwork/protocol';
import type { ReplicaDoorbell } from '../bus/replica-doorbell.ts';

type Announcement = Extract<CoordinatorMessage, { type: 'order.announce' }>;
export interface Bid {
  orderId: string;
  pricePerHour: string;
  signature: string;
}

export interface AuctionRelayDeps {
  /** The replicas' line; absent on the embedded store (one process). */
  link: ReplicaDoorbell | undefined;
  /** Bidding providers connected to any replica, as the matching index knows them. */
  bidders: () => string[];
  /** Sends a message to those of `ids` whose sockets this replica holds; returns how many. */
  sendHere: (ids: string[], msg: Announcement) => number;
  /** Hands a bid to this replica's auctions (the leader's are the ones open). */
  bidHere: (providerId: string, bid: Bid) => void;
  isLeader: () => boolean;
}

const ANNOUNCE = 'auction.announce';
const BID = 'auction.bid';

export class AuctionRelay {
  /** Tells this replica's own announcements apart when NATS echoes them back. */
  private readonly self = randomBytes(8).toString('hex');

  constructor(private readonly deps: AuctionRelayDeps) {
    deps.link?.listen(ANNOUNCE, (data) => {
      const m = data as { from?: unknown; msg?: unknown } | null;
      if (m?.from === this.self) return;
      const msg = announcementOf(m?.msg);
      if (msg) deps.sendHere(deps.bidders(), msg);
    });
    deps.link?.listen(BID, (data) => {
      if (deps.isLeader() && isRelayedBid(data)) deps.bidHere(data.providerId, data.bid);
    });
  }

  /** Announces an auction to this replica's bidders at once and to the other replicas' (best effort); returns how many were told here. */
  announce(msg: Announcement): number {
    this.deps.link?.send(ANNOUNCE, { from: this.self, msg });
    return this.deps.sendHere(this.deps.bidders(), msg);
  }

  /** A bid from a socket of this replica: to the auction here when this replica leads, else to the leader. */
  bid(providerId: string, bid: Bid): void {
    if (this.deps.isLeader()) this.deps.bidHere(providerId, bid);
    else this.deps.link?.send(BID, { providerId, bid });
  }
}

const isString = (v: unknown, max: number): v is string => typeof v === 'string' && v.length <= max;

/** The announcement rebuilt from its checked fields (nothing else a publisher added reaches a provider), or null. */
function announcementOf(d: unknown): Announcement | null {
  const m = d as Partial<Announcement> | null;
  if (typeof m !== 'object' || m === null || m.type !== 'order.announce' || !isString(m.orderId, 64) || !isString(m.maxPerHour, 32)) return null;
  if (typeof m.closesAt !== 'number' || !Number.isFinite(m.closesAt)) return null;
  const r = m.resources as Partial<Announcement['resources']> | undefined;
  if (typeof r !== 'object' || r === null || typeof r.cpu !== 'number' || typeof r.memoryGiB !== 'number') return null;
  const resources: Announcement['resources'] = { cpu: r.cpu, memoryGiB: r.memoryGiB };
  if (typeof r.diskGiB === 'number') resources.diskGiB = r.diskGiB;
  if (r.gpu && typeof r.gpu === 'object' && typeof r.gpu.count === 'number') {
    const g = r.gpu;
    resources.gpu = {
      count: g.count,
      ...(Array.isArray(g.models) && g.models.every((x) => isString(x, 64)) ? { models: g.models.slice(0, 16) } : {}),
      ...(typeof g.minVramGiB === 'number' ? { minVramGiB: g.minVramGiB } : {}),
    };
  }
  return { type: 'order.announce', orderId: m.orderId, resources, maxPerHour: m.maxPerHour, closesAt: m.closesAt };
}

function isRelayedBid(d: unknown): d is { providerId: string; bid: Bid } {
  const m = d as { providerId?: unknown; bid?: Partial<Bid> } | null;
  return (
    typeof m === 'object' &&
    m !== null &&
    isString(m.providerId, 128) &&
    typeof m.bid === 'object' &&
    m.bid !== null &&
    isString(m.bid.orderId, 64) &&
    isString(m.bid.pricePerHour, 32) &&
    isString(m.bid.signature, 128)
  );
}
