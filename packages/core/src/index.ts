/**
 * @packageDocumentation
 * The ground every Meshnet package stands on: the `MeshError` family (callers match on `err.name`),
 * the logger, `parseWith` (one zod check at every boundary, one error that names the problem), and
 * the process helpers that the `mesh`, `mesh-relay` and `mesh-control-plane` programs share.
 */
export type { CliIo } from './cli.ts'
export { printFields, printJson, processIo, reportError, waitForSignal } from './cli.ts'
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
export type { CreateLoggerOptions, Logger, LogLevel } from './logger.ts'
export {
  createLogger,
  LOG_LEVEL_ENV,
  LOG_LEVELS,
  loggerSchema,
  logLevelFromEnv,
  silentLogger,
} from './logger.ts'
export { nodeVersionProblem, REQUIRED_NODE_MAJOR, runProgram } from './node-version.ts'
export type { ParseErrorFactory } from './parse.ts'
export { parseWith } from './parse.ts'
