/**
 * The coordinator's Prometheus metrics (prom-client): placements, lease outcomes, jobs and
 * provider transitions counted from the bus's domain events; queue depth, providers by state
 * and heartbeat age read from the database at scrape time; request latencies observed by a
 * Fastify hook (api/metrics-routes.ts). Owns one registry per coordinator (tests run several).
 */
import { Counter, Gauge, Histogram, Registry } from 'prom-client';
import type { Subscriber } from '../bus/bus.ts';
import type { Db } from '../store/database.ts';

export class CoordinatorMetrics {
  readonly registry = new Registry();
  private readonly placements: Counter;
  private readonly leaseOutcomes: Counter<'outcome'>;
  private readonly jobsSubmitted: Counter;
  private readonly jobsEnded: Counter<'state'>;
  private readonly providerTransitions: Counter<'to'>;
  private readonly requests: Histogram<'method' | 'route' | 'status'>;

  constructor(db: Db) {
    const registers = [this.registry];
    this.placements = new Counter({ name: 'gridwork_placements_total', help: 'Leases placed (a task matched to a provider)', registers });
    this.leaseOutcomes = new Counter({ name: 'gridwork_lease_outcomes_total', help: 'Leases ended, by typed outcome', labelNames: ['outcome'], registers });
    this.jobsSubmitted = new Counter({ name: 'gridwork_jobs_submitted_total', help: 'Jobs accepted', registers });
    this.jobsEnded = new Counter({ name: 'gridwork_jobs_ended_total', help: 'Jobs ended, by final state', labelNames: ['state'], registers });
    this.providerTransitions = new Counter({
      name: 'gridwork_provider_transitions_total',
      help: 'Providers coming online or going offline',
      labelNames: ['to'],
      registers,
    });
    this.requests = new Histogram({
      name: 'gridwork_http_request_duration_seconds',
      help: 'HTTP request latency by route (streams count until their headers are sent)',
      labelNames: ['method', 'route', 'status'],
      buckets: [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5],
      registers,
    });
    new Gauge({
      name: 'gridwork_queue_depth',
      help: 'Tasks waiting for a provider',
      registers,
      async collect() {
        const row = await db.selectFrom('tasks').select(db.fn.countAll<string>().as('n')).where('state', '=', 'queued').executeTakeFirst();
        this.set(Number(row?.n ?? 0));
      },
    });
    new Gauge({
      name: 'gridwork_providers',
      help: 'Providers by state',
      labelNames: ['state'],
      registers,
      async collect() {
        const rows = await db
          .selectFrom('providers')
          .select(['state', db.fn.countAll<string>().as('n')])
          .groupBy('state')
          .execute();
        this.reset();
        for (const s of ['online', 'draining', 'offline']) this.set({ state: s }, Number(rows.find((r) => r.state === s)?.n ?? 0));
      },
    });
    new Gauge({
      name: 'gridwork_provider_heartbeat_age_seconds',
      help: 'Seconds since the stalest connected provider last heartbeated (0 when none is online)',
      registers,
      async collect() {
        const row = await db.selectFrom('providers').select(db.fn.min('last_seen_at').as('oldest')).where('state', '!=', 'offline').executeTakeFirst();
        const oldest = row?.oldest ? new Date(row.oldest as Date | string).getTime() : undefined;
        this.set(oldest === undefined ? 0 : Math.max(0, (Date.now() - oldest) / 1000));
      },
    });
  }

  subscriber(): Subscriber {
    return {
      name: 'metrics',
      types: ['lease.placed', 'lease.ended', 'job.submitted', 'job.ended', 'provider.online', 'provider.offline'],
      handle: (events) => {
        for (const e of events) {
          if (e.type === 'lease.placed') this.placements.inc();
          else if (e.type === 'lease.ended') this.leaseOutcomes.inc({ outcome: e.outcome });
          else if (e.type === 'job.submitted') this.jobsSubmitted.inc();
          else if (e.type === 'job.ended') this.jobsEnded.inc({ state: e.state });
          else if (e.type === 'provider.online') this.providerTransitions.inc({ to: 'online' });
          else if (e.type === 'provider.offline') this.providerTransitions.inc({ to: 'offline' });
        }
      },
    };
  }

  observeRequest(method: string, route: string, status: number, seconds: number): void {
    this.requests.observe({ method, route, status: String(status) }, seconds);
  }

  /** The exposition text and its content type. */
  async render(): Promise<{ text: string; contentType: string }> {
    return { text: await this.registry.metrics(), contentType: this.registry.contentType };
  }
}
