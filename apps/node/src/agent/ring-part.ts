import { freemem, totalmem } from 'node:os'
import { type Message, TopicValidatorResult } from '@libp2p/gossipsub'
import { InvalidArgumentError } from '@meshnet/core'
import {
  ANY_ROLE,
  decodeRevocationList,
  encodeRevocationList,
  loadPool,
  type MembershipLost,
  POOL_LIMITS,
  saveRevocationList,
} from '@meshnet/pool'
import {
  MAX_RING_REQUEST_BYTES,
  MAX_RING_STATUS_BYTES,
  POOL_RING_PROTOCOL,
  ringStatusRequestSchema,
} from '@meshnet/protocols'
import {
  type Capabilities,
  decodeSyncRequest,
  MAX_RING_SYNC_BYTES,
  type PipelineShard,
  planPipeline,
  RING_SYNC_PROTOCOL,
  RingGossip,
  type RingMember,
  type RingView,
  ShardPlanError,
  topologyOf,
  writeTopologyFile,
} from '@meshnet/ring'
import type { ServedModel } from '@meshnet/shards'
import type { AgentContext, AgentPart } from './agent.ts'
import type { MeshPart } from './mesh-part.ts'
import type { WeightsPart } from './weights-part.ts'

/** Gossip topic on which a pool's root-signed revocation list is repeated. */
export const revocationTopic = (poolId: string) => `/meshnet/revocations/1.0.0/${poolId}`

/** How often new pools (joined while the agent runs) are picked up, and revocations repeated. */
const POOL_SCAN_MS = 3_000

export interface RingPart extends AgentPart {
  rings(): Map<string, RingGossip>
  /** The served model once known (see `WeightsPart.served`); undefined without `--model`. */
  served(): ServedModel | undefined
  /** What this node announces to its rings. */
  capabilities(): Capabilities
  /**
   * Hears each new plan of a pool's ring for the served model (the ring converged on a new
   * membership): the jobs part preloads this member's shard.
   */
  onPlan(listener: (poolId: string, plan: PipelineShard[]) => void): void
  /** Announces how far this member's shard has loaded to every ring (not a plan input). */
  setShardState(shard: Capabilities['shard']): void
  /** A pool's ring as `mesh ring-status` shows it: members, positions, plan and load states. */
  ringStatus(poolId: string): RingStatus
  /** Every member of this node's pools seen in a ring view since start, online now or not. */
  knownMembers(): Set<string>
}

/** What `GET /rings/:poolId` and `mesh ring-status` answer. */
export interface RingStatus {
  poolId: string
  epoch: number
  converged: boolean
  /** When this node joined the ring, ms since the epoch. */
  joinedAt?: number
  /** When this node saw the ring converge on its current membership, ms since the epoch. */
  convergedAt?: number
  digest: string
  model: { name: string; sha256: string; layers: number } | null
  planProblem?: string
  members: Array<{
    nodeId: string
    position: number
    addresses: string[]
    capacityBytes: number
    /** What this member last reported: converged means every member reports ours. */
    reports: RingMember['view']
    shard: ({ layers: readonly [number, number] } & ReturnType<typeof loadOf>) | null
  }>
  /** Converged, planned, and every planned member reports its shard loaded. */
  ready: boolean
}

/** What a peer of a pool looks like to `mesh pool-peers`. */
interface PoolPeer {
  nodeId: string
  addresses: string[]
  online: boolean
  lastSeen: number
}

/**
 * One ring per pool this node belongs to: gossip of signed announcements, a shard plan for the
 * served model once the ring converges, `ring_topology_<pool-id>.json` on every new epoch, and the
 * pool's revocation list repeated over gossip.
 */
export function ringPart(context: AgentContext, mesh: MeshPart, weights: WeightsPart): RingPart {
  const { logger, layout, identity, config, store } = context
  const rings = new Map<string, RingGossip>()
  const plans = new Map<string, { epoch: number; plan: PipelineShard[] | undefined; problem?: string }>()
  /** The last topology-file write of each pool; the next one waits for it. */
  const topologyWrites = new Map<string, Promise<void>>()
  const peers = new Map<string, Map<string, PoolPeer>>()
  /** What was last written to mesh_state.db for each member (addresses and capabilities). */
  const stored = new Map<string, string>()
  const planListeners: Array<(poolId: string, plan: PipelineShard[]) => void> = []
  /** When each pool's ring last became converged on its current digest (ms since the epoch). */
  const convergedSince = new Map<string, { digest: string; at: number }>()
  /** When this node joined each pool's ring (ms since the epoch). */
  const joinedAt = new Map<string, number>()
  let served: ServedModel | undefined
  let capabilities: Capabilities
  let scan: NodeJS.Timeout | undefined
  let stopped = false

  const onView = (poolId: string, view: RingView) => {
    if (!view.converged) convergedSince.delete(poolId)
    else if (convergedSince.get(poolId)?.digest !== view.digest) {
      convergedSince.set(poolId, { digest: view.digest, at: Date.now() })
    }
    const known = peers.get(poolId) ?? new Map<string, PoolPeer>()
    peers.set(poolId, known)
    for (const peer of known.values()) peer.online = false
    for (const member of view.members) {
      if (member.nodeId === identity.nodeId) continue
      const before = known.get(member.nodeId)
      known.set(member.nodeId, {
        nodeId: member.nodeId,
        addresses: member.addresses,
        online: true,
        lastSeen: Date.now(),
      })
      // Views change often while a ring forms: write a member's row only when what it says changed.
      const row = JSON.stringify([member.addresses, member.capabilities])
      if (before === undefined || stored.get(member.nodeId) !== row) {
        stored.set(member.nodeId, row)
        store.upsertPeer(member.nodeId, { addresses: member.addresses, capabilities: member.capabilities })
      }
    }
    let plan: PipelineShard[] | undefined
    let problem: string | undefined
    if (served !== undefined && view.converged) {
      const holders = view.members.filter((m) =>
        m.capabilities.models.some((x) => x.sha256 === served!.info.sha256),
      )
      if (holders.length === view.members.length) {
        try {
          plan = planPipeline(
            holders.map((m) => ({ nodeId: m.nodeId, capacityBytes: m.capabilities.capacityBytes })),
            served.plan,
          )
        } catch (err) {
          if (!(err instanceof ShardPlanError)) throw err
          problem = err.message
        }
      } else problem = 'not every member serves the same model (or some still wait for its manifest)'
    }
    const before = plans.get(poolId)
    plans.set(poolId, { epoch: view.epoch, plan, ...(problem ? { problem } : {}) })
    if (problem !== undefined && problem !== before?.problem) {
      logger.warn({ poolId, epoch: view.epoch, problem }, 'the ring cannot hold the served model')
    }
    if (plan !== undefined && JSON.stringify(plan) !== JSON.stringify(before?.plan)) {
      for (const listener of planListeners) listener(poolId, plan)
    }
    // One write after another per pool: two views in quick succession (changed, then converged)
    // must land in that order, or the file keeps the older one until the next epoch.
    const topology = topologyOf(poolId, view, plan ?? [])
    const write = (topologyWrites.get(poolId) ?? Promise.resolve())
      .then(async () => {
        await writeTopologyFile(layout.root, topology)
      })
      .catch((err: Error) => logger.error({ err: err.message }, 'could not write the ring topology file'))
    topologyWrites.set(poolId, write)
    logger.info(
      { poolId, epoch: view.epoch, converged: view.converged, members: view.members.length },
      view.converged ? 'ring converged' : 'ring changed',
    )
  }

  const startRing = async (poolId: string) => {
    if (stopped) return
    const gate = mesh.gate()
    const certificate = gate.certificateBytes(poolId)
    if (certificate === undefined || rings.has(poolId)) return
    const node = mesh.node()
    const ring = new RingGossip(
      {
        poolId,
        identity,
        certificate,
        capabilities,
        addresses: () => node.multiaddrs().map(String),
        verifyMember: (a) => gate.verifyCertificateBytes(poolId, a.certificate, a.nodeId),
        logger,
      },
      {
        pubsub: node.libp2p.services.pubsub,
        // Direct push-pull with connected members: the ring agrees before gossip reaches everyone.
        sync: (nodeId, request, { signal }) =>
          node.request(nodeId, RING_SYNC_PROTOCOL, request, {
            signal,
            maxRequestBytes: MAX_RING_SYNC_BYTES,
            maxResponseBytes: MAX_RING_SYNC_BYTES,
            runOnLimitedConnection: true,
          }),
      },
    )
    ring.addEventListener('view', (event) => onView(poolId, (event as CustomEvent<RingView>).detail))
    rings.set(poolId, ring)
    // Only a revocation list the pool root signed, and newer than ours, is delivered and forwarded:
    // an outsider's garbage goes no further than the member it reached (and gossipsub scores it).
    node.libp2p.services.pubsub.topicValidators.set(revocationTopic(poolId), (_peer, message) =>
      validateRevocation(poolId, message.data),
    )
    node.libp2p.services.pubsub.subscribe(revocationTopic(poolId))
    ring.start()
    joinedAt.set(poolId, Date.now())
    // Members proved before this ring existed get no `member` event: sync with them now.
    for (const nodeId of gate.members(poolId)) ring.memberConnected(nodeId)
    onView(poolId, ring.view())
  }

  /** Revocation-topic messages refused, by reason. */
  const revocationDrops: Record<string, number> = {}
  /** `/meshnet/pool-ring/1.0.0` requests refused (node-wide, shown with every pool), by reason. */
  const ringRequestsRefused: Record<string, number> = {}
  const validateRevocation = (poolId: string, data: Uint8Array): TopicValidatorResult => {
    const drop = (reason: string) => {
      revocationDrops[reason] = (revocationDrops[reason] ?? 0) + 1
      return reason === 'not-newer' ? TopicValidatorResult.Ignore : TopicValidatorResult.Reject
    }
    if (data.length > POOL_LIMITS.revocationListBytes) return drop('oversized')
    const pool = mesh
      .gate()
      .pools()
      .find((p) => p.id === poolId)
    if (pool === undefined) return drop('not-our-pool')
    let list: ReturnType<typeof decodeRevocationList>
    try {
      list = decodeRevocationList(data, { poolId, rootPublicKey: pool.rootPublicKey })
    } catch (err) {
      return drop((err as { reason?: string }).reason ?? 'malformed')
    }
    // Equal or older lists are what we have (repeats every few seconds): not forwarded again.
    if (list.version <= (mesh.gate().revocations(poolId)?.version ?? 0)) return drop('not-newer')
    return TopicValidatorResult.Accept
  }

  const onRevocationMessage = (event: CustomEvent<Message>) => {
    const { topic, data } = event.detail
    const poolId = topic.startsWith('/meshnet/revocations/1.0.0/') ? topic.slice(27) : undefined
    if (poolId === undefined || !rings.has(poolId)) return
    void (async () => {
      const pool = await loadPool(layout.root, poolId)
      const list = decodeRevocationList(data, { poolId, rootPublicKey: pool.rootPublicKey })
      if (await saveRevocationList(pool, list)) {
        logger.info({ poolId, version: list.version }, 'took a newer revocation list from gossip')
        await mesh.gate().reload()
      }
    })().catch((err: Error) => logger.debug({ err: err.message }, 'ignored a revocation message'))
  }

  const scanPools = async () => {
    const gate = mesh.gate()
    await gate.reload()
    for (const pool of gate.pools()) await startRing(pool.id)
    for (const [poolId, ring] of rings) {
      if (gate.certificateBytes(poolId) === undefined) {
        logger.warn({ poolId }, 'own certificate no longer valid (revoked or expired); leaving the ring')
        await ring.stop()
        rings.delete(poolId)
        joinedAt.delete(poolId)
        continue
      }
      const list = gate.revocations(poolId)
      if (list !== undefined) {
        await mesh
          .node()
          .libp2p.services.pubsub.publish(revocationTopic(poolId), encodeRevocationList(list))
          .catch(() => {})
      }
    }
  }

  const onDisconnect = (event: CustomEvent<{ toString(): string }>) => {
    for (const ring of rings.values()) ring.peerDisconnected(event.detail.toString())
  }
  const onConnect = (event: CustomEvent<{ toString(): string }>) => {
    for (const ring of rings.values()) ring.peerConnected(event.detail.toString())
  }

  return {
    name: 'rings',
    rings: () => rings,
    served: () => served,
    capabilities: () => capabilities,
    ringStatus,
    knownMembers: () => new Set([...peers.values()].flatMap((known) => [...known.keys()])),
    onPlan: (listener) => {
      planListeners.push(listener)
      for (const [poolId, p] of plans) if (p.plan !== undefined) listener(poolId, p.plan)
    },
    setShardState(shard) {
      const { shard: _old, ...rest } = capabilities
      capabilities = shard === undefined ? rest : { ...rest, shard }
      for (const ring of rings.values()) ring.updateCapabilities(capabilities)
    },
    async start() {
      served = weights.served()
      capabilities = {
        capacityBytes:
          config.memoryMb === undefined
            ? Math.floor((totalmem() * 0.5) / 2 ** 26) * 2 ** 26
            : config.memoryMb * 2 ** 20,
        freeMemoryBytes: freemem(),
        computeScore: measureComputeScore(),
        engines: ['meshnet', 'llama-cpp'],
        models: served ? [served.info] : [],
      }
      // A model known later (its manifest fetched from a pool peer): announced, and planned for.
      weights.onServed((model) => {
        if (served === model) return
        served = model
        capabilities = { ...capabilities, models: [model.info] }
        for (const [poolId, ring] of rings) {
          ring.updateCapabilities(capabilities)
          onView(poolId, ring.view())
        }
      })
      const node = mesh.node()
      node.libp2p.services.pubsub.addEventListener('message', onRevocationMessage)
      node.libp2p.addEventListener('peer:disconnect', onDisconnect)
      node.libp2p.addEventListener('peer:connect', onConnect)
      // A newcomer should hear from us now, not at our next at-rest heartbeat: sync with it
      // directly, and announce to the others.
      mesh.gate().addEventListener('member', (event) => {
        const { nodeId, pools } = (event as CustomEvent<{ nodeId: string; pools: string[] }>).detail
        for (const poolId of pools) {
          // Clients may read the ring but take no part in it (and do not answer ring syncs).
          if (mesh.gate().isMember(nodeId, poolId)) rings.get(poolId)?.memberConnected(nodeId)
          rings.get(poolId)?.nudge(nodeId)
        }
      })
      // A member whose certificate was revoked or expired leaves the ring now, not at its timeout.
      mesh.gate().addEventListener('revoked', (event) => {
        const { nodeId, poolId, reason } = (event as CustomEvent<MembershipLost>).detail
        rings.get(poolId)?.evict(nodeId, reason)
      })
      node.libp2p.services.pubsub.addEventListener('subscription-change', (event) => {
        for (const { topic, subscribe } of event.detail.subscriptions) {
          if (!subscribe) continue
          for (const ring of rings.values())
            if (ring.topic === topic) ring.nudge(event.detail.peerId.toString())
        }
      })
      await node.handleRequests(
        POOL_RING_PROTOCOL,
        (request, { nodeId }) => {
          const reply = (value: unknown) => new TextEncoder().encode(JSON.stringify(value))
          let poolId: string
          try {
            poolId = ringStatusRequestSchema.parse(JSON.parse(new TextDecoder().decode(request))).poolId
          } catch {
            ringRequestsRefused['bad-request'] = (ringRequestsRefused['bad-request'] ?? 0) + 1
            return reply({
              error: { code: 'ERR_BAD_REQUEST', message: 'request is not JSON {"poolId": ...}' },
            })
          }
          try {
            // Client apps (SDK) may read the ring; only members and admins take part in it.
            mesh.gate().requireMember(nodeId, poolId, ANY_ROLE)
            return reply(ringStatus(poolId))
          } catch (err) {
            ringRequestsRefused['not-a-member'] = (ringRequestsRefused['not-a-member'] ?? 0) + 1
            logger.info({ nodeId, poolId }, 'refused a pool-ring request from a non-member')
            return reply({
              error: {
                code: (err as { code?: string }).code ?? 'ERR_POOL_ACCESS',
                message: (err as Error).message,
              },
            })
          }
        },
        {
          maxRequestBytes: MAX_RING_REQUEST_BYTES,
          maxResponseBytes: MAX_RING_STATUS_BYTES,
          runOnLimitedConnection: true,
        },
      )
      await node.handleRequests(
        RING_SYNC_PROTOCOL,
        (request, { nodeId }) => {
          const asked = decodeSyncRequest(request)
          mesh.gate().requireMember(nodeId, asked.poolId)
          return ringOf(asked.poolId).answerSync(asked, nodeId)
        },
        {
          maxRequestBytes: MAX_RING_SYNC_BYTES,
          maxResponseBytes: MAX_RING_SYNC_BYTES,
          runOnLimitedConnection: true,
        },
      )
      await scanPools()
      scan = setInterval(
        () => void scanPools().catch((err: Error) => logger.warn({ err: err.message }, 'pool scan failed')),
        POOL_SCAN_MS,
      )
    },
    async stop() {
      stopped = true
      clearInterval(scan)
      await Promise.all([...rings.values()].map((ring) => ring.stop()))
      rings.clear()
    },
    status: () =>
      Object.fromEntries(
        [...rings].map(([poolId, ring]) => {
          const view = ring.view()
          return [
            poolId,
            {
              epoch: view.epoch,
              converged: view.converged,
              joinedAt: joinedAt.get(poolId),
              ...(view.converged ? { convergedAt: convergedSince.get(poolId)?.at } : {}),
              members: view.members.length,
              gossip: ring.stats(),
              revocationDrops: { ...revocationDrops },
              ringRequestsRefused: { ...ringRequestsRefused },
            },
          ]
        }),
      ),
    routes: {
      'GET /rings': () => ({ rings: [...rings.keys()].map((poolId) => ringStatus(poolId)) }),
      'GET /rings/:poolId': (_body, { poolId }) => ringStatus(poolId!),
      'GET /pools/:poolId/peers': (_body, { poolId }) => {
        ringOf(poolId!)
        return {
          poolId,
          peers: [...(peers.get(poolId!)?.values() ?? [])].map((peer) => ({
            ...peer,
            lastSeen: new Date(peer.lastSeen).toISOString(),
            trust: store.trustScore(peer.nodeId),
          })),
        }
      },
    },
  }

  function ringOf(poolId: string): RingGossip {
    const ring = rings.get(poolId)
    if (ring === undefined) {
      throw new InvalidArgumentError(`this node has no ring for pool ${poolId}`, {
        hint: 'check the pool id with mesh pool-list; the node needs a valid certificate of that pool',
      })
    }
    return ring
  }

  function ringStatus(poolId: string): RingStatus {
    const view = ringOf(poolId).view()
    const plan = plans.get(poolId)
    const shards = new Map((plan?.plan ?? []).map((s) => [s.nodeId, s.layers]))
    return {
      poolId,
      epoch: view.epoch,
      converged: view.converged,
      joinedAt: joinedAt.get(poolId),
      ...(view.converged ? { convergedAt: convergedSince.get(poolId)?.at } : {}),
      digest: view.digest,
      model: served
        ? { name: served.info.name, sha256: served.info.sha256, layers: served.plan.layers }
        : null,
      ...(plan?.problem ? { planProblem: plan.problem } : {}),
      members: view.members.map((m, position) => ({
        nodeId: m.nodeId,
        position,
        addresses: m.addresses,
        capacityBytes: m.capabilities.capacityBytes,
        /** What this member last reported: converged means every member reports ours. */
        reports: m.view,
        shard: shards.has(m.nodeId)
          ? {
              layers: shards.get(m.nodeId)!,
              ...loadOf(m.capabilities.shard, shards.get(m.nodeId)!),
            }
          : null,
      })),
      /** Converged, planned, and every planned member reports its shard loaded. */
      ready:
        view.converged &&
        (plan?.plan?.every((s) => {
          const member = view.members.find((m) => m.nodeId === s.nodeId)
          return loadOf(member?.capabilities.shard, s.layers).load === 'ready'
        }) ??
          false),
    }
  }
}

/** A member's announced load state, when it is for the layers the plan gives it. */
function loadOf(
  shard: Capabilities['shard'],
  layers: readonly [number, number],
): {
  load: 'pending' | 'fetching' | 'loading' | 'ready' | 'failed'
  bytes?: number
  loadedBytes?: number
  error?: string
} {
  if (shard === undefined || shard.layers[0] !== layers[0] || shard.layers[1] !== layers[1]) {
    return { load: 'pending' }
  }
  return {
    load: shard.state,
    bytes: shard.bytes,
    loadedBytes: shard.loadedBytes,
    ...(shard.error === undefined ? {} : { error: shard.error }),
  }
}

/** A rough compute score: billions of float multiply-adds per second in a short JS loop. */
function measureComputeScore(): number {
  const a = new Float32Array(1 << 16).fill(1.0001)
  const b = new Float32Array(1 << 16).fill(0.9999)
  const started = performance.now()
  let ops = 0
  let sum = 0
  while (performance.now() - started < 20) {
    for (let i = 0; i < a.length; i++) sum += a[i]! * b[i]!
    ops += a.length
  }
  if (sum === 42) return 0 // keeps the loop from being optimised away
  return Math.round((ops / ((performance.now() - started) / 1000) / 1e9) * 100) / 100
}
