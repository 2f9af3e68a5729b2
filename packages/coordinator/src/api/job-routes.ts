/** Requester routes: jobs, their events, logs and blobs. No business logic here. */
import { AmountRequest, canonicalJson, Digest, parseCredits, SubmitJobRequest } from '@gridwork/protocol';
import { sha256Hex } from '@gridwork/protocol/node';
import type { FastifyInstance } from 'fastify';
import Type from 'typebox';
import type { BlobStore } from '../blobs/blob-store.ts';
import type { JobStreams } from '../jobs/job-streams.ts';
import type { JobService } from '../jobs/job-service.ts';
import type { Verifier } from '../verify/verification.ts';
import { sendNdjson } from './ndjson.ts';

export interface JobRoutesDeps {
  jobs: JobService;
  blobs: BlobStore;
  streams: JobStreams;
  verifier: Verifier;
  /** Keepalive interval of streams. @default 15 s */
  keepaliveMs?: number;
}

const JobParams = Type.Object({ id: Type.String({ pattern: '^job_[a-z2-7]{16}$' }) });

export function registerJobRoutes(app: FastifyInstance, deps: JobRoutesDeps): void {
  const { jobs, streams } = deps;

  app.post<{ Body: SubmitJobRequest }>('/v1/jobs', { config: { largeBody: true }, schema: { tags: ['jobs'], summary: 'Submit a job', body: SubmitJobRequest } }, async (req, reply) => {
    reply.status(201);
    return jobs.submit(req.accountId, req.body);
  });

  app.get<{ Querystring: { limit: number } }>(
    '/v1/jobs',
    {
      schema: {
        tags: ['jobs'],
        summary: 'List your jobs, newest first',
        querystring: Type.Object({ limit: Type.Integer({ minimum: 1, maximum: 1000, default: 50 }) }),
      },
    },
    async (req) => ({ jobs: await jobs.list(req.accountId, req.query.limit) }),
  );

  app.get<{ Params: { id: string } }>(
    '/v1/jobs/:id',
    { schema: { tags: ['jobs'], summary: 'A job with its tasks and outputs', params: JobParams } },
    async (req) => jobs.get(req.accountId, req.params.id, { explain: true }),
  );

  app.post<{ Params: { id: string } }>('/v1/jobs/:id/cancel', { schema: { tags: ['jobs'], summary: 'Cancel a job', params: JobParams } }, async (req) =>
    jobs.cancel(req.accountId, req.params.id),
  );

  app.post<{ Params: { id: string; index: number } }>(
    '/v1/jobs/:id/tasks/:index/dispute',
    {
      schema: {
        tags: ['jobs'],
        summary: "Dispute a task's pending result: post a bond, a referee provider re-runs the task",
        params: Type.Object({ id: JobParams.properties.id, index: Type.Integer({ minimum: 0, maximum: 9999 }) }),
      },
    },
    async (req, reply) => {
      reply.status(201);
      return deps.verifier.dispute(req.accountId, req.params.id, req.params.index);
    },
  );

  app.post<{ Params: { id: string }; Body: AmountRequest }>(
    '/v1/jobs/:id/budget',
    { schema: { tags: ['jobs'], summary: "Add to a job's budget (from your available balance)", params: JobParams, body: AmountRequest } },
    async (req) => {
      const amount = parseCredits(req.body.amount, { field: 'amount', allowZero: false });
      return jobs.addBudget(
        req.accountId,
        req.params.id,
        amount,
        req.body.idempotencyKey,
        sha256Hex(canonicalJson({ op: 'budget', job: req.params.id, amount: req.body.amount })),
      );
    },
  );

  app.get<{ Params: { id: string }; Querystring: { after?: string } }>(
    '/v1/jobs/:id/events',
    {
      schema: {
        tags: ['jobs'],
        summary:
          'NDJSON stream of job snapshots { type: "job", job, position }: one now, one per change, ends when the job ends. Empty lines are keepalives; resume with ?after=<last position>.',
        params: JobParams,
        querystring: Type.Object({ after: Type.Optional(Type.String({ pattern: '^[0-9]{1,19}$' })) }),
      },
    },
    async (req, reply) => {
      const owner = req.accountId;
      const jobId = req.params.id;
      await jobs.get(owner, jobId); // ownership check before the stream starts
      return sendNdjson(req, reply, (signal) => streams.snapshots(owner, jobId, signal), deps.keepaliveMs);
    },
  );

  app.get<{ Params: { id: string }; Querystring: { after: string; follow: boolean; limit: number } }>(
    '/v1/jobs/:id/logs',
    {
      schema: {
        tags: ['jobs'],
        summary: 'NDJSON log entries after a cursor; with follow, stays open until the job ends (empty lines are keepalives)',
        params: JobParams,
        querystring: Type.Object({
          after: Type.String({ pattern: '^[0-9]{1,19}$', default: '0' }),
          follow: Type.Boolean({ default: false }),
          limit: Type.Integer({ minimum: 1, maximum: 100000, default: 10000 }),
        }),
      },
    },
    async (req, reply) => {
      const owner = req.accountId;
      const jobId = req.params.id;
      const { follow, limit } = req.query;
      const after = BigInt(req.query.after);
      await jobs.logs(owner, jobId, after, 1);
      return sendNdjson(req, reply, (signal) => streams.logs(jobId, after, { follow, limit }, signal), deps.keepaliveMs);
    },
  );

  app.get<{ Params: { id: string; digest: string } }>(
    '/v1/jobs/:id/blobs/:digest',
    {
      schema: {
        tags: ['jobs'],
        summary: "Download a blob of a job (bundle, input, output): for the job's owner and providers leasing its tasks",
        params: Type.Object({ id: JobParams.properties.id, digest: Digest }),
      },
    },
    async (req, reply) => {
      await jobs.assertBlobAccess(req.accountId, req.params.id, req.params.digest);
      const { stream, size } = await deps.blobs.open(req.params.digest);
      reply.header('content-type', 'application/octet-stream').header('content-length', size).header('etag', `"${req.params.digest}"`);
      return reply.send(stream);
    },
  );
}
