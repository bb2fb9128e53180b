import { MeshError, type MeshErrorOptions } from '@meshnet/core'

/** A dial, protocol negotiation, request or DHT lookup did not finish within its time budget. */
export class PeerTimeoutError extends MeshError {
  override name = 'PeerTimeoutError' as const
  constructor(message: string, options?: MeshErrorOptions) {
    super('ERR_PEER_TIMEOUT', message, options)
  }
}

/** A peer could not be dialed, refused the protocol, or was refused by our own gater. */
export class DialError extends MeshError {
  override name = 'DialError' as const
  constructor(message: string, options?: MeshErrorOptions) {
    super('ERR_DIAL_FAILED', message, options)
  }
}

/** The node could not start: a listen address was refused or the data dir unusable. */
export class NodeStartError extends MeshError {
  override name = 'NodeStartError' as const
  constructor(message: string, options?: MeshErrorOptions) {
    super('ERR_NODE_START', message, options)
  }
}

/** A perf (`/perf/1.0.0`) measurement broke the protocol or was refused. */
export class PerfError extends MeshError {
  override name = 'PerfError' as const
  constructor(message: string, options?: MeshErrorOptions) {
    super('ERR_PERF', message, options)
  }
}
