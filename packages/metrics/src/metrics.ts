import type { Logger } from '@meshnet/core'
import { Counter, collectDefaultMetrics, Gauge, Histogram, Registry } from 'prom-client'
import { z } from 'zod'
import type { MetricsSource } from './source.ts'

export interface MeshMetricsInit {
  /** Where scrape-time figures come from; absent: only job metrics (and process metrics). */
  source?: MetricsSource
  /** Hears a source function that throws (the scrape goes on without its metrics). */
  logger?: Pick<Logger, 'warn'>
  /**
   * Node.js process metrics under their standard names (`process_cpu_seconds_total`,
   * `nodejs_heap_size_used_bytes`, …) on the same registry. Default true.
   */
  processMetrics?: boolean
}

/** One finished job, as the job runner reports it (`JobResult.stats` of @meshnet/protocols). */
export interface JobObservation {
  /** `single`, `pipeline` or `tensor`. */
  mode: string
  status: 'completed' | 'failed' | 'cancelled'
  completionTokens?: number
  tokensPerSecond?: number
  timeToFirstTokenMs?: number
  /** Mean latency of one hop between members (pipeline and tensor jobs). */
  hopLatencyMs?: number
  /** Mean time of one all-reduce exchange (tensor jobs). */
  allReduceMs?: number
  bytesMoved?: number
  failovers?: number
}

/** A scrape: what `GET /metrics` answers. */
export interface RenderedMetrics {
  contentType: string
  body: string
}

export interface MeshMetrics {
  /**
   * Counts a finished job: every job in `meshnet_jobs_total` and its failovers; a completed job's
   * tokens, bytes moved and figures in the histograms (what `mesh inference-stats` totals). A
   * figure that is absent, negative or not finite is left out.
   */
  observeJob(job: JobObservation): void
  /** The registry in the Prometheus text format, every source function read now. */
  render(): Promise<RenderedMetrics>
}

/** Label values longer than this are cut (they come from peers' ids and reasons). */
const MAX_LABEL_CHARS = 128
/** Series one scrape-time metric may have: a flood of peers or reasons stops here. */
const MAX_SERIES = 1_000

const figure = z.number().nonnegative().optional().catch(undefined)
const observationSchema = z.object({
  mode: z
    .string()
    .regex(/^[a-z][a-z-]{0,31}$/)
    .catch('other'),
  status: z.enum(['completed', 'failed', 'cancelled']),
  completionTokens: figure,
  tokensPerSecond: figure,
  timeToFirstTokenMs: figure,
  hopLatencyMs: figure,
  allReduceMs: figure,
  bytesMoved: figure,
  failovers: figure,
})

/**
 * Prometheus metrics of a Meshnet node on a registry of its own (never prom-client's global one):
 * rings, shards, trust, drops and fetches read from `source` at each scrape, jobs counted as they
 * end (`observeJob`). Every name starts with `meshnet_`; see docs/metrics.md.
 */
export function meshMetrics(init: MeshMetricsInit = {}): MeshMetrics {
  const source = init.source ?? {}
  const registry = new Registry()
  /** Source reads of the scrape in progress: each function is called once per scrape. */
  let memo: Map<string, unknown> | undefined

  const read = <K extends keyof MetricsSource>(
    key: K,
  ): ReturnType<NonNullable<MetricsSource[K]>> | undefined => {
    type Value = ReturnType<NonNullable<MetricsSource[K]>>
    if (memo?.has(key)) {
      const kept = memo.get(key) as { value: Value } | { error: unknown }
      if ('error' in kept) throw kept.error
      return kept.value
    }
    const fn = source[key] as (() => Value) | undefined
    try {
      const value = fn?.call(source)
      memo?.set(key, { value })
      return value
    } catch (error) {
      // The metrics that read it in this scrape are left out alike, without asking it again.
      memo?.set(key, { error })
      throw error
    }
  }

  /** A collect callback that never breaks the scrape: a throw is logged and the metric left empty. */
  const guarded = <M extends Gauge | Counter>(
    name: string,
    fill: (set: Setter) => void,
    apply: (metric: M) => Setter,
  ) =>
    function (this: M) {
      // Emptied first: series the source no longer reports go (a label-less one would read 0).
      this.reset()
      this.remove({})
      try {
        fill(setter(apply(this)))
      } catch (err) {
        this.reset()
        this.remove({})
        init.logger?.warn({ metric: name, err: (err as Error).message }, 'a metrics source threw; left out')
      }
    }

  /** A gauge read from the source at each scrape; not registered when the source lacks `needs`. */
  const gauge = (
    needs: keyof MetricsSource,
    name: string,
    help: string,
    labelNames: string[],
    fill: (set: Setter) => void,
  ) => {
    if (source[needs] === undefined) return
    new Gauge({
      name,
      help,
      labelNames,
      registers: [registry],
      collect: guarded<Gauge>(name, fill, (g) => (labels, value) => g.set(labels, value)),
    })
  }
  /** The same for a counter whose total the source keeps. */
  const sourcedCounter = (
    needs: keyof MetricsSource,
    name: string,
    help: string,
    labelNames: string[],
    fill: (set: Setter) => void,
  ) => {
    if (source[needs] === undefined) return
    new Counter({
      name,
      help,
      labelNames,
      registers: [registry],
      collect: guarded<Counter>(name, fill, (c) => (labels, value) => c.inc(labels, value)),
    })
  }

  // Rings and shards.
  gauge(
    'rings',
    'meshnet_ring_members',
    'Live members of the pool’s ring, this node included.',
    ['pool'],
    (set) => {
      for (const ring of read('rings') ?? []) set({ pool: ring.poolId }, ring.members.length)
    },
  )
  gauge('rings', 'meshnet_ring_epoch', 'Epoch of the pool’s ring view.', ['pool'], (set) => {
    for (const ring of read('rings') ?? []) set({ pool: ring.poolId }, ring.epoch)
  })
  gauge(
    'rings',
    'meshnet_ring_converged',
    '1 when every ring member reports this node’s view.',
    ['pool'],
    (set) => {
      for (const ring of read('rings') ?? []) set({ pool: ring.poolId }, ring.converged ? 1 : 0)
    },
  )
  gauge(
    'rings',
    'meshnet_ring_ready',
    '1 when the ring is converged, planned and every planned member reports its shard loaded.',
    ['pool'],
    (set) => {
      for (const ring of read('rings') ?? []) set({ pool: ring.poolId }, ring.ready ? 1 : 0)
    },
  )
  const shardGauge = (name: string, help: string, pick: 'bytes' | 'loadedBytes') =>
    gauge('rings', name, help, ['pool', 'node'], (set) => {
      for (const ring of read('rings') ?? []) {
        for (const member of ring.members) {
          const value = member.shard?.[pick]
          if (value !== undefined) set({ pool: ring.poolId, node: member.nodeId }, value)
        }
      }
    })
  shardGauge(
    'meshnet_shard_bytes',
    'Weight bytes of each planned member’s shard, as the member announces it.',
    'bytes',
  )
  shardGauge(
    'meshnet_shard_loaded_bytes',
    'Weight bytes of each planned member’s shard fetched or loaded so far.',
    'loadedBytes',
  )

  // Peers, drops, fetches, the model.
  gauge(
    'trust',
    'meshnet_peer_trust_score',
    'Trust score (0 to 1) this node keeps for the peer.',
    ['peer'],
    (set) => {
      for (const [peer, score] of Object.entries(read('trust') ?? {})) set({ peer }, score)
    },
  )
  gauge('connections', 'meshnet_connections', 'Open libp2p connections.', [], (set) => {
    const n = read('connections')
    if (n !== undefined) set({}, n)
  })
  sourcedCounter(
    'beaconDrops',
    'meshnet_beacon_drops_total',
    'LAN beacons dropped, by reason.',
    ['reason'],
    (set) => {
      for (const [reason, n] of Object.entries(read('beaconDrops') ?? {})) set({ reason }, n)
    },
  )
  sourcedCounter(
    'protocolDrops',
    'meshnet_protocol_drops_total',
    'Messages, requests and streams refused, by protocol and reason.',
    ['protocol', 'reason'],
    (set) => {
      for (const [protocol, reasons] of Object.entries(read('protocolDrops') ?? {})) {
        for (const [reason, n] of Object.entries(reasons)) set({ protocol, reason }, n)
      }
    },
  )
  sourcedCounter(
    'fetch',
    'meshnet_fetched_bytes_total',
    'Model chunk bytes fetched from peers and URLs.',
    [],
    (set) => {
      const fetch = read('fetch')
      if (fetch !== undefined) set({}, fetch.fetchedBytes)
    },
  )
  gauge(
    'fetch',
    'meshnet_fetch_done_bytes',
    'Bytes of the model fetch under way done so far.',
    ['model'],
    (set) => {
      const current = read('fetch')?.current
      if (current !== undefined) set({ model: current.model }, current.doneBytes)
    },
  )
  gauge(
    'fetch',
    'meshnet_fetch_total_bytes',
    'Bytes the model fetch under way fetches in all.',
    ['model'],
    (set) => {
      const current = read('fetch')?.current
      if (current !== undefined) set({ model: current.model }, current.totalBytes)
    },
  )
  gauge(
    'model',
    'meshnet_model_whole',
    '1 when every chunk of the served model is on this node (0: it holds parts, or waits for its manifest).',
    ['model'],
    (set) => {
      const model = read('model')
      if (model !== undefined) set({ model: model.id }, model.known && model.whole ? 1 : 0)
    },
  )
  gauge('jobsRunning', 'meshnet_jobs_running', 'Jobs running on this node now.', [], (set) => {
    const n = read('jobsRunning')
    if (n !== undefined) set({}, n)
  })

  // Jobs, as they end.
  const jobs = new Counter({
    name: 'meshnet_jobs_total',
    help: 'Jobs this node ran (as coordinator), by mode and how they ended.',
    labelNames: ['mode', 'status'],
    registers: [registry],
  })
  const tokens = new Counter({
    name: 'meshnet_tokens_generated_total',
    help: 'Tokens generated by completed jobs.',
    labelNames: ['mode'],
    registers: [registry],
  })
  const bytesMoved = new Counter({
    name: 'meshnet_job_bytes_moved_total',
    help: 'Bytes completed jobs moved between members (control stream and direct links).',
    labelNames: ['mode'],
    registers: [registry],
  })
  const failovers = new Counter({
    name: 'meshnet_job_failovers_total',
    help: 'Failovers of jobs to other members after a member was lost.',
    labelNames: ['mode'],
    registers: [registry],
  })
  const histogram = (name: string, help: string, buckets: number[]) =>
    new Histogram({ name, help, labelNames: ['mode'], buckets, registers: [registry] })
  const ttft = histogram(
    'meshnet_job_time_to_first_token_seconds',
    'Time from a job’s start to its first token (completed jobs).',
    [0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60],
  )
  const rate = histogram(
    'meshnet_job_tokens_per_second',
    'Generation speed of completed jobs, in tokens per second.',
    [0.5, 1, 2, 5, 10, 20, 50, 100, 200, 500],
  )
  const latencyBuckets = [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1]
  const hop = histogram(
    'meshnet_job_hop_latency_seconds',
    'Mean latency of one hop between members, per completed pipeline or tensor job.',
    latencyBuckets,
  )
  const allReduce = histogram(
    'meshnet_job_all_reduce_seconds',
    'Mean time of one all-reduce exchange, per completed tensor-parallel job.',
    latencyBuckets,
  )

  if (init.processMetrics !== false) collectDefaultMetrics({ register: registry })

  return {
    observeJob(input) {
      const parsed = observationSchema.safeParse(input)
      if (!parsed.success) {
        init.logger?.warn(
          { err: parsed.error.issues[0]?.message },
          'a job observation was malformed; not counted',
        )
        return
      }
      const job = parsed.data
      const labels = { mode: job.mode }
      jobs.inc({ ...labels, status: job.status })
      failovers.inc(labels, job.failovers ?? 0)
      if (job.status !== 'completed') return
      tokens.inc(labels, job.completionTokens ?? 0)
      bytesMoved.inc(labels, job.bytesMoved ?? 0)
      if (job.timeToFirstTokenMs !== undefined) ttft.observe(labels, job.timeToFirstTokenMs / 1000)
      if (job.tokensPerSecond !== undefined) rate.observe(labels, job.tokensPerSecond)
      if (job.hopLatencyMs !== undefined) hop.observe(labels, job.hopLatencyMs / 1000)
      if (job.allReduceMs !== undefined) allReduce.observe(labels, job.allReduceMs / 1000)
    },
    async render() {
      memo = new Map()
      try {
        return { contentType: registry.contentType, body: await registry.metrics() }
      } finally {
        memo = undefined
      }
    },
  }
}

type Labels = Record<string, string>
type Setter = (labels: Labels, value: number) => void

/**
 * Wraps a metric's set/inc: values that are not finite non-negative numbers are skipped, label
 * values are cut to MAX_LABEL_CHARS, and a metric stops at MAX_SERIES series.
 */
function setter(apply: Setter): Setter {
  let series = 0
  return (labels, value) => {
    if (typeof value !== 'number' || !Number.isFinite(value) || value < 0) return
    if (++series > MAX_SERIES) return
    const cut: Labels = {}
    for (const [key, label] of Object.entries(labels)) cut[key] = String(label).slice(0, MAX_LABEL_CHARS)
    apply(cut, value)
  }
}
