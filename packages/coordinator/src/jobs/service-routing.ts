/**
 * Which replica serves a request to a service job (`/services/<job id>/…`): the job must be a
 * running service the caller may use — its owner, or anyone when the spec makes it public — and
 * one of its replicas healthy; replicas take requests in turn. A read-only query module; the
 * lifecycle records replicas' health.
 */
import { GridworkError } from '@gridwork/protocol';
import type { Db } from '../store/database.ts';

export interface ReplicaTarget {
  /** The agent's ingress URL for this replica, without the request's path. */
  base: string;
  token: string;
  leaseId: string;
}

export class ServiceRouting {
  private readonly turn = new Map<string, number>();

  constructor(private readonly db: Db) {}

  /** A healthy replica for `caller` (null for a public service's anonymous caller), other than those in `skip`. */
  async pick(jobId: string, caller: string | null, skip: ReadonlySet<string> = new Set()): Promise<ReplicaTarget> {
    const job = await this.db.selectFrom('jobs').select(['owner', 'spec', 'state', 'purpose']).where('id', '=', jobId).executeTakeFirst();
    const allowed = job?.spec.service && job.purpose === 'work' && (job.spec.service.public === true || caller === job.owner);
    // Someone else's private service does not exist, as far as the caller can tell.
    if (!job || !allowed) {
      throw new GridworkError('JOB_NOT_FOUND', `service job ${jobId} does not exist${caller === null ? ' (or is private: sign the request as its owner)' : ''}`);
    }
    const replicas = await this.db
      .selectFrom('leases')
      .innerJoin('providers', 'providers.id', 'leases.provider_id')
      .select(['leases.id', 'leases.service_token', 'providers.ingress_url'])
      .where('leases.job_id', '=', jobId)
      .where('leases.state', '=', 'running')
      .where('leases.service_health', '=', 'healthy')
      .where('providers.ingress_url', 'is not', null)
      .orderBy('leases.id')
      .execute()
      .then((rows) => rows.filter((r) => !skip.has(r.id)));
    if (replicas.length === 0) {
      throw new GridworkError('UNAVAILABLE', `service job ${jobId} has no healthy replica (it is ${job.state}${job.state === 'running' || job.state === 'matching' || job.state === 'pending' ? '; replicas may still be starting' : ''})`);
    }
    const n = (this.turn.get(jobId) ?? 0) + 1;
    if (this.turn.size > 10_000) this.turn.clear();
    this.turn.set(jobId, n);
    const r = replicas[n % replicas.length] as (typeof replicas)[number];
    return { base: `${r.ingress_url}/${r.id}`, token: r.service_token as string, leaseId: r.id };
  }
}
