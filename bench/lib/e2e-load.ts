/**
 * The load generator of bench/e2e.ts, run in a worker thread so that requesters and simulated
 * providers neither take the coordinator's event loop nor wait on it to read their sockets:
 * their timestamps are taken when a message arrives, not when a busy shared loop gets to it.
 *
 * The main thread sends commands (setup, phase, closeFleet, fairness, shutdown); each answers
 * with plain data. Timestamps are ms on the shared wall clock (performance.timeOrigin + now),
 * comparable across threads.
 */
import { mkdir, readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { parentPort } from 'node:worker_threads';
import type { InputSet, JobSpec, LeaseAssignment, SubmitJobRequest } from '@gridwork/protocol';
import { signedFetch } from '@gridwork/protocol/node';
import { expandGlob, generateIdentity, GridworkClient, hashFile, type Identity, packBundle } from '@gridwork/sdk';
import { nowMs, SimulatedProvider } from '../../packages/sim/src/wire-provider.ts';

export interface Sample {
  key: string;
  jobId?: string;
  t0: number;
  resp?: number;
  /** The POST reply already showed the task assigned. */
  placedInReply?: boolean;
  /** Lease row created_at (server clock, ms resolution); filled in by the main thread. */
  leaseAt?: number;
  assign?: number;
  running?: number;
  finished?: number;
}

export interface SetupRequest {
  url: string;
  dir: string;
  providers: number;
  slots: number;
  submitters: number;
}

export interface PhaseRequest {
  kind: 'warmup' | 'sequential' | 'concurrent';
  jobs: number;
  capMs: number;
}

export interface PhaseReply {
  samples: Sample[];
  start: number;
  end: number;
}

export interface FairnessRequest {
  url: string;
  dir: string;
  shards: number;
  slots: number;
  taskMs: number;
  capMs: number;
}

export interface FairnessReply {
  shards: number;
  files: number;
  prepareMs: number;
  missingMs: number;
  uploadMs: number;
  submitMs: number;
  aDone: number;
  aRunMs: number | null;
  aCapped: boolean;
  bWaitMs: number | null;
  /** When B never started within the cap: how long it had waited by then (a lower bound). */
  bWaitedAtLeastMs: number | null;
  /** B's submit call (POST /v1/jobs round trip); null if it had not returned by the cap. */
  bSubmitMs: number | null;
  /** A's tasks finished per second (from A's submit call to its last finished task). */
  aTasksPerS: number;
  aDoneWhenBRan: number | null;
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

export function oneTaskSpec(key: string): JobSpec {
  return {
    version: 1,
    name: `e2e-${key}`.slice(0, 60),
    kind: 'batch',
    runtime: { kind: 'bundle', path: './bundle', command: ['node', 'task.mjs'], env: { BENCH_JOB: key } },
    resources: { cpu: 1, memoryGiB: 1 },
    price: { maxPerHour: '1', budget: '0.05' },
  };
}

// ── state of this worker ───────────────────────────────────────────────────────────────
const errors: string[] = [];
const onError = (m: string) => {
  if (errors.length < 50) errors.push(m);
};
let fleet: SimulatedProvider[] = [];
let submitters: GridworkClient[] = [];
let manifest = '';
let url = '';
/** Samples by BENCH_JOB: the assignment can arrive before the POST reply is read. */
const samples = new Map<string, Sample>();
const leaseKey = new Map<string, string>();
/** The job of each sample's first lease. */
const sampleJob = new Map<string, string>();
const runningWaiters = new Map<string, () => void>();
let finishedCount = 0;
let finishedWaiter: (() => void) | undefined;

function onAssign(lease: LeaseAssignment, at: number): void {
  const key = lease.runtime.env.BENCH_JOB;
  if (!key) return;
  const s = samples.get(key);
  if (!s) return;
  // The job's own lease is the first assigned (a retry of it, if it was lost, has the same job);
  // leases of other jobs carrying the same env are the verification's re-runs of it (a new
  // provider's probation audits): not this sample's stages.
  if (s.assign === undefined) {
    s.assign = at;
    sampleJob.set(key, lease.jobId);
  } else if (sampleJob.get(key) !== lease.jobId) return;
  leaseKey.set(lease.leaseId, key);
}

function onApplied(leaseId: string, what: 'started' | 'finished', at: number): void {
  const key = leaseKey.get(leaseId);
  const s = key === undefined ? undefined : samples.get(key);
  if (!s || key === undefined) return;
  if (what === 'started') {
    s.running = at;
    runningWaiters.get(key)?.();
    runningWaiters.delete(key);
  } else {
    s.finished = at;
    finishedCount++;
    finishedWaiter?.();
  }
}

let bundle: { files: { absPath: string; digest: string }[]; manifestBytes: Uint8Array; manifestDigest: string } | undefined;

/** Packs the bundle once; jobs then only name its manifest. */
async function packTheBundle(dir: string): Promise<string> {
  await mkdir(join(dir, 'bundle'), { recursive: true });
  await writeFile(join(dir, 'bundle', 'task.mjs'), 'console.log("hello from an e2e bench task");\n');
  bundle = await packBundle(join(dir, 'bundle'));
  return bundle.manifestDigest;
}

/**
 * Uploads the bundle as `client`: each account uploads what its jobs name (a coordinator may
 * accept only blobs the submitting account has uploaded itself; re-uploading a blob is cheap).
 */
async function uploadBundle(client: GridworkClient): Promise<void> {
  if (!bundle) throw new Error('bundle not packed');
  for (const f of bundle.files) await client.uploadBlob(await readFile(f.absPath), f.digest);
  await client.uploadBlob(bundle.manifestBytes, bundle.manifestDigest);
}

async function setup(req: SetupRequest): Promise<{ connectMs: number }> {
  url = req.url;
  const c0 = nowMs();
  for (let i = 0; i < req.providers; i += 10) {
    const batch = Array.from(
      { length: Math.min(10, req.providers - i) },
      (_, k) => new SimulatedProvider({ url, name: `sim-${i + k}`, slots: req.slots, cores: req.slots, onAssign, onApplied, onError }),
    );
    await Promise.all(batch.map((p) => p.connect()));
    fleet.push(...batch);
  }
  const connectMs = nowMs() - c0;
  submitters = [];
  for (let i = 0; i < Math.max(1, req.submitters); i++) {
    const c = new GridworkClient({ url, identity: generateIdentity() });
    await c.deposit('500');
    submitters.push(c);
  }
  manifest = await packTheBundle(join(req.dir, 'job'));
  for (const c of submitters) await uploadBundle(c);
  return { connectMs };
}

async function submitOne(client: GridworkClient, key: string): Promise<Sample> {
  const s: Sample = { key, t0: nowMs() };
  samples.set(key, s);
  const req: SubmitJobRequest = { spec: oneTaskSpec(key), bundle: { manifest }, inputs: [] };
  const view = await client.submitPrepared(req);
  s.resp = nowMs();
  s.jobId = view.id;
  s.placedInReply = view.tasks.every((t) => t.state !== 'queued');
  return s;
}

async function waitFinished(target: number, deadline: number): Promise<void> {
  while (finishedCount < target && nowMs() < deadline) {
    await new Promise<void>((r) => {
      finishedWaiter = r;
      setTimeout(r, 250);
    });
  }
  finishedWaiter = undefined;
}

async function phase(req: PhaseRequest): Promise<PhaseReply> {
  const list: Sample[] = [];
  const finishedBefore = finishedCount;
  const start = nowMs();
  const deadline = start + req.capMs;
  const first = submitters[0] as GridworkClient;
  if (req.kind === 'concurrent') {
    // One account per submitter, each submitting its next job as soon as the last is accepted.
    let next = 0;
    await Promise.all(
      submitters.map(async (client) => {
        while (next < req.jobs && nowMs() < deadline) {
          const i = next++;
          list.push(await submitOne(client, `c${i}`));
        }
      }),
    );
  } else {
    // One job at a time; the next is submitted once the previous one is running.
    const prefix = req.kind === 'warmup' ? 'w' : 's';
    for (let i = 0; i < req.jobs && nowMs() < deadline; i++) {
      const key = `${prefix}${i}`;
      const running = new Promise<void>((r) => runningWaiters.set(key, r));
      const s = await submitOne(first, key);
      list.push(s);
      if (s.running === undefined) await Promise.race([running, sleep(5000)]);
      runningWaiters.delete(key);
    }
  }
  await waitFinished(finishedBefore + list.length, deadline + 5000);
  return { samples: list, start, end: nowMs() };
}

async function closeFleet(): Promise<void> {
  await Promise.all(fleet.map((p) => p.close()));
  fleet = [];
}

/** POST /v1/blobs/missing, as the SDK's upload step asks it. */
async function missingBlobs(identity: Identity, digests: string[]): Promise<string[]> {
  const res = await signedFetch(url, identity, 'POST', '/v1/blobs/missing', { body: { json: { digests } } });
  return ((await res.json()) as { missing: string[] }).missing;
}

/**
 * Account A submits one job of `shards` shards over as many tiny files — the SDK's steps, each
 * timed: hash the files, ask which blobs are missing, upload each, submit — onto two providers
 * whose tasks take `taskMs`; as soon as A's submit returns, account B submits a one-task job.
 */
async function fairness(req: FairnessRequest): Promise<FairnessReply> {
  const base = join(req.dir, 'fair');
  await mkdir(join(base, 'inputs'), { recursive: true });
  for (let i = 0; i < req.shards; i++) await writeFile(join(base, 'inputs', `part-${String(i).padStart(5, '0')}.txt`), `shard ${i}\n`);

  let aDone = 0;
  let aLast = 0;
  let bRunning: number | undefined;
  let aDoneWhenBRan: number | null = null;
  let allDone: (() => void) | undefined;
  let bStartedNow: (() => void) | undefined;
  const bStarted = new Promise<void>((r) => {
    bStartedNow = r;
  });
  const leaseJob = new Map<string, string>();
  const providers = [0, 1].map(
    (i) =>
      new SimulatedProvider({
        url: req.url,
        name: `fair-${i}`,
        slots: req.slots,
        cores: req.slots,
        taskMs: req.taskMs,
        onError,
        onAssign: (lease) => leaseJob.set(lease.leaseId, lease.runtime.env.BENCH_JOB ?? ''),
        onApplied: (leaseId, what, at) => {
          const who = leaseJob.get(leaseId);
          if (who === 'B' && what === 'started') {
            bRunning = at;
            aDoneWhenBRan = aDone;
            bStartedNow?.();
          }
          if (who === 'A' && what === 'finished') {
            aDone++;
            aLast = at;
            if (aDone >= req.shards) allDone?.();
          }
        },
      }),
  );
  try {
    await Promise.all(providers.map((p) => p.connect()));
    const aId = generateIdentity();
    const a = new GridworkClient({ url: req.url, identity: aId });
    const b = new GridworkClient({ url: req.url, identity: generateIdentity() });
    await a.deposit('100');
    await b.deposit('10');
    await uploadBundle(a);
    await uploadBundle(b);

    const p0 = nowMs();
    const matched = await expandGlob(base, 'inputs/*.txt');
    const files: { path: string; absPath: string; digest: string; size: number }[] = [];
    for (const f of matched) files.push({ ...f, ...(await hashFile(f.absPath)) });
    const p1 = nowMs();
    const missing = await missingBlobs(
      aId,
      files.map((f) => f.digest),
    );
    const p2 = nowMs();
    const byDigest = new Map(files.map((f) => [f.digest, f]));
    // One PUT after another: the SDK before batch uploads (GridworkClient.submit now packs small files
    // into batches; bench/uploads.ts compares the two). Kept so that A's upload loads the store the same way run to run.
    for (const digest of missing) await a.uploadBlob(await readFile((byDigest.get(digest) as (typeof files)[number]).absPath), digest);
    const p3 = nowMs();
    const spec: JobSpec = {
      ...oneTaskSpec('A'),
      name: 'fair-a',
      inputs: [{ name: 'parts', path: 'inputs/*.txt', shard: true }],
      shards: req.shards,
      price: { maxPerHour: '1', budget: '50' },
    };
    const inputs: InputSet[] = [{ name: 'parts', shard: true, files: files.map((f) => ({ path: f.path, digest: f.digest, size: f.size })) }];
    const finished = new Promise<void>((r) => {
      allDone = r;
    });
    await a.submitPrepared({ spec, bundle: { manifest }, inputs });
    const p4 = nowMs();
    // B's submit is not awaited before the cap starts: the call itself waits for a scheduling
    // pass, and while A keeps the scheduler busy that wait can be long (it is reported).
    const b0 = nowMs();
    let bResp: number | undefined;
    const bSubmit = b
      .submitPrepared({ spec: { ...oneTaskSpec('B'), name: 'fair-b' }, bundle: { manifest }, inputs: [] })
      .then(() => {
        bResp = nowMs();
      })
      .catch((err: Error) => onError(`B's submit failed: ${err.message}`));
    const capped = await Promise.race([Promise.all([finished, bSubmit, bStarted]).then(() => false), sleep(req.capMs).then(() => true)]);
    const capEnd = nowMs();
    return {
      shards: req.shards,
      files: files.length,
      prepareMs: p1 - p0,
      missingMs: p2 - p1,
      uploadMs: p3 - p2,
      submitMs: p4 - p3,
      aDone,
      aRunMs: aDone >= req.shards ? aLast - p3 : null,
      aCapped: capped,
      bWaitMs: bRunning === undefined ? null : bRunning - b0,
      bWaitedAtLeastMs: bRunning === undefined ? capEnd - b0 : null,
      bSubmitMs: bResp === undefined ? null : bResp - b0,
      aTasksPerS: aDone > 0 ? aDone / ((aLast - p3) / 1000) : 0,
      aDoneWhenBRan,
    };
  } finally {
    await Promise.all(providers.map((p) => p.close()));
  }
}

const handlers: Record<string, (payload: never) => Promise<unknown>> = {
  setup,
  phase,
  closeFleet,
  fairness,
  errors: async () => errors.splice(0),
};

parentPort?.on('message', (msg: { id: number; cmd: string; payload: unknown }) => {
  const handler = handlers[msg.cmd];
  if (!handler) {
    parentPort?.postMessage({ id: msg.id, error: `unknown command ${msg.cmd}` });
    return;
  }
  handler(msg.payload as never).then(
    (result) => parentPort?.postMessage({ id: msg.id, result }),
    (err: Error) => parentPort?.postMessage({ id: msg.id, error: err.stack ?? String(err) }),
  );
});
