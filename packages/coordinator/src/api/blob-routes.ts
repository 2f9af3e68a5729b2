/**
 * Content-addressed uploads. The signature covers the digest; the store checks the bytes against it.
 * Small blobs travel many to a request (`POST /v1/blobs/batch/:digest`, see blobs/blob-batch.ts):
 * `:digest` is the sha256 of the whole body, so the signature is checked before the body is read,
 * as for a single blob, and the body against it before anything is recorded.
 */
import type { Readable } from 'node:stream';
import { Digest, GridworkError } from '@gridwork/protocol';
import type { FastifyInstance } from 'fastify';
import Type from 'typebox';
import { BLOB_BATCH_LIMITS, FRAME_HEADER_BYTES } from '../blobs/blob-batch.ts';
import type { BlobService } from '../blobs/blob-service.ts';

const MiB = 1024 * 1024;

export function registerBlobRoutes(app: FastifyInstance, deps: { blobs: BlobService }): void {
  app.put<{ Params: { digest: string } }>(
    '/v1/blobs/:digest',
    {
      config: { signedDigestParam: 'digest' },
      schema: { tags: ['blobs'], summary: 'Upload a blob (application/octet-stream); idempotent', params: Type.Object({ digest: Digest }) },
    },
    async (req, reply) => {
      if (!req.headers['content-type']?.startsWith('application/octet-stream')) {
        throw new GridworkError('UNSUPPORTED_MEDIA_TYPE', 'blobs are sent as application/octet-stream');
      }
      const declared = Number(req.headers['content-length'] ?? Number.NaN);
      const result = await deps.blobs.put(req.accountId, req.params.digest, req.body as Readable, Number.isFinite(declared) ? declared : undefined);
      reply.status(result.created ? 201 : 200);
      return result;
    },
  );

  app.post<{ Params: { digest: string } }>(
    '/v1/blobs/batch/:digest',
    {
      config: { signedDigestParam: 'digest' },
      schema: {
        tags: ['blobs'],
        summary: 'Upload many small blobs in one request (application/octet-stream); all or nothing',
        description:
          `The body is frames back to back, each: the blob's sha256 (32 raw bytes), its length (${FRAME_HEADER_BYTES - 32}-byte unsigned ` +
          `big-endian), its bytes. \`digest\` is the sha256 of the whole body (what the signature covers). At most ` +
          `${BLOB_BATCH_LIMITS.maxBlobs} blobs of at most ${BLOB_BATCH_LIMITS.maxBlobBytes / MiB} MiB each (and maxBlobBytes), ` +
          `${BLOB_BATCH_LIMITS.maxBodyBytes / MiB} MiB in all. Answers { stored: [{ digest, size, created }] } in body order.`,
        params: Type.Object({ digest: Digest }),
      },
    },
    async (req, reply) => {
      if (!req.headers['content-type']?.startsWith('application/octet-stream')) {
        throw new GridworkError('UNSUPPORTED_MEDIA_TYPE', 'a blob batch is sent as application/octet-stream');
      }
      const declared = Number(req.headers['content-length'] ?? Number.NaN);
      try {
        const stored = await deps.blobs.putBatch(req.accountId, req.params.digest, req.body as Readable, Number.isFinite(declared) ? declared : undefined);
        return { stored };
      } catch (err) {
        // Refused before the body's end (too large, a bad frame): the rest of it is still on this
        // connection, possibly megabytes. Answer, then close it, rather than read it all or leave
        // it to stall the client's next request.
        if (!req.raw.complete) reply.header('connection', 'close');
        throw err;
      }
    },
  );

  app.post<{ Body: { digests: string[] } }>(
    '/v1/blobs/missing',
    {
      config: { largeBody: true },
      schema: {
        tags: ['blobs'],
        summary: 'Which of these digests this account has not uploaded yet',
        body: Type.Object({ digests: Type.Array(Digest, { maxItems: 10000 }) }, { additionalProperties: false }),
      },
    },
    async (req) => ({ missing: await deps.blobs.missing(req.accountId, req.body.digests) }),
  );
}
