import { parseWith } from '@meshnet/core'
import type { MeshNode, PeerTarget } from '@meshnet/discovery'
import type { NodeIdentity } from '@meshnet/identity'
import { listPools, loadCertificate, verifyPoolCertificate } from '@meshnet/pool'
import {
  MAX_RING_STATUS_BYTES,
  POOL_RING_PROTOCOL,
  type RingStatus,
  ringErrorSchema,
  ringStatusSchema,
} from '@meshnet/protocols'
import { PoolCertificateError, PoolRequestError } from './errors.ts'

/** The pool the SDK uses, from its data dir. */
export interface SDKPool {
  poolId: string
  name: string
  /** `client` for an app; `member` and `admin` certificates work too. */
  role: string
  expiresAt: number
}

/**
 * Finds the pool the SDK talks to in its data dir (a pool joined with `mesh pool-join` or
 * saved with `saveJoinedPool`): `poolId` when given, else the only pool there. Checks that the
 * certificate is valid now and was issued to `identity`.
 */
export async function loadSDKPool(
  dataDir: string,
  poolId: string | undefined,
  identity: NodeIdentity,
): Promise<SDKPool | undefined> {
  const { pools } = await listPools(dataDir)
  const withCertificates = []
  for (const pool of pools) {
    const certificate = await loadCertificate(pool)
    if (certificate !== undefined) withCertificates.push({ pool, certificate })
  }
  if (poolId === undefined && withCertificates.length === 0) return undefined
  if (poolId === undefined && withCertificates.length > 1) {
    throw new PoolCertificateError(
      `${dataDir} holds certificates of ${withCertificates.length} pools (${withCertificates.map((p) => p.pool.id).join(', ')})`,
      { hint: 'pass poolId to say which one the SDK should use' },
    )
  }
  const chosen =
    poolId === undefined ? withCertificates[0] : withCertificates.find(({ pool }) => pool.id === poolId)
  if (chosen === undefined) {
    throw new PoolCertificateError(`${dataDir} holds no certificate of pool ${poolId}`, {
      hint: 'join the pool first (mesh pool-join --token <client token> --data-dir <this dir>)',
    })
  }
  const { pool, certificate } = chosen
  if (certificate.nodeId !== identity.nodeId) {
    throw new PoolCertificateError(
      `the certificate of pool ${pool.id} in ${dataDir} belongs to ${certificate.nodeId}, not to this SDK's node id ${identity.nodeId}`,
      { hint: 'use the identity.key of the data dir that joined the pool (leave identity unset)' },
    )
  }
  try {
    await verifyPoolCertificate(pool, certificate)
  } catch (err) {
    throw new PoolCertificateError(
      `the certificate of pool ${pool.id} in ${dataDir} is not valid: ${(err as Error).message}`,
      { cause: err, hint: 'ask the pool admin for a new one (mesh pool-token --role client)' },
    )
  }
  return { poolId: pool.id, name: pool.name, role: certificate.role, expiresAt: certificate.expiresAt }
}

/** Asks a pool member for the pool's ring: members, their addresses and the model they serve. */
export async function requestRingStatus(
  node: MeshNode,
  peer: PeerTarget,
  poolId: string,
  options: { signal?: AbortSignal; timeoutMs: number },
): Promise<RingStatus> {
  const reply = await node.request(
    peer,
    POOL_RING_PROTOCOL,
    new TextEncoder().encode(JSON.stringify({ poolId })),
    {
      timeoutMs: options.timeoutMs,
      maxResponseBytes: MAX_RING_STATUS_BYTES,
      runOnLimitedConnection: true,
      ...(options.signal ? { signal: options.signal } : {}),
    },
  )
  let value: unknown
  try {
    value = JSON.parse(new TextDecoder('utf-8', { fatal: true }).decode(reply))
  } catch {
    throw new PoolRequestError(
      'ERR_POOL_PROTOCOL',
      `${String(peer)} answered ${POOL_RING_PROTOCOL} with non-JSON`,
    )
  }
  const refused = ringErrorSchema.safeParse(value)
  if (refused.success) {
    const { code, message } = refused.data.error
    throw new PoolRequestError(code, `${String(peer)} refused the ring status of pool ${poolId}: ${message}`)
  }
  const status = parseWith(
    ringStatusSchema,
    value,
    `${String(peer)} sent a bad ring status:`,
    (message) => new PoolRequestError('ERR_POOL_PROTOCOL', message),
  )
  if (status.poolId !== poolId) {
    throw new PoolRequestError('ERR_POOL_PROTOCOL', `${String(peer)} answered for pool ${status.poolId}`)
  }
  return status
}
