/** Provider routes: the WebSocket channel (the public provider list is in network-routes.ts). */
import type { FastifyInstance } from 'fastify';
import type { ProviderChannels } from '../providers/provider-channels.ts';

export function registerProviderRoutes(app: FastifyInstance, deps: { channels: ProviderChannels }): void {
  app.get('/v1/providers/connect', { websocket: true, schema: { hide: true } }, (socket, req) => {
    // req.ip: the socket's peer, or the client a trusted proxy names (`trustProxy`, off by default).
    deps.channels.accept(req.accountId, socket, req.ip ?? null);
  });
}
