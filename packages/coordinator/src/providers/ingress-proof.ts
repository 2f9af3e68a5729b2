/**
 * Which service ingress the coordinator may proxy to for a provider. Two checks, both needed:
 * the advertised address must be the one the provider connected from (it cannot send the
 * coordinator to another host), and whatever listens at that address and port must sign a
 * fresh challenge with the provider's key (it cannot send the coordinator to another service
 * on its own host — an internal admin port on the coordinator's machine, say).
 */
import { randomBytes } from 'node:crypto';
import { INGRESS_PROOF_PATH, ingressProofMessage } from '@gridwork/protocol';
import { verifyBytes } from '@gridwork/protocol/node';

/**
 * The advertised ingress if it is exactly an origin (scheme, host, port: no path, query or
 * credentials, in the URL parser's own spelling — `\\` counts as `/` there) and its host is the
 * address the provider connected from; else null.
 */
export function ingressOf(url: string | undefined, remoteAddress: string | null): string | null {
  if (!url || !remoteAddress) return null;
  let parsed: URL;
  try {
    parsed = new URL(url);
  } catch {
    return null;
  }
  if (parsed.origin !== url || parsed.username || parsed.password) return null;
  const remote = remoteAddress.replace(/^::ffff:/, '');
  return parsed.hostname.replace(/^\[|\]$/g, '') === remote ? url : null;
}

/** A proof answer is a signature in a tiny JSON object: anything longer is not one. */
const MAX_PROOF_BYTES = 1024;

/**
 * The ingress to record for a provider: `ingressOf`, and then only if it proves itself within
 * `timeoutMs`. Never throws: an ingress that fails is simply not used (the provider runs no
 * services until a later hello proves one).
 */
export async function provenIngress(providerId: string, url: string | undefined, remoteAddress: string | null, timeoutMs: number): Promise<string | null> {
  const candidate = ingressOf(url, remoteAddress);
  if (!candidate) return null;
  const challenge = randomBytes(24).toString('base64url');
  try {
    const res = await fetch(new URL(`${INGRESS_PROOF_PATH}?challenge=${challenge}`, candidate), { redirect: 'manual', signal: AbortSignal.timeout(timeoutMs) });
    if (res.status !== 200 || Number(res.headers.get('content-length') ?? 0) > MAX_PROOF_BYTES) {
      await res.body?.cancel();
      return null;
    }
    const text = await readAtMost(res, MAX_PROOF_BYTES);
    const signature = text === null ? undefined : (JSON.parse(text) as { signature?: unknown }).signature;
    return typeof signature === 'string' && verifyBytes(providerId, ingressProofMessage(candidate, challenge), signature) ? candidate : null;
  } catch {
    return null;
  }
}

async function readAtMost(res: Response, max: number): Promise<string | null> {
  if (!res.body) return null;
  const chunks: Uint8Array[] = [];
  let size = 0;
  for await (const chunk of res.body as AsyncIterable<Uint8Array>) {
    size += chunk.length;
    if (size > max) return null;
    chunks.push(chunk);
  }
  return Buffer.concat(chunks).toString('utf8');
}
