/**
 * Capacity guarded in the database: a lease holds a slot, its cores and memory (counters with
 * a conditional update) and its GPUs (one `lease_gpus` row per GPU, unique per provider), so no
 * two placements can take the same capacity even when two schedulers race on two coordinator
 * replicas. The in-memory order book is only an index of what is free; this is the truth.
 * Owns `provider_capacity` and `lease_gpus`; used only by the lifecycle.
 */
import { sql } from 'kysely';
import type { Trx } from '../core/unit-of-work.ts';
import { ACTIVE_LEASE_STATES } from '../core/state-machine.ts';

export interface Capacity {
  slots: number;
  cpuMilli: number;
  memMilli: number;
}

export interface LeaseHold {
  leaseId: string;
  providerId: string;
  cpuMilli: number;
  memMilli: number;
  gpus: readonly number[];
}

/**
 * Sets a provider's totals and recounts what its active leases hold (self-healing after a
 * crash or an upgrade). Done under the capacity row's lock, so a racing placement either
 * committed before (and is counted) or updates the recounted row after.
 */
export async function declareCapacity(trx: Trx, providerId: string, total: Capacity): Promise<void> {
  await trx
    .insertInto('provider_capacity')
    .values({ provider_id: providerId, slots: total.slots, cpu_milli: BigInt(total.cpuMilli), mem_milli: BigInt(total.memMilli) })
    .onConflict((oc) => oc.column('provider_id').doUpdateSet({ slots: total.slots, cpu_milli: BigInt(total.cpuMilli), mem_milli: BigInt(total.memMilli) }))
    .execute();
  await trx.selectFrom('provider_capacity').select('provider_id').where('provider_id', '=', providerId).forUpdate().execute();
  const used = await trx
    .selectFrom('leases')
    .select((eb) => [eb.fn.countAll<string>().as('n'), eb.fn.coalesce(eb.fn.sum<string>('cpu_milli'), sql<string>`0`).as('cpu'), eb.fn.coalesce(eb.fn.sum<string>('mem_milli'), sql<string>`0`).as('mem')])
    .where('provider_id', '=', providerId)
    .where('state', 'in', [...ACTIVE_LEASE_STATES])
    .executeTakeFirstOrThrow();
  await trx
    .updateTable('provider_capacity')
    .set({ used_slots: Number(used.n), used_cpu_milli: BigInt(used.cpu), used_mem_milli: BigInt(used.mem) })
    .where('provider_id', '=', providerId)
    .execute();
}

/**
 * Takes the lease's capacity if it is free. The lease row must exist (GPU rows reference it).
 * Returns false, having taken nothing, when another lease holds it.
 */
export async function holdCapacity(trx: Trx, h: LeaseHold): Promise<boolean> {
  const took = await trx
    .updateTable('provider_capacity')
    .set((eb) => ({
      used_slots: eb('used_slots', '+', 1),
      used_cpu_milli: eb('used_cpu_milli', '+', BigInt(h.cpuMilli)),
      used_mem_milli: eb('used_mem_milli', '+', BigInt(h.memMilli)),
    }))
    .where('provider_id', '=', h.providerId)
    .where((eb) =>
      eb.and([
        eb(eb('used_slots', '+', 1), '<=', eb.ref('slots')),
        eb(eb('used_cpu_milli', '+', BigInt(h.cpuMilli)), '<=', eb.ref('cpu_milli')),
        eb(eb('used_mem_milli', '+', BigInt(h.memMilli)), '<=', eb.ref('mem_milli')),
      ]),
    )
    .returning('provider_id')
    .executeTakeFirst();
  if (!took) return false;
  if (h.gpus.length === 0) return true;
  // The primary key (provider, gpu) is the guard: a GPU another lease holds is not inserted.
  const gpus = await trx
    .insertInto('lease_gpus')
    .values(h.gpus.map((gpu) => ({ provider_id: h.providerId, gpu, lease_id: h.leaseId })))
    .onConflict((oc) => oc.doNothing())
    .returning('gpu')
    .execute();
  if (gpus.length === h.gpus.length) return true;
  await freeCapacity(trx, h);
  return false;
}

/** Gives back what `holdCapacity` took. */
export async function freeCapacity(trx: Trx, h: LeaseHold): Promise<void> {
  await trx.deleteFrom('lease_gpus').where('lease_id', '=', h.leaseId).execute();
  await trx
    .updateTable('provider_capacity')
    .set((eb) => ({
      used_slots: sql<number>`greatest(${eb.ref('used_slots')} - 1, 0)`,
      used_cpu_milli: sql<bigint>`greatest(${eb.ref('used_cpu_milli')} - ${BigInt(h.cpuMilli)}, 0)`,
      used_mem_milli: sql<bigint>`greatest(${eb.ref('used_mem_milli')} - ${BigInt(h.memMilli)}, 0)`,
    }))
    .where('provider_id', '=', h.providerId)
    .execute();
}
