import { MeshError, type MeshErrorOptions } from '@meshnet/core'

/**
 * A member refused a shard stream because the peer that opened it has no valid certificate of the
 * pool it named (or the member is not in that pool itself). Same `name` as `@meshnet/ring`'s error.
 */
export class PoolAccessError extends MeshError {
  override name = 'PoolAccessError' as const
  constructor(message: string, options?: MeshErrorOptions) {
    super('ERR_POOL_ACCESS', message, options)
  }
}

/** A shard does not fit in what the member offers (memory budget, session count, kernel memory). */
export class ShardCapacityError extends MeshError {
  override name = 'ShardCapacityError' as const
  constructor(message: string, options?: MeshErrorOptions) {
    super('ERR_SHARD_CAPACITY', message, options)
  }
}

/** The member has no local copy of the model, or its copy does not hash to the sha256 asked for. */
export class ShardModelError extends MeshError {
  override name = 'ShardModelError' as const
  constructor(message: string, options?: MeshErrorOptions) {
    super('ERR_SHARD_MODEL', message, options)
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

/** A sharded generation could not complete (after any failovers); `cause` says why. */
export class ShardedRunError extends MeshError {
  override name = 'ShardedRunError' as const
  constructor(message: string, options?: MeshErrorOptions) {
    super('ERR_SHARDED_RUN', message, options)
  }
}

const REMOTE_ERRORS = {
  PoolAccessError,
  ShardCapacityError,
  ShardModelError,
} as const

/** The local error for an ERROR frame a member sent: its class when known, else ShardSessionError. */
export function remoteError(nodeId: string, name: string, message: string): MeshError {
  const text = `member ${nodeId}: ${message}`
  const Known = REMOTE_ERRORS[name as keyof typeof REMOTE_ERRORS]
  if (Known !== undefined) return new Known(text, { details: { nodeId, remoteName: name } })
  return new ShardSessionError(text, { details: { nodeId, remoteName: name } })
}
