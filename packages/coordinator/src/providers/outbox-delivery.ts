/** Sends each provider the outbox messages committed for it, over its live connection (if any). */
import type { Subscriber } from '../bus/bus.ts';
import type { ProviderChannels } from './provider-channels.ts';

export function outboxDelivery(channels: ProviderChannels): Subscriber {
  return {
    name: 'provider-outbox',
    types: ['provider.messaged'],
    async handle(events) {
      const ids = new Set(events.map((e) => (e.type === 'provider.messaged' ? e.providerId : '')));
      await Promise.all([...ids].map((id) => channels.flush(id)));
    },
  };
}
