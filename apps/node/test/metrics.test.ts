import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import {
  type AgentProcess,
  agentRequest,
  beaconPort,
  createModel,
  eventually,
  runMesh,
  startAgentProcess,
} from '@meshnet/test-harness'
import parsePrometheusTextFormat from 'parse-prometheus-text-format'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { converged, poolOf } from './mesh-fixture.ts'

// `GET /metrics` and `GET /health` on the API port of agent A, in a ring of real `mesh start`
// processes on loopback: a fourth member that serves no model keeps the ring from planning (503,
// and /health says why) until it stops; then the three load their shards (200), a pipeline job runs
// through `mesh inference`, and the scrape, parsed by a Prometheus text-format parser, must say
// what `mesh inference-stats` and `mesh ring-status` say.

const KEY = 'metrics-test-key'
let root: string
let poolId: string
let dir: (name: string) => string
let base: string
const agents = new Map<string, AgentProcess>()

const get = (path: string, key: string | null = KEY) =>
  fetch(`${base}${path}`, { headers: key === null ? {} : { authorization: `Bearer ${key}` } })

const mesh = async <T>(...args: string[]): Promise<T> => {
  const result = await runMesh([...args, '--json', '--data-dir', dir('A')])
  expect(result.code, result.stderr).toBe(0)
  return JSON.parse(result.stdout) as T
}

/** The scrape parsed back: the summed value of the samples of `name` whose labels include `labels`. */
async function scrape() {
  const response = await get('/metrics')
  expect(response.status).toBe(200)
  expect(response.headers.get('content-type')).toMatch(/^text\/plain; version=0\.0\.4/)
  const families = parsePrometheusTextFormat(await response.text())
  const family = (name: string) => families.find((f) => f.name === name)
  return {
    family,
    value(name: string, labels: Record<string, string> = {}): number | undefined {
      const samples = (family(name)?.metrics ?? []).filter((s) =>
        Object.entries(labels).every(([k, v]) => s.labels?.[k] === v),
      )
      return samples.length === 0 ? undefined : samples.reduce((n, s) => n + Number(s.value), 0)
    },
  }
}

interface Health {
  ready: boolean
  missing: string[]
  rings: Array<{ poolId: string; epoch: number; converged: boolean; ready: boolean; members: number }>
}

beforeAll(async () => {
  root = await mkdtemp(join(tmpdir(), 'meshnet-metrics-'))
  const model = join(root, 'model.gguf')
  await createModel(model, { layers: 6, embd: 128, heads: 4, vocab: 300, seed: 5 })
  const port = beaconPort()
  const base_ = ['--local-only', '--beacon-port', port, '--beacon-interval', '300']
  const args = [...base_, '--model', model, '--threads', '1']
  const made = await poolOf(root, ['A', 'B', 'C', 'D'], port, [...args, '--api-port', '0', '--api-key', KEY])
  poolId = made.pool.poolId
  dir = made.dir
  agents.set('A', made.admin)
  agents.set('B', await startAgentProcess(dir('B'), args))
  agents.set('C', await startAgentProcess(dir('C'), args))
  // D is a member that serves no model: while it is in the ring, no plan holds the model.
  agents.set('D', await startAgentProcess(dir('D'), base_))
  const status = await mesh<{ api: { port: number } }>('status')
  base = `http://127.0.0.1:${status.api.port}`
}, 90_000)

afterAll(async () => {
  await Promise.all([...agents.values()].map((a) => a.stop()))
  await rm(root, { recursive: true, force: true })
})

describe('/metrics and /health on the agent’s API port', () => {
  it('wants the API key', async () => {
    expect((await get('/metrics', null)).status).toBe(401)
    expect((await get('/health', 'wrong')).status).toBe(401)
  })

  it('answers 503 naming the ring while a member keeps it from planning, 200 once the shards are loaded', async () => {
    await converged(['A', 'B', 'C', 'D'].map(dir), poolId, 4, 30_000)
    const blocked = await get('/health')
    expect(blocked.status).toBe(503)
    const body = (await blocked.json()) as Health
    expect(body.ready).toBe(false)
    expect(body.missing).toEqual([
      `ring ${poolId} has no plan: not every member serves the same model (or some still wait for its manifest)`,
    ])
    expect(body.rings).toMatchObject([{ poolId, converged: true, ready: false, members: 4 }])

    await agents.get('D')!.stop()
    await converged(['A', 'B', 'C'].map(dir), poolId, 3, 30_000)
    const ready = await eventually(
      'agent A to report itself ready',
      async () => {
        const response = await get('/health')
        return response.status === 200 ? ((await response.json()) as Health) : undefined
      },
      30_000,
    )
    expect(ready).toMatchObject({ ready: true, missing: [], rings: [{ poolId, ready: true, members: 3 }] })
  }, 90_000)

  it('counts the jobs, tokens, failovers and bytes mesh inference-stats counts, and the ring mesh ring-status shows', async () => {
    const job = await mesh<{ tokens: number[]; mode: string; stats: { bytesMoved: number } }>(
      'inference',
      '--prompt',
      'The mesh splits the model',
      '--max-tokens',
      '8',
      '--mode',
      'pipeline',
    )
    expect(job.mode).toBe('pipeline')
    const { totals } = await mesh<{
      totals: { jobs: number; completed: number; tokens: number; failovers: number; bytesMoved: number }
    }>('inference-stats')
    const ring = await mesh<{
      epoch: number
      members: Array<{ nodeId: string; shard: { bytes: number; loadedBytes: number } | null }>
    }>('ring-status', '--pool-id', poolId)
    const m = await scrape()

    expect(totals).toMatchObject({ jobs: 1, completed: 1, tokens: job.tokens.length })
    expect(m.value('meshnet_jobs_total')).toBe(totals.jobs)
    expect(m.value('meshnet_jobs_total', { mode: 'pipeline', status: 'completed' })).toBe(totals.completed)
    expect(m.value('meshnet_tokens_generated_total')).toBe(totals.tokens)
    expect(m.value('meshnet_job_failovers_total')).toBe(totals.failovers)
    expect(totals.bytesMoved).toBeGreaterThan(0)
    expect(m.value('meshnet_job_bytes_moved_total')).toBe(totals.bytesMoved)
    expect(m.family('meshnet_job_time_to_first_token_seconds')?.metrics[0]?.buckets?.['+Inf']).toBe('1')

    expect(m.value('meshnet_ring_members', { pool: poolId })).toBe(ring.members.length)
    expect(m.value('meshnet_ring_epoch', { pool: poolId })).toBe(ring.epoch)
    expect(m.value('meshnet_ring_ready', { pool: poolId })).toBe(1)
    for (const member of ring.members) {
      expect(m.value('meshnet_shard_bytes', { pool: poolId, node: member.nodeId })).toBe(member.shard!.bytes)
      expect(m.value('meshnet_shard_loaded_bytes', { pool: poolId, node: member.nodeId })).toBe(
        member.shard!.loadedBytes,
      )
    }
    // Trust as `mesh pool-peers` shows it, for each other member.
    const peers = await agentRequest<{ peers: Array<{ nodeId: string; online: boolean; trust: number }> }>(
      dir('A'),
      `/pools/${poolId}/peers`,
    )
    for (const peer of peers.peers.filter((p) => p.online)) {
      expect(m.value('meshnet_peer_trust_score', { peer: peer.nodeId })).toBe(peer.trust)
    }
    expect(m.value('meshnet_jobs_running')).toBe(0)
    expect(m.value('process_resident_memory_bytes')).toBeGreaterThan(0)
  }, 60_000)
})
