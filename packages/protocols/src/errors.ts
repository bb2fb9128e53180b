import { MeshError, type MeshErrorOptions } from '@meshnet/core'

/** A frame was larger than the size cap of its protocol; the stream is aborted. */
export class FrameTooLargeError extends MeshError {
  override name = 'FrameTooLargeError' as const
  constructor(message: string, options?: MeshErrorOptions) {
    super('ERR_FRAME_TOO_LARGE', message, options)
  }
}

/** The remote closed (or reset) the stream before a whole frame arrived. */
export class StreamEndedError extends MeshError {
  override name = 'StreamEndedError' as const
  constructor(message: string, options?: MeshErrorOptions) {
    super('ERR_STREAM_ENDED', message, options)
  }
}

/**
 * A shard session broke: a malformed or out-of-order frame, a link to another member that failed,
 * an idle session that expired, a member that stopped.
 */
export class ShardSessionError extends MeshError {
  override name = 'ShardSessionError' as const
  constructor(message: string, options?: MeshErrorOptions) {
    super('ERR_SHARD_SESSION', message, options)
  }
}
