/**
 * One base class for every error Meshnet raises on purpose. Callers match on `err.name`, which is a
 * literal per subclass and survives duplicate installs of a package (unlike `instanceof`).
 */
export interface MeshErrorOptions {
  /** Extra facts for logs and `--verbose` output. */
  details?: Record<string, unknown>
  cause?: unknown
  /** Overrides the default hint appended to the message. */
  hint?: string
}

export class MeshError extends Error {
  override name: string = 'MeshError'
  /** Stable, machine-readable code (`ERR_...`). */
  readonly code: string
  /** The message without the hint: what happened, to what. */
  readonly shortMessage: string
  readonly details: Record<string, unknown>

  constructor(code: string, shortMessage: string, options: MeshErrorOptions = {}) {
    super(options.hint === undefined ? shortMessage : `${shortMessage}; ${options.hint}`, {
      cause: options.cause,
    })
    this.code = code
    this.shortMessage = shortMessage
    this.details = options.details ?? {}
  }
}

/** A value given by the user (flag, option, file field) is not acceptable. */
export class InvalidArgumentError extends MeshError {
  override name = 'InvalidArgumentError' as const
  constructor(message: string, options?: MeshErrorOptions) {
    super('ERR_INVALID_ARGUMENT', message, options)
  }
}

/** A file exists but its contents cannot be used. Nothing has been overwritten. */
export class CorruptFileError extends MeshError {
  override name = 'CorruptFileError' as const
  constructor(message: string, options?: MeshErrorOptions) {
    super('ERR_CORRUPT_FILE', message, options)
  }
}

/** A file could not be read or written (permissions, missing directory, disk full). */
export class FileAccessError extends MeshError {
  override name = 'FileAccessError' as const
  constructor(message: string, options?: MeshErrorOptions) {
    super('ERR_FILE_ACCESS', message, options)
  }
}

/** Another process holds the data directory. */
export class DataDirInUseError extends MeshError {
  override name = 'DataDirInUseError' as const
  constructor(message: string, options?: MeshErrorOptions) {
    super('ERR_DATA_DIR_IN_USE', message, options)
  }
}

/** A signature did not verify. */
export class InvalidSignatureError extends MeshError {
  override name = 'InvalidSignatureError' as const
  constructor(message: string, options?: MeshErrorOptions) {
    super('ERR_INVALID_SIGNATURE', message, options)
  }
}

/** True when `err` is a MeshError (by shape, so it works across duplicate installs). */
export function isMeshError(err: unknown): err is MeshError {
  return (
    err instanceof Error &&
    typeof (err as Partial<MeshError>).code === 'string' &&
    typeof (err as Partial<MeshError>).shortMessage === 'string'
  )
}
