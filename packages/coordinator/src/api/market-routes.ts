/** Market routes: current asks by resource class, and why a spec would (not) match. */
import { JobSpec } from '@gridwork/protocol';
import type { FastifyInstance } from 'fastify';
import Type from 'typebox';
import type { JobService } from '../jobs/job-service.ts';
import type { Market } from '../market/market.ts';

export function registerMarketRoutes(app: FastifyInstance, deps: { market: Market; jobs: JobService }): void {
  app.get('/v1/market', { schema: { tags: ['market'], summary: 'Standing asks by resource class: min / median / max price and free units' } }, async () => ({
    classes: deps.market.summary(),
  }));
  app.post<{ Body: { spec: JobSpec } }>(
    '/v1/market/explain',
    {
      config: { largeBody: true },
      schema: {
        tags: ['market'],
        summary: 'Which providers could take this spec now, and why the others cannot',
        body: Type.Object({ spec: JobSpec }, { additionalProperties: false }),
      },
    },
    async (req) => deps.jobs.explain(req.body.spec),
  );
}
