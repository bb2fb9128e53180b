import type { NodeIdentity } from '@meshnet/identity'
import { PoolAdmin } from './admin.ts'
import { errorText, type OpenPoolAdminOptions } from './admin-records.ts'
import {
  DEFAULT_CERTIFICATE_TTL_MS,
  issueCertificate,
  type PoolSigner,
  verifyCertificate,
} from './certificate.ts'
import { bytesEqual, CLOCK_SKEW_MS } from './encoding.ts'
import { NotPoolAdminError } from './errors.ts'
import { JOIN_REQUEST_MAX_AGE_MS } from './join.ts'
import { ReplayCache } from './replay-cache.ts'
import {
  loadCertificate,
  loadPool,
  loadRevocationList,
  loadRootSigner,
  recordMember,
  saveCertificate,
} from './store.ts'

/**
 * Opens the admin side of a pool on this node. The node must hold the pool root key, or a valid
 * root-signed admin certificate for `identity` (a delegated admin). A root holder whose own admin
 * certificate is missing, invalid or in the last quarter of its life gets a fresh one here.
 * Throws NotPoolAdminError otherwise.
 */
export async function openPoolAdmin(
  dataDir: string,
  poolId: string,
  identity: Pick<NodeIdentity, 'publicKey' | 'sign'>,
  options: OpenPoolAdminOptions = {},
): Promise<PoolAdmin> {
  const pool = await loadPool(dataDir, poolId)
  const now = options.now ?? Date.now()
  const ttlMs = options.certificateTtlMs ?? DEFAULT_CERTIFICATE_TTL_MS
  const skew = options.clockSkewMs ?? CLOCK_SKEW_MS
  const root = await loadRootSigner(pool)
  const own = await loadCertificate(pool)
  const revocations = await loadRevocationList(pool)
  let ownProblem: unknown
  if (own !== undefined) {
    try {
      verifyCertificate(own, {
        poolId,
        rootPublicKey: pool.rootPublicKey,
        now,
        revocations,
        clockSkewMs: skew,
      })
      if (own.role !== 'admin') throw new Error(`it is a ${own.role} certificate`)
      if (!bytesEqual(own.devicePublicKey, identity.publicKey)) {
        throw new Error('it is for another device key')
      }
    } catch (err) {
      ownProblem = err
    }
  }
  let signer: PoolSigner
  if (root !== undefined) {
    signer = root
    const lifetime = own === undefined ? 0 : own.expiresAt - own.issuedAt
    if (own === undefined || ownProblem !== undefined || own.expiresAt - now < lifetime / 4) {
      const fresh = issueCertificate(root, {
        poolId,
        devicePublicKey: identity.publicKey,
        role: 'admin',
        issuedAt: now,
        ttlMs,
      })
      await saveCertificate(pool, fresh, { now })
      await recordMember(pool, fresh, { now })
    }
  } else {
    if (own === undefined || ownProblem !== undefined) {
      const why =
        own === undefined
          ? 'it has no certificate'
          : `its certificate is not usable: ${errorText(ownProblem)}`
      throw new NotPoolAdminError(
        `this node is not an admin of pool ${poolId}: it does not hold the root key and ${why}`,
        {
          cause: ownProblem,
          hint: 'run this on the node that created the pool, or ask it for an admin certificate',
        },
      )
    }
    signer = { publicKey: identity.publicKey, sign: identity.sign, certificate: own }
  }
  const replayCache =
    options.replayCache ?? new ReplayCache({ ttlMs: JOIN_REQUEST_MAX_AGE_MS + skew, maxEntries: 10_000 })
  return new PoolAdmin(pool, signer, root !== undefined, replayCache, skew, ttlMs)
}
