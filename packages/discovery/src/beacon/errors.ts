import { MeshError, type MeshErrorOptions } from '@meshnet/core'

/** Why a datagram was dropped, in the order the checks run. */
export const BEACON_DROP_REASONS = [
  'oversized',
  'malformed',
  'bad-version',
  'not-for-us',
  'bad-node-id',
  'bad-signature',
  'stale',
  'future',
  'replayed',
] as const
export type BeaconDropReason = (typeof BEACON_DROP_REASONS)[number]

/** A datagram was refused; `reason` is the counter it is dropped under. */
export class BeaconDropError extends MeshError {
  override name = 'BeaconDropError' as const
  readonly reason: BeaconDropReason
  constructor(reason: BeaconDropReason, message: string) {
    super('ERR_BEACON_DROPPED', message)
    this.reason = reason
  }
}

/** A beacon to send does not fit in one datagram. */
export class BeaconTooLargeError extends MeshError {
  override name = 'BeaconTooLargeError' as const
  constructor(message: string, options?: MeshErrorOptions) {
    super('ERR_BEACON_TOO_LARGE', message, options)
  }
}

/** The beacon socket could not be opened, joined to the group or used to send. */
export class BeaconSocketError extends MeshError {
  override name = 'BeaconSocketError' as const
  constructor(message: string, options?: MeshErrorOptions) {
    super('ERR_BEACON_SOCKET', message, options)
  }
}
