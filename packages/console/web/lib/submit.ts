/**
 * Submitting a job from the browser: the bundle's files and each input's files, picked in the
 * page, are uploaded as content-addressed blobs; the bundle manifest (canonical JSON, as the
 * SDK packs it) is uploaded too; then the spec is submitted with their digests.
 */
import { canonicalJson } from '../../../protocol/src/canonical-json.ts';
import type { Api } from './api.ts';
import type { JobView } from './types.ts';

export interface PickedFile {
  /** Path inside the bundle or input set. */
  path: string;
  file: File;
}

/** A picked file's path: relative to the picked folder, or its name. */
export function pathOf(file: File): string {
  const rel = file.webkitRelativePath;
  return rel ? rel.split('/').slice(1).join('/') || file.name : file.name;
}

async function upload(api: Api, files: PickedFile[]): Promise<{ path: string; digest: string; size: number }[]> {
  const out: { path: string; digest: string; size: number }[] = [];
  for (const f of files) {
    const bytes = new Uint8Array(await f.file.arrayBuffer());
    out.push({ path: f.path, digest: await api.putBlob(bytes), size: bytes.length });
  }
  return out.sort((a, b) => (a.path < b.path ? -1 : a.path > b.path ? 1 : 0));
}

export async function submitJob(
  api: Api,
  spec: Record<string, unknown>,
  bundle: PickedFile[],
  inputs: { name: string; shard: boolean; files: PickedFile[] }[],
): Promise<JobView> {
  const runtime = spec.runtime as { kind?: string } | undefined;
  let manifest: string | undefined;
  if (runtime?.kind === 'bundle') {
    if (bundle.length === 0) throw new Error("pick the bundle's files (the folder named by runtime.path)");
    const files = (await upload(api, bundle)).map((f) => ({ ...f, executable: false }));
    manifest = await api.putBlob(new TextEncoder().encode(canonicalJson({ files })));
  }
  const sets = [];
  for (const input of inputs) {
    if (input.files.length === 0) throw new Error(`pick the files of input "${input.name}"`);
    sets.push({ name: input.name, shard: input.shard, files: await upload(api, input.files) });
  }
  const idempotencyKey = `console-${crypto.randomUUID()}`;
  return api.json<JobView>('POST', '/v1/jobs', { spec, ...(manifest ? { bundle: { manifest } } : {}), inputs: sets, idempotencyKey });
}
