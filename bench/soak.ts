/**
 * The soak (issue 15, item 6): random faults, one after another, against a network of processes
 * with a PostgreSQL and a NATS of its own (testkit/replica-cluster.ts) while jobs keep arriving —
 * SIGKILL of an edge replica, of the leader, of NATS, of a provider; a provider silenced with
 * SIGSTOP past its heartbeat timeout; PostgreSQL restarted (fast, or immediate: a crash with
 * recovery). Each killed piece comes back. At the end every job must have succeeded, every task
 * completed exactly once, the ledger be exact and the durable reputation subscriber have counted
 * each lease ending once (ReplicaCluster.audit). Exits 1 otherwise.
 *
 *   npm run bench -- soak                       # 200 faults, 3 replicas, 4 providers
 *   node --import tsx bench/soak.ts --faults 20 --seed 7
 *
 * Prints a table of the faults and their recovery times, then one JSON line.
 */
import { parseArgs } from 'node:util';
import { ReplicaCluster } from '../packages/testkit/src/replica-cluster.ts';
import { type Rand, machineInfo, printTable, rng, summarize, weighted } from './lib/common.ts';

const { values: args } = parseArgs({
  options: {
    faults: { type: 'string', default: '200' },
    replicas: { type: 'string', default: '3' },
    providers: { type: 'string', default: '4' },
    seed: { type: 'string', default: '1' },
  },
});
const FAULTS = Number(args.faults);
const REPLICAS = Number(args.replicas);
const PROVIDERS = Number(args.providers);
const TASK_MS = 1500;
const HEARTBEAT_MS = 1000;

type Fault = 'edge' | 'leader' | 'nats' | 'provider' | 'silent-provider' | 'pg-fast' | 'pg-crash';
const FAULT_WEIGHTS: readonly (readonly [Fault, number])[] = [
  ['edge', 3],
  ['leader', 3],
  ['provider', 3],
  ['nats', 1],
  ['silent-provider', 1],
  ['pg-fast', 1],
  ['pg-crash', 1],
];

async function inject(c: ReplicaCluster, fault: Fault, r: Rand): Promise<number> {
  const t0 = Date.now();
  switch (fault) {
    case 'edge':
    case 'leader': {
      const leader = await c.leader();
      const i = fault === 'leader' ? leader : (leader + 1 + Math.floor(r() * (REPLICAS - 1))) % REPLICAS;
      await c.killReplica(i);
      // Recovery: for the leader, until another leads; for an edge, until it is back.
      if (fault === 'leader') await c.leader();
      const took = Date.now() - t0;
      await c.startReplica(i);
      return fault === 'leader' ? took : Date.now() - t0;
    }
    case 'nats':
      await c.nats.kill9();
      await new Promise((res) => setTimeout(res, 1000));
      await c.nats.start();
      return Date.now() - t0;
    case 'provider': {
      const i = Math.floor(r() * PROVIDERS);
      await c.killProvider(i);
      await c.startProvider(i);
      return Date.now() - t0;
    }
    case 'silent-provider': {
      const i = Math.floor(r() * PROVIDERS);
      c.pauseProvider(i);
      // Past the heartbeat timeout (3 missed) and the sweep after it.
      await new Promise((res) => setTimeout(res, HEARTBEAT_MS * 5));
      c.resumeProvider(i);
      return Date.now() - t0;
    }
    case 'pg-fast':
    case 'pg-crash':
      await c.pg.restart(fault === 'pg-fast' ? 'fast' : 'immediate');
      return Date.now() - t0;
  }
}

async function main(): Promise<void> {
  const r = rng(Number(args.seed));
  const started = Date.now();
  const c = await ReplicaCluster.start({ replicas: REPLICAS, providers: PROVIDERS, slots: 2, heartbeatMs: HEARTBEAT_MS });
  const times = new Map<Fault, number[]>();
  let submitted = 0;
  let submitFailures = 0;
  try {
    for (let n = 0; n < FAULTS; n++) {
      // Work keeps arriving: a job of 1–3 tasks before each fault.
      try {
        await c.submit(`soak-${n}`, 1 + Math.floor(r() * 3), TASK_MS);
        submitted++;
      } catch (err) {
        // Every replica a submit tried may be down for a moment: it is the requester's to retry (not a lost job).
        submitFailures++;
        process.stderr.write(`submit ${n} failed: ${(err as Error).message}\n`);
      }
      const fault = weighted(r, FAULT_WEIGHTS);
      process.stderr.write(`fault ${n + 1}: ${fault}\n`);
      const ms = await inject(c, fault, r).catch((err) => {
        for (const p of c.replicas) if (p) process.stderr.write(`--- ${p.label} (alive: ${p.alive})\n${p.stderr().slice(-2000)}\n`);
        throw err;
      });
      times.set(fault, [...(times.get(fault) ?? []), ms]);
      if ((n + 1) % 10 === 0) process.stderr.write(`${n + 1}/${FAULTS} faults, ${submitted} jobs submitted, ${Math.round((Date.now() - started) / 1000)} s\n`);
    }
    // Everything back, then every job must end.
    await c.waitProviders();
    const jobs = await c.waitJobs(600_000);
    const audit = await c.audit();
    const rows = [...times].map(([fault, ms]) => {
      const s = summarize(ms);
      return [fault, s.n, Math.round(s.p50), Math.round(s.max)];
    });
    printTable(`soak: ${FAULTS} faults, ${REPLICAS} replicas, ${PROVIDERS} providers (ms: leader = until another leads; edge, provider = until back; pg = restart)`, [['fault', 'count', 'p50 ms', 'max ms'], ...rows]);
    const ok =
      jobs.every((j) => j.state === 'succeeded') &&
      audit.tasksNotCompletedOnce.length === 0 &&
      audit.activeLeases === 0 &&
      audit.ledgerTotal === 0n &&
      audit.ledgerMismatched.length === 0 &&
      audit.unsettled.length === 0 &&
      audit.leftover.length === 0 &&
      audit.reputationDrift.length === 0;
    printTable('after the faults', [
      ['check', 'result'],
      ['jobs submitted / succeeded', `${submitted} / ${audit.succeeded}`],
      ['submits refused while replicas were down', submitFailures],
      ['tasks / leases / lost leases', `${audit.tasks} / ${audit.leases} / ${audit.lostLeases}`],
      ['tasks not completed exactly once', audit.tasksNotCompletedOnce.length],
      ['ledger total / mismatched / unsettled / left held', `${audit.ledgerTotal} / ${audit.ledgerMismatched.length} / ${audit.unsettled.length} / ${audit.leftover.length}`],
      ['reputation counts off', audit.reputationDrift.length],
      ['verdict', ok ? 'nothing lost' : 'FAILED'],
    ]);
    console.log(
      JSON.stringify({
        bench: 'soak',
        faults: FAULTS,
        byFault: Object.fromEntries([...times].map(([f, ms]) => [f, ms.length])),
        recoveryMs: Object.fromEntries([...times].map(([f, ms]) => [f, summarize(ms)])),
        jobs: submitted,
        submitFailures,
        audit: { ...audit, ledgerTotal: String(audit.ledgerTotal) },
        seconds: Math.round((Date.now() - started) / 1000),
        ok,
        machine: machineInfo(),
      }),
    );
    if (!ok) process.exitCode = 1;
  } finally {
    await c.close();
  }
}

await main();
