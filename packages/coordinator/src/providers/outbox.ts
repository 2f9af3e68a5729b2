/**
 * Each provider's durable outbox: sequenced coordinator→provider messages, written in the
 * transaction of the change they announce and delivered after it commits (the `provider.messaged`
 * event wakes the delivery subscriber). Owns `provider_outbox` and the providers' `out_seq`.
 */
import type { CoordinatorSequenced } from '@gridwork/protocol';
import { sql } from 'kysely';
import type { UnitOfWork } from '../core/unit-of-work.ts';

type Unsequenced = CoordinatorSequenced extends infer M ? (M extends { seq: number } ? Omit<M, 'seq'> : never) : never;

export async function enqueueForProvider(uow: UnitOfWork, providerId: string, message: Unsequenced): Promise<number> {
  // One statement: the next seq and the message that carries it.
  const row = await sql<{ seq: string }>`
    with s as (update providers set out_seq = out_seq + 1 where id = ${providerId} returning out_seq)
    insert into provider_outbox (provider_id, seq, message)
    select ${providerId}, s.out_seq, ${JSON.stringify(message)}::jsonb || jsonb_build_object('seq', s.out_seq) from s
    returning seq::text as seq`.execute(uow.trx);
  const written = row.rows[0];
  if (!written) throw new Error(`no provider ${providerId} to send ${message.type} to`);
  const seq = Number(written.seq);
  uow.emit({ type: 'provider.messaged', providerId, seq });
  return seq;
}
