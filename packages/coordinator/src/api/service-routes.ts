/**
 * The service ingress: `/services/<job id>/<path>` reaches a healthy replica of a service job,
 * through its agent's ingress (jobs/service-routing.ts picks it). Requests to a private service
 * are signed like every /v1 request and must come from the job's owner. Bodies are JSON (or
 * none); responses stream back as the replica sends them. No business logic here.
 *
 * The path after the job id goes to the replica as it came, and only below its lease's prefix
 * on the agent's ingress: a `.` or `..` segment, raw or percent-encoded, and an encoded slash or
 * backslash are refused before anything is forwarded, so no request can climb out of it.
 */
import { Readable } from 'node:stream';
import { AuthHeader, GridworkError } from '@gridwork/protocol';
import type { FastifyInstance, FastifyReply, FastifyRequest } from 'fastify';
import type { Authenticator } from '../auth/authenticator.ts';
import type { ServiceRouting } from '../jobs/service-routing.ts';

export interface ServiceRoutesDeps {
  routing: ServiceRouting;
  auth: Authenticator;
}

const SERVICE_TOKEN_HEADER = 'x-gridwork-service-token';
/** Request headers passed on to the replica (the rest — signatures, cookies, hop headers — stay here). */
const PASS = ['content-type', 'accept', 'accept-encoding', 'user-agent'];
/** Response headers passed back. */
const BACK = ['content-type', 'content-encoding', 'cache-control', 'etag', 'last-modified'];

/**
 * The request's path below `/services/<job id>`, still percent-encoded, if it is safe to append to a
 * replica's base: every segment decodes, and none is `.`/`..` or hides a separator.
 */
export function forwardablePath(url: string, jobId: string): string {
  const path = url.split('?')[0] as string;
  const rest = path.slice(`/services/${jobId}`.length).replace(/^\//, '');
  for (const segment of rest.split('/')) {
    let decoded: string;
    try {
      decoded = decodeURIComponent(segment);
    } catch {
      throw new GridworkError('BAD_REQUEST', 'the service path is not valid percent-encoding');
    }
    if (decoded === '.' || decoded === '..' || /[/\\\0]/.test(decoded)) {
      throw new GridworkError('BAD_REQUEST', 'the service path may not contain dot segments or encoded separators');
    }
  }
  return rest;
}

export function registerServiceRoutes(app: FastifyInstance, deps: ServiceRoutesDeps): void {
  const handler = async (req: FastifyRequest<{ Params: { id: string; '*'?: string } }>, reply: FastifyReply) => {
    const jobId = req.params.id;
    if (!/^job_[a-z2-7]{16}$/.test(jobId)) throw new GridworkError('JOB_NOT_FOUND', `service job ${jobId} does not exist`);
    const rest = forwardablePath(req.url, jobId);
    // A signed request is authenticated whatever the job, an unsigned one is anonymous: the answer
    // for someone else's private service is then the same as for a job that does not exist.
    const caller = req.headers[AuthHeader.signature] === undefined ? null : await deps.auth.authenticate({ method: req.method, url: req.url, headers: req.headers, body: req.rawBody });
    const query = req.url.includes('?') ? req.url.slice(req.url.indexOf('?')) : '';
    const headers: Record<string, string> = {};
    for (const h of PASS) {
      const v = req.headers[h];
      if (typeof v === 'string') headers[h] = v;
    }
    // A replica that cannot be reached (its provider just died, not yet declared lost) is skipped:
    // the request goes to the next one. A replica that answered, whatever it answered, is final.
    const unreachable = new Set<string>();
    let answer: Response | undefined;
    let servedBy = '';
    let lastError = '';
    while (!answer) {
      let target: Awaited<ReturnType<typeof deps.routing.pick>>;
      try {
        target = await deps.routing.pick(jobId, caller, unreachable);
      } catch (err) {
        if (unreachable.size === 0) throw err;
        throw new GridworkError('UNAVAILABLE', `no replica of service job ${jobId} answered: ${lastError}`);
      }
      try {
        answer = await fetch(`${target.base}/${rest}${query}`, {
          method: req.method,
          headers: { ...headers, [SERVICE_TOKEN_HEADER]: target.token },
          ...(req.rawBody && req.method !== 'GET' && req.method !== 'HEAD' ? { body: req.rawBody } : {}),
          redirect: 'manual',
          signal: AbortSignal.timeout(300_000),
        });
        servedBy = target.leaseId;
      } catch (err) {
        unreachable.add(target.leaseId);
        lastError = (err as Error).message;
      }
    }
    reply.status(answer.status);
    for (const h of BACK) {
      const v = answer.headers.get(h);
      if (v !== null) reply.header(h, v);
    }
    reply.header('x-gridwork-replica', servedBy);
    return reply.send(answer.body ? Readable.fromWeb(answer.body as import('node:stream/web').ReadableStream) : '');
  };
  // The body is forwarded as it came (never parsed here), up to the large-body limit.
  const config = { public: true, rawJson: true, largeBody: true };
  const schema = { hide: true };
  app.all('/services/:id', { config, schema }, handler);
  app.all('/services/:id/*', { config, schema }, handler);
}
