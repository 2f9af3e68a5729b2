/** Account routes: balances, history, deposits, withdrawals, operator credits, stake. No business logic here. */
import { AmountRequest, CreditRequest } from '@gridwork/protocol';
import type { FastifyInstance } from 'fastify';
import Type from 'typebox';
import type { AccountService } from '../ledger/account-service.ts';

export function registerAccountRoutes(app: FastifyInstance, deps: { accounts: AccountService }): void {
  const { accounts } = deps;
  const tags = ['account'];
  app.get('/v1/account', { schema: { tags, summary: 'Your balances: available, held for jobs, stake, unbonding' } }, async (req) =>
    accounts.balance(req.accountId),
  );
  app.get<{ Querystring: { limit: number } }>(
    '/v1/account/history',
    {
      schema: {
        tags,
        summary: 'Ledger transactions touching your account, newest first',
        querystring: Type.Object({ limit: Type.Integer({ minimum: 1, maximum: 1000, default: 50 }) }),
      },
    },
    async (req) => ({ entries: await accounts.history(req.accountId, req.query.limit) }),
  );
  app.post<{ Body: AmountRequest }>(
    '/v1/account/deposit',
    { schema: { tags, summary: 'Faucet deposit (coordinators started with --dev only)', body: AmountRequest } },
    async (req) => accounts.deposit(req.accountId, req.body.amount, req.body.idempotencyKey),
  );
  app.post<{ Body: AmountRequest }>('/v1/account/withdraw', { schema: { tags, summary: 'Withdraw available credits', body: AmountRequest } }, async (req) =>
    accounts.withdraw(req.accountId, req.body.amount, req.body.idempotencyKey),
  );
  app.post<{ Body: CreditRequest }>(
    '/v1/account/credit',
    { schema: { tags, summary: "Operator: credit an account (signed by the operator's key)", body: CreditRequest } },
    async (req) => accounts.credit(req.accountId, req.body.account, req.body.amount, req.body.idempotencyKey),
  );
  app.post<{ Body: AmountRequest }>(
    '/v1/stake',
    { schema: { tags: ['stake'], summary: 'Lock available credits as provider stake', body: AmountRequest } },
    async (req) => accounts.stake(req.accountId, req.body.amount, req.body.idempotencyKey),
  );
  app.post<{ Body: AmountRequest }>(
    '/v1/stake/unbond',
    { schema: { tags: ['stake'], summary: 'Start unbonding stake; available again after the unbonding delay', body: AmountRequest } },
    async (req) => accounts.unstake(req.accountId, req.body.amount, req.body.idempotencyKey),
  );
}
