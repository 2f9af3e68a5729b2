/** Standing asks are signed with the provider's key over { asks, instance }; their prices must parse. */
import { canonicalJson, GridworkError, type ProviderHello } from '@gridwork/protocol';
import { verifyBytes } from '@gridwork/protocol/node';
import { parseAsks } from '../market/order-price.ts';

export function verifyAsks(providerId: string, asks: ProviderHello['asks'], instance: string, signature: string): void {
  if (!verifyBytes(providerId, canonicalJson({ asks, instance }), signature)) {
    throw new GridworkError('BAD_SIGNATURE', 'asks signature does not verify');
  }
  parseAsks(asks);
}
