import { MeshError, type MeshErrorOptions } from '@meshnet/core'

/** A MeshError that also says which check failed, as a literal `reason` (also in `details.reason`). */
abstract class ReasonedError<R extends string> extends MeshError {
  readonly reason: R
  constructor(code: string, reason: R, message: string, options?: MeshErrorOptions) {
    super(code, message, { ...options, details: { reason, ...options?.details } })
    this.reason = reason
  }
}

/** Why a certificate was refused. One check fails at a time; they run in this order. */
export const CERTIFICATE_REJECT_REASONS = [
  'malformed',
  'wrong-pool',
  'node-id-mismatch',
  'untrusted-issuer',
  'bad-signature',
  'revoked',
  'not-yet-valid',
  'expired',
] as const
export type CertificateRejectReason = (typeof CERTIFICATE_REJECT_REASONS)[number]

/** A pool certificate failed verification; `reason` says which check. */
export class CertificateError extends ReasonedError<CertificateRejectReason> {
  override name = 'CertificateError' as const
  constructor(reason: CertificateRejectReason, message: string, options?: MeshErrorOptions) {
    super('ERR_POOL_CERTIFICATE', reason, message, options)
  }
}

export const JOIN_REQUEST_REJECT_REASONS = ['malformed', 'bad-signature'] as const
export type JoinRequestRejectReason = (typeof JOIN_REQUEST_REJECT_REASONS)[number]

/** Bytes that claimed to be a join request are not a well-formed, correctly signed one. */
export class JoinRequestError extends ReasonedError<JoinRequestRejectReason> {
  override name = 'JoinRequestError' as const
  constructor(reason: JoinRequestRejectReason, message: string, options?: MeshErrorOptions) {
    super('ERR_POOL_JOIN_REQUEST', reason, message, options)
  }
}

export const JOIN_RESPONSE_REJECT_REASONS = [
  'malformed',
  'wrong-pool',
  'not-for-this-request',
  'untrusted-signer',
  'bad-signature',
  'bad-certificate',
] as const
export type JoinResponseRejectReason = (typeof JOIN_RESPONSE_REJECT_REASONS)[number]

/** A join response cannot be trusted: it did not come from the pool, or not for our request. */
export class JoinResponseError extends ReasonedError<JoinResponseRejectReason> {
  override name = 'JoinResponseError' as const
  constructor(reason: JoinResponseRejectReason, message: string, options?: MeshErrorOptions) {
    super('ERR_POOL_JOIN_RESPONSE', reason, message, options)
  }
}

/** What a joining device is told when the pool refuses it. */
export const JOIN_REFUSAL_REASONS = [
  'bad-token',
  'token-expired',
  'token-used',
  'bad-signature',
  'stale-request',
  'replayed',
  'wrong-pool',
  'revoked',
  'denied',
] as const
export type JoinRefusalReason = (typeof JOIN_REFUSAL_REASONS)[number]

const REFUSALS: Record<JoinRefusalReason, { text: string; hint: string }> = {
  'bad-token': {
    text: 'did not accept the join token',
    hint: 'check that the whole token was copied, or ask the pool admin for a new one (mesh pool-invite)',
  },
  'token-expired': {
    text: 'refused the join token because it has expired',
    hint: 'ask the pool admin for a new one (mesh pool-invite)',
  },
  'token-used': {
    text: 'refused the join token because another device already used it',
    hint: 'ask the pool admin for a new one (mesh pool-invite)',
  },
  'bad-signature': {
    text: "could not verify the join request's signature",
    hint: 'check that identity.key is intact and try again (mesh pool-join)',
  },
  'stale-request': {
    text: 'refused the join request as stale',
    hint: "check this computer's clock: it must be within 5 minutes of the admin's",
  },
  replayed: {
    text: 'had already seen this join request',
    hint: 'send a new request (mesh pool-join)',
  },
  'wrong-pool': {
    text: 'answered for a different pool',
    hint: 'check the pool id or the join token',
  },
  revoked: {
    text: 'has revoked this device',
    hint: 'ask the pool admin to let the device back in',
  },
  denied: {
    text: "admin denied this device's request to join",
    hint: 'ask the pool admin',
  },
}

/** The sentence a refused device shows its user, with what to do next. */
export function refusalText(reason: JoinRefusalReason, poolId: string): { text: string; hint: string } {
  const refusal = REFUSALS[reason]
  return { text: `pool ${poolId} ${refusal.text}`, hint: refusal.hint }
}

/** The pool refused this device's join request (a signed, verified refusal). */
export class JoinRefusedError extends ReasonedError<JoinRefusalReason> {
  override name = 'JoinRefusedError' as const
  constructor(reason: JoinRefusalReason, poolId: string, options?: MeshErrorOptions) {
    const { text, hint } = refusalText(reason, poolId)
    super('ERR_POOL_JOIN_REFUSED', reason, text, {
      hint,
      ...options,
      details: { poolId, ...options?.details },
    })
  }
}

export const REVOCATION_LIST_REJECT_REASONS = ['malformed', 'wrong-pool', 'bad-signature'] as const
export type RevocationListRejectReason = (typeof REVOCATION_LIST_REJECT_REASONS)[number]

/** A revocation list is malformed, for another pool, or not signed by the pool root. */
export class RevocationListError extends ReasonedError<RevocationListRejectReason> {
  override name = 'RevocationListError' as const
  constructor(reason: RevocationListRejectReason, message: string, options?: MeshErrorOptions) {
    super('ERR_POOL_REVOCATION_LIST', reason, message, options)
  }
}

/** This data directory has no pool with that id. */
export class PoolNotFoundError extends MeshError {
  override name = 'PoolNotFoundError' as const
  constructor(poolId: string, dataDir: string, options?: MeshErrorOptions) {
    super('ERR_POOL_NOT_FOUND', `no pool ${poolId} in ${dataDir}`, {
      hint: "list this node's pools with mesh pool-list, or join the pool (mesh pool-join)",
      ...options,
      details: { poolId, dataDir, ...options?.details },
    })
  }
}

/** An admin action was asked of a node that holds neither the pool root key nor an admin certificate. */
export class NotPoolAdminError extends MeshError {
  override name = 'NotPoolAdminError' as const
  constructor(message: string, options?: MeshErrorOptions) {
    super('ERR_NOT_POOL_ADMIN', message, options)
  }
}
