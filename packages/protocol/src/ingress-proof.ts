/**
 * Proof that a provider's advertised service ingress is its own agent. The coordinator proxies
 * service requests to that address, so an address a provider merely names could point it at
 * anything listening there (an internal admin port on the coordinator's own host). Before
 * using an ingress, the coordinator asks it to sign a fresh challenge with the provider's key:
 * only the agent holding that key answers correctly.
 */

/** Where the agent's ingress answers proofs (never a lease id: those match `[a-z0-9_]+`). */
export const INGRESS_PROOF_PATH = '/.gridwork/ingress-proof';

/** What the agent signs: bound to the URL it advertised and to the coordinator's challenge. */
export function ingressProofMessage(ingressUrl: string, challenge: string): string {
  return `gridwork-ingress-proof/v1\n${ingressUrl}\n${challenge}`;
}
