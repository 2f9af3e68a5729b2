/**
 * The Fastify instance and what every route shares: strict body validation (no coercion, no
 * silent removal of fields), raw-body capture for signatures, signed-request authentication,
 * and one error shape `{ error: { code, message, details } }` with stable codes.
 *
 * Authentication comes before any work a stranger could make expensive: the signature headers
 * are checked before the body is read (an unsigned or stale request is refused unread), and the
 * signature — which covers the raw body's digest — before the body is parsed. Bodies are small
 * unless a route says otherwise (`largeBody`), and JSON nested deeper than any real request is
 * refused before JSON.parse sees it.
 */
import type { IncomingMessage } from 'node:http';
import swagger from '@fastify/swagger';
import websocket from '@fastify/websocket';
import { GridworkError, httpStatusOf, WS_MAX_PAYLOAD_BYTES } from '@gridwork/protocol';
import { readAuthHeaders, type SignedBody } from '@gridwork/protocol/node';
import { Ajv } from 'ajv';
import Fastify, { type FastifyBaseLogger, type FastifyError, type FastifyInstance, type FastifyRequest, LogController } from 'fastify';
import type { Logger } from 'pino';
import type { Authenticator } from '../auth/authenticator.ts';
import { readJsonBody } from './json-body.ts';
import { isConnectionLost } from '../store/transact.ts';

declare module 'fastify' {
  interface FastifyRequest {
    accountId: string;
    rawBody: Buffer | undefined;
  }
  interface FastifyContextConfig {
    /** Route needs no signature (health, OpenAPI). */
    public?: boolean;
    /** Route takes bodies up to `maxJsonBytes` (job specs, digest lists); others take SMALL_BODY_BYTES. */
    largeBody?: boolean;
    /** Route keeps the raw JSON body only (it forwards it): it is never parsed here. */
    rawJson?: boolean;
    /** Route whose body is a streamed blob: the signature covers this path parameter as the body digest. */
    signedDigestParam?: string;
  }
}

export interface HttpAppOptions {
  log: Logger;
  auth: Authenticator;
  /** Largest JSON body accepted, on routes that take large bodies. @default 1 MiB */
  maxJsonBytes: number;
  /** Fastify's trustProxy: whose X-Forwarded-For to believe. */
  trustProxy: boolean | string | string[];
  version: string;
}

/** Body limit of routes that take small requests (amounts, ids): most of them. */
export const SMALL_BODY_BYTES = 16 * 1024;
/** No request of this API nests deeper; a stranger's deeper JSON is refused unparsed. */
export const MAX_JSON_DEPTH = 32;

const strictAjv = new Ajv({ coerceTypes: false, removeAdditional: false, useDefaults: false, allErrors: false, strict: false });
const paramsAjv = new Ajv({ coerceTypes: true, removeAdditional: false, useDefaults: true, allErrors: false, strict: false });

function fieldOf(instancePath: string, params: Record<string, unknown> | undefined): string {
  const parts = instancePath.split('/').filter(Boolean);
  if (params && typeof params.additionalProperty === 'string') parts.push(params.additionalProperty);
  if (params && typeof params.missingProperty === 'string') parts.push(params.missingProperty);
  return (
    parts
      .map((p) => (/^\d+$/.test(p) ? `[${p}]` : `.${p}`))
      .join('')
      .replace(/^\./, '') || '(body)'
  );
}

export function toGridworkError(err: FastifyError): GridworkError {
  if (err instanceof GridworkError) return err;
  if (err.validation && err.validation.length > 0) {
    const first = err.validation[0] as { instancePath: string; message?: string; keyword: string; params?: Record<string, unknown> };
    const field = fieldOf(first.instancePath, first.params);
    const message = first.keyword === 'additionalProperties' ? 'unknown field' : (first.message ?? 'invalid');
    const where = err.validationContext === 'body' ? '' : `${err.validationContext} `;
    const details = err.validation.map((v) => ({ path: fieldOf(v.instancePath, v.params as Record<string, unknown>), message: v.message }));
    const code = err.validationContext === 'body' && field.startsWith('spec') ? 'INVALID_SPEC' : 'VALIDATION_FAILED';
    return new GridworkError(code, `${where}${field}: ${message}`, { details });
  }
  switch (err.code) {
    case 'FST_ERR_CTP_BODY_TOO_LARGE':
      return new GridworkError('PAYLOAD_TOO_LARGE', 'request body is larger than the limit');
    case 'FST_ERR_CTP_INVALID_MEDIA_TYPE':
      return new GridworkError('UNSUPPORTED_MEDIA_TYPE', 'unsupported content type: send application/json (or application/octet-stream for blobs)');
    case 'FST_ERR_CTP_EMPTY_JSON_BODY':
      return new GridworkError('BAD_REQUEST', 'empty JSON body');
    case 'FST_ERR_CTP_INVALID_CONTENT_LENGTH':
      return new GridworkError('BAD_REQUEST', 'content-length does not match the body');
  }
  if (typeof err.statusCode === 'number' && err.statusCode >= 400 && err.statusCode < 500) {
    return new GridworkError('BAD_REQUEST', err.message);
  }
  // PostgreSQL restarting or out of reach: retry in a moment (or at another replica).
  if (isConnectionLost(err)) return new GridworkError('UNAVAILABLE', 'the coordinator cannot reach its database right now: retry shortly', { cause: err });
  return new GridworkError('INTERNAL', 'internal error', { cause: err });
}

export async function createHttpApp(options: HttpAppOptions): Promise<FastifyInstance> {
  const app = Fastify({
    loggerInstance: options.log as FastifyBaseLogger,
    // One line per request, at debug level (Fastify's own two lines at info drowned the log).
    logController: new LogController({ disableRequestLogging: true }),
    bodyLimit: SMALL_BODY_BYTES,
    trustProxy: options.trustProxy,
    return503OnClosing: true,
    forceCloseConnections: true,
  });
  app.addHook('onResponse', async (req, reply) => {
    req.log.debug({ method: req.method, url: req.url, status: reply.statusCode, ms: Math.round(reply.elapsedTime) }, 'request');
  });
  app.decorateRequest('accountId', '');
  app.decorateRequest('rawBody', undefined);
  app.setValidatorCompiler(({ schema, httpPart }) => (httpPart === 'body' ? strictAjv : paramsAjv).compile(schema));

  app.addHook('onRoute', (route) => {
    if (route.config?.largeBody) route.bodyLimit = options.maxJsonBytes;
  });
  const signed = (req: FastifyRequest) => req.routeOptions.url !== undefined && !req.routeOptions.config.public;

  // Before the body is read: a request that is not even signed, or is stale, costs nothing more.
  // (Bodiless requests, WebSocket upgrades among them, are authenticated in preValidation: a refusal
  // this early left @fastify/websocket's upgrade socket open, and there is no body to save.)
  app.addHook('onRequest', async (req) => {
    if (signed(req) && req.method !== 'GET' && req.method !== 'HEAD') readAuthHeaders(req.headers);
  });

  app.removeAllContentTypeParsers();
  app.addContentTypeParser('application/json', async (req: FastifyRequest, payload: IncomingMessage) => {
    // Refused while it streams in when too large or too deep (json-body.ts), so neither costs a whole read.
    const config = req.routeOptions.config;
    // (A body forwarded unparsed, to a service, may nest as deep as that service likes.)
    const body = await readJsonBody(payload, req.routeOptions.bodyLimit, config.rawJson ? null : MAX_JSON_DEPTH);
    req.rawBody = body;
    // The signature covers these bytes: check it (and the nonce) before parsing them.
    if (signed(req) && !config.signedDigestParam) req.accountId = await options.auth.authenticate({ method: req.method, url: req.url, headers: req.headers, body });
    if (body.length === 0 || config.rawJson) return undefined;
    try {
      return JSON.parse(body.toString('utf8'));
    } catch (err) {
      throw new GridworkError('BAD_REQUEST', `malformed JSON: ${(err as Error).message}`);
    }
  });
  // Blobs stream straight to the blob store, which hashes and bounds them on the way.
  app.addContentTypeParser('application/octet-stream', (_req, payload, done) => done(null, payload));

  await app.register(swagger, {
    openapi: {
      // TypeBox emits JSON Schema 2020-12 (numeric exclusiveMinimum, const, ...): that is the
      // schema dialect of OpenAPI 3.1, not 3.0. Declaring 3.0.3 made validators reject the document.
      openapi: '3.1.0',
      info: { title: 'Gridwork coordinator API', version: options.version, description: 'Every /v1 request is signed with Ed25519: see the README.' },
      components: {
        securitySchemes: {
          gridworkSignature: { type: 'apiKey', in: 'header', name: 'x-gridwork-signature', description: 'Ed25519 signature over the canonical request' },
        },
      },
      security: [{ gridworkSignature: [] }],
    },
  });
  // Above the protocol's message limit: a message between the two is read and refused with a typed
  // error (provider-channels.ts) instead of closing the socket.
  await app.register(websocket, { options: { maxPayload: WS_MAX_PAYLOAD_BYTES } });

  app.addHook('preValidation', async (req) => {
    const config = req.routeOptions.config;
    // Signed routes with a JSON body were authenticated by the parser.
    if (config.public || req.accountId) return;
    let body: SignedBody = req.rawBody;
    if (config.signedDigestParam) body = { digest: String((req.params as Record<string, string>)[config.signedDigestParam]) };
    req.accountId = await options.auth.authenticate({ method: req.method, url: req.url, headers: req.headers, body });
  });

  app.setErrorHandler((err: FastifyError, req, reply) => {
    const g = toGridworkError(err);
    if (g.code === 'INTERNAL') req.log.error({ err, url: req.url }, 'request failed');
    else if (g.code === 'UNAVAILABLE') req.log.warn({ err: err.message, url: req.url }, 'request failed: the database is out of reach');
    else req.log.info({ code: g.code, message: g.message, url: req.url, method: req.method }, 'request refused');
    // Refused before its body was read (unsigned, stale, too deep): the connection closes rather
    // than reading and discarding the rest of a body nobody will use.
    if (!req.raw.complete) reply.header('connection', 'close');
    reply.status(httpStatusOf[g.code]).send(g.toBody());
  });
  app.setNotFoundHandler((req, reply) => {
    reply.status(404).send(new GridworkError('NOT_FOUND', `no route ${req.method} ${req.url.split('?')[0]}`).toBody());
  });
  return app;
}
