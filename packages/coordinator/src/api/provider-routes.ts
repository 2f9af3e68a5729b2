/** Provider routes: the WebSocket channel and the public provider list. */
import type { FastifyInstance } from 'fastify';
import type { Db } from '../store/database.ts';
import type { ProviderChannels } from '../providers/provider-channels.ts';

export function registerProviderRoutes(app: FastifyInstance, deps: { channels: ProviderChannels; db: Db }): void {
  app.get('/v1/providers/connect', { websocket: true, schema: { hide: true } }, (socket, req) => {
    deps.channels.accept(req.accountId, socket);
  });

  app.get('/v1/providers', { schema: { tags: ['providers'], summary: 'Providers known to this coordinator' } }, async () => {
    const rows = await deps.db
      .selectFrom('providers')
      .select(['id', 'name', 'state', 'runtime', 'slots', 'hardware', 'attributes', 'last_seen_at'])
      .orderBy('name')
      .execute();
    const connected = deps.channels.connectedIds();
    return {
      providers: rows.map((r) => ({
        id: r.id,
        name: r.name,
        state: r.state,
        connected: connected.has(r.id),
        runtime: r.runtime,
        slots: r.slots,
        hardware: r.hardware,
        attributes: r.attributes,
        lastSeenAt: r.last_seen_at.toISOString(),
      })),
    };
  });
}
