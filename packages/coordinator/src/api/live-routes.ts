/**
 * Public live view of the network (providers, market, price history, lease counts) as an
 * NDJSON stream: one snapshot on connect, then paced deltas (observe/network-feed.ts), with
 * empty-line keepalives. The console's public pages read it with fetch. No business logic here.
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
          'NDJSON stream of the network: a snapshot { type: "network", providers, market, history, leases } now, then deltas { type: "network.delta", providers?: changed fields by id (whole records for new ones), removed?, market?, history?: new points, leases? }, at most one a second. 503 UNAVAILABLE when too many streams are open. Empty lines are keepalives.',
        security: [],
      },
    },
    async (req, reply) => {
      // Refused before the response starts, so the client gets a 503 with the shared error body.
      const release = deps.feed.admit();
      reply.raw.once('close', release);
      return sendNdjson(req, reply, (signal) => deps.feed.stream(signal, () => reply.raw.destroy()), deps.keepaliveMs);
    },
  );
  app.get(
    '/v1/network',
    { config: { public: true }, schema: { tags: ['market'], summary: 'One network snapshot (as the stream sends)', security: [] } },
    async () => deps.feed.snapshot(),
  );
}
