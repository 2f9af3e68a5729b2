/**
 * The agent's service ingress: one HTTP server through which the coordinator reaches the
 * service replicas this agent runs. A request for `/<leaseId>/<path>` carrying that lease's
 * secret (`x-gridwork-service-token`, from its assignment) is forwarded to the replica's exposed
 * port, its response streamed back; anything else is refused. Replicas' ports are bound to the
 * host's loopback, so this is the only way in. It also answers the coordinator's ingress proof
 * (protocol/ingress-proof.ts): a challenge signed with the provider's key, so the coordinator
 * knows the address it proxies to is this agent and not whatever else listens on that host.
 */
import { timingSafeEqual } from 'node:crypto';
import { createServer, request, type IncomingHttpHeaders, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { INGRESS_PROOF_PATH, ingressProofMessage } from '@gridwork/protocol';
import type { Logger } from 'pino';

export const SERVICE_TOKEN_HEADER = 'x-gridwork-service-token';

interface Route {
  token: Buffer;
  address: string;
  port: number;
}

/** Headers that describe one hop, not the request: never forwarded. */
const HOP = new Set(['connection', 'keep-alive', 'proxy-connection', 'transfer-encoding', 'upgrade', 'host', SERVICE_TOKEN_HEADER]);

function forwardable(headers: IncomingHttpHeaders): IncomingHttpHeaders {
  const out: IncomingHttpHeaders = {};
  for (const [k, v] of Object.entries(headers)) if (!HOP.has(k.toLowerCase()) && v !== undefined) out[k] = v;
  return out;
}

export class ServiceIngress {
  private readonly routes = new Map<string, Route>();
  private server: Server | undefined;
  private url = '';

  /** `sign` signs a message with the provider's key (the ingress proof). */
  constructor(
    private readonly log: Logger,
    private readonly sign: (message: string) => string,
  ) {}

  /** Starts listening; returns the URL the coordinator reaches it at. */
  async listen(host: string, port: number, advertise?: string): Promise<string> {
    const server = createServer((req, res) => this.handle(req, res));
    this.server = server;
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen(port, host, () => resolve());
    });
    const addr = server.address() as AddressInfo;
    // An origin in the URL parser's spelling: the coordinator uses nothing else (ingress-proof.ts there).
    this.url = new URL(advertise ?? `http://${host.includes(':') ? `[${host}]` : host}:${addr.port}`).origin;
    return this.url;
  }

  /** Routes a lease's requests to its replica (once it is healthy). */
  add(leaseId: string, token: string, address: string, port: number): void {
    this.routes.set(leaseId, { token: Buffer.from(token), address, port });
  }

  remove(leaseId: string): void {
    this.routes.delete(leaseId);
  }

  async close(): Promise<void> {
    const server = this.server;
    if (!server) return;
    server.closeAllConnections();
    await new Promise<void>((resolve) => server.close(() => resolve()));
  }

  private handle(req: import('node:http').IncomingMessage, res: import('node:http').ServerResponse): void {
    const proof = /^([^?]*)\?challenge=([A-Za-z0-9_-]{16,64})$/.exec(req.url ?? '');
    if (proof?.[1] === INGRESS_PROOF_PATH && req.method === 'GET') {
      const signature = this.sign(ingressProofMessage(this.url, proof[2] as string));
      res.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify({ signature }));
      req.resume();
      return;
    }
    const match = /^\/([a-z0-9_]{1,64})(\/.*)?$/.exec(req.url ?? '');
    const route = match ? this.routes.get(match[1] as string) : undefined;
    const given = Buffer.from(String(req.headers[SERVICE_TOKEN_HEADER] ?? ''));
    if (!route || given.length !== route.token.length || !timingSafeEqual(given, route.token)) {
      res.writeHead(404, { 'content-type': 'application/json' }).end(JSON.stringify({ error: { code: 'NOT_FOUND', message: 'no such service replica here' } }));
      req.resume();
      return;
    }
    const upstream = request(
      { host: route.address, port: route.port, method: req.method, path: match?.[2] ?? '/', headers: forwardable(req.headers) },
      (answer) => {
        res.writeHead(answer.statusCode ?? 502, forwardable(answer.headers));
        answer.pipe(res);
      },
    );
    upstream.on('error', (err) => {
      this.log.debug({ err }, 'service replica unreachable');
      if (!res.headersSent) res.writeHead(502, { 'content-type': 'application/json' });
      res.end(JSON.stringify({ error: { code: 'UNAVAILABLE', message: 'the service replica did not answer' } }));
    });
    req.pipe(upstream);
  }
}
