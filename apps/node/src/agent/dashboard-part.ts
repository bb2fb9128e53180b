import { randomBytes } from 'node:crypto'
import {
  DASHBOARD_JOBS,
  type DashboardApp,
  type DashboardJobEvent,
  type DashboardMember,
  type DashboardNetwork,
  type DashboardPool,
  type DashboardRing,
  type DashboardState,
  dashboardApp,
  JobTracker,
} from '@meshnet/dashboard'
import { classifyLink, collectDiagnosis, describeUpnp } from '@meshnet/discovery'
import { listMembers, listPools, loadCertificate, loadRevocationList, openPoolAdmin } from '@meshnet/pool'
import { jobStats } from '@meshnet/shards'
import pkg from '../../package.json' with { type: 'json' }
import type { AgentContext, AgentPart } from './agent.ts'
import { knownMembers, ringMembers } from './doctor-part.ts'
import type { JobsPart } from './jobs-part.ts'
import type { MeshPart } from './mesh-part.ts'
import type { RingPart, RingStatus } from './ring-part.ts'
import type { WeightsPart } from './weights-part.ts'

/** Pool files are read again at most this often for the page. */
const POOLS_TTL_MS = 5_000
/** Ring members are pinged this often, while a page has asked for the state in the last minute. */
const PING_MS = 5_000
const WATCHED_MS = 60_000

export interface DashboardPart extends AgentPart {
  /** The bearer token of the dashboard's data: the API key when one is set, else one made at start. */
  readonly token: string
  /** The page's routes, to mount on the agent's HTTP server (the api part does). */
  web(): DashboardApp
  /** Tells the page where the HTTP server listens (for its state and `mesh dashboard`). */
  setAddress(address: { host: string; port: number }): void
}

/**
 * The dashboard every agent serves (`@meshnet/dashboard`): its state, assembled from the other
 * parts (rings and their members' shards, links, trust, pools, the model and its fetch, jobs), and
 * the job runner's events as they happen. The control route `GET /dashboard` gives its link.
 */
export function dashboardPart(
  context: AgentContext,
  parts: { mesh: MeshPart; ring: RingPart; jobs: JobsPart; weights: WeightsPart },
): DashboardPart {
  const { config, identity, store, layout, logger } = context
  const { mesh, ring, jobs, weights } = parts
  const token = config.api?.key ?? randomBytes(24).toString('base64url')
  const tracker = new JobTracker()
  const listeners = new Set<(event: DashboardJobEvent) => void>()
  const startedAt = new Date().toISOString()
  let address: { host: string; port: number } | undefined
  let app: DashboardApp | undefined
  let unsubscribe: (() => void) | undefined
  let pools: { at: number; value: Promise<DashboardPool[]> } | undefined
  /** Round trips to ring members by libp2p ping, measured only while someone watches. */
  const rtts = new Map<string, number>()
  let watchedAt = 0
  let pinger: NodeJS.Timeout | undefined
  const lifetime = new AbortController()

  const ping = () => {
    if (lifetime.signal.aborted || Date.now() - watchedAt > WATCHED_MS) return
    const members = ringMembers(ring)
    members.delete(identity.nodeId)
    for (const nodeId of [...members].slice(0, 64)) {
      const signal = AbortSignal.any([lifetime.signal, AbortSignal.timeout(PING_MS)])
      mesh
        .node()
        .ping(nodeId, { signal })
        .then(
          (ms) => rtts.set(nodeId, ms),
          () => rtts.delete(nodeId),
        )
    }
    for (const nodeId of rtts.keys()) if (!members.has(nodeId)) rtts.delete(nodeId)
  }

  const url = () =>
    address === undefined ? null : `http://${hostOf(address.host)}:${address.port}/#token=${token}`

  return {
    name: 'dashboard',
    token,
    web() {
      app ??= dashboardApp({
        token,
        state,
        subscribe(listener) {
          listeners.add(listener)
          return () => listeners.delete(listener)
        },
        logger: logger.child({ part: 'dashboard' }),
      })
      return app
    },
    setAddress(value) {
      address = value
    },
    async start() {
      pinger = setInterval(ping, PING_MS)
      pinger.unref()
      // The runner comes once the model is known (a model fetched from peers comes late).
      jobs.onRunner((runner) => {
        unsubscribe ??= runner.onEvent((event) => {
          const told = tracker.apply(event)
          if (told !== undefined) for (const listener of listeners) listener(told)
        })
      })
    },
    async stop() {
      clearInterval(pinger)
      lifetime.abort()
      unsubscribe?.()
      app?.close()
    },
    status: () => ({ url: address === undefined ? null : `http://${hostOf(address.host)}:${address.port}/` }),
    // The control API's route (`mesh dashboard`): the page's link, with its token.
    routes: { 'GET /dashboard': () => ({ url: url(), token }) },
  }

  async function state(): Promise<DashboardState> {
    if (Date.now() - watchedAt > WATCHED_MS) setImmediate(ping)
    watchedAt = Date.now()
    const served = weights.served()
    const fetch = (weights.status?.() as { fetch?: { current?: { model: string; progress: Progress } } })
      ?.fetch?.current
    const stored = store.listJobs(DASHBOARD_JOBS)
    const { totals } = jobStats(store.listJobs(10_000))
    return {
      at: new Date().toISOString(),
      node: {
        nodeId: identity.nodeId,
        name: config.name ?? null,
        version: pkg.version,
        startedAt,
        api: address ?? null,
      },
      model:
        served === undefined
          ? null
          : {
              id: served.info.sha256,
              name: served.info.name,
              layers: served.plan.layers,
              bytes: served.info.bytes,
              fetch:
                fetch === undefined
                  ? null
                  : {
                      doneBytes: fetch.progress.doneBytes,
                      totalBytes: fetch.progress.totalBytes,
                      sources: Object.keys(fetch.progress.sources).length,
                    },
            },
      network: await networkOf(),
      rings: [...ring.rings().keys()].map((poolId) => ringOf(ring.ringStatus(poolId))),
      pools: await poolsOf(),
      jobs: tracker.jobs(stored),
      totals: {
        jobs: totals.jobs,
        completed: totals.completed,
        failed: totals.failed,
        tokens: totals.tokens,
        failovers: totals.failovers,
        meanTokensPerSecond: totals.meanTokensPerSecond,
        meanTimeToFirstTokenMs: totals.meanTimeToFirstTokenMs,
      },
    }
  }

  function ringOf(status: RingStatus): DashboardRing {
    return {
      poolId: status.poolId,
      epoch: status.epoch,
      converged: status.converged,
      ready: status.ready,
      planProblem: status.planProblem ?? null,
      layers: status.model?.layers ?? null,
      members: status.members.map((m): DashboardMember => {
        const self = m.nodeId === identity.nodeId
        const shard = m.shard
        return {
          nodeId: m.nodeId,
          position: m.position,
          self,
          offeredBytes: m.capacityBytes,
          usedBytes: shard?.load === 'ready' ? (shard.loadedBytes ?? shard.bytes ?? 0) : 0,
          shard:
            shard === null
              ? null
              : {
                  layers: [shard.layers[0], shard.layers[1]],
                  load: shard.load,
                  bytes: shard.bytes ?? null,
                  loadedBytes: shard.loadedBytes ?? null,
                  error: shard.error ?? null,
                },
          trust: self ? 1 : store.trustScore(m.nodeId),
          link: self ? { type: 'self', rttMs: null, address: null } : linkTo(m.nodeId),
        }
      }),
    }
  }

  /**
   * How this node reaches a member: a direct connection (LAN when its address is private), a
   * relay, or none; with the last ping's round trip (or libp2p's connection monitor's).
   */
  function linkTo(nodeId: string): DashboardMember['link'] {
    const open = mesh
      .node()
      .libp2p.getConnections()
      .filter((c) => c.status === 'open' && c.remotePeer.toString() === nodeId)
    const { link, address } = classifyLink(
      open.map((c) => ({ remote: c.remoteAddr.toString(), limited: !c.direct || c.limits !== undefined })),
    )
    const best = open.find((c) => c.remoteAddr.toString() === address)
    const monitored = typeof best?.rtt === 'number' ? best.rtt : null
    return { type: link, rttMs: link === 'none' ? null : (rtts.get(nodeId) ?? monitored), address }
  }

  /** The node's NAT type, reachability, relays and `mesh doctor`'s advice (without its pings). */
  async function networkOf(): Promise<DashboardNetwork | null> {
    let node: ReturnType<MeshPart['node']>
    try {
      node = mesh.node()
    } catch {
      return null
    }
    const report = await collectDiagnosis(node, { ping: false, members: knownMembers(ring) })
    return {
      natType: report.nat.type,
      natEvidence: report.nat.evidence,
      publiclyReachable: report.publiclyReachable,
      relays: report.relays.configured,
      reservedRelays: report.relays.reserved,
      upnp: report.upnp.enabled ? describeUpnp(report.upnp) : null,
      advice: report.advice.map(({ severity, message }) => ({ severity, message })),
    }
  }

  function poolsOf(): Promise<DashboardPool[]> {
    const now = Date.now()
    if (pools === undefined || now - pools.at > POOLS_TTL_MS) {
      pools = { at: now, value: readPools().catch(() => []) }
    }
    return pools.value
  }

  async function readPools(): Promise<DashboardPool[]> {
    const { pools: found } = await listPools(layout.root)
    return Promise.all(
      found.map(async (pool): Promise<DashboardPool> => {
        const certificate = await loadCertificate(pool).catch(() => undefined)
        let admin: Awaited<ReturnType<typeof openPoolAdmin>> | undefined
        try {
          admin = await openPoolAdmin(layout.root, pool.id, identity)
        } catch {
          admin = undefined
        }
        const revoked = new Set((await loadRevocationList(pool).catch(() => undefined))?.nodeIds ?? [])
        return {
          poolId: pool.id,
          role: certificate?.role ?? (admin ? 'admin' : 'unknown'),
          admin: admin !== undefined,
          certificateExpiresAt: certificate ? new Date(certificate.expiresAt).toISOString() : null,
          members:
            admin === undefined
              ? []
              : (await listMembers(pool)).map((m) => ({
                  nodeId: m.nodeId,
                  role: m.role,
                  expiresAt: new Date(m.expiresAt).toISOString(),
                  revoked: revoked.has(m.nodeId),
                })),
          pendingRequests:
            admin === undefined
              ? []
              : (await admin.listPendingJoinRequests())
                  .filter((r) => r.status === 'pending')
                  .map((r) => ({
                    nodeId: r.nodeId,
                    name: r.deviceName,
                    requestedAt: new Date(r.receivedAt).toISOString(),
                  })),
        }
      }),
    )
  }
}

interface Progress {
  doneBytes: number
  totalBytes: number
  sources: Record<string, number>
}

/** A host as a URL writes it (IPv6 in brackets; a wildcard bind is reached on loopback). */
function hostOf(host: string): string {
  if (host === '0.0.0.0' || host === '::') return '127.0.0.1'
  return host.includes(':') ? `[${host}]` : host
}
