/** Unauthenticated routes: health and the OpenAPI document. */
import type { FastifyInstance } from 'fastify';
import type { Leadership } from '../leader/leadership.ts';
import type { Db } from '../store/database.ts';
import { sql } from 'kysely';

export function registerSystemRoutes(app: FastifyInstance, deps: { db: Db; version: string; leadership: Leadership }): void {
  app.get('/healthz', { config: { public: true }, schema: { tags: ['system'], summary: 'Liveness and database reachability', security: [] } }, async () => {
    await sql`select 1`.execute(deps.db);
    // role: whether this replica runs the sweeps (leader) or only serves (edge).
    return { ok: true, version: deps.version, role: deps.leadership.isLeader ? 'leader' : 'edge' };
  });
  app.get('/openapi.json', { config: { public: true }, schema: { hide: true } }, async () => app.swagger());
}
