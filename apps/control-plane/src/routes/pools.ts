import { isMeshError, type MeshError } from '@meshnet/core'
import {
  type Certificate,
  decodeCertificate,
  decodeRevocationList,
  formatRootPublicKey,
  POOL_LIMITS,
  parseRootPublicKey,
  poolIdFromRootKey,
  type RevocationList,
} from '@meshnet/pool'
import {
  addressesSchema,
  base64Of,
  capabilitiesSchema,
  deviceNameSchema,
  nodeIdSchema,
  poolIdSchema,
} from '@meshnet/protocols'
import { z } from 'zod'
import type { PoolRecord } from '../db-schema.ts'
import { created, HttpError, notFound, ok, parseInput, type Route } from '../http.ts'
import { refreshRing, ringDigest, ringTopology } from '../rings.ts'
import type { ControlPlaneContext } from '../state.ts'
import { bodyNodeId } from './devices.ts'

const rootKeySchema = z.string().transform((text, issue) => {
  try {
    return parseRootPublicKey(text)
  } catch {
    issue.addIssue({ code: 'custom', message: 'not a pool root public key (52 base32 characters)' })
    return z.NEVER
  }
})

const registerSchema = z.strictObject({ poolId: poolIdSchema, rootPublicKey: rootKeySchema })
const poolParams = z.object({ poolId: poolIdSchema })
const revocationsSchema = z.strictObject({ list: base64Of(POOL_LIMITS.revocationListBytes) })
const joinSchema = z.strictObject({
  nodeId: nodeIdSchema,
  name: deviceNameSchema.optional(),
  addresses: addressesSchema,
  capabilities: capabilitiesSchema,
  certificate: base64Of(POOL_LIMITS.certificateBytes),
})
const leaveSchema = z.strictObject({ nodeId: nodeIdSchema })
const count = (max: number) => z.coerce.number().int().nonnegative().max(max)
const topologyQuery = z
  .strictObject({
    layers: count(100_000).min(1).optional(),
    bytesPerLayer: count(Number.MAX_SAFE_INTEGER).optional(),
    bytesOutsideLayers: count(Number.MAX_SAFE_INTEGER).optional(),
  })
  .refine(
    (q) => (q.layers === undefined) === (q.bytesPerLayer === undefined),
    'give layers and bytesPerLayer together (or neither)',
  )

/** Turns a MeshError from @meshnet/pool into an HTTP refusal with the same code and message. */
function refused(status: number, err: MeshError): HttpError {
  return new HttpError(status, err.code, err.message, { details: err.details, cause: err })
}

function poolView(ctx: ControlPlaneContext, pool: PoolRecord) {
  return {
    poolId: pool.poolId,
    rootPublicKey: pool.rootPublicKey,
    registeredAt: pool.registeredAt,
    epoch: pool.epoch,
    members: ctx.db.ringMembers(pool.poolId).length,
    revocationsVersion: pool.revocationsVersion,
  }
}

export function poolRoutes(ctx: ControlPlaneContext): Route[] {
  const requirePool = (params: Record<string, string>): PoolRecord => {
    const { poolId } = parseInput(poolParams, params, 'path')
    const pool = ctx.db.getPool(poolId)
    if (pool === undefined) {
      throw notFound(
        'ERR_POOL_NOT_FOUND',
        `pool ${poolId} is not registered with this control plane`,
        'register it first (POST /v1/pools with its root public key)',
      )
    }
    return pool
  }
  const revocationsOf = (pool: PoolRecord): RevocationList | undefined =>
    pool.revocations === null
      ? undefined
      : decodeRevocationList(pool.revocations, {
          poolId: pool.poolId,
          rootPublicKey: parseRootPublicKey(pool.rootPublicKey),
        })

  return [
    {
      method: 'POST',
      path: '/v1/pools',
      handler({ body }) {
        const input = parseInput(registerSchema, body)
        const actual = poolIdFromRootKey(input.rootPublicKey)
        if (actual !== input.poolId) {
          throw new HttpError(
            400,
            'ERR_POOL_KEY_MISMATCH',
            `rootPublicKey belongs to pool ${actual}, not ${input.poolId}`,
            { hint: 'send the pool id and root public key that `mesh pool-create` printed together' },
          )
        }
        const existing = ctx.db.getPool(input.poolId)
        if (existing !== undefined) return ok({ ...poolView(ctx, existing), created: false })
        const now = ctx.now()
        ctx.db.insertPool({
          poolId: input.poolId,
          rootPublicKey: formatRootPublicKey(input.rootPublicKey),
          registeredAt: now,
          epoch: 0,
          digest: ringDigest([]),
          updatedAt: now,
        })
        ctx.logger.info({ poolId: input.poolId }, 'pool registered')
        return created({ ...poolView(ctx, ctx.db.getPool(input.poolId)!), created: true })
      },
    },
    {
      method: 'GET',
      path: '/v1/pools',
      handler() {
        return ok({ pools: ctx.db.listPools().map((pool) => poolView(ctx, pool)) })
      },
    },
    {
      method: 'POST',
      path: '/v1/rings/:poolId/revocations',
      handler({ params, body }) {
        const pool = requirePool(params)
        const input = parseInput(revocationsSchema, body)
        let list: RevocationList
        try {
          list = decodeRevocationList(input.list, {
            poolId: pool.poolId,
            rootPublicKey: parseRootPublicKey(pool.rootPublicKey),
          })
        } catch (err) {
          if (isMeshError(err) && err.name === 'RevocationListError') throw refused(400, err)
          throw err
        }
        if (list.version <= pool.revocationsVersion) {
          return ok({ accepted: false, version: pool.revocationsVersion, removed: [] })
        }
        const removed: string[] = []
        ctx.db.transaction(() => {
          ctx.db.setRevocations(pool.poolId, input.list, list.version)
          for (const member of ctx.db.ringMembers(pool.poolId)) {
            if (list.serials.includes(member.serial) || list.nodeIds.includes(member.nodeId)) {
              ctx.db.deleteRingMember(pool.poolId, member.nodeId)
              removed.push(member.nodeId)
            }
          }
        })
        refreshRing(ctx, ctx.db.getPool(pool.poolId)!)
        ctx.logger.info({ poolId: pool.poolId, version: list.version, removed }, 'revocation list registered')
        return ok({ accepted: true, version: list.version, removed })
      },
    },
    {
      method: 'POST',
      path: '/v1/rings/:poolId/join',
      actsFor: ({ body }) => bodyNodeId(body),
      handler({ params, body }) {
        const pool = requirePool(params)
        const input = parseInput(joinSchema, body)
        let certificate: Certificate
        try {
          certificate = decodeCertificate(input.certificate, {
            poolId: pool.poolId,
            rootPublicKey: parseRootPublicKey(pool.rootPublicKey),
            revocations: revocationsOf(pool),
            now: ctx.now(),
          })
        } catch (err) {
          if (isMeshError(err) && err.name === 'CertificateError') throw refused(403, err)
          throw err
        }
        if (certificate.nodeId !== input.nodeId) {
          throw new HttpError(
            403,
            'ERR_NODE_ID_MISMATCH',
            `the certificate is for node ${certificate.nodeId}, not ${input.nodeId}`,
            { hint: "send this node's own pool certificate" },
          )
        }
        if (certificate.role === 'client') {
          throw new HttpError(
            403,
            'ERR_CLIENT_CERTIFICATE',
            `node ${input.nodeId} holds a client certificate for pool ${pool.poolId}: clients submit jobs but do not join the ring`,
            { hint: 'ask the pool admin for a member certificate' },
          )
        }
        const now = ctx.now()
        const device = ctx.db.getDevice(input.nodeId)
        ctx.db.transaction(() => {
          ctx.db.putDevice({
            nodeId: input.nodeId,
            name: input.name ?? device?.name ?? input.nodeId.slice(0, 16),
            addresses: input.addresses,
            capabilities: input.capabilities,
            lastSeen: now,
          })
          ctx.db.putRingMember({
            poolId: pool.poolId,
            nodeId: input.nodeId,
            role: certificate.role,
            serial: certificate.serial,
            expiresAt: certificate.expiresAt,
            joinedAt: now,
          })
        })
        refreshRing(ctx, pool)
        ctx.logger.info({ poolId: pool.poolId, nodeId: input.nodeId }, 'node joined the ring')
        return ok({
          poolId: pool.poolId,
          nodeId: input.nodeId,
          role: certificate.role,
          certificateExpiresAt: certificate.expiresAt,
          topology: ringTopology(ctx, ctx.db.getPool(pool.poolId)!),
        })
      },
    },
    {
      method: 'POST',
      path: '/v1/rings/:poolId/leave',
      actsFor: ({ body }) => bodyNodeId(body),
      handler({ params, body }) {
        const pool = requirePool(params)
        const { nodeId } = parseInput(leaveSchema, body)
        const left = ctx.db.deleteRingMember(pool.poolId, nodeId)
        refreshRing(ctx, pool)
        if (left) ctx.logger.info({ poolId: pool.poolId, nodeId }, 'node left the ring')
        return ok({ left, epoch: ctx.db.getPool(pool.poolId)!.epoch })
      },
    },
    {
      method: 'GET',
      path: '/v1/rings/:poolId/topology',
      handler({ params, query }) {
        const pool = requirePool(params)
        const plan = parseInput(topologyQuery, Object.fromEntries(query), 'query')
        // A pipeline plan reads only layers and bytes; heads and FFN width matter to tensor plans.
        const model =
          plan.layers === undefined || plan.bytesPerLayer === undefined
            ? undefined
            : { ...plan, layers: plan.layers, bytesPerLayer: plan.bytesPerLayer, heads: 1, kvHeads: 1, ff: 1 }
        try {
          return ok(ringTopology(ctx, pool, model))
        } catch (err) {
          if (isMeshError(err) && err.name === 'ShardPlanError') throw refused(422, err)
          throw err
        }
      },
    },
  ]
}
