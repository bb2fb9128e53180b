import { MeshError, type MeshErrorOptions } from '@meshnet/core'

/** A manifest that does not parse, does not hash to the model id asked for, or does not fit its file. */
export class ManifestError extends MeshError {
  override name = 'ManifestError' as const
  constructor(message: string, options?: MeshErrorOptions) {
    super('ERR_MANIFEST', message, options)
  }
}

/** Bytes that do not hash to the manifest's chunk hash: dropped, never written. */
export class ChunkHashError extends MeshError {
  override name = 'ChunkHashError' as const
  constructor(message: string, options?: MeshErrorOptions) {
    super('ERR_CHUNK_HASH', message, options)
  }
}

/** A model id (or name) this node has no record of. */
export class UnknownModelError extends MeshError {
  override name = 'UnknownModelError' as const
  constructor(message: string, options?: MeshErrorOptions) {
    super('ERR_UNKNOWN_MODEL', message, options)
  }
}

/** A fetch would take more disk than `--disk` allows, or than the file system has free. */
export class DiskLimitError extends MeshError {
  override name = 'DiskLimitError' as const
  constructor(message: string, options?: MeshErrorOptions) {
    super('ERR_DISK_LIMIT', message, options)
  }
}

/** Chunks still missing when no source that holds them is left (or all were refused). */
export class FetchError extends MeshError {
  override name = 'FetchError' as const
  constructor(message: string, options?: MeshErrorOptions) {
    super('ERR_FETCH', message, options)
  }
}
