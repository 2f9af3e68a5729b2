/**
 * The Fastify instance and what every route shares: strict body validation (no coercion, no
 * silent removal of fields), raw-body capture for signatures, signed-request authentication,
 * and one error shape `{ error: { code, message, details } }` with stable codes.
 */
import swagger from '@fastify/swagger';
import websocket from '@fastify/websocket';
import { GridworkError, httpStatusOf } from '@gridwork/protocol';
import type { SignedBody } from '@gridwork/protocol/node';
import { Ajv } from 'ajv';
import Fastify, { type FastifyBaseLogger, type FastifyError, type FastifyInstance, type FastifyRequest, LogController } from 'fastify';
import type { Logger } from 'pino';
import type { Authenticator } from '../auth/authenticator.ts';

declare module 'fastify' {
  interface FastifyRequest {
    accountId: string;
    rawBody: Buffer | undefined;
  }
  interface FastifyContextConfig {
    /** Route needs no signature (health, OpenAPI). */
    public?: boolean;
    /** Route whose body is a streamed blob: the signature covers this path parameter as the body digest. */
    signedDigestParam?: string;
  }
}

export interface HttpAppOptions {
  log: Logger;
  auth: Authenticator;
  /** Largest JSON body accepted. @default 1 MiB */
  maxJsonBytes: number;
  version: string;
}

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
  return new GridworkError('INTERNAL', 'internal error', { cause: err });
}

export async function createHttpApp(options: HttpAppOptions): Promise<FastifyInstance> {
  const app = Fastify({
    loggerInstance: options.log as FastifyBaseLogger,
    // One line per request, at debug level (Fastify's own two lines at info drowned the log).
    logController: new LogController({ disableRequestLogging: true }),
    bodyLimit: options.maxJsonBytes,
    return503OnClosing: true,
    forceCloseConnections: true,
  });
  app.addHook('onResponse', async (req, reply) => {
    req.log.debug({ method: req.method, url: req.url, status: reply.statusCode, ms: Math.round(reply.elapsedTime) }, 'request');
  });
  app.decorateRequest('accountId', '');
  app.decorateRequest('rawBody', undefined);
  app.setValidatorCompiler(({ schema, httpPart }) => (httpPart === 'body' ? strictAjv : paramsAjv).compile(schema));

  app.removeAllContentTypeParsers();
  app.addContentTypeParser('application/json', { parseAs: 'buffer' }, (req: FastifyRequest, body: Buffer, done) => {
    req.rawBody = body;
    if (body.length === 0) return done(null, undefined);
    try {
      done(null, JSON.parse(body.toString('utf8')));
    } catch (err) {
      done(new GridworkError('BAD_REQUEST', `malformed JSON: ${(err as Error).message}`), undefined);
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
  await app.register(websocket, { options: { maxPayload: 4 * 1024 * 1024 } });

  app.addHook('preValidation', async (req) => {
    const config = req.routeOptions.config;
    if (config.public) return;
    let body: SignedBody = req.rawBody;
    if (config.signedDigestParam) body = { digest: String((req.params as Record<string, string>)[config.signedDigestParam]) };
    req.accountId = await options.auth.authenticate({ method: req.method, url: req.url, headers: req.headers, body });
  });

  app.setErrorHandler((err: FastifyError, req, reply) => {
    const g = toGridworkError(err);
    if (g.code === 'INTERNAL') req.log.error({ err, url: req.url }, 'request failed');
    else req.log.info({ code: g.code, message: g.message, url: req.url, method: req.method }, 'request refused');
    reply.status(httpStatusOf[g.code]).send(g.toBody());
  });
  app.setNotFoundHandler((req, reply) => {
    reply.status(404).send(new GridworkError('NOT_FOUND', `no route ${req.method} ${req.url.split('?')[0]}`).toBody());
  });
  return app;
}
