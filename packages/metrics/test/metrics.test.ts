import parsePrometheusTextFormat from 'parse-prometheus-text-format'
import { register as globalRegistry } from 'prom-client'
import { describe, expect, it, vi } from 'vitest'
import { type MetricsSource, meshMetrics, type RingState } from '../src/index.ts'

const A = '12D3KooWAaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa'
const B = '12D3KooWBbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb'

/** The scrape parsed back: the summed value of the samples of `name` whose labels include `labels`. */
function parsed(body: string) {
  const families = parsePrometheusTextFormat(body)
  const family = (name: string) => families.find((f) => f.name === name)
  return {
    family,
    value(name: string, labels: Record<string, string> = {}): number | undefined {
      const samples = (family(name)?.metrics ?? []).filter((s) =>
        Object.entries(labels).every(([k, v]) => s.labels?.[k] === v),
      )
      return samples.length === 0 ? undefined : samples.reduce((n, s) => n + Number(s.value), 0)
    },
    /** Observations of a histogram (its +Inf bucket); one label set per histogram in these tests. */
    observations(name: string): number | undefined {
      const inf = family(name)?.metrics[0]?.buckets?.['+Inf']
      return inf === undefined ? undefined : Number(inf)
    },
  }
}

const ring: RingState = {
  poolId: 'pool-1',
  epoch: 7,
  digest: 'd7',
  converged: true,
  ready: false,
  members: [
    {
      nodeId: A,
      reports: { epoch: 7 },
      shard: { layers: [0, 6], load: 'ready', bytes: 600, loadedBytes: 600 },
    },
    {
      nodeId: B,
      reports: { epoch: 7 },
      shard: { layers: [6, 12], load: 'loading', bytes: 500, loadedBytes: 200 },
    },
  ],
}

const source: MetricsSource = {
  rings: () => [ring, { poolId: 'pool-2', epoch: 3, converged: false, ready: false, members: [] }],
  trust: () => ({ [A]: 0.5, [B]: 0.25 }),
  beaconDrops: () => ({ stale: 2, replayed: 0, 'bad-signature': 5 }),
  protocolDrops: () => ({ 'ring-gossip': { oversized: 1 }, 'pool-cert': { 'not-a-member': 4 } }),
  fetch: () => ({
    fetchedBytes: 4096,
    current: { model: 'm'.repeat(64), doneBytes: 1024, totalBytes: 8192 },
  }),
  model: () => ({ id: 'm'.repeat(64), name: 'tiny.gguf', known: true, whole: false }),
  jobsRunning: () => 2,
  connections: () => 3,
}

describe('meshMetrics', () => {
  it('renders every source figure under its meshnet_ name, in the Prometheus text format', async () => {
    const { contentType, body } = await meshMetrics({ source, processMetrics: false }).render()
    expect(contentType).toMatch(/^text\/plain; version=0\.0\.4/)
    const m = parsed(body)
    expect(m.value('meshnet_ring_members', { pool: 'pool-1' })).toBe(2)
    expect(m.value('meshnet_ring_members', { pool: 'pool-2' })).toBe(0)
    expect(m.value('meshnet_ring_epoch', { pool: 'pool-1' })).toBe(7)
    expect(m.value('meshnet_ring_converged', { pool: 'pool-1' })).toBe(1)
    expect(m.value('meshnet_ring_converged', { pool: 'pool-2' })).toBe(0)
    expect(m.value('meshnet_ring_ready', { pool: 'pool-1' })).toBe(0)
    expect(m.value('meshnet_shard_bytes', { pool: 'pool-1', node: B })).toBe(500)
    expect(m.value('meshnet_shard_loaded_bytes', { pool: 'pool-1', node: B })).toBe(200)
    expect(m.value('meshnet_shard_loaded_bytes', { pool: 'pool-1', node: A })).toBe(600)
    expect(m.value('meshnet_peer_trust_score', { peer: B })).toBe(0.25)
    expect(m.value('meshnet_beacon_drops_total', { reason: 'bad-signature' })).toBe(5)
    expect(m.value('meshnet_beacon_drops_total')).toBe(7)
    expect(m.value('meshnet_protocol_drops_total', { protocol: 'pool-cert', reason: 'not-a-member' })).toBe(4)
    expect(m.value('meshnet_fetched_bytes_total')).toBe(4096)
    expect(m.value('meshnet_fetch_done_bytes', { model: 'm'.repeat(64) })).toBe(1024)
    expect(m.value('meshnet_fetch_total_bytes')).toBe(8192)
    expect(m.value('meshnet_model_whole', { model: 'm'.repeat(64) })).toBe(0)
    expect(m.value('meshnet_jobs_running')).toBe(2)
    expect(m.value('meshnet_connections')).toBe(3)
    expect(m.family('meshnet_beacon_drops_total')?.type).toBe('COUNTER')
    expect(m.family('meshnet_ring_epoch')?.type).toBe('GAUGE')
  })

  it('reads the source anew at each scrape, once per scrape', async () => {
    let epoch = 1
    const rings = vi.fn(() => [{ ...ring, epoch: epoch++ }])
    const metrics = meshMetrics({ source: { rings }, processMetrics: false })
    expect(parsed((await metrics.render()).body).value('meshnet_ring_epoch')).toBe(1)
    expect(parsed((await metrics.render()).body).value('meshnet_ring_epoch')).toBe(2)
    expect(rings).toHaveBeenCalledTimes(2)
  })

  it('counts finished jobs the way mesh inference-stats totals them', async () => {
    const metrics = meshMetrics({ processMetrics: false })
    metrics.observeJob({
      mode: 'pipeline',
      status: 'completed',
      completionTokens: 12,
      tokensPerSecond: 20,
      timeToFirstTokenMs: 300,
      hopLatencyMs: 2,
      bytesMoved: 1000,
      failovers: 1,
    })
    metrics.observeJob({
      mode: 'pipeline',
      status: 'completed',
      completionTokens: 4,
      bytesMoved: 50,
      failovers: 0,
    })
    // A cancelled job that ended with a result: its failovers count, its tokens and bytes do not.
    metrics.observeJob({
      mode: 'pipeline',
      status: 'cancelled',
      completionTokens: 3,
      bytesMoved: 7,
      failovers: 2,
    })
    metrics.observeJob({ mode: 'pipeline', status: 'failed' })
    const m = parsed((await metrics.render()).body)
    expect(m.value('meshnet_jobs_total')).toBe(4)
    expect(m.value('meshnet_jobs_total', { status: 'completed' })).toBe(2)
    expect(m.value('meshnet_jobs_total', { status: 'failed', mode: 'pipeline' })).toBe(1)
    expect(m.value('meshnet_tokens_generated_total', { mode: 'pipeline' })).toBe(16)
    expect(m.value('meshnet_job_bytes_moved_total')).toBe(1050)
    expect(m.value('meshnet_job_failovers_total')).toBe(3)
    expect(m.observations('meshnet_job_time_to_first_token_seconds')).toBe(1)
    expect(m.observations('meshnet_job_tokens_per_second')).toBe(1)
    expect(m.observations('meshnet_job_hop_latency_seconds')).toBe(1)
    expect(m.observations('meshnet_job_all_reduce_seconds')).toBeUndefined()
    expect(m.family('meshnet_job_hop_latency_seconds')?.metrics[0]?.buckets?.['0.0025']).toBe('1')
  })

  it('observes the all-reduce time of tensor-parallel jobs, in seconds', async () => {
    const metrics = meshMetrics({ processMetrics: false })
    metrics.observeJob({ mode: 'tensor', status: 'completed', completionTokens: 2, allReduceMs: 4 })
    const m = parsed((await metrics.render()).body)
    expect(m.family('meshnet_job_all_reduce_seconds')?.metrics[0]?.buckets).toMatchObject({
      '0.0025': '0',
      '0.005': '1',
      '+Inf': '1',
    })
  })

  it('goes on with the scrape when a source function throws, and says which', async () => {
    const warn = vi.fn()
    const rings = vi.fn(() => {
      throw new Error('ring part stopped')
    })
    const metrics = meshMetrics({
      source: { ...source, rings },
      logger: { warn },
      processMetrics: false,
    })
    const m = parsed((await metrics.render()).body)
    expect(m.value('meshnet_ring_members')).toBeUndefined()
    expect(m.value('meshnet_shard_bytes')).toBeUndefined()
    expect(m.value('meshnet_peer_trust_score', { peer: A })).toBe(0.5)
    expect(warn).toHaveBeenCalledWith(
      expect.objectContaining({ metric: 'meshnet_ring_members', err: 'ring part stopped' }),
      expect.any(String),
    )
    expect(rings).toHaveBeenCalledTimes(1)
  })

  it('leaves out values that are not finite non-negative numbers, and malformed jobs', async () => {
    const warn = vi.fn()
    const metrics = meshMetrics({
      source: {
        trust: () => ({ [A]: Number.NaN, [B]: 0.75 }),
        beaconDrops: () => ({ stale: -3, replayed: Number.POSITIVE_INFINITY, oversized: 1 }),
        // A value of the wrong type from an untyped caller.
        connections: () => 'many' as unknown as number,
      },
      logger: { warn },
      processMetrics: false,
    })
    metrics.observeJob({
      mode: 'pipeline',
      status: 'completed',
      completionTokens: Number.NaN,
      bytesMoved: -5,
    })
    metrics.observeJob({ mode: 'pipeline', status: 'exploded' as 'failed' })
    metrics.observeJob({ mode: '"}\n evil', status: 'failed' })
    const m = parsed((await metrics.render()).body)
    expect(m.value('meshnet_peer_trust_score', { peer: A })).toBeUndefined()
    expect(m.value('meshnet_peer_trust_score', { peer: B })).toBe(0.75)
    expect(m.value('meshnet_beacon_drops_total')).toBe(1)
    expect(m.value('meshnet_connections')).toBeUndefined()
    expect(m.value('meshnet_jobs_total')).toBe(2)
    expect(m.value('meshnet_jobs_total', { mode: 'other', status: 'failed' })).toBe(1)
    expect(m.value('meshnet_tokens_generated_total')).toBe(0)
    expect(m.value('meshnet_job_bytes_moved_total')).toBe(0)
    expect(warn).toHaveBeenCalledTimes(1)
  })

  it('stops a metric at 1000 series and cuts long label values', async () => {
    const many = Object.fromEntries(
      Array.from({ length: 1500 }, (_, i) => [`peer-${i}-${'x'.repeat(200)}`, 0.5]),
    )
    const m = parsed(
      (await meshMetrics({ source: { trust: () => many }, processMetrics: false }).render()).body,
    )
    const samples = m.family('meshnet_peer_trust_score')?.metrics ?? []
    expect(samples).toHaveLength(1000)
    expect(samples.every((s) => (s.labels?.peer?.length ?? 0) === 128)).toBe(true)
  })

  it('keeps a registry of its own, with the process metrics on it unless turned off', async () => {
    const one = meshMetrics({ source })
    const two = meshMetrics({ source, processMetrics: false })
    one.observeJob({ mode: 'single', status: 'completed', completionTokens: 5 })
    const first = parsed((await one.render()).body)
    const second = parsed((await two.render()).body)
    expect(first.value('meshnet_tokens_generated_total')).toBe(5)
    expect(second.value('meshnet_tokens_generated_total')).toBeUndefined()
    expect(first.value('process_cpu_user_seconds_total')).toBeGreaterThan(0)
    expect(second.family('process_cpu_user_seconds_total')).toBeUndefined()
    expect(await globalRegistry.metrics()).not.toContain('meshnet_')
  })

  it('registers no scrape-time metric whose source function is absent', async () => {
    const { body } = await meshMetrics({ source: { connections: () => 1 }, processMetrics: false }).render()
    expect(body).toContain('meshnet_connections 1')
    expect(body).not.toContain('meshnet_ring_members')
    expect(body).not.toContain('meshnet_fetched_bytes_total')
  })
})
