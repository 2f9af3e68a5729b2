/**
 * One run of the full demo as the requester lives it: the jobs it submitted (with when their
 * results came in), the claims the demo makes and whether each held, and the helpers every step
 * uses — submit, wait with a deadline while a progress bar follows the job, download results,
 * call a service through the coordinator's ingress.
 */
import { join } from 'node:path';
import type { JobView } from '@gridwork/protocol';
import type { Identity } from '@gridwork/protocol/node';
import type { GridworkClient } from '@gridwork/sdk';
import type { DemoNetwork } from './demo-network.ts';
import type { DemoProgress } from './demo-progress.ts';
import type { Workload } from './workloads.ts';

export type StepId = 'train' | 'inference' | 'service' | 'cluster' | 'audit';

/** Something the demo says it did, and whether it did. Any claim that does not hold fails the demo. */
export interface Claim {
  step: StepId;
  claim: string;
  ok: boolean;
  detail: string;
}

export interface JobRecord {
  step: StepId;
  workload: Workload;
  id: string;
  /** Demo clock (ms since the epoch). */
  submittedAt: number;
  /** When its results were all in (or, for a service, when it was stopped). */
  readyAt: number | null;
  /** The latest snapshot. */
  view: JobView;
  /** What the demo adds to the report about it (a resume, a re-run of a shard …). */
  notes: string[];
}

export interface WaitOptions {
  until?: 'results' | 'end';
  timeoutMs?: number;
}

export class DemoRun {
  readonly claims: Claim[] = [];
  readonly jobs: JobRecord[] = [];
  readonly steps: { step: StepId; title: string; elapsedMs: number }[] = [];

  constructor(
    readonly net: DemoNetwork,
    readonly requester: GridworkClient,
    private readonly requesterIdentity: Identity,
    readonly progress: DemoProgress,
    readonly dataDir: string,
  ) {}

  claim(step: StepId, claim: string, ok: boolean, detail: string): boolean {
    this.claims.push({ step, claim, ok, detail });
    if (ok) this.progress.ok(`${claim}: ${detail}`);
    else this.progress.fail(`${claim}: ${detail}`);
    return ok;
  }

  providerName(id: string | null | undefined): string {
    if (!id) return '-';
    return this.net.byId(id)?.profile.name ?? `${id.slice(0, 8)}…`;
  }

  /** The coordinator's messages name providers by the start of their key ("iYrAbOaU…"): these become names. */
  named(text: string): string {
    let out = text;
    for (const p of this.net.providers) out = out.replaceAll(`${p.agent.id.slice(0, 8)}…`, p.profile.name);
    return out;
  }

  async submit(step: StepId, workload: Workload): Promise<JobRecord> {
    const view = await this.requester.submit(workload.spec, { baseDir: workload.baseDir });
    const record: JobRecord = { step, workload, id: view.id, submittedAt: Date.now(), readyAt: null, view, notes: [] };
    this.jobs.push(record);
    this.progress.note(
      `submitted ${workload.spec.name} (${workload.source}, kind: ${workload.spec.kind}) as ${view.id}: ${view.tasks.length} task${view.tasks.length === 1 ? '' : 's'}`,
    );
    return record;
  }

  /** Waits for a job's results (or its end), with a progress bar; throws once `timeoutMs` has passed. */
  async wait(record: JobRecord, options: WaitOptions = {}): Promise<JobView> {
    const timeoutMs = options.timeoutMs ?? 90_000;
    const until = options.until ?? 'results';
    const label = record.workload.spec.name;
    const show = (job: JobView) => {
      record.view = job;
      const done = job.tasks.filter((t) => t.state === 'succeeded').length;
      const where = [...new Set(job.tasks.map((t) => t.providerName).filter((n): n is string => n !== null))].join(', ');
      this.progress.bar(record.id, label, done, job.tasks.length, `${job.state} ${done}/${job.tasks.length}${where ? ` on ${where}` : ''}`);
    };
    try {
      const job = await this.requester.wait(record.id, { until, signal: AbortSignal.timeout(timeoutMs), onUpdate: show });
      record.view = job;
      record.readyAt ??= Date.now();
      return job;
    } catch (err) {
      if ((err as { code?: string }).code === 'ABORTED') {
        throw new Error(
          `${label} (${record.id}) is still ${record.view.state} after ${Math.round(timeoutMs / 1000)} s${record.view.error ? `: ${record.view.error}` : ''}`,
        );
      }
      throw err;
    } finally {
      this.progress.done(record.id);
    }
  }

  async refresh(record: JobRecord): Promise<JobView> {
    record.view = await this.requester.get(record.id);
    return record.view;
  }

  /** Downloads a job's outputs (and its manifest) to the demo's data directory; returns the files. */
  async results(record: JobRecord, dir = join(this.dataDir, 'results', record.workload.spec.name)): Promise<string[]> {
    return this.requester.results(record.id, dir);
  }

  /** A request to a service through the coordinator's ingress, signed with the requester's key (the owner's). */
  async ingress(jobId: string, method: 'GET' | 'POST', path: string, body?: unknown): Promise<{ status: number; replica: string | null; body: unknown }> {
    const { signRequest } = await import('@gridwork/protocol/node');
    const full = `/services/${jobId}${path}`;
    const raw = body === undefined ? undefined : Buffer.from(JSON.stringify(body));
    const headers: Record<string, string> = raw ? { 'content-type': 'application/json' } : {};
    Object.assign(headers, signRequest(this.requesterIdentity, method, full, raw));
    const res = await fetch(new URL(full, this.net.url), { method, headers, ...(raw ? { body: raw } : {}), signal: AbortSignal.timeout(15_000) });
    const text = await res.text();
    let parsed: unknown = text;
    try {
      parsed = text ? JSON.parse(text) : null;
    } catch {
      // not JSON: kept as text
    }
    return { status: res.status, replica: res.headers.get('x-gridwork-replica'), body: parsed };
  }
}

/** Resolves when `predicate` holds for a fresh read; throws after `timeoutMs` naming `what`. */
export async function until<T>(read: () => Promise<T>, predicate: (value: T) => boolean, what: string, timeoutMs = 90_000, pollMs = 250): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const value = await read();
    if (predicate(value)) return value;
    if (Date.now() > deadline) throw new Error(`timed out after ${Math.round(timeoutMs / 1000)} s waiting for ${what}`);
    await new Promise((r) => setTimeout(r, pollMs));
  }
}

/** Tasks per provider of a job's final snapshot: { "provider-3": 2, … }. */
export function tasksByProvider(run: DemoRun, job: JobView): Record<string, number> {
  const out: Record<string, number> = {};
  for (const t of job.tasks) {
    if (!t.providerId) continue;
    const name = run.providerName(t.providerId);
    out[name] = (out[name] ?? 0) + 1;
  }
  return out;
}
