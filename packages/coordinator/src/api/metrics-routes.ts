/** GET /metrics (Prometheus text format, public) and the hook that times every request. No business logic here. */
import type { FastifyInstance } from 'fastify';
import type { CoordinatorMetrics } from '../observe/coordinator-metrics.ts';

export function registerMetricsRoutes(app: FastifyInstance, deps: { metrics: CoordinatorMetrics }): void {
  app.addHook('onResponse', async (req, reply) => {
    // The route pattern, not the URL: job ids would make one series per job.
    deps.metrics.observeRequest(req.method, req.routeOptions.url ?? 'unmatched', reply.statusCode, reply.elapsedTime / 1000);
  });
  app.get('/metrics', { config: { public: true }, schema: { hide: true } }, async (_req, reply) => {
    const { text, contentType } = await deps.metrics.render();
    return reply.type(contentType).send(text);
  });
}
