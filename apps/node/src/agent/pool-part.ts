import { InvalidArgumentError, parseWith } from '@meshnet/core'
import type { BeaconMessage } from '@meshnet/discovery'
import {
  decodeRevocationList,
  encodeRevocationList,
  hasPoolRootKey,
  JOIN_QUEUE_DROP_REASONS,
  type JoinQueueDropReason,
  listMembers,
  listPools,
  loadCertificate,
  loadPool,
  loadRevocationList,
  openPoolAdmin,
  POOL_ROLES,
  type PoolAdmin,
  type PoolRole,
  parseJoinRequest,
  saveRevocationList,
} from '@meshnet/pool'
import { z } from 'zod'
import type { AgentContext, AgentPart } from './agent.ts'
import type { BeaconsPart } from './beacons-part.ts'

/** Beacon types the pool part sends and handles. */
export const POOL_BEACONS = {
  joinRequest: 'pool-join-request',
  joinResponse: 'pool-join-response',
  revocation: 'pool-revocation',
} as const

const approveSchema = z.strictObject({ nodeId: z.string().min(1), role: z.enum(POOL_ROLES).optional() })
const nodeSchema = z.strictObject({ nodeId: z.string().min(1) })
const inviteSchema = z.strictObject({
  ttlMs: z.number().int().positive().optional(),
  singleUse: z.boolean().optional(),
  role: z.enum(['member', 'client']).optional(),
})
const revocationBodySchema = z.strictObject({ poolId: z.string().max(128), list: z.instanceof(Uint8Array) })

const noDrops = () =>
  Object.fromEntries(JOIN_QUEUE_DROP_REASONS.map((reason) => [reason, 0])) as Record<
    JoinQueueDropReason,
    number
  >

function parseBody<T>(schema: z.ZodType<T>, body: unknown): T {
  return parseWith(schema, body ?? {}, 'request body')
}

/**
 * Checks this node's pool files before any part uses them: a damaged pool folder is logged, and a
 * certificate issued to another node id stops the start with a message naming the file. A pool this
 * node created (it holds the root key) gets a new admin certificate for this node id instead.
 */
export function poolFilesPart(context: AgentContext): AgentPart {
  const { logger, layout, identity } = context
  return {
    name: 'pool-files',
    async start() {
      const { pools } = await listPools(layout.root, { logger })
      for (const pool of pools) {
        try {
          await loadCertificate(pool, { nodeId: identity.nodeId })
        } catch (err) {
          if ((err as { reason?: string }).reason !== 'node-id-mismatch' || !(await hasPoolRootKey(pool))) {
            throw err
          }
          await openPoolAdmin(layout.root, pool.id, identity) // re-issues our admin certificate
          logger.warn(
            { poolId: pool.id, found: (err as { details?: unknown }).details },
            'the certificate in this pool folder was of another node; as the pool root, issued this node a new admin certificate',
          )
        }
      }
    },
    async stop() {},
  }
}

/**
 * The agent's pool duties: as an admin, answer LAN join requests (sign, leave pending for
 * `mesh pool-approve`, or refuse, each with a signed response), approve and revoke on request of
 * the CLI, and repeat each administered pool's revocation list on the LAN; as a member, take in
 * newer revocation lists from the pool root.
 */
export function poolPart(context: AgentContext, beaconsPart: BeaconsPart): AgentPart {
  const { logger, layout, identity } = context
  const autoApprove = context.config.autoApprove === true
  const admins = new Map<string, PoolAdmin | null>()
  const counts = {
    accepted: 0,
    pending: 0,
    refused: 0,
    dropped: 0,
    notOurs: 0,
    autoApproved: 0,
    revocationsTaken: 0,
    /** Requests that would have waited for approval, turned away because the queue had no room. */
    notQueued: noDrops(),
  }
  const notQueuedByPool = new Map<string, Record<JoinQueueDropReason, number>>()
  const unsubscribe: Array<() => void> = []
  let timer: NodeJS.Timeout | undefined
  let memberPools: string[] = []

  /** The PoolAdmin for a pool this node administers, or null. Cached; a new pool is found on disk. */
  const adminFor = async (poolId: string): Promise<PoolAdmin | null> => {
    if (admins.has(poolId)) return admins.get(poolId)!
    let admin: PoolAdmin | null = null
    try {
      admin = await openPoolAdmin(layout.root, poolId, identity)
    } catch (err) {
      const name = (err as Error).name
      if (name !== 'PoolNotFoundError' && name !== 'NotPoolAdminError') throw err
    }
    admins.set(poolId, admin)
    return admin
  }
  const requireAdmin = async (poolId: string): Promise<PoolAdmin> => {
    admins.delete(poolId) // re-read from disk: the CLI may have created or changed the pool
    const admin = await adminFor(poolId)
    if (admin === null) {
      throw new InvalidArgumentError(`this node does not administer pool ${poolId}`, {
        hint: 'run the command on the node that created the pool (see mesh pool-list)',
      })
    }
    return admin
  }

  const reply = (nodeId: string, bytes: Uint8Array) =>
    beaconsPart.beacons.send(POOL_BEACONS.joinResponse, bytes, { to: nodeId })

  const onJoinRequest = async (message: BeaconMessage) => {
    if (!(message.body instanceof Uint8Array)) {
      counts.dropped++
      return
    }
    let poolId: string
    try {
      poolId = parseJoinRequest(message.body).poolId // shape only: the admin checks the signature and answers
    } catch {
      counts.dropped++
      return
    }
    const admin = await adminFor(poolId)
    if (admin === null) {
      counts.notOurs++
      return
    }
    const decision = await admin.handleJoinRequest(message.body, { source: message.address })
    if (decision.outcome === 'dropped') {
      counts.dropped++
      return
    }
    if (decision.outcome === 'not-queued') {
      const ofPool = notQueuedByPool.get(poolId) ?? noDrops()
      notQueuedByPool.set(poolId, ofPool)
      ofPool[decision.reason]++
      // One line per reason, the first time: a flood must not flood the log too.
      if (counts.notQueued[decision.reason]++ === 0) {
        logger.warn(
          { poolId, source: message.address, reason: decision.reason },
          'join queue has no room; further requests are turned away and counted (mesh pool-requests)',
        )
      }
      return
    }
    const who = { nodeId: decision.request.nodeId, device: decision.request.deviceName, poolId }
    if (decision.outcome === 'pending' && autoApprove) {
      const approved = await admin.approveJoinRequest(decision.request.nodeId)
      counts.autoApproved++
      logger.warn(who, 'auto-approved a LAN join request (--auto-approve is on)')
      await reply(decision.request.nodeId, approved.responseBytes)
      return
    }
    counts[decision.outcome]++
    if (decision.outcome === 'accepted') logger.info(who, 'signed a certificate for a joining device')
    else if (decision.outcome === 'pending') {
      logger.info(who, `join request waiting for approval: mesh pool-approve ${decision.request.nodeId}`)
    } else {
      logger.info({ ...who, reason: decision.reason }, 'refused a join request')
      if (decision.reason === 'wrong-pool') return
    }
    await reply(decision.request.nodeId, decision.responseBytes)
  }

  const onRevocation = async (message: BeaconMessage) => {
    const body = revocationBodySchema.safeParse(message.body)
    if (!body.success || !memberPools.includes(body.data.poolId)) return
    const pool = await loadPool(layout.root, body.data.poolId)
    try {
      const list = decodeRevocationList(body.data.list, {
        poolId: pool.id,
        rootPublicKey: pool.rootPublicKey,
      })
      if (await saveRevocationList(pool, list)) {
        counts.revocationsTaken++
        logger.info({ poolId: pool.id, version: list.version }, 'took a newer revocation list from the LAN')
      }
    } catch (err) {
      logger.debug({ err: (err as Error).message }, 'ignored a revocation list')
    }
  }

  /** Repeats the revocation list of every pool this node roots, so members that missed it catch up. */
  const broadcastRevocations = async () => {
    for (const [poolId, admin] of admins) {
      if (admin === null || !admin.holdsRootKey) continue
      const list = await loadRevocationList(admin.pool)
      if (list === undefined) continue
      await beaconsPart.beacons
        .send(POOL_BEACONS.revocation, { poolId, list: encodeRevocationList(list) })
        .catch((err: Error) =>
          logger.warn({ poolId, err: err.message }, 'revocation list did not fit a beacon'),
        )
    }
  }

  const guard = (handler: (message: BeaconMessage) => Promise<void>) => (message: BeaconMessage) => {
    handler(message).catch((err: Error) =>
      logger.error({ err: err.message, type: message.type }, 'pool beacon failed'),
    )
  }

  const refreshPools = async () => {
    const { pools } = await listPools(layout.root, { logger })
    memberPools = pools.map((p) => p.id)
    for (const pool of pools) await adminFor(pool.id)
  }

  beaconsPart.addPresence(() => ({ pools: memberPools }))

  return {
    name: 'pools',
    async start() {
      await refreshPools()
      if (autoApprove) {
        logger.warn(
          'AUTO-APPROVE IS ON: any device on this LAN that asks to join a pool this node administers gets a certificate',
        )
      }
      unsubscribe.push(
        beaconsPart.beacons.onMessage((message) => {
          if (message.type === POOL_BEACONS.joinRequest) guard(onJoinRequest)(message)
          else if (message.type === POOL_BEACONS.revocation) guard(onRevocation)(message)
        }),
      )
      const interval = context.config.beacon?.intervalMs ?? 5_000
      timer = setInterval(() => void broadcastRevocations().catch(() => {}), interval)
    },
    async stop() {
      clearInterval(timer)
      for (const off of unsubscribe.splice(0)) off()
    },
    status: () => ({
      pools: memberPools,
      administered: [...admins].filter(([, a]) => a).map(([id]) => id),
      autoApprove,
      joins: counts,
    }),
    routes: {
      'GET /pools/:poolId/requests': async (_body, { poolId }) => {
        const admin = await requireAdmin(poolId!)
        return {
          requests: await admin.listPendingJoinRequests(),
          queue: { ...(await admin.joinQueueStats()), notQueued: notQueuedByPool.get(poolId!) ?? noDrops() },
        }
      },
      'POST /pools/:poolId/approve': async (body, { poolId }) => {
        const { nodeId, role } = parseBody(approveSchema, body)
        const admin = await requireAdmin(poolId!)
        const approved = await admin.approveJoinRequest(nodeId, role ? { role: role as PoolRole } : {})
        await reply(nodeId, approved.responseBytes)
        logger.info({ poolId, nodeId }, 'approved a join request')
        return { nodeId, serial: approved.certificate.serial, expiresAt: approved.certificate.expiresAt }
      },
      'POST /pools/:poolId/deny': async (body, { poolId }) => {
        const { nodeId } = parseBody(nodeSchema, body)
        const denied = await (await requireAdmin(poolId!)).denyJoinRequest(nodeId)
        await reply(nodeId, denied.responseBytes)
        return { nodeId }
      },
      'POST /pools/:poolId/invite': async (body, { poolId }) => {
        const options = parseBody(inviteSchema, body)
        return await (await requireAdmin(poolId!)).createJoinToken(options)
      },
      'POST /pools/:poolId/revoke': async (body, { poolId }) => {
        const { nodeId } = parseBody(nodeSchema, body)
        const { list, bytes } = await (await requireAdmin(poolId!)).revoke({ nodeIds: [nodeId] })
        await beaconsPart.beacons
          .send(POOL_BEACONS.revocation, { poolId, list: bytes })
          .catch((err: Error) => {
            logger.warn({ err: err.message }, 'revocation list too large for a beacon; it travels by gossip')
          })
        return { version: list.version, nodeIds: list.nodeIds, serials: list.serials }
      },
      'GET /pools/:poolId/members': async (_body, { poolId }) => ({
        members: (await listMembers(await loadPool(layout.root, poolId!))).map(
          ({ certificate: _, ...m }) => m,
        ),
      }),
    },
  }
}
