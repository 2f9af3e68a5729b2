/**
 * The web console's static files (packages/console/built): `/` answers its index page, and
 * `/console/*` its hashed assets with immutable cache headers. Public: the console holds its
 * key in the browser and signs its own API requests. No business logic here.
 */
import { createReadStream } from 'node:fs';
import { stat } from 'node:fs/promises';
import { extname, join, normalize, sep } from 'node:path';
import { GridworkError } from '@gridwork/protocol';
import type { FastifyInstance, FastifyReply } from 'fastify';

const TYPES: Record<string, string> = {
  '.html': 'text/html; charset=utf-8',
  '.js': 'text/javascript; charset=utf-8',
  '.css': 'text/css; charset=utf-8',
  '.svg': 'image/svg+xml',
  '.png': 'image/png',
  '.ico': 'image/x-icon',
  '.json': 'application/json',
  '.txt': 'text/plain; charset=utf-8',
};

/**
 * The page holds a private key in localStorage: it runs only its own scripts, talks only to
 * this coordinator, and cannot be framed.
 */
const PAGE_POLICY = [
  "default-src 'self'",
  "script-src 'self'",
  "style-src 'self' 'unsafe-inline'",
  "img-src 'self' data: blob:",
  "connect-src 'self'",
  "object-src 'none'",
  "base-uri 'none'",
  "form-action 'none'",
  "frame-ancestors 'none'",
].join('; ');

export interface ConsoleRoutesDeps {
  /** The console's build output (index.html and assets/). */
  dir: string;
}

export function registerConsoleRoutes(app: FastifyInstance, deps: ConsoleRoutesDeps): void {
  const root = normalize(deps.dir);

  async function sendFile(reply: FastifyReply, rel: string, cache: string): Promise<FastifyReply> {
    const path = normalize(join(root, rel));
    if (!path.startsWith(root + sep)) throw new GridworkError('NOT_FOUND', 'no such console file');
    const info = await stat(path).catch(() => undefined);
    if (!info?.isFile()) {
      if (rel === 'index.html') {
        return reply
          .status(503)
          .type('text/plain; charset=utf-8')
          .send(`The web console is not built (${root} has no index.html): run npm run build -w packages/console.\n`);
      }
      throw new GridworkError('NOT_FOUND', `no console file ${rel}`);
    }
    reply
      .header('content-type', TYPES[extname(path)] ?? 'application/octet-stream')
      .header('content-length', info.size)
      .header('cache-control', cache)
      .header('x-content-type-options', 'nosniff');
    return reply.send(createReadStream(path));
  }

  const page = { config: { public: true }, schema: { hide: true } };
  const index = (_req: unknown, reply: FastifyReply) =>
    sendFile(reply.header('content-security-policy', PAGE_POLICY).header('referrer-policy', 'no-referrer'), 'index.html', 'no-cache');
  app.get('/', page, index);
  app.get('/console', page, index);
  app.get('/console/', page, index);
  app.get<{ Params: { '*': string } }>('/console/*', page, (req, reply) => {
    const rel = req.params['*'];
    // Vite names built assets by content hash: they never change under one name.
    const cache = rel.startsWith('assets/') ? 'public, max-age=31536000, immutable' : 'no-cache';
    return sendFile(reply, rel, cache);
  });
}
