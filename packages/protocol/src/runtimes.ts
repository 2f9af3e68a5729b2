/**
 * The runtime registry: the one list of runtimes a provider can offer and of the workload kinds a
 * job spec can ask for (`runtime.kind`). The spec schema, the lease assignment, the provider hello,
 * the agent's runtime selection and the coordinator's matching all derive from these two records;
 * adding a runtime is one entry here.
 *
 * A spec names what it brings (a `bundle` of files, or a `container` image); a provider names how
 * it runs things (`sandbox`, `process`, `container`). Each runtime runs exactly one workload kind.
 */
import Type from 'typebox';

/** What a job spec's `runtime.kind` may be: the form of the workload. */
export const WORKLOADS = {
  bundle: { description: 'files uploaded with the job, run by a command inside them' },
  container: { description: 'an OCI image, run by a container engine' },
} as const;
export type WorkloadKind = keyof typeof WORKLOADS;
export const WORKLOAD_KINDS = Object.keys(WORKLOADS) as WorkloadKind[];

/** The runtimes a provider can offer, and the workload each runs. */
export const RUNTIMES = {
  sandbox: { runs: 'bundle', isolated: true, description: 'bubblewrap sandbox' },
  process: { runs: 'bundle', isolated: false, description: 'unsandboxed process (development only)' },
  container: { runs: 'container', isolated: true, description: 'OCI container through the Docker Engine API' },
} as const satisfies Record<string, { runs: WorkloadKind; isolated: boolean; description: string }>;
export type RuntimeKind = keyof typeof RUNTIMES;
export const RUNTIME_KINDS = Object.keys(RUNTIMES) as RuntimeKind[];

/**
 * The union schema of a list of string literals (`anyOf` of consts, which spec errors show as
 * `must be one of a | b`). Unsafe only carries the static type: a union built from an array is `never` to TypeBox.
 */
const literals = <T extends string>(values: readonly T[]) => Type.Unsafe<T>(Type.Union(values.map((v) => Type.Literal(v))));

export const WorkloadKindSchema = literals(WORKLOAD_KINDS);
export const RuntimeKindSchema = literals(RUNTIME_KINDS);

export function isRuntimeKind(value: unknown): value is RuntimeKind {
  return typeof value === 'string' && Object.hasOwn(RUNTIMES, value);
}

/** The runtime of `offered` that runs `workload` (the first one listed), or undefined. */
export function runtimeFor(workload: WorkloadKind, offered: readonly RuntimeKind[]): RuntimeKind | undefined {
  return offered.find((k) => RUNTIMES[k].runs === workload);
}

/** Whether a provider offering `offered` can run a workload of this kind. */
export function offersWorkload(offered: readonly RuntimeKind[], workload: WorkloadKind): boolean {
  return runtimeFor(workload, offered) !== undefined;
}

/** The runtime that a workload kind names for people ("the container runtime", "a bundle runtime (sandbox or process)"). */
export function runtimeNameFor(workload: WorkloadKind): string {
  const kinds = RUNTIME_KINDS.filter((k) => RUNTIMES[k].runs === workload);
  if (kinds.length === 1 && kinds[0] === workload) return `the ${workload} runtime`;
  return `a ${workload} runtime (${kinds.join(' or ')})`;
}

/** What a provider's hello offers: `runtimes` when given (with `runtime` in it), else `runtime` alone. */
export function offeredRuntimes(hello: { runtime: RuntimeKind; runtimes?: readonly RuntimeKind[] | undefined }): RuntimeKind[] {
  return [...new Set([hello.runtime, ...(hello.runtimes ?? [])])];
}

/**
 * Offered runtimes as one text value ("sandbox,container"), the form the coordinator stores in
 * `providers.runtime`: a row written before providers offered several runtimes holds one name,
 * which reads back as a list of one.
 */
export function formatRuntimeList(kinds: readonly RuntimeKind[]): string {
  return [...new Set(kinds)].join(',');
}

/** The inverse of formatRuntimeList; unknown names (a newer agent's runtime) are dropped. */
export function parseRuntimeList(text: string): RuntimeKind[] {
  return [...new Set(text.split(',').map((s) => s.trim()))].filter(isRuntimeKind);
}
