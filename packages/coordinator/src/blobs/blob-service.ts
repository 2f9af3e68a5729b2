/**
 * Blob uploads and existence, over the blob store; owns the `blobs` and `blob_owners` tables.
 * A digest is public knowledge (it names content, it does not prove having it), so every
 * account that uses a blob must have uploaded its bytes once: an upload records the uploader
 * in `blob_owners` only after the store has checked the bytes against the digest. A job may
 * use only blobs its owner uploaded; a provider's outputs count only if it uploaded them during
 * its lease.
 *
 * A batch (`putBatch`) is all or nothing: every blob is checked against its digest and staged
 * where no one sees it, the body against the digest its signature covers, and only then are the
 * blobs made visible and all their rows written in one transaction.
 */
import type { Readable } from 'node:stream';
import { GridworkError } from '@gridwork/protocol';
import type { Transaction } from 'kysely';
import type { Db } from '../store/database.ts';
import type { Database } from '../store/schema.ts';
import { transact } from '../store/transact.ts';
import { BatchFrameReader, BLOB_BATCH_LIMITS, type BlobBatchLimits } from './blob-batch.ts';
import type { BlobStore, StagedBlob } from './blob-store.ts';

/** Staged writes in flight while the next frames of a batch arrive. */
const STAGE_CONCURRENCY = 8;
/** Rows per INSERT of a batch (3 parameters a row: far under PostgreSQL's 65,535). */
const INSERT_ROWS = 1000;

export interface StoredBlob {
  digest: string;
  size: number;
  /** Whether the coordinator had no copy before (another account's upload counts as a copy). */
  created: boolean;
}

export class BlobService {
  constructor(
    private readonly db: Db,
    private readonly store: BlobStore,
    private readonly maxBlobBytes: number,
    batchLimits: BlobBatchLimits = BLOB_BATCH_LIMITS,
  ) {
    this.batchLimits = { ...batchLimits, maxBlobBytes: Math.min(batchLimits.maxBlobBytes, maxBlobBytes) };
  }

  private readonly batchLimits: BlobBatchLimits;

  async put(accountId: string, digest: string, body: Readable, declaredSize: number | undefined): Promise<{ digest: string; size: number; created: boolean }> {
    if (declaredSize !== undefined && declaredSize > this.maxBlobBytes) {
      body.resume();
      throw new GridworkError('PAYLOAD_TOO_LARGE', `blob of ${declaredSize} bytes exceeds the limit of ${this.maxBlobBytes} bytes`);
    }
    const existing = await this.db
      .selectFrom('blobs')
      .leftJoin('blob_owners', (j) => j.onRef('blob_owners.digest', '=', 'blobs.digest').on('blob_owners.account_id', '=', accountId))
      .select(['blobs.size', 'blob_owners.account_id'])
      .where('blobs.digest', '=', digest)
      .executeTakeFirst();
    if (existing?.account_id && (await this.store.has(digest))) {
      // This account proved it has these bytes before: no need to send them again.
      body.resume();
      await this.own(accountId, digest);
      return { digest, size: Number(existing.size), created: false };
    }
    const size = await this.store.put(digest, body, this.maxBlobBytes);
    await this.db
      .insertInto('blobs')
      .values({ digest, size: BigInt(size) })
      .onConflict((oc) => oc.doNothing())
      .execute();
    await this.own(accountId, digest);
    return { digest, size, created: !existing };
  }

  /**
   * Stores a batch body (see blob-batch.ts) whose sha256 must be `bodyDigest`, the digest the
   * request's signature covers. Refused whole, with nothing recorded, on the first problem:
   * PAYLOAD_TOO_LARGE, BAD_REQUEST (truncated, empty, a digest twice, a broken body),
   * DIGEST_MISMATCH (a blob's bytes), BAD_SIGNATURE (a body other than the signed one).
   */
  async putBatch(accountId: string, bodyDigest: string, body: Readable, declaredSize: number | undefined): Promise<StoredBlob[]> {
    const limits = this.batchLimits;
    if (declaredSize !== undefined && declaredSize > limits.maxBodyBytes) {
      discardRest(body);
      throw new GridworkError('PAYLOAD_TOO_LARGE', `batch body of ${declaredSize} bytes exceeds the limit of ${limits.maxBodyBytes} bytes`);
    }
    const reader = new BatchFrameReader(limits);
    const order: { digest: string; size: number }[] = [];
    const staged: StagedBlob[] = [];
    const writing = new Set<Promise<void>>();
    let failure: unknown;
    try {
      // Not destroyed when a check throws mid-body: the request stays answerable (see discardRest).
      const chunks = body.iterator({ destroyOnReturn: false }) as AsyncIterableIterator<Buffer>;
      for (;;) {
        let next: IteratorResult<Buffer>;
        try {
          next = await chunks.next();
        } catch (err) {
          throw new GridworkError('BAD_REQUEST', 'the request body broke off', { cause: err });
        }
        if (next.done) break;
        for (const frame of reader.push(next.value)) {
          order.push({ digest: frame.digest, size: frame.bytes.length });
          if (writing.size >= STAGE_CONCURRENCY) await Promise.race(writing);
          if (failure) throw failure;
          const write: Promise<void> = this.store.stage(frame.digest, frame.bytes).then(
            (s) => {
              staged.push(s);
              writing.delete(write);
            },
            (err: unknown) => {
              failure ??= err;
              writing.delete(write);
            },
          );
          writing.add(write);
        }
      }
      await Promise.all(writing);
      if (failure) throw failure;
      const actual = reader.end();
      if (actual !== bodyDigest) {
        throw new GridworkError('BAD_SIGNATURE', `the body's sha256 is ${actual}, not the ${bodyDigest} the signature covers`);
      }
      // Visible first, then recorded: a crash in between leaves whole, unreferenced files, never rows without bytes.
      await forEachLimit(staged, STAGE_CONCURRENCY, (s) => s.commit());
      const created = await this.record(accountId, order);
      return order.map((b) => ({ ...b, created: created.has(b.digest) }));
    } catch (err) {
      discardRest(body);
      await Promise.all(writing);
      // Committed ones are already gone from staging (their discard does nothing); the rest leave no trace.
      await forEachLimit(staged, STAGE_CONCURRENCY, (s) => s.discard()).catch(() => undefined);
      throw err;
    }
  }

  /**
   * One transaction for a whole batch: its `blobs` rows (returns the digests that were new) and
   * the account's `blob_owners` rows. Rows go in digest order, so two batches sharing blobs lock
   * them in the same order and cannot deadlock.
   */
  private async record(accountId: string, blobs: readonly { digest: string; size: number }[]): Promise<Set<string>> {
    const rows = [...blobs].sort((a, b) => (a.digest < b.digest ? -1 : a.digest > b.digest ? 1 : 0));
    return transact(this.db, async (trx) => {
      const created = new Set<string>();
      const now = new Date();
      for (let i = 0; i < rows.length; i += INSERT_ROWS) {
        const part = rows.slice(i, i + INSERT_ROWS);
        const inserted = await trx
          .insertInto('blobs')
          .values(part.map((b) => ({ digest: b.digest, size: BigInt(b.size) })))
          .onConflict((oc) => oc.column('digest').doNothing())
          .returning('digest')
          .execute();
        for (const r of inserted) created.add(r.digest);
        await trx
          .insertInto('blob_owners')
          .values(part.map((b) => ({ digest: b.digest, account_id: accountId, uploaded_at: now })))
          .onConflict((oc) => oc.columns(['digest', 'account_id']).doUpdateSet({ uploaded_at: now }))
          .execute();
      }
      return created;
    });
  }

  private async own(accountId: string, digest: string): Promise<void> {
    const now = new Date();
    await this.db
      .insertInto('blob_owners')
      .values({ digest, account_id: accountId, uploaded_at: now })
      .onConflict((oc) => oc.columns(['digest', 'account_id']).doUpdateSet({ uploaded_at: now }))
      .execute();
  }

  /** Which of these digests this account has not uploaded yet (whether or not someone else has). */
  missing(accountId: string, digests: readonly string[]): Promise<string[]> {
    return notUploadedBy(this.db, accountId, digests);
  }
}

/**
 * The digests among `digests` that `accountId` has not uploaded (since `since`, when given):
 * the one ownership check of submits, provider outputs and the missing-blobs route.
 */
export async function notUploadedBy(db: Db | Transaction<Database>, accountId: string, digests: readonly string[], since?: Date): Promise<string[]> {
  const unique = [...new Set(digests)];
  const have = new Set<string>();
  for (let i = 0; i < unique.length; i += 1000) {
    let q = db.selectFrom('blob_owners').select('digest').where('account_id', '=', accountId).where('digest', 'in', unique.slice(i, i + 1000));
    if (since) q = q.where('uploaded_at', '>=', since);
    for (const r of await q.execute()) have.add(r.digest);
  }
  return unique.filter((d) => !have.has(d));
}

/** Runs `fn` over `items`, at most `limit` at a time; the first failure is thrown once all started ones are done. */
async function forEachLimit<T>(items: readonly T[], limit: number, fn: (item: T) => Promise<void>): Promise<void> {
  let next = 0;
  const worker = async () => {
    while (next < items.length) await fn(items[next++] as T);
  };
  const results = await Promise.allSettled(Array.from({ length: Math.min(limit, items.length) }, worker));
  const failed = results.find((r) => r.status === 'rejected');
  if (failed) throw (failed as PromiseRejectedResult).reason;
}

/**
 * After a refusal before the body's end: lets the rest flow (and drops it) rather than leaving
 * the client blocked on its upload; the route closes the connection once it has answered.
 */
function discardRest(body: Readable): void {
  if (body.readableEnded || body.destroyed) return;
  body.on('error', () => undefined);
  body.resume();
}
