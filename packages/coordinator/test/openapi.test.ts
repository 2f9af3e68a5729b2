/**
 * The OpenAPI document is valid OpenAPI, checked by a real validator (@readme/openapi-parser),
 * so client generators accept it. TypeBox schemas use JSON Schema 2020-12 forms, so the
 * document must declare 3.1.
 */
import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import { validate } from '@readme/openapi-parser';
import { startTestNetwork, type TestNetwork } from '@gridwork/testkit';

let net: TestNetwork;
before(async () => {
  net = await startTestNetwork();
});
after(async () => {
  await net?.close();
});

test('/openapi.json is a valid OpenAPI 3.1 document', async () => {
  const res = await fetch(`${net.coordinator.url}/openapi.json`);
  assert.equal(res.status, 200);
  const doc = (await res.json()) as { openapi: string; paths: Record<string, unknown> };
  assert.match(doc.openapi, /^3\.1\./);
  assert.ok(Object.keys(doc.paths).includes('/v1/jobs'), 'documents the job routes');
  const result = await validate(structuredClone(doc) as never);
  assert.equal(result.valid, true, JSON.stringify(result, null, 2).slice(0, 4000));
});

test('the same document declared as 3.0.3 is rejected: the validator really checks the schema dialect', async () => {
  const doc = (await (await fetch(`${net.coordinator.url}/openapi.json`)).json()) as { openapi: string };
  const result = await validate({ ...structuredClone(doc), openapi: '3.0.3' } as never);
  assert.equal(result.valid, false);
});
