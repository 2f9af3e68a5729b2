/** Operator routes (signed by an operator key): ledger totals by account class and the ledger check. No business logic here. */
import type { FastifyInstance } from 'fastify';
import type { OperatorReports } from '../observe/operator-report.ts';

export function registerOperatorRoutes(app: FastifyInstance, deps: { reports: OperatorReports }): void {
  app.get(
    '/v1/operator/ledger',
    { schema: { tags: ['operator'], summary: 'Operator: credits by account class, fees, reserve and the double-entry check (verifyLedger)' } },
    async (req) => deps.reports.report(req.accountId),
  );
}
