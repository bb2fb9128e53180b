/**
 * @packageDocumentation
 * The identity of a Meshnet node: the Ed25519 key in `identity.key` (whose libp2p PeerId is the node
 * id), domain-separated signing, the data directory layout and atomic file writes. Errors and the
 * logger are in `@meshnet/core`.
 */
export type { DataDirLayout, ResolveDataDirOptions } from './data-dir.ts'
export {
  DATA_DIR_ENV,
  DEFAULT_DATA_DIR_NAME,
  dataDirLayout,
  ensureDataDir,
  resolveDataDir,
} from './data-dir.ts'
export type { WriteFileOptions } from './files.ts'
export { writeFileAtomic, writeFileAtomicSync, writeFileExclusive } from './files.ts'
export type { LoadedIdentity, LoadNodeIdentityOptions, NodeIdentity } from './keys.ts'
export {
  decodeIdentityFile,
  encodeIdentityFile,
  generateIdentity,
  IDENTITY_FILE_VERSION,
  IdentityMissingError,
  identityFromSeed,
  loadIdentity,
  loadNodeIdentity,
  loadOrCreateIdentity,
  nodeIdentitySchema,
} from './keys.ts'
export {
  domainSeparated,
  publicKeyOfSeed,
  randomSeed,
  signingKey,
  signWithSeed,
  verifySignature,
} from './signing.ts'
