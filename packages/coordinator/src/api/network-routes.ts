/** Network routes: the public directory of providers. Read-only, no business logic here. */
import type { FastifyInstance } from 'fastify';
import Type from 'typebox';
import { listProviders } from '../market/provider-directory.ts';
import type { Db } from '../store/database.ts';

export function registerNetworkRoutes(app: FastifyInstance, deps: { db: Db }): void {
  app.get<{ Querystring: { all: boolean; limit: number } }>(
    '/v1/providers',
    {
      // Public: what the network offers is what requesters shop in, like GET /v1/market.
      config: { public: true },
      schema: {
        tags: ['market'],
        summary: 'Providers on the network: state, hardware, asks, benchmarks, reputation, stake (online ones unless all=true)',
        security: [],
        querystring: Type.Object({
          all: Type.Boolean({ default: false }),
          limit: Type.Integer({ minimum: 1, maximum: 500, default: 500 }),
        }),
      },
    },
    async (req) => ({ providers: await listProviders(deps.db, { all: req.query.all, limit: req.query.limit }) }),
  );
}
