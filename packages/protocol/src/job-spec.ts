/**
 * The job spec, version 1: one TypeBox schema gives validation, TypeScript types and the
 * OpenAPI document. `validateJobSpec` adds the checks a schema cannot express (decimal
 * amounts, runtime-kind dependent fields) and names the offending field in every error, with
 * the allowed values of a choice and a "did you mean" for a misspelt field or GPU model.
 *
 * Prices written as numbers (`maxPerHour: 1.20` in YAML) are accepted as the decimal they
 * spell: YAML users write them that way, and refusing them taught nothing. `validateJobSpec`
 * returns the spec with such numbers turned into decimal strings (the wire form); a number
 * that is no plain decimal (1e-7) is refused with a hint to quote it.
 */
import Type from 'typebox';
import { Compile } from 'typebox/compile';
import { GridworkError } from './errors.ts';
import { parseCredits } from './money.ts';
import { WorkloadKindSchema } from './runtimes.ts';

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
    /** The workload's form (runtimes.ts): a provider runs it only if it offers a runtime for this kind. */
    kind: WorkloadKindSchema,
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
    /** Fail the job when a task waits longer than this for a provider (the reason says why none fits). Default: wait. */
    queueTimeoutSeconds: Type.Optional(Type.Integer({ minimum: 1, maximum: 30 * 24 * 3600 })),
    /** On a failed task: `stop` the job at once (default), or `continue` and let the other tasks finish (the job still ends failed). */
    failurePolicy: Type.Optional(Type.Union([Type.Literal('stop'), Type.Literal('continue')])),
    /**
     * kind: service only (and required there): the port the task serves HTTP on (PORT is set to it),
     * its health check, how many replicas, and whether the ingress (`/services/<job id>/…`) serves
     * anyone or only the job's owner. A service runs until it is stopped (`gridwork job cancel`) or
     * its timeoutSeconds (default 7 days) pass; a replica that dies or turns unhealthy is replaced.
     */
    /**
     * kind: cluster only (and required there): `size` members, gang-scheduled (all placed and
     * started, or none), each with RANK, WORLD_SIZE and GRIDWORK_EXCHANGE (files relayed between
     * members: see the README). Sharded inputs are split across the members. If one member is lost,
     * the whole cluster restarts, each member from its latest checkpoint.
     */
    cluster: Type.Optional(Type.Object({ size: Type.Integer({ minimum: 2, maximum: 64 }) }, { additionalProperties: false })),
    service: Type.Optional(
      Type.Object(
        {
          port: Type.Integer({ minimum: 1, maximum: 65535 }),
          healthPath: Type.Optional(Type.String({ pattern: '^/[\\x21-\\x7e]*$', maxLength: 256, description: 'GET this path answers 2xx when the replica can serve; default /health' })),
          startupTimeoutSeconds: Type.Optional(Type.Integer({ minimum: 1, maximum: 3600, description: 'a replica not healthy by then is replaced; default 120' })),
          replicas: Type.Optional(Type.Integer({ minimum: 1, maximum: 16, description: 'default 1' })),
          public: Type.Optional(Type.Boolean({ description: 'serve anyone; default false: only signed requests of the job owner' })),
        },
        { additionalProperties: false },
      ),
    ),
  },
  { additionalProperties: false },
);
export type JobSpec = Type.Static<typeof JobSpec>;

// Compiled on first use: the CLI imports this module for commands that never validate a spec.
const compileSpec = () => Compile(JobSpec);
let compiledSpec: ReturnType<typeof compileSpec> | undefined;
const specChecker = (): ReturnType<typeof compileSpec> => {
  compiledSpec ??= compileSpec();
  return compiledSpec;
};

/**
 * GPU model ids as providers report them (see the provider's normalizeGpuModel). A requested
 * model that is not one of these but one or two edits away from one is almost surely a typo;
 * any other unknown model is accepted (new hardware appears before this list knows it).
 */
export const KNOWN_GPU_MODELS: readonly string[] = [
  'rtx-3060',
  'rtx-3070',
  'rtx-3080',
  'rtx-3090',
  'rtx-4060',
  'rtx-4070',
  'rtx-4080',
  'rtx-4090',
  'rtx-5090',
  'rtx-a4000',
  'rtx-a5000',
  'rtx-a6000',
  'rtx-6000-ada',
  'a10',
  'a10g',
  'a16',
  'a40',
  'a100-40gb',
  'a100-80gb',
  'h100-80gb',
  'h100-94gb',
  'h200-141gb',
  'b200-192gb',
  'l4',
  'l40',
  'l40s',
  't4',
  'v100-16gb',
  'v100-32gb',
];

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

/** Edit distance counting a swap of two neighbours as one edit ("bacth" → batch), for "did you mean". */
export function editDistance(a: string, b: string): number {
  const d: number[][] = Array.from({ length: a.length + 1 }, (_, i) => Array.from({ length: b.length + 1 }, (_, j) => (i === 0 ? j : j === 0 ? i : 0)));
  const at = (i: number, j: number) => (d[i] as number[])[j] as number;
  for (let i = 1; i <= a.length; i++) {
    for (let j = 1; j <= b.length; j++) {
      const cost = a[i - 1] === b[j - 1] ? 0 : 1;
      let v = Math.min(at(i - 1, j) + 1, at(i, j - 1) + 1, at(i - 1, j - 1) + cost);
      if (i > 1 && j > 1 && a[i - 1] === b[j - 2] && a[i - 2] === b[j - 1]) v = Math.min(v, at(i - 2, j - 2) + 1);
      (d[i] as number[])[j] = v;
    }
  }
  return at(a.length, b.length);
}

/** The candidate nearest to `word`, if it is close enough to be what was meant. */
export function nearest(word: string, candidates: Iterable<string>): string | undefined {
  let best: string | undefined;
  let bestD = Number.POSITIVE_INFINITY;
  const w = word.toLowerCase();
  for (const c of candidates) {
    const d = editDistance(w, c.toLowerCase());
    if (d < bestD) {
      best = c;
      bestD = d;
    }
  }
  // A third of the word, at least 1 and at most 3 edits: "resouces" → resources, not "x" → cpu.
  return best !== undefined && bestD <= Math.min(3, Math.max(1, Math.floor(word.length / 3))) ? best : undefined;
}

interface SchemaError {
  keyword: string;
  instancePath: string;
  schemaPath: string;
  message: string;
  params: unknown;
}

type SchemaNode = { properties?: Record<string, SchemaNode>; items?: SchemaNode; anyOf?: SchemaNode[] };

/** The sub-schema at a JSON pointer of the value (objects and arrays; unions are not descended). */
function schemaAt(root: SchemaNode, pointer: string): SchemaNode | undefined {
  let node: SchemaNode | undefined = root;
  for (const part of pointer.split('/').filter(Boolean)) {
    if (!node) return undefined;
    node = /^\d+$/.test(part) && node.items ? node.items : node.properties?.[part];
  }
  return node;
}

function show(v: unknown): string {
  if (typeof v === 'string') return `"${v}"`;
  if (typeof v === 'bigint') return `${v}`;
  try {
    return JSON.stringify(v) ?? String(v);
  } catch {
    return typeof v;
  }
}

function valueAt(value: unknown, pointer: string): unknown {
  let v = value;
  for (const part of pointer.split('/').filter(Boolean)) {
    if (typeof v !== 'object' || v === null || !Object.hasOwn(v, part)) return undefined;
    v = (v as Record<string, unknown>)[part];
  }
  return v;
}

/**
 * Readable problems from TypeBox errors: extra properties are named (with the nearest known
 * field), a missing field is reported at its own path, and a choice lists its allowed values.
 */
export function schemaProblems(check: { Errors(value: unknown): Iterable<SchemaError> }, value: unknown, root: SchemaNode = JobSpec as SchemaNode): SpecProblem[] {
  const out: SpecProblem[] = [];
  const choices = new Map<string, unknown[]>();
  const errors = [...check.Errors(value)];
  for (const e of errors) {
    if (e.keyword === 'const' && /\/anyOf\/\d+$/.test(e.schemaPath)) {
      const allowed = (e.params as { allowedValue?: unknown }).allowedValue;
      const list = choices.get(e.instancePath) ?? [];
      list.push(allowed);
      choices.set(e.instancePath, list);
    }
  }
  const reported = new Set<string>();
  for (const e of errors) {
    if (e.keyword === 'boolean' && e.schemaPath.endsWith('additionalProperties')) {
      const parts = e.instancePath.split('/');
      const key = parts.pop() as string;
      const parent = schemaAt(root, parts.join('/'));
      const known = Object.keys(parent?.properties ?? {});
      const present = valueAt(value, parts.join('/'));
      // Suggest a field that is not already there: "resouces" next to a real "resources" is just extra.
      const free = known.filter((k) => !(typeof present === 'object' && present !== null && Object.hasOwn(present, k)));
      const guess = nearest(key, free);
      out.push({ path: fieldName(e.instancePath), message: guess ? `unknown field; did you mean "${guess}"?` : 'unknown field' });
    } else if (e.keyword === 'additionalProperties') {
    } else if (e.keyword === 'required') {
      const props = (e.params as { requiredProperties?: string[] }).requiredProperties ?? [];
      for (const p of props) out.push({ path: fieldName(`${e.instancePath}/${p}`), message: 'required field is missing' });
    } else if (choices.has(e.instancePath) && (e.keyword === 'const' || e.keyword === 'anyOf')) {
      if (reported.has(e.instancePath)) continue;
      reported.add(e.instancePath);
      const allowed = choices.get(e.instancePath) as unknown[];
      const got = valueAt(value, e.instancePath);
      const guess = typeof got === 'string' ? nearest(got, allowed.filter((a): a is string => typeof a === 'string')) : undefined;
      out.push({
        path: fieldName(e.instancePath),
        message: `must be one of ${allowed.map((a) => (typeof a === 'string' ? a : show(a))).join(' | ')} (got ${show(got)})${guess ? `; did you mean ${guess}?` : ''}`,
      });
    } else {
      out.push({ path: fieldName(e.instancePath), message: e.message });
    }
  }
  // A misspelt field that is also a missing required one: say it once, at the misspelling.
  const suggested = new Set(out.flatMap((p) => /did you mean "([^"]+)"/.exec(p.message)?.[1] ?? []).map((k) => k));
  return out.filter((p) => !(p.message === 'required field is missing' && suggested.has(p.path.split('.').pop() as string)));
}

/** Prices in the spec that are numbers, turned into the decimal strings they spell (see the header). */
function numbersToDecimals(value: Record<string, unknown>, problems: SpecProblem[]): Record<string, unknown> {
  const fix = (objKey: string, fields: readonly string[]) => {
    const obj = value[objKey];
    if (typeof obj !== 'object' || obj === null || Array.isArray(obj)) return;
    let copy: Record<string, unknown> | undefined;
    for (const f of fields) {
      if (!Object.hasOwn(obj, f)) continue;
      const v = (obj as Record<string, unknown>)[f];
      if (typeof v !== 'number') continue;
      const text = String(v);
      if (!Number.isFinite(v) || !/^-?(0|[1-9][0-9]*)(\.[0-9]+)?$/.test(text)) {
        problems.push({ path: `${objKey}.${f}`, message: `${text} is not a plain decimal; write credits as a quoted decimal string, e.g. "1.20"` });
        continue;
      }
      copy ??= { ...(obj as Record<string, unknown>) };
      copy[f] = text;
    }
    if (copy) value = { ...value, [objKey]: copy };
  };
  fix('price', ['maxPerHour', 'budget']);
  fix('placement', ['minStake']);
  return value;
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
  const problems: SpecProblem[] = [];
  value = numbersToDecimals(value as Record<string, unknown>, problems);
  if (problems.length === 0) problems.push(...schemaProblems(specChecker(), value));
  if (problems.length === 0) {
    // Runs only on schema-valid values, so every array here is bounded by its maxItems.
    const hole = firstHole(value, '');
    if (hole) problems.push({ path: hole, message: 'must not be an empty array slot' });
  }
  if (problems.length === 0) {
    const spec = value as JobSpec;
    if (spec.runtime.kind === 'bundle' && !spec.runtime.path) problems.push({ path: 'runtime.path', message: 'required when runtime.kind is bundle' });
    if (spec.runtime.kind === 'container' && !spec.runtime.image) problems.push({ path: 'runtime.image', message: 'required when runtime.kind is container' });
    if (spec.kind === 'service' && !spec.service) problems.push({ path: 'service', message: 'required when kind is service (at least its port)' });
    if (spec.kind !== 'service' && spec.service) problems.push({ path: 'service', message: 'only for kind: service' });
    if (spec.kind === 'service' && spec.shards !== undefined) problems.push({ path: 'shards', message: 'not for kind: service (use service.replicas)' });
    if (spec.kind === 'cluster' && !spec.cluster) problems.push({ path: 'cluster', message: 'required when kind is cluster (its size)' });
    if (spec.kind !== 'cluster' && spec.cluster) problems.push({ path: 'cluster', message: 'only for kind: cluster' });
    if (spec.kind === 'cluster' && spec.shards !== undefined) problems.push({ path: 'shards', message: 'not for kind: cluster (sharded inputs are split across cluster.size members)' });
    if (spec.verification?.mode === 'tolerance' && spec.verification.tolerance === undefined) {
      problems.push({ path: 'verification.tolerance', message: 'required when verification.mode is tolerance' });
    }
    const names = new Set<string>();
    for (const [i, input] of (spec.inputs ?? []).entries()) {
      if (names.has(input.name)) problems.push({ path: `inputs[${i}].name`, message: `duplicate input name "${input.name}"` });
      names.add(input.name);
    }
    for (const [i, model] of (spec.resources.gpu?.models ?? []).entries()) {
      if (KNOWN_GPU_MODELS.includes(model)) continue;
      // "h100" never matches: providers report the memory size too (h100-80gb).
      const sized = KNOWN_GPU_MODELS.filter((k) => k.startsWith(`${model}-`) && /-\d+gb$/.test(k));
      const guess = sized.length > 0 ? sized.join(' or ') : nearest(model, KNOWN_GPU_MODELS);
      if (guess) problems.push({ path: `resources.gpu.models[${i}]`, message: `unknown GPU model "${model}"; did you mean ${guess}?` });
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
