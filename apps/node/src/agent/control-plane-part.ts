import { readFile } from 'node:fs/promises'
import { freemem, totalmem } from 'node:os'
import { join } from 'node:path'
import { setTimeout as sleep } from 'node:timers/promises'
import { encodeRevocationList, formatRootPublicKey, type Pool } from '@meshnet/pool'
import type { JobRunner } from '@meshnet/protocols'
import type { Capabilities, RingGossip } from '@meshnet/ring'
import { z } from 'zod'
import type { AgentContext, AgentPart } from './agent.ts'
import {
  CLIENT,
  CONTROL_PLANE_TOKEN_ENV,
  ControlPlaneClient,
  ControlPlaneUnavailableError,
  claimedJobSchema,
  deviceSchema,
  devicesSchema,
  dialTarget,
  joinSchema,
  poolSchema,
  revocationsSchema,
  type Topology,
  topologySchema,
} from './control-plane-client.ts'
import { controlPlaneJobs } from './control-plane-jobs.ts'
import type { MeshPart } from './mesh-part.ts'

export interface ControlPlaneStatus {
  url: string
  /** The control plane knows this device now (false before the first registration and during outages). */
  registered: boolean
  /** When the last registration or heartbeat was acknowledged (ISO 8601), or null. */
  lastHeartbeat: string | null
  /** Requests that failed: no answer, garbage, or a refusal the agent did not expect. */
  failures: number
  /** Jobs from the control plane this agent completed. */
  jobsRun: number
}

export interface ControlPlanePartDeps {
  mesh: MeshPart
  rings: () => Map<string, RingGossip>
  /** The agent's job runner; undefined while it has none (then no job is claimed). */
  jobs: () => JobRunner | undefined
  /** Base URL of `mesh-control-plane`, such as `http://192.168.1.10:8080`. */
  url: string
  /** Bearer token; default `$MESH_CONTROL_PLANE_TOKEN`, else `control-plane.token` in the data dir. */
  token?: string
  /** What this node offers (the ring part's `capabilities`); default: what its rings announce. */
  capabilities?: () => Capabilities
}

/**
 * The agent's side of `mesh-control-plane`: registers this device and sends heartbeats; joins the
 * control plane's ring of every pool this node holds a certificate for (registering the pool by its
 * public root key when the control plane does not know it) and dials the members it lists that P2P
 * discovery has not found, so that gossip takes over; and claims queued jobs, runs them on the
 * agent's job runner and streams their tokens back. The control plane being down or answering
 * garbage never stops the agent: it warns once per client.outage, retries with backoff and counts client.failures.
 */
export function controlPlanePart(
  context: AgentContext,
  deps: ControlPlanePartDeps,
): AgentPart & { status(): ControlPlaneStatus } {
  const { identity, logger, config, layout } = context
  const { mesh } = deps
  const nodeId = identity.nodeId
  const name = config.name.trim() || 'meshnet-node'

  let life = new AbortController()
  const client = new ControlPlaneClient({
    url: deps.url,
    identity,
    logger,
    signal: () => life.signal,
    onOutage: () => {
      registered = false
    },
  })
  const { base } = client
  let registered = false
  let lastHeartbeat: number | undefined
  let jobsRun = 0
  let heartbeatMs: number = CLIENT.maxHeartbeatMs
  let backoffMs: number = CLIENT.backoffMs
  let syncTimer: NodeJS.Timeout | undefined
  let claimTimer: NodeJS.Timeout | undefined
  let syncing: Promise<void> | undefined
  let claiming: Promise<void> | undefined
  let running: Promise<void> | undefined
  let fallbackCapabilities: Capabilities | undefined
  /** Pools whose ring the control plane lists this device in (from its last answer). */
  let planeRings = new Set<string>()
  /** Pools joined on the control plane, with the certificate (base64) they were joined with. */
  const joined = new Map<string, string>()
  /** Certificates the control plane refused, by pool: not sent again until the certificate changes. */
  const refusedCertificates = new Map<string, string>()
  const postedRevocations = new Map<string, number>()
  const lastDial = new Map<string, number>()
  /** Warnings already given; cleared when the control plane answers as expected again. */

  const addresses = () =>
    mesh
      .node()
      .multiaddrs()
      .map(String)
      .filter((a) => a.length <= 512)
      .slice(0, 32)

  /** What this node announces to its rings, else a plain estimate (the device in no pool yet). */
  const capabilities = (): Capabilities => {
    if (deps.capabilities !== undefined) return deps.capabilities()
    const ring: RingGossip | undefined = deps.rings().values().next().value
    const self = ring?.view().members.find((m) => m.nodeId === nodeId)
    if (self !== undefined) return self.capabilities
    fallbackCapabilities ??= {
      capacityBytes: Math.floor((totalmem() * 0.5) / 2 ** 26) * 2 ** 26,
      freeMemoryBytes: freemem(),
      computeScore: 0,
      engines: ['meshnet', 'llama-cpp'],
      models: [],
    }
    return fallbackCapabilities
  }

  // ---- device ----

  const register = async () => {
    const answer = await client.request('POST', '/v1/devices', {
      nodeId,
      name,
      addresses: addresses(),
      capabilities: capabilities(),
    })
    if (answer.status !== 200 && answer.status !== 201) {
      client.refused(answer, 'the device registration')
      return
    }
    planeRings = new Set(client.parse(deviceSchema, answer, 'POST /v1/devices').rings)
    registered = true
    lastHeartbeat = Date.now()
    client.resetWarnings()
    logger.info(
      { url: base, nodeId },
      answer.status === 201 ? 'registered with the control plane' : 'registered again with the control plane',
    )
    const devices = await client.request('GET', '/v1/devices')
    if (devices.status === 200) {
      const { onlineWindowMs } = client.parse(devicesSchema, devices, 'GET /v1/devices')
      heartbeatMs = Math.min(
        CLIENT.maxHeartbeatMs,
        Math.max(CLIENT.minHeartbeatMs, Math.floor(onlineWindowMs / 3)),
      )
    }
  }

  const heartbeat = async () => {
    const answer = await client.request('POST', `/v1/devices/${nodeId}/heartbeat`, {
      addresses: addresses(),
      capabilities: capabilities(),
    })
    if (answer.status === 404 && client.refusal(answer, 'a heartbeat').code === 'ERR_DEVICE_NOT_FOUND') {
      registered = false
      logger.info({ url: base }, 'the control plane no longer knows this device; registering it again')
      await register()
      return
    }
    if (answer.status !== 200) {
      client.refused(answer, 'a heartbeat')
      return
    }
    planeRings = new Set(client.parse(deviceSchema, answer, 'a heartbeat').rings)
    lastHeartbeat = Date.now()
  }

  // ---- rings ----

  const registerPool = async (pool: Pool): Promise<boolean> => {
    const answer = await client.request('POST', '/v1/pools', {
      poolId: pool.id,
      rootPublicKey: formatRootPublicKey(pool.rootPublicKey),
    })
    if (answer.status !== 200 && answer.status !== 201) {
      client.refused(answer, `pool ${pool.id}`, pool.id)
      return false
    }
    client.parse(poolSchema, answer, 'POST /v1/pools')
    if (answer.status === 201) {
      postedRevocations.delete(pool.id)
      logger.info({ poolId: pool.id }, 'registered the pool with the control plane')
    }
    return true
  }

  /** Gives the control plane the pool's newest root-signed revocation list, so it drops revoked members. */
  const postRevocations = async (poolId: string) => {
    const list = mesh.gate().revocations(poolId)
    if (list === undefined || list.version <= (postedRevocations.get(poolId) ?? 0)) return
    const answer = await client.request('POST', `/v1/rings/${poolId}/revocations`, {
      list: Buffer.from(encodeRevocationList(list)).toString('base64'),
    })
    if (answer.status !== 200) {
      client.refused(answer, `the revocation list of ${poolId}`, poolId)
      return
    }
    client.parse(revocationsSchema, answer, 'a revocation list')
    postedRevocations.set(poolId, list.version)
  }

  const joinRing = async (pool: Pool, certificate: string, retry = true): Promise<Topology | undefined> => {
    const answer = await client.request('POST', `/v1/rings/${pool.id}/join`, {
      nodeId,
      name,
      addresses: addresses(),
      capabilities: capabilities(),
      certificate,
    })
    const code = answer.status === 200 ? undefined : client.refusal(answer, 'a ring join').code
    if (code === 'ERR_POOL_NOT_FOUND' && retry) {
      return (await registerPool(pool)) ? joinRing(pool, certificate, false) : undefined
    }
    if (answer.status !== 200) {
      if (answer.status === 403) refusedCertificates.set(pool.id, certificate)
      client.refused(answer, `this node in the ring of ${pool.id}`, pool.id)
      return undefined
    }
    const { topology } = client.parse(joinSchema, answer, `the ring join of ${pool.id}`)
    joined.set(pool.id, certificate)
    planeRings.add(pool.id)
    logger.info(
      { poolId: pool.id, epoch: topology.epoch, members: topology.members.length },
      'joined the ring of the pool on the control plane',
    )
    return topology
  }

  const readTopology = async (poolId: string): Promise<Topology | undefined> => {
    const answer = await client.request('GET', `/v1/rings/${poolId}/topology`)
    if (answer.status === 200) return client.parse(topologySchema, answer, `the topology of ${poolId}`)
    joined.delete(poolId) // the control plane lost the pool or the membership: join again next round
    if (answer.status === 404) client.refusal(answer, `the topology of ${poolId}`)
    else client.refused(answer, `the topology of ${poolId}`, poolId)
    return undefined
  }

  /**
   * Dials the members the control plane lists that this node's gossip ring does not have and that
   * are not connected: after the connection, certificates are exchanged and gossip takes over.
   */
  const dialMissing = (poolId: string, topology: Topology) => {
    const node = mesh.node()
    const gossip = new Set(
      deps
        .rings()
        .get(poolId)
        ?.view()
        .members.map((m) => m.nodeId) ?? [],
    )
    const connected = new Set(node.libp2p.getConnections().map((c) => c.remotePeer.toString()))
    const now = Date.now()
    for (const [id, at] of lastDial) if (now - at >= CLIENT.redialMs) lastDial.delete(id)
    for (const member of topology.members) {
      const id = member.nodeId
      if (id === nodeId || gossip.has(id) || connected.has(id) || lastDial.has(id)) continue
      const targets = member.addresses
        .map((address) => dialTarget(address, id))
        .filter((target) => target !== undefined)
        .slice(0, CLIENT.addressesPerMember)
      if (targets.length === 0) continue
      lastDial.set(id, now)
      node.libp2p
        .dial(targets, {
          signal: AbortSignal.any([life.signal, AbortSignal.timeout(CLIENT.requestTimeoutMs)]),
        })
        .then(
          () => logger.info({ poolId, nodeId: id }, 'connected to a ring member listed by the control plane'),
          (err: Error) =>
            logger.debug({ poolId, nodeId: id, err: err.message }, 'dial of a listed member failed'),
        )
    }
  }

  const syncRings = async () => {
    const gate = mesh.gate()
    const held = new Map<string, { pool: Pool; certificate: string }>()
    for (const pool of gate.pools()) {
      const bytes = gate.certificateBytes(pool.id)
      if (bytes !== undefined) held.set(pool.id, { pool, certificate: Buffer.from(bytes).toString('base64') })
    }
    for (const [poolId, { pool, certificate }] of held) {
      if (refusedCertificates.get(poolId) === certificate) continue
      const topology =
        joined.get(poolId) === certificate && planeRings.has(poolId)
          ? await readTopology(poolId)
          : await joinRing(pool, certificate)
      if (topology === undefined) continue
      await postRevocations(poolId)
      dialMissing(poolId, topology)
    }
    for (const poolId of [...joined.keys()]) {
      if (held.has(poolId)) continue
      await leaveRing(poolId)
      logger.info({ poolId }, 'left the ring on the control plane: no valid certificate for the pool')
    }
  }

  const leaveRing = async (poolId: string, signal?: AbortSignal) => {
    joined.delete(poolId)
    planeRings.delete(poolId)
    await client.request('POST', `/v1/rings/${poolId}/leave`, { nodeId }, signal)
  }

  // ---- jobs ----

  /** The runner's request for a claimed job, or why this node cannot run it. */
  const jobs = controlPlaneJobs({ client, nodeId, logger, signal: () => life.signal })

  const claim = async () => {
    const runner = deps.jobs()
    if (runner === undefined || !registered || client.outage || running !== undefined) return
    // Jobs without a pool too, unless the runner would have to guess which of several pools runs them.
    const pools: Array<string | undefined> = [...joined.keys()]
    if (deps.rings().size <= 1) pools.push(undefined)
    for (const poolId of pools) {
      const answer = await client.request(
        'POST',
        '/v1/jobs/claim',
        poolId === undefined ? { nodeId } : { nodeId, poolId },
      )
      const code =
        answer.status === 200 || answer.status === 204 ? undefined : client.refusal(answer, 'a claim').code
      if (answer.status === 204) {
        client.reached()
        continue
      }
      if (code === 'ERR_NOT_RING_MEMBER' && poolId !== undefined) {
        joined.delete(poolId) // no longer in the control plane's ring: the next round joins again
        continue
      }
      if (code === 'ERR_DEVICE_NOT_FOUND') {
        registered = false
        return
      }
      if (answer.status !== 200) {
        client.refused(answer, 'a job claim')
        return
      }
      const parsed = claimedJobSchema.safeParse(answer.body)
      if (!parsed.success) {
        const id = z.object({ id: z.uuid() }).safeParse(answer.body)
        if (id.success) {
          const job = { id: id.data.id, leaseMs: CLIENT.requestTimeoutMs }
          await jobs.report(job, 'fail', { error: `node ${nodeId} could not read the claimed job` })
        }
        client.parse(claimedJobSchema, answer, 'a job claim') // throws: counted as garbage
        return
      }
      client.reached()
      running = jobs
        .run(runner, parsed.data)
        .then((completed) => {
          if (completed) jobsRun++
        })
        .catch((err: Error) => logger.warn({ err: err.message }, 'running a control plane job failed'))
        .finally(() => {
          running = undefined
        })
      return
    }
  }

  // ---- loops ----

  const guarded = async (round: () => Promise<void>) => {
    try {
      await round()
    } catch (err) {
      if (life.signal.aborted) return
      if (err instanceof ControlPlaneUnavailableError) client.failed(err)
      else {
        client.failures++
        client.warnOnce(
          `internal:${(err as Error).message}`,
          { err: (err as Error).message },
          'control plane round failed',
        )
      }
    }
  }

  const syncLoop = async () => {
    syncing = guarded(async () => {
      if (registered) await heartbeat()
      else await register()
      if (registered) await syncRings()
    })
    await syncing
    if (life.signal.aborted) return
    let delay = heartbeatMs
    if (!registered || client.outage) {
      delay = backoffMs
      backoffMs = Math.min(backoffMs * 2, CLIENT.maxBackoffMs)
    } else backoffMs = CLIENT.backoffMs
    syncTimer = setTimeout(() => void syncLoop(), delay)
  }

  const claimLoop = async () => {
    claiming = guarded(claim)
    await claiming
    if (!life.signal.aborted) claimTimer = setTimeout(() => void claimLoop(), CLIENT.claimMs)
  }

  return {
    name: 'controlPlane',
    async start() {
      life = new AbortController()
      client.token = deps.token ?? process.env[CONTROL_PLANE_TOKEN_ENV]
      client.token ??= await readFile(join(layout.root, CLIENT.tokenFile), 'utf8')
        .then((text) => text.trim() || undefined)
        .catch(() => undefined)
      if (client.token === undefined) {
        logger.warn(
          { url: base },
          `no control plane token: it will refuse every request; pass --control-plane-token or set ${CONTROL_PLANE_TOKEN_ENV}`,
        )
      }
      logger.info({ url: base }, 'using the control plane')
      syncTimer = setTimeout(() => void syncLoop(), 0)
      claimTimer = setTimeout(() => void claimLoop(), CLIENT.claimMs)
    },
    async stop() {
      clearTimeout(syncTimer)
      clearTimeout(claimTimer)
      const goodbye = registered && !client.outage
      life.abort()
      const settled = Promise.allSettled([syncing, claiming, running])
      await Promise.race([settled, sleep(CLIENT.stopTimeoutMs)])
      if (goodbye) {
        const signal = AbortSignal.timeout(CLIENT.stopTimeoutMs)
        await Promise.allSettled([...joined.keys()].map((poolId) => leaveRing(poolId, signal)))
      }
      registered = false
    },
    status: () => ({
      url: base,
      registered,
      lastHeartbeat: lastHeartbeat === undefined ? null : new Date(lastHeartbeat).toISOString(),
      failures: client.failures,
      jobsRun,
    }),
  }
}
