import { MeshError, type MeshErrorOptions } from '@meshnet/core'

const CONFIG_HINT = 'see docs/p2p-configuration.md for every option, its default and why'

/** The SDK configuration is invalid; the message starts with the field path (`p2pConfig.dialTimeout: ...`). */
export class SDKConfigError extends MeshError {
  override name = 'SDKConfigError' as const
  /** Path of the offending field, e.g. `p2pConfig.dhtOptions.kBucketSize`. */
  readonly field: string
  constructor(field: string, problem: string, options: MeshErrorOptions = {}) {
    super('ERR_SDK_CONFIG', `${field}: ${problem}`, {
      ...options,
      details: { field, ...options.details },
      hint: options.hint ?? CONFIG_HINT,
    })
    this.field = field
  }
}

/** A method that needs the network was called before `connect()` (or after `disconnect()`). */
export class NotConnectedError extends MeshError {
  override name = 'NotConnectedError' as const
  constructor(what: string) {
    super('ERR_NOT_CONNECTED', `${what} needs a connected SDK`, { hint: 'call await sdk.connect() first' })
  }
}

/** Every bootstrap node failed, after `maxRetries` rounds; `details.attempts` says how each failed. */
export class BootstrapUnreachableError extends MeshError {
  override name = 'BootstrapUnreachableError' as const
  constructor(message: string, options?: MeshErrorOptions) {
    super('ERR_BOOTSTRAP_UNREACHABLE', message, {
      hint: 'check the addresses and that the nodes run; raise p2pConfig.dialTimeout or add bootstrap nodes',
      ...options,
    })
  }
}

/** No node serving the model (or no member of the pool) was found. */
export class NoNodesFoundError extends MeshError {
  override name = 'NoNodesFoundError' as const
  constructor(message: string, options?: MeshErrorOptions) {
    super('ERR_NO_NODES', message, options)
  }
}

/** A pool member refused a pool request (no valid certificate, unknown pool) or answered nonsense. */
export class PoolRequestError extends MeshError {
  override name = 'PoolRequestError' as const
  constructor(code: string, message: string, options?: MeshErrorOptions) {
    super(code, message, options)
  }
}

/** The SDK's pool data dir is unusable: no pool, several pools and no `poolId`, or a foreign certificate. */
export class PoolCertificateError extends MeshError {
  override name = 'PoolCertificateError' as const
  constructor(message: string, options?: MeshErrorOptions) {
    super('ERR_POOL_CERTIFICATE', message, options)
  }
}

/** `security.authenticate` refused the peer; it stays refused until `disconnect()`. */
export class PeerRefusedError extends MeshError {
  override name = 'PeerRefusedError' as const
  constructor(peer: string, why: string) {
    super('ERR_PEER_REFUSED', `peer ${peer} was refused by security.authenticate: ${why}`)
  }
}

/** A `connectionManager` data limit was passed; the SDK closed its connections and does no more work. */
export class DataLimitExceededError extends MeshError {
  override name = 'DataLimitExceededError' as const
  constructor(message: string, options?: MeshErrorOptions) {
    super('ERR_DATA_LIMIT', message, {
      hint: 'raise the limit in p2pConfig.connectionManager, or disconnect() and connect() for a new budget',
      ...options,
    })
  }
}

/** No reply (or no next token) within `requestTimeout`. */
export class RequestTimeoutError extends MeshError {
  override name = 'RequestTimeoutError' as const
  constructor(message: string, options?: MeshErrorOptions) {
    super('ERR_REQUEST_TIMEOUT', message, {
      hint: 'the node may be overloaded; raise p2pConfig.requestTimeout',
      ...options,
    })
  }
}

/** A request to an action is malformed (`messages.0.role: ...`); nothing was sent. */
export class InvalidRequestError extends MeshError {
  override name = 'InvalidRequestError' as const
  constructor(message: string, options?: MeshErrorOptions) {
    super('ERR_INVALID_REQUEST', message, options)
  }
}
