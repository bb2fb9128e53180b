/**
 * @packageDocumentation
 * The identity of a Meshnet node and the ground every other package stands on: the Ed25519 key in
 * `identity.key` (whose libp2p PeerId is the node id), domain-separated signing, the data directory
 * layout, atomic file writes, the `MeshError` family and the logger.
 */
export type { CliIo } from './cli.ts'
export { printFields, printJson, processIo, reportError, waitForSignal } from './cli.ts'
export type { DataDirLayout, ResolveDataDirOptions } from './data-dir.ts'
export {
  DATA_DIR_ENV,
  DEFAULT_DATA_DIR_NAME,
  dataDirLayout,
  ensureDataDir,
  resolveDataDir,
} from './data-dir.ts'
export type { MeshErrorOptions } from './errors.ts'
export {
  CorruptFileError,
  DataDirInUseError,
  FileAccessError,
  InvalidArgumentError,
  InvalidSignatureError,
  isMeshError,
  MeshError,
} from './errors.ts'
export type { WriteFileOptions } from './files.ts'
export { writeFileAtomic, writeFileExclusive } from './files.ts'
export type { LoadedIdentity, NodeIdentity } from './keys.ts'
export {
  decodeIdentityFile,
  encodeIdentityFile,
  generateIdentity,
  IDENTITY_FILE_VERSION,
  identityFromSeed,
  loadIdentity,
  loadOrCreateIdentity,
  nodeIdentitySchema,
} from './keys.ts'
export type { CreateLoggerOptions, Logger, LogLevel } from './logger.ts'
export {
  createLogger,
  LOG_LEVEL_ENV,
  LOG_LEVELS,
  loggerSchema,
  logLevelFromEnv,
  silentLogger,
} from './logger.ts'
export {
  domainSeparated,
  publicKeyOfSeed,
  randomSeed,
  signingKey,
  signWithSeed,
  verifySignature,
} from './signing.ts'
