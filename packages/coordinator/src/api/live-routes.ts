/**
 * Public live view of the network (providers, market, price history, lease counts) as an
 * NDJSON stream: one snapshot on connect and one per change, with empty-line keepalives. The
 * console's public pages read it with fetch. No business logic here.
 */
import type { FastifyInstance } from 'fastify';
import type { NetworkFeed } from '../observe/network-feed.ts';
import { sendNdjson } from './ndjson.ts';

export function registerLiveRoutes(app: FastifyInstance, deps: { feed: NetworkFeed; keepaliveMs?: number }): void {
  app.get(
    '/v1/network/events',
    {
      config: { public: true },
      schema: {
        tags: ['market'],
        summary:
          'NDJSON stream of network snapshots { type: "network", providers, market, history, leases }: one now, one per change. Empty lines are keepalives.',
        security: [],
      },
    },
    async (req, reply) => sendNdjson(req, reply, (signal) => deps.feed.stream(signal), deps.keepaliveMs),
  );
  app.get(
    '/v1/network',
    { config: { public: true }, schema: { tags: ['market'], summary: 'One network snapshot (as the stream sends)', security: [] } },
    async () => deps.feed.snapshot(),
  );
}
