/**
 * Each provider's durable outbox: sequenced coordinator→provider messages, written in the
 * transaction of the change they announce and delivered after it commits (the `provider.messaged`
 * event wakes the delivery subscriber). Owns `provider_outbox` and the providers' `out_seq`.
 */
import type { CoordinatorSequenced } from '@gridwork/protocol';
import type { UnitOfWork } from '../core/unit-of-work.ts';

type Unsequenced = CoordinatorSequenced extends infer M ? (M extends { seq: number } ? Omit<M, 'seq'> : never) : never;

export async function enqueueForProvider(uow: UnitOfWork, providerId: string, message: Unsequenced): Promise<number> {
  const row = await uow.trx
    .updateTable('providers')
    .set((eb) => ({ out_seq: eb('out_seq', '+', 1n) }))
    .where('id', '=', providerId)
    .returning('out_seq')
    .executeTakeFirstOrThrow();
  const seq = Number(row.out_seq);
  await uow.trx
    .insertInto('provider_outbox')
    .values({ provider_id: providerId, seq: BigInt(seq), message: JSON.stringify({ ...message, seq }) })
    .execute();
  uow.emit({ type: 'provider.messaged', providerId, seq });
  return seq;
}
