/** Provider routes: the WebSocket channel (the public provider list is in network-routes.ts). */
import type { FastifyInstance } from 'fastify';
import type { ProviderChannels } from '../providers/provider-channels.ts';

export function registerProviderRoutes(app: FastifyInstance, deps: { channels: ProviderChannels }): void {
  app.get('/v1/providers/connect', { websocket: true, schema: { hide: true } }, (socket, req) => {
    deps.channels.accept(req.accountId, socket, req.socket.remoteAddress ?? null);
  });
}
