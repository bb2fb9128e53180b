import { createHash } from 'node:crypto'
import { CLOCK_SKEW_MS } from '@meshnet/pool'
import {
  type PipelineShard,
  type PlanModel,
  planPipeline,
  type RingMember,
  type RingTopology,
  topologyOf,
} from '@meshnet/ring'
import type { DeviceRecord, PoolRecord } from './db-schema.ts'
import type { ControlPlaneContext } from './state.ts'

/**
 * What the epoch follows: each member's node id, addresses, capacity and model hashes. A new epoch
 * begins whenever any of them changes (a join, a leave, a drop, new addresses or capacity).
 */
export function ringDigest(
  members: ReadonlyArray<Pick<DeviceRecord, 'nodeId' | 'addresses' | 'capabilities'>>,
): string {
  const inputs = members
    .map((m) => [
      m.nodeId,
      m.addresses,
      m.capabilities.capacityBytes,
      m.capabilities.models.map((x) => x.sha256).sort(),
    ])
    .sort((a, b) => (a[0]! < b[0]! ? -1 : 1))
  return createHash('sha256').update(JSON.stringify(inputs)).digest('hex').slice(0, 32)
}

/**
 * Drops a pool's members that have not been heard from within the online window or whose
 * certificate has expired, then starts a new epoch if the ring changed.
 */
export function refreshRing(ctx: ControlPlaneContext, pool: PoolRecord): void {
  const now = ctx.now()
  const live: DeviceRecord[] = []
  ctx.db.transaction(() => {
    for (const member of ctx.db.ringMembers(pool.poolId)) {
      const stale = member.device.lastSeen < now - ctx.onlineWindowMs
      const expired = member.expiresAt + CLOCK_SKEW_MS < now
      if (stale || expired) {
        ctx.db.deleteRingMember(pool.poolId, member.nodeId)
        ctx.logger.info(
          { poolId: pool.poolId, nodeId: member.nodeId },
          `dropped ${member.nodeId} from the ring of ${pool.poolId}: ${stale ? 'no heartbeat within the online window' : 'its certificate expired'}`,
        )
      } else live.push(member.device)
    }
    const digest = ringDigest(live)
    if (digest !== pool.digest) {
      const epoch = pool.epoch + 1
      ctx.db.setRingState(pool.poolId, { epoch, digest, updatedAt: now })
      ctx.logger.info({ poolId: pool.poolId, epoch, members: live.length }, 'ring epoch advanced')
    }
  })
}

/** {@link refreshRing} for every registered pool. */
export function refreshRings(ctx: ControlPlaneContext): void {
  for (const pool of ctx.db.listPools()) refreshRing(ctx, pool)
}

/**
 * The ring of a pool as a RingTopology document: members by node id with their positions, and,
 * when `model` is given, each member's pipeline layer range.
 */
export function ringTopology(ctx: ControlPlaneContext, pool: PoolRecord, model?: PlanModel): RingTopology {
  const view = { epoch: pool.epoch, digest: pool.digest }
  const members: RingMember[] = ctx.db.ringMembers(pool.poolId).map(({ device }) => ({
    nodeId: device.nodeId,
    addresses: device.addresses,
    capabilities: device.capabilities,
    lastSeen: device.lastSeen,
    view,
  }))
  members.sort((a, b) => (a.nodeId < b.nodeId ? -1 : a.nodeId > b.nodeId ? 1 : 0))
  let plan: PipelineShard[] = []
  if (model !== undefined && members.length > 0) {
    plan = planPipeline(
      members.map((m) => ({ nodeId: m.nodeId, capacityBytes: m.capabilities.capacityBytes })),
      model,
    )
  }
  return topologyOf(pool.poolId, { ...view, members, converged: true }, plan, new Date(pool.updatedAt))
}
