/** Blob uploads and existence, over the blob store and the `blobs` table (which it owns). */
import type { Readable } from 'node:stream';
import { GridworkError } from '@gridwork/protocol';
import type { Db } from '../store/database.ts';
import type { BlobStore } from './blob-store.ts';

export class BlobService {
  constructor(
    private readonly db: Db,
    private readonly store: BlobStore,
    private readonly maxBlobBytes: number,
  ) {}

  async put(digest: string, body: Readable, declaredSize: number | undefined): Promise<{ digest: string; size: number; created: boolean }> {
    if (declaredSize !== undefined && declaredSize > this.maxBlobBytes) {
      body.resume();
      throw new GridworkError('PAYLOAD_TOO_LARGE', `blob of ${declaredSize} bytes exceeds the limit of ${this.maxBlobBytes} bytes`);
    }
    const existing = await this.db.selectFrom('blobs').select('size').where('digest', '=', digest).executeTakeFirst();
    if (existing && (await this.store.has(digest))) {
      body.resume();
      return { digest, size: Number(existing.size), created: false };
    }
    const size = await this.store.put(digest, body, this.maxBlobBytes);
    await this.db
      .insertInto('blobs')
      .values({ digest, size: BigInt(size) })
      .onConflict((oc) => oc.doNothing())
      .execute();
    return { digest, size, created: true };
  }

  async missing(digests: string[]): Promise<string[]> {
    const unique = [...new Set(digests)];
    if (unique.length === 0) return [];
    const rows = await this.db.selectFrom('blobs').select('digest').where('digest', 'in', unique).execute();
    const have = new Set(rows.map((r) => r.digest));
    return unique.filter((d) => !have.has(d));
  }
}
