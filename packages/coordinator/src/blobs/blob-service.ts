/**
 * Blob uploads and existence, over the blob store; owns the `blobs` and `blob_owners` tables.
 * A digest is public knowledge (it names content, it does not prove having it), so every
 * account that uses a blob must have uploaded its bytes once: an upload records the uploader
 * in `blob_owners` only after the store has checked the bytes against the digest. A job may
 * use only blobs its owner uploaded; a provider's outputs count only if it uploaded them during
 * its lease.
 */
import type { Readable } from 'node:stream';
import { GridworkError } from '@gridwork/protocol';
import type { Transaction } from 'kysely';
import type { Db } from '../store/database.ts';
import type { Database } from '../store/schema.ts';
import type { BlobStore } from './blob-store.ts';

export class BlobService {
  constructor(
    private readonly db: Db,
    private readonly store: BlobStore,
    private readonly maxBlobBytes: number,
  ) {}

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
