/** Verification routes: a provider's own trust record (signed request by the provider's key). */
import { GridworkError } from '@gridwork/protocol';
import type { FastifyInstance } from 'fastify';
import type { Db } from '../store/database.ts';
import type { ChallengeConfig } from '../verify/challenge-sizing.ts';
import { providerRecord } from '../verify/provider-record.ts';
import type { VerificationConfig } from '../verify/verification-policy.ts';

export function registerVerifyRoutes(app: FastifyInstance, deps: { db: Db; challenges: ChallengeConfig; verification: VerificationConfig }): void {
  app.get(
    '/v1/providers/me',
    {
      schema: {
        tags: ['providers'],
        summary: 'The calling provider: reputation, eligibility, capacity challenge history, stake, audit record and rate, recent result checks',
      },
    },
    async (req) => {
      const record = await providerRecord(deps.db, req.accountId, deps.challenges, deps.verification);
      if (!record) throw new GridworkError('PROVIDER_UNKNOWN', 'this key is not a provider known to this coordinator');
      return record;
    },
  );
}
