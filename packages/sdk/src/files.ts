/**
 * Local files → content-addressed references: glob expansion for inputs (`*`, `?`, `**`,
 * relative to the spec's directory), bundle packing into a manifest of file digests, and the
 * plan for uploading them (small files many to a request, large ones alone).
 * Node 20 has no fs.glob, and the patterns users write in specs need no more than this.
 */
import { createHash } from 'node:crypto';
import { createReadStream } from 'node:fs';
import { readdir, readFile, stat } from 'node:fs/promises';
import { join, posix, relative, resolve, sep } from 'node:path';
import type { BundleManifest, FileRef } from '@gridwork/protocol';
import { canonicalJson } from '@gridwork/protocol/canonical-json';
import { GridworkError } from '@gridwork/protocol/errors';

export interface LocalFile extends FileRef {
  /** Absolute path on this machine. */
  absPath: string;
  executable: boolean;
}

export async function hashFile(absPath: string): Promise<{ digest: string; size: number }> {
  const hash = createHash('sha256');
  let size = 0;
  for await (const chunk of createReadStream(absPath)) {
    hash.update(chunk as Buffer);
    size += (chunk as Buffer).length;
  }
  return { digest: hash.digest('hex'), size };
}

function segmentRegex(segment: string): RegExp {
  let re = '';
  for (const ch of segment) {
    if (ch === '*') re += '[^/]*';
    else if (ch === '?') re += '[^/]';
    else re += ch.replace(/[.+^${}()|[\]\\]/g, '\\$&');
  }
  return new RegExp(`^${re}$`);
}

async function walk(dir: string, skip: (name: string) => boolean): Promise<string[]> {
  const out: string[] = [];
  for (const entry of await readdir(dir, { withFileTypes: true })) {
    if (skip(entry.name)) continue;
    const full = join(dir, entry.name);
    if (entry.isDirectory()) out.push(...(await walk(full, skip)));
    else if (entry.isFile()) out.push(full);
  }
  return out;
}

/** Files matching `pattern` under `baseDir`, sorted; paths in the result are relative to the pattern's fixed prefix. */
export async function expandGlob(baseDir: string, pattern: string): Promise<{ absPath: string; path: string }[]> {
  const segments = pattern.split('/').filter((s) => s !== '' && s !== '.');
  const fixed: string[] = [];
  while (segments.length > 0 && !/[*?]/.test(segments[0] as string)) fixed.push(segments.shift() as string);
  const root = resolve(baseDir, ...fixed);
  if (segments.length === 0) {
    const s = await stat(root).catch(() => undefined);
    if (!s) return [];
    if (s.isFile()) return [{ absPath: root, path: posix.basename(root) }];
    return (await walk(root, () => false)).sort().map((abs) => ({ absPath: abs, path: relative(root, abs).split(sep).join('/') }));
  }
  const regexes = segments.map((s) => (s === '**' ? null : segmentRegex(s)));
  const matches = (rel: string[]): boolean => {
    const go = (i: number, j: number): boolean => {
      if (i === regexes.length) return j === rel.length;
      const r = regexes[i];
      if (r === null || r === undefined) return go(i + 1, j) || (j < rel.length && go(i, j + 1));
      return j < rel.length && r.test(rel[j] as string) && go(i + 1, j + 1);
    };
    return go(0, 0);
  };
  const exists = await stat(root).catch(() => undefined);
  if (!exists?.isDirectory()) return [];
  const files = await walk(root, () => false);
  return files
    .map((abs) => ({ absPath: abs, path: relative(root, abs).split(sep).join('/') }))
    .filter((f) => matches(f.path.split('/')))
    .sort((a, b) => (a.path < b.path ? -1 : a.path > b.path ? 1 : 0));
}

export async function describeFiles(files: { absPath: string; path: string }[]): Promise<LocalFile[]> {
  const out: LocalFile[] = [];
  for (const f of files) {
    const [{ digest, size }, s] = await Promise.all([hashFile(f.absPath), stat(f.absPath)]);
    out.push({ ...f, digest, size, executable: (s.mode & 0o111) !== 0 });
  }
  return out;
}

/** Packs a directory into a bundle manifest (skipping .git and node_modules/.cache). */
export async function packBundle(dir: string): Promise<{ manifest: BundleManifest; manifestBytes: Buffer; manifestDigest: string; files: LocalFile[] }> {
  const root = resolve(dir);
  const s = await stat(root).catch(() => undefined);
  if (!s?.isDirectory()) throw new GridworkError('INVALID_SPEC', `runtime.path: ${dir} is not a directory`);
  const abs = await walk(root, (name) => name === '.git' || name === '.cache');
  const files = await describeFiles(abs.sort().map((a) => ({ absPath: a, path: relative(root, a).split(sep).join('/') })));
  if (files.length === 0) throw new GridworkError('INVALID_SPEC', `runtime.path: ${dir} is empty`);
  const manifest: BundleManifest = { files: files.map((f) => ({ path: f.path, digest: f.digest, size: f.size, executable: f.executable })) };
  const manifestBytes = Buffer.from(canonicalJson(manifest));
  return { manifest, manifestBytes, manifestDigest: createHash('sha256').update(manifestBytes).digest('hex'), files };
}

/** What travels in one upload request: many small files (a batch), or one file alone. */
export type UploadUnit = { kind: 'batch'; files: LocalFile[]; bytes: number } | { kind: 'single'; file: LocalFile };

export interface BatchPolicy {
  /** Files smaller than this go in batches; others alone. */
  smallFileBytes: number;
  /** Files in one batch. */
  maxFiles: number;
  /** Bytes of one batch body, frame headers included. */
  maxBodyBytes: number;
}

/** sha256 (32 raw bytes) and length (4 bytes, big-endian) before each blob of a batch body. */
export const BATCH_FRAME_HEADER_BYTES = 36;

/**
 * Groups files into upload units: small ones packed into batches within `policy`, large ones
 * alone. Batches come out about even (2,001 small files make three of 667, not 1,000 + 1,000 + 1),
 * so that those sent at once take about as long as each other.
 */
export function planUploads(files: readonly LocalFile[], policy: BatchPolicy): UploadUnit[] {
  const units: UploadUnit[] = [];
  const small: LocalFile[] = [];
  for (const f of files) {
    if (f.size < policy.smallFileBytes) small.push(f);
    else units.push({ kind: 'single', file: f });
  }
  const framedBytes = small.reduce((n, f) => n + BATCH_FRAME_HEADER_BYTES + f.size, 0);
  const count = Math.max(Math.ceil(small.length / policy.maxFiles), Math.ceil(framedBytes / policy.maxBodyBytes));
  const maxFiles = Math.ceil(small.length / Math.max(1, count));
  let batch: Extract<UploadUnit, { kind: 'batch' }> | undefined;
  for (const f of small) {
    const framed = BATCH_FRAME_HEADER_BYTES + f.size;
    if (batch && (batch.files.length >= maxFiles || batch.bytes + framed > policy.maxBodyBytes)) batch = undefined;
    if (!batch) {
      batch = { kind: 'batch', files: [], bytes: 0 };
      units.push(batch);
    }
    batch.files.push(f);
    batch.bytes += framed;
  }
  return units;
}

/**
 * Reads files into the body of a batch upload (`POST /v1/blobs/batch/:digest`): for each, its
 * sha256, its length and its bytes; and the body's own sha256, which names the request and is
 * what its signature covers. A file changed since it was hashed fails the batch on the
 * coordinator (DIGEST_MISMATCH), as it would fail a single upload.
 */
export async function readBatchBody(files: readonly LocalFile[]): Promise<{ body: Buffer; digest: string }> {
  const parts: Buffer[] = [];
  // A few reads at a time: thousands of tiny files, without thousands of open descriptors.
  for (let i = 0; i < files.length; i += 32) {
    const group = files.slice(i, i + 32);
    const contents = await Promise.all(group.map((f) => readFile(f.absPath)));
    for (const [j, bytes] of contents.entries()) {
      const header = Buffer.allocUnsafe(BATCH_FRAME_HEADER_BYTES);
      header.write((group[j] as LocalFile).digest, 0, 32, 'hex');
      header.writeUInt32BE(bytes.length, 32);
      parts.push(header, bytes);
    }
  }
  const body = Buffer.concat(parts);
  return { body, digest: createHash('sha256').update(body).digest('hex') };
}
