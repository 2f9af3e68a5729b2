/** Unauthenticated routes: health and the OpenAPI document. */
import type { FastifyInstance } from 'fastify';
import type { Db } from '../store/database.ts';
import { sql } from 'kysely';

export function registerSystemRoutes(app: FastifyInstance, deps: { db: Db; version: string }): void {
  app.get('/healthz', { config: { public: true }, schema: { tags: ['system'], summary: 'Liveness and database reachability', security: [] } }, async () => {
    await sql`select 1`.execute(deps.db);
    return { ok: true, version: deps.version };
  });
  app.get('/openapi.json', { config: { public: true }, schema: { hide: true } }, async () => app.swagger());
}
