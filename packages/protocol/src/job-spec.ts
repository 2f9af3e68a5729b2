/**
 * The job spec, version 1: one TypeBox schema gives validation, TypeScript types and the
 * OpenAPI document. `validateJobSpec` adds the checks a schema cannot express (decimal
 * amounts, runtime-kind dependent fields) and names the offending field in every error.
 */
import Type from 'typebox';
import { Compile } from 'typebox/compile';
import { GridworkError } from './errors.ts';
import { parseCredits } from './money.ts';

const Name = Type.String({ pattern: '^[a-z0-9][a-z0-9._-]{0,62}$', description: 'lowercase letters, digits, . _ -' });
const Decimal = Type.String({ maxLength: 32, description: 'credits as a decimal string, e.g. "1.20"' });

export const GpuRequest = Type.Object(
  {
    count: Type.Integer({ minimum: 0, maximum: 64 }),
    models: Type.Optional(Type.Array(Type.String({ minLength: 1, maxLength: 64 }), { maxItems: 32 })),
    minVramGiB: Type.Optional(Type.Number({ minimum: 0, maximum: 4096 })),
  },
  { additionalProperties: false },
);

export const Resources = Type.Object(
  {
    gpu: Type.Optional(GpuRequest),
    cpu: Type.Number({ exclusiveMinimum: 0, maximum: 1024, description: 'CPU cores' }),
    memoryGiB: Type.Number({ exclusiveMinimum: 0, maximum: 16384 }),
    diskGiB: Type.Optional(Type.Number({ minimum: 0, maximum: 1048576 })),
  },
  { additionalProperties: false },
);
export type Resources = Type.Static<typeof Resources>;

export const RuntimeSpec = Type.Object(
  {
    kind: Type.Union([Type.Literal('bundle'), Type.Literal('container')]),
    path: Type.Optional(Type.String({ minLength: 1, maxLength: 1024 })),
    image: Type.Optional(Type.String({ minLength: 1, maxLength: 512 })),
    command: Type.Array(Type.String({ minLength: 1, maxLength: 4096 }), { minItems: 1, maxItems: 256 }),
    // additionalProperties: false makes the key pattern binding; without it TypeBox emits only
    // patternProperties and any key ("BAD-NAME", "A=B") is accepted.
    env: Type.Optional(
      Type.Record(Type.String({ pattern: '^[A-Za-z_][A-Za-z0-9_]{0,127}$' }), Type.String({ maxLength: 8192 }), { additionalProperties: false }),
    ),
    network: Type.Optional(Type.Boolean({ description: 'allow network access from the task; default false' })),
  },
  { additionalProperties: false },
);

export const InputSpec = Type.Object(
  {
    name: Name,
    path: Type.String({ minLength: 1, maxLength: 1024, description: 'file or glob, relative to the spec' }),
    shard: Type.Optional(Type.Boolean({ description: 'split the matched files across tasks' })),
  },
  { additionalProperties: false },
);

export const JobSpec = Type.Object(
  {
    version: Type.Literal(1),
    name: Name,
    kind: Type.Union([Type.Literal('batch'), Type.Literal('train'), Type.Literal('service'), Type.Literal('cluster')]),
    runtime: RuntimeSpec,
    resources: Resources,
    inputs: Type.Optional(Type.Array(InputSpec, { maxItems: 64 })),
    shards: Type.Optional(Type.Integer({ minimum: 1, maximum: 10000 })),
    price: Type.Optional(
      Type.Object(
        {
          maxPerHour: Decimal,
          budget: Decimal,
          auctionWindowMs: Type.Optional(
            Type.Integer({ minimum: 0, maximum: 60_000, description: 'collect bids this long before matching; 0 = match at once' }),
          ),
        },
        { additionalProperties: false },
      ),
    ),
    placement: Type.Optional(
      Type.Object(
        {
          regions: Type.Optional(Type.Array(Type.String({ minLength: 1, maxLength: 64 }), { maxItems: 64 })),
          minReputation: Type.Optional(Type.Number({ minimum: 0, maximum: 1 })),
          minStake: Type.Optional(Type.String({ maxLength: 32, description: 'credits a provider must have staked' })),
        },
        { additionalProperties: false },
      ),
    ),
    verification: Type.Optional(
      Type.Object(
        {
          mode: Type.Union([Type.Literal('exact'), Type.Literal('tolerance'), Type.Literal('none')]),
          tolerance: Type.Optional(Type.Number({ minimum: 0, maximum: 1 })),
        },
        { additionalProperties: false },
      ),
    ),
    timeoutSeconds: Type.Optional(Type.Integer({ minimum: 1, maximum: 7 * 24 * 3600 })),
    maxRetries: Type.Optional(Type.Integer({ minimum: 0, maximum: 20 })),
  },
  { additionalProperties: false },
);
export type JobSpec = Type.Static<typeof JobSpec>;

const compiled = Compile(JobSpec);

export interface SpecProblem {
  path: string;
  message: string;
}

/** Turns JSON-pointer paths into the dotted field names users write in YAML. */
export function fieldName(instancePath: string): string {
  const parts = instancePath.split('/').filter(Boolean);
  return parts.length === 0
    ? '(spec)'
    : parts
        .map((p) => (/^\d+$/.test(p) ? `[${p}]` : `.${p}`))
        .join('')
        .replace(/^\./, '');
}

/** Readable problems from TypeBox errors; extra properties are named instead of "schema is false". */
export function schemaProblems(check: typeof compiled, value: unknown): SpecProblem[] {
  const out: SpecProblem[] = [];
  for (const e of check.Errors(value)) {
    if (e.keyword === 'boolean' && e.schemaPath.endsWith('additionalProperties')) {
      out.push({ path: fieldName(e.instancePath), message: 'unknown field' });
    } else if (e.keyword === 'additionalProperties') {
    } else {
      out.push({ path: fieldName(e.instancePath), message: e.message });
    }
  }
  return out;
}

/** TypeBox checks array items with `every`, which skips holes, so `[, ]` passes as any array. */
function firstHole(value: unknown, path: string): string | undefined {
  if (typeof value !== 'object' || value === null) return undefined;
  if (Array.isArray(value)) {
    for (let i = 0; i < value.length; i++) {
      const hole = i in value ? firstHole(value[i], `${path}[${i}]`) : `${path}[${i}]`;
      if (hole) return hole;
    }
    return undefined;
  }
  for (const [k, v] of Object.entries(value)) {
    const hole = firstHole(v, path ? `${path}.${k}` : k);
    if (hole) return hole;
  }
  return undefined;
}

export function validateJobSpec(value: unknown): JobSpec {
  if (typeof value !== 'object' || value === null || Array.isArray(value)) {
    throw new GridworkError('INVALID_SPEC', 'job spec must be an object');
  }
  const problems = schemaProblems(compiled, value);
  if (problems.length === 0) {
    // Runs only on schema-valid values, so every array here is bounded by its maxItems.
    const hole = firstHole(value, '');
    if (hole) problems.push({ path: hole, message: 'must not be an empty array slot' });
  }
  if (problems.length === 0) {
    const spec = value as JobSpec;
    if (spec.runtime.kind === 'bundle' && !spec.runtime.path) problems.push({ path: 'runtime.path', message: 'required when runtime.kind is bundle' });
    if (spec.runtime.kind === 'container' && !spec.runtime.image) problems.push({ path: 'runtime.image', message: 'required when runtime.kind is container' });
    if (spec.verification?.mode === 'tolerance' && spec.verification.tolerance === undefined) {
      problems.push({ path: 'verification.tolerance', message: 'required when verification.mode is tolerance' });
    }
    const names = new Set<string>();
    for (const [i, input] of (spec.inputs ?? []).entries()) {
      if (names.has(input.name)) problems.push({ path: `inputs[${i}].name`, message: `duplicate input name "${input.name}"` });
      names.add(input.name);
    }
    if (spec.placement?.minStake !== undefined) {
      try {
        parseCredits(spec.placement.minStake, { field: 'placement.minStake' });
      } catch (err) {
        problems.push({ path: 'placement.minStake', message: (err as Error).message });
      }
    }
    if (spec.price) {
      for (const key of ['maxPerHour', 'budget'] as const) {
        try {
          parseCredits(spec.price[key], { field: `price.${key}`, allowZero: false });
        } catch (err) {
          problems.push({ path: `price.${key}`, message: (err as Error).message });
        }
      }
    }
  }
  if (problems.length > 0) {
    const first = problems[0] as SpecProblem;
    throw new GridworkError('INVALID_SPEC', `invalid job spec: ${first.path}: ${first.message}`, { details: problems });
  }
  return value as JobSpec;
}
