/** Verification routes: a provider's own trust record (signed request by the provider's key). */
import { GridworkError } from '@gridwork/protocol';
import type { FastifyInstance } from 'fastify';
import type { Db } from '../store/database.ts';
import type { ChallengeConfig } from '../verify/challenge-sizing.ts';
import { providerRecord } from '../verify/provider-record.ts';
import type { VerificationConfig } from '../verify/verification-policy.ts';

/**
 * `verification` is not read: what a provider reads of itself is its history, never where the
 * audit policy stands for it (its rate, how long its probation lasts).
 */
export function registerVerifyRoutes(app: FastifyInstance, deps: { db: Db; challenges: ChallengeConfig; verification?: VerificationConfig }): void {
  app.get(
    '/v1/providers/me',
    {
      schema: {
        tags: ['providers'],
        summary: 'The calling provider: reputation, eligibility, capacity challenge history, stake, past audits, recent result checks',
      },
    },
    async (req) => {
      const record = await providerRecord(deps.db, req.accountId, deps.challenges);
      if (!record) throw new GridworkError('PROVIDER_UNKNOWN', 'this key is not a provider known to this coordinator');
      return record;
    },
  );
}
