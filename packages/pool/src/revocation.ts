import { InvalidArgumentError } from '@meshnet/core'
import { verifySignature } from '@meshnet/identity'
import { z } from 'zod'
import {
  checkSchema,
  decodeCanonical,
  encodeCanonical,
  nodeIdSchema,
  omitFields,
  POOL_LIMITS,
  poolIdFromRootKey,
  poolIdSchema,
  serialSchema,
  signatureSchema,
  timestampSchema,
} from './encoding.ts'
import { RevocationListError } from './errors.ts'

/** The `type` field of a revocation list, and the domain its signature is made under. */
export const REVOCATION_LIST_DOMAIN = 'pool-revocation-list-v1'

const sortedUnique = (items: readonly string[]) => items.every((item, i) => i === 0 || items[i - 1]! < item)

export const revocationListSchema = z.strictObject({
  type: z.literal(REVOCATION_LIST_DOMAIN),
  poolId: poolIdSchema,
  /** Grows by at least one with every new list; a node keeps the highest it has seen. */
  version: timestampSchema.min(1),
  issuedAt: timestampSchema,
  /** Revoked certificate serials, sorted, no duplicates. */
  serials: z
    .array(serialSchema)
    .max(POOL_LIMITS.revocationEntries)
    .refine(sortedUnique, 'must be sorted without duplicates'),
  /** Revoked devices (every certificate for them), sorted, no duplicates. */
  nodeIds: z
    .array(nodeIdSchema)
    .max(POOL_LIMITS.revocationEntries)
    .refine(sortedUnique, 'must be sorted without duplicates'),
  /** By the pool root key. */
  signature: signatureSchema,
})

/**
 * The pool's revoked certificates and devices. Only the pool root signs revocation lists, so that
 * no delegated admin can un-revoke itself or wedge the version counter.
 */
export type RevocationList = z.infer<typeof revocationListSchema>

export function revocationListSigningBytes(list: RevocationList): Uint8Array {
  return encodeCanonical(omitFields(list, ['signature']))
}

export interface CreateRevocationListOptions {
  poolId: string
  version: number
  serials?: readonly string[]
  nodeIds?: readonly string[]
  /** Default: now. */
  issuedAt?: number
}

/** Signs a revocation list with the pool root seed's signing function. Entries are sorted and de-duplicated. */
export function createRevocationList(
  root: { publicKey: Uint8Array; sign(domain: string, payload: Uint8Array): Uint8Array },
  options: CreateRevocationListOptions,
): RevocationList {
  if (poolIdFromRootKey(root.publicKey) !== options.poolId) {
    throw new InvalidArgumentError(`only the root key of pool ${options.poolId} can sign its revocation list`)
  }
  const unsigned = {
    type: REVOCATION_LIST_DOMAIN,
    poolId: options.poolId,
    version: options.version,
    issuedAt: options.issuedAt ?? Date.now(),
    serials: [...new Set(options.serials ?? [])].sort(),
    nodeIds: [...new Set(options.nodeIds ?? [])].sort(),
  } as const
  const list = { ...unsigned, signature: root.sign(REVOCATION_LIST_DOMAIN, encodeCanonical(unsigned)) }
  const checked = revocationListSchema.safeParse(list)
  if (!checked.success) {
    throw new InvalidArgumentError(`cannot create this revocation list: ${checked.error.issues[0]?.message}`)
  }
  return checked.data
}

export function encodeRevocationList(list: RevocationList): Uint8Array {
  return encodeCanonical(list)
}

export interface VerifyRevocationListOptions {
  poolId: string
  rootPublicKey: Uint8Array
}

/** Decodes untrusted bytes into a revocation list signed by the pool root. Throws only RevocationListError. */
export function decodeRevocationList(
  bytes: Uint8Array,
  options: VerifyRevocationListOptions,
): RevocationList {
  const decoded = decodeCanonical(bytes, revocationListSchema, POOL_LIMITS.revocationListBytes)
  if (!decoded.ok) {
    throw new RevocationListError('malformed', `revocation list is malformed: ${decoded.problem}`, {
      hint: "the sender's software may be incompatible, or the data was damaged",
    })
  }
  verifyRevocationList(decoded.value, options)
  return decoded.value
}

/** Checks the pool id and the root's signature. Throws RevocationListError. */
export function verifyRevocationList(list: RevocationList, options: VerifyRevocationListOptions): void {
  const checked = checkSchema(list, revocationListSchema)
  if (!checked.ok) {
    throw new RevocationListError('malformed', `revocation list is malformed: ${checked.problem}`)
  }
  if (list.poolId !== options.poolId) {
    throw new RevocationListError(
      'wrong-pool',
      `revocation list belongs to pool ${list.poolId}, not ${options.poolId}`,
    )
  }
  if (
    poolIdFromRootKey(options.rootPublicKey) !== options.poolId ||
    !verifySignature(
      options.rootPublicKey,
      REVOCATION_LIST_DOMAIN,
      revocationListSigningBytes(list),
      list.signature,
    )
  ) {
    throw new RevocationListError(
      'bad-signature',
      `revocation list version ${list.version} for pool ${options.poolId} is not signed by the pool root`,
      { hint: 'it was altered or forged; it has been ignored' },
    )
  }
}
