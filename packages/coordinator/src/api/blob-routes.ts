/** Content-addressed uploads. The signature covers the digest; the store checks the bytes against it. */
import type { Readable } from 'node:stream';
import { Digest, GridworkError } from '@gridwork/protocol';
import type { FastifyInstance } from 'fastify';
import Type from 'typebox';
import type { BlobService } from '../blobs/blob-service.ts';

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

  app.post<{ Body: { digests: string[] } }>(
    '/v1/blobs/missing',
    {
      schema: {
        tags: ['blobs'],
        summary: 'Which of these digests this account has not uploaded yet',
        body: Type.Object({ digests: Type.Array(Digest, { maxItems: 10000 }) }, { additionalProperties: false }),
      },
    },
    async (req) => ({ missing: await deps.blobs.missing(req.accountId, req.body.digests) }),
  );
}
