import {
  type HealthReport,
  healthOf,
  type MetricsSource,
  type ModelState,
  meshMetrics,
  type RingState,
} from '@meshnet/metrics'
import type { JobEvent } from '@meshnet/protocols'
import { z } from 'zod'
import type { AgentContext, AgentPart } from './agent.ts'
import type { BeaconsPart } from './beacons-part.ts'
import type { JobsPart } from './jobs-part.ts'
import type { MeshPart } from './mesh-part.ts'
import type { RingPart } from './ring-part.ts'
import type { WeightsPart } from './weights-part.ts'

export interface MetricsPart extends AgentPart {
  /** `GET /metrics`: the Prometheus text format. */
  metrics(): Promise<{ contentType: string; body: string }>
  /** `GET /health`: 200 when ready to serve, 503 with what is missing otherwise. */
  health(): { status: 200 | 503; body: HealthReport }
}

/** The parts the figures come from; beacons and pools are absent with `--no-beacons`. */
export interface MetricsParts {
  mesh: MeshPart
  ring: RingPart
  jobs: JobsPart
  weights: WeightsPart
  beacons?: BeaconsPart | undefined
  pools?: AgentPart | undefined
}

const counts = z.record(z.string(), z.number())
/** The parts' `status()` fields read here (each part's status is `unknown` to the agent). */
const weightsStatusSchema = z.object({
  server: z.object({ drops: counts }).partial().optional(),
  fetch: z
    .object({
      fetchedBytes: z.number(),
      fetches: z.number().optional(),
      failedFetches: z.number().optional(),
      badSources: z.number().optional(),
      current: z
        .object({ model: z.string(), progress: z.object({ doneBytes: z.number(), totalBytes: z.number() }) })
        .optional(),
    })
    .optional(),
})
const jobsStatusSchema = z.object({
  running: z.number().optional(),
  refusedPublic: z.number().optional(),
  refusedPool: z.number().optional(),
  badRequests: z.number().optional(),
  shards: z.object({ refused: counts }).partial().optional(),
})
const ringsStatusSchema = z.record(
  z.string(),
  z.object({ revocationDrops: counts.optional(), ringRequestsRefused: counts.optional() }),
)
const poolsStatusSchema = z.object({
  joins: z.object({ dropped: z.number().optional(), notQueued: counts.optional() }).optional(),
})

/**
 * Prometheus metrics and the readiness check of the agent (`meshMetrics` and `healthOf` of
 * @meshnet/metrics): ring, shard, trust, drop and fetch figures read from the other parts at each
 * scrape; jobs counted from the runner's events as they end, so that the job counters agree with
 * `mesh inference-stats` for the jobs run since the agent started. Serves nothing itself: the API
 * part mounts `metrics()` and `health()` as `GET /metrics` and `GET /health`.
 */
export function metricsPart(context: AgentContext, parts: MetricsParts): MetricsPart {
  const { config, identity, store, logger } = context
  const { mesh, ring, jobs, weights, beacons, pools } = parts
  let unsubscribe: (() => void) | undefined
  let stopped = false

  /** A figure, or undefined when its part is not up (or gone): the others still count. */
  const attempt = <T>(read: () => T): T | undefined => {
    try {
      return read()
    } catch {
      return undefined
    }
  }
  const statusOf = <T>(part: AgentPart | undefined, schema: z.ZodType<T>): T | undefined => {
    const parsed = schema.safeParse(attempt(() => part?.status?.()))
    return parsed.success ? parsed.data : undefined
  }

  const rings = (): RingState[] =>
    [...ring.rings().keys()].map((poolId) => {
      const status = ring.ringStatus(poolId)
      return {
        poolId,
        epoch: status.epoch,
        digest: status.digest,
        converged: status.converged,
        ready: status.ready,
        ...(status.planProblem === undefined ? {} : { planProblem: status.planProblem }),
        members: status.members.map((m) => ({ nodeId: m.nodeId, reports: m.reports, shard: m.shard })),
      }
    })

  const model = (): ModelState | undefined => {
    if (config.model === undefined) return undefined
    const served = weights.served()
    if (served === undefined) return { id: config.model, name: config.model, known: false, whole: false }
    return {
      id: served.info.sha256,
      name: served.info.name,
      known: true,
      whole: attempt(() => served.whole?.()) ?? true,
    }
  }

  const source: MetricsSource = {
    rings,
    trust() {
      // The peers this node deals with: its rings' members and the pool members it is connected to.
      const peers = new Set<string>()
      for (const r of ring.rings().values()) for (const m of r.view().members) peers.add(m.nodeId)
      const gate = attempt(() => mesh.gate())
      for (const peer of attempt(() => mesh.node().libp2p.getPeers()) ?? []) {
        if (gate?.isMemberOfAny(peer.toString())) peers.add(peer.toString())
      }
      peers.delete(identity.nodeId)
      return Object.fromEntries([...peers].map((peer) => [peer, store.trustScore(peer)]))
    },
    ...(beacons === undefined ? {} : { beaconDrops: () => beacons.beacons.stats().dropped }),
    protocolDrops() {
      const drops: Record<string, Record<string, number>> = {}
      const add = (protocol: string, reasons: Record<string, number> | undefined) => {
        if (reasons === undefined) return
        const into = drops[protocol] ?? {}
        drops[protocol] = into
        for (const [reason, n] of Object.entries(reasons)) into[reason] = (into[reason] ?? 0) + n
      }
      add(
        'requests',
        attempt(() => mesh.node().requestDrops()),
      )
      add(
        'pool-cert',
        attempt(() => mesh.gate().stats().refused),
      )
      for (const r of ring.rings().values()) add('ring-gossip', r.stats().dropped)
      // Node-wide counts, repeated in every pool's status: the first pool's is all of them.
      const ringStatus = Object.values(statusOf(ring, ringsStatusSchema) ?? {})[0]
      add('revocations', ringStatus?.revocationDrops)
      add('pool-ring', ringStatus?.ringRequestsRefused)
      const weightsStatus = statusOf(weights, weightsStatusSchema)
      add('weights', weightsStatus?.server?.drops)
      const badSources = weightsStatus?.fetch?.badSources
      add('weights-fetch', badSources === undefined ? undefined : { 'bad-source': badSources })
      const jobsStatus = statusOf(jobs, jobsStatusSchema)
      add('shards', jobsStatus?.shards?.refused)
      add('jobs', {
        'public-rate-limit': jobsStatus?.refusedPublic ?? 0,
        'not-a-member': jobsStatus?.refusedPool ?? 0,
        'bad-request': jobsStatus?.badRequests ?? 0,
      })
      const joins = statusOf(pools, poolsStatusSchema)?.joins
      if (joins !== undefined) add('pool-join', { dropped: joins.dropped ?? 0, ...joins.notQueued })
      return drops
    },
    fetch() {
      const fetch = statusOf(weights, weightsStatusSchema)?.fetch
      if (fetch === undefined) return { fetchedBytes: 0 }
      return {
        fetchedBytes: fetch.fetchedBytes,
        ...(fetch.fetches === undefined ? {} : { fetches: fetch.fetches }),
        ...(fetch.failedFetches === undefined ? {} : { failedFetches: fetch.failedFetches }),
        ...(fetch.current === undefined
          ? {}
          : {
              current: {
                model: fetch.current.model,
                doneBytes: fetch.current.progress.doneBytes,
                totalBytes: fetch.current.progress.totalBytes,
              },
            }),
      }
    },
    model,
    jobsRunning: () => statusOf(jobs, jobsStatusSchema)?.running ?? 0,
    connections: () => mesh.node().libp2p.getConnections().length,
  }

  const metrics = meshMetrics({ source, logger })

  /** Modes of the jobs running, from their start (a failed job ends without a result). */
  const modes = new Map<string, string>()
  const onEvent = (event: JobEvent) => {
    if (event.type === 'start') {
      modes.set(event.jobId, event.mode)
      return
    }
    if (event.type !== 'end') return
    const mode = event.result?.mode ?? modes.get(event.jobId) ?? 'other'
    modes.delete(event.jobId)
    const stats = event.result?.stats
    metrics.observeJob({
      mode,
      status: event.status,
      ...(stats === undefined
        ? {}
        : {
            completionTokens: stats.completionTokens,
            tokensPerSecond: stats.tokensPerSecond,
            timeToFirstTokenMs: stats.timeToFirstTokenMs,
            // A job on one member makes no hops.
            ...(mode === 'single' ? {} : { hopLatencyMs: stats.hopLatencyMs }),
            ...(stats.allReduceMs === undefined ? {} : { allReduceMs: stats.allReduceMs }),
            bytesMoved: stats.bytesMoved,
            failovers: stats.failovers,
          }),
    })
  }

  return {
    name: 'metrics',
    async start() {
      // The runner is made late when the model comes from pool peers: counted from then on.
      jobs.onRunner((runner) => {
        if (stopped || unsubscribe !== undefined) return
        unsubscribe = runner.onEvent(onEvent)
      })
    },
    async stop() {
      stopped = true
      unsubscribe?.()
      unsubscribe = undefined
    },
    metrics: () => metrics.render(),
    health() {
      let report: HealthReport
      try {
        report = healthOf({ model: model(), rings: rings(), fetch: source.fetch?.().current })
      } catch (err) {
        logger.warn({ err: (err as Error).message }, 'the health check could not read the agent')
        report = {
          ready: false,
          missing: [`the agent could not be read: ${(err as Error).message}`],
          model: null,
          rings: [],
        }
      }
      return { status: report.ready ? 200 : 503, body: report }
    },
  }
}
