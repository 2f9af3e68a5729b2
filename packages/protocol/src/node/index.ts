/** Node-only parts of the protocol: key pairs and their files, request signing and verification, signed fetch, verified downloads. */
export {
  EMPTY_SHA256,
  generateIdentity,
  readAuthHeaders,
  type Identity,
  sha256Hex,
  signBytes,
  type SignedBody,
  signRequest,
  type VerifiedRequest,
  verifyBytes,
  verifyRequest,
} from './signing.ts';
export {
  loadOrCreateIdentity,
} from './key-file.ts';
export {
  readNdjson,
  type RequestBody,
  signedFetch,
  type SignedFetchOptions,
} from './signed-fetch.ts';
export {
  writeVerified,
} from './verified-download.ts';
export {
  sha256Bytes,
} from './hash.ts';
