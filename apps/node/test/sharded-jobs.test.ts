import { mkdtemp, rm, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { createMeshNode } from '@meshnet/discovery'
import { generateIdentity } from '@meshnet/identity'
import { JobFailedError, requestJob } from '@meshnet/protocols'
import {
  type AgentProcess,
  agentRequest,
  createModel,
  eventually,
  runMesh,
  startAgentProcess,
} from '@meshnet/test-harness'
import { multiaddr } from '@multiformats/multiaddr'
import { Ajv } from 'ajv'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { DEMO_MODEL } from '../src/commands/demo.ts'
import { converged, ringOfThree, ringStatus, streamAndKill } from './mesh-fixture.ts'

// Three `mesh start` processes on loopback in one pool, each holding its own copy of the same
// generated model; jobs go through `mesh inference` (the real CLI) to agent A, which runs them on
// the ring. The reference is `mesh inference --local --engine llama-cpp`: llama.cpp, one node.

let root: string
let poolId: string
let dir: (name: string) => string
const agents = new Map<string, AgentProcess>()
const PROMPT = 'The mesh splits the model'
/** A schema whose JSON takes dozens of tokens, so that a member dies while it is being written. */
const FAILOVER_SCHEMA = {
  type: 'object',
  properties: {
    title: { type: 'string', minLength: 60, maxLength: 80 },
    tags: {
      type: 'array',
      items: { type: 'string', minLength: 8, maxLength: 12 },
      minItems: 3,
      maxItems: 3,
    },
    score: { type: 'integer' },
    done: { type: 'boolean' },
  },
  required: ['title', 'tags', 'score', 'done'],
  additionalProperties: false,
}
let args: string[]

interface JobJson {
  jobId: string
  tokens: number[]
  text: string
  mode: string
  stopReason: string
  stats: {
    failovers: number
    members: string[]
    bytesMoved: number
    hopLatencyMs: number
    tokensPerSecond: number
  }
}

const infer = async (...args: string[]): Promise<JobJson> => {
  const result = await runMesh(['inference', '--prompt', PROMPT, '--json', '--data-dir', dir('A'), ...args])
  expect(result.code, result.stderr).toBe(0)
  return JSON.parse(result.stdout) as JobJson
}

beforeAll(async () => {
  root = await mkdtemp(join(tmpdir(), 'meshnet-jobs-'))
  const model = join(root, 'model.gguf')
  // The demo's built-in model: F32, so every engine's greedy tokens agree exactly.
  await createModel(model, DEMO_MODEL)
  const ring = await ringOfThree(root, model)
  poolId = ring.poolId
  dir = ring.dir
  args = ring.args
  for (const [name, agent] of ring.agents) agents.set(name, agent)
}, 120_000)

afterAll(async () => {
  await Promise.all([...agents.values()].map((a) => a.stop()))
  await rm(root, { recursive: true, force: true })
})

/** The weight segments an agent's shard server holds (`GET /status`). */
async function segmentsOf(name: string): Promise<Array<{ layers: [number, number]; pinned: boolean }>> {
  const status = await agentRequest<{
    jobs: { shards: { segments: Array<{ layers: [number, number]; pinned: boolean }> } }
  }>(dir(name), '/status')
  return status.jobs.shards.segments
}

describe('jobs on a ring of three agents', () => {
  let reference: number[]
  it('loads every member’s shard as soon as the ring agrees on a plan, before any job', async () => {
    const ready = await eventually(
      'the ring to report every shard loaded',
      async () => {
        const status = await ringStatus(dir('A'), poolId)
        return status.ready ? status : undefined
      },
      60_000,
    )
    expect(ready.members.map((m) => m.shard?.load)).toEqual(['ready', 'ready', 'ready'])
    for (const m of ready.members) {
      expect(m.shard!.bytes).toBeGreaterThan(0)
      expect(m.shard!.loadedBytes).toBe(m.shard!.bytes)
    }
    // `mesh ring-status` prints each member's offer, shard bytes and load state.
    const shown = await runMesh(['ring-status', '--pool-id', poolId, '--data-dir', dir('B')])
    expect(shown.code, shown.stderr).toBe(0)
    expect(shown.stdout).toMatch(/converged, ready/)
    expect(shown.stdout.match(/offers \d+ MiB {2}layers \d+–\d+, \d+ MiB, ready/g)).toHaveLength(3)
    for (const name of ['A', 'B', 'C']) {
      const segments = await segmentsOf(name)
      expect(segments.length).toBeGreaterThan(0)
      expect(segments.every((s) => s.pinned)).toBe(true)
    }
  }, 90_000)

  it('pipeline and tensor parallel give the tokens llama.cpp gives on one node', async () => {
    const local = await runMesh([
      'inference',
      '--local',
      '--engine',
      'llama-cpp',
      '--model',
      join(root, 'model.gguf'),
      '--prompt',
      PROMPT,
      '--max-tokens',
      '24',
      '--threads',
      '1',
      '--json',
    ])
    expect(local.code, local.stderr).toBe(0)
    reference = (JSON.parse(local.stdout) as { tokens: number[] }).tokens
    expect(reference).toHaveLength(24)

    const held = await Promise.all(['A', 'B', 'C'].map((name) => segmentsOf(name)))
    const pipeline = await infer('--mode', 'pipeline', '--max-tokens', '24')
    expect(pipeline.mode).toBe('pipeline')
    // The job ran on the preloaded weights: no member loaded anything for it.
    expect(await Promise.all(['A', 'B', 'C'].map((name) => segmentsOf(name)))).toEqual(held)
    expect(pipeline.tokens).toEqual(reference)
    expect(new Set(pipeline.stats.members).size).toBe(3)
    expect(pipeline.stats.bytesMoved).toBeGreaterThan(0)

    const tensor = await infer('--mode', 'tensor', '--max-tokens', '24')
    expect(tensor.mode).toBe('tensor')
    expect(tensor.tokens).toEqual(reference)
    expect(tensor.text).toBe(pipeline.text)
  }, 120_000)

  it('auto runs the whole model on one node’s llama.cpp when it fits', async () => {
    const auto = await infer('--max-tokens', '24')
    expect(auto.mode).toBe('single')
    expect(auto.tokens).toEqual(reference)
  }, 60_000)

  it('keeps per-job figures in mesh_state.db and raises the trust of members that did shard work', async () => {
    const stats = await runMesh(['inference-stats', '--json', '--data-dir', dir('A')])
    expect(stats.code, stats.stderr).toBe(0)
    const { jobs, totals } = JSON.parse(stats.stdout) as {
      jobs: Array<{
        mode: string
        status: string
        tokens: number
        bytesMoved: number
        tokensPerSecond: number
      }>
      totals: { completed: number; tokens: number }
    }
    expect(jobs.map((j) => j.mode).sort()).toEqual(['pipeline', 'single', 'tensor'])
    expect(jobs.every((j) => j.status === 'completed' && j.tokens === 24 && j.tokensPerSecond > 0)).toBe(true)
    expect(jobs.find((j) => j.mode === 'tensor')!.bytesMoved).toBeGreaterThan(
      jobs.find((j) => j.mode === 'pipeline')!.bytesMoved,
    )
    expect(totals).toMatchObject({ completed: 3, tokens: 72 })
    const peers = await agentRequest<{ peers: Array<{ nodeId: string; trust: number }> }>(
      dir('A'),
      `/pools/${poolId}/peers`,
    )
    expect(peers.peers).toHaveLength(2)
    for (const peer of peers.peers) expect(peer.trust).toBeGreaterThan(0.5)
  }, 60_000)

  it('SIGKILL of a member mid-generation, three times over: every job ends with the tokens of an uninterrupted run, constrained output still valid for its schema', async () => {
    // The last round's output is constrained to a JSON Schema: the grammar's state lives in the
    // coordinator's sampler, so the replayed tokens neither break nor change it.
    const schemaFile = join(root, 'schema.json')
    await writeFile(schemaFile, JSON.stringify(FAILOVER_SCHEMA))
    const uninterrupted = {
      pipeline: await infer('--mode', 'pipeline', '--max-tokens', '64'),
      tensor: await infer('--mode', 'tensor', '--max-tokens', '64'),
      schema: await infer('--mode', 'pipeline', '--max-tokens', '96', '--schema', schemaFile),
    }
    const valid = new Ajv({ strict: false }).compile(FAILOVER_SCHEMA)
    expect(valid(JSON.parse(uninterrupted.schema.text)), uninterrupted.schema.text).toBe(true)
    const rounds = [
      ['C', 'pipeline', []],
      ['B', 'tensor', []],
      ['C', 'schema', ['--max-tokens', '96', '--schema', schemaFile]],
    ] as const
    for (const [victim, round, extra] of rounds) {
      const mode = round === 'schema' ? 'pipeline' : round
      // Bring back the members killed in earlier rounds, so that every round starts from three.
      for (const [name, agent] of agents) {
        if (agent.process.exitCode !== null || agent.process.signalCode !== null) {
          await rm(join(dir(name), 'agent.json'), { force: true })
          agents.set(name, await startAgentProcess(dir(name), args))
        }
      }
      await converged([dir('A'), dir('B'), dir('C')], poolId, 3, 60_000)
      const { out, killed, code, err } = await streamAndKill(
        dir('A'),
        ['--prompt', PROMPT, '--max-tokens', '64', '--mode', mode, ...extra],
        agents.get(victim)!,
      )
      expect(code, err).toBe(0)
      expect(killed).toBe(true)
      expect(out.trimEnd()).toBe(uninterrupted[round].text.trimEnd())
      if (round === 'schema') expect(valid(JSON.parse(out)), out).toBe(true)
      const jobs = await agentRequest<{
        jobs: Array<{ failovers: number; status: string; tokens: number; mode: string }>
      }>(dir('A'), '/jobs')
      expect(jobs.jobs[0]).toMatchObject({
        status: 'completed',
        tokens: uninterrupted[round].tokens.length,
        mode,
      })
      expect(jobs.jobs[0]!.failovers).toBeGreaterThanOrEqual(1)
    }
  }, 240_000)

  it('on the two members left, pipeline and tensor parallel still give llama.cpp’s tokens', async () => {
    await converged([dir('A'), dir('B')], poolId, 2, 60_000)
    for (const mode of ['pipeline', 'tensor']) {
      const job = await infer('--mode', mode, '--max-tokens', '24')
      expect(job.mode).toBe(mode)
      expect(new Set(job.stats.members).size).toBe(2)
      expect(job.tokens).toEqual(reference)
    }
  }, 120_000)

  it('a peer outside the pool cannot run a job, and a member-only node refuses jobs without a pool', async () => {
    const ring = await ringStatus(dir('A'), poolId)
    const { nodeId } = await agentRequest<{ nodeId: string }>(dir('A'), '/status')
    const a = ring.members.find((m) => m.nodeId === nodeId)
    const stranger = await createMeshNode({
      identity: generateIdentity(),
      localOnly: true,
      listen: ['/ip4/127.0.0.1/tcp/0'],
      websockets: false,
      dhtMode: 'off',
    })
    try {
      const target = a!.addresses.map((addr) => multiaddr(addr))
      const ask = async (request: Parameters<typeof requestJob>[2]) => {
        const job = requestJob(stranger, target, request)
        try {
          await job.next()
          return undefined
        } catch (err) {
          return err as JobFailedError
        }
      }
      const withPool = await ask({ poolId, prompt: 'x', maxTokens: 2 })
      expect(withPool).toBeInstanceOf(JobFailedError)
      expect(withPool!.code).toBe('ERR_POOL_ACCESS')
      const withoutPool = await ask({ prompt: 'x', maxTokens: 2 })
      expect(withoutPool!.code).toBe('ERR_POOL_ACCESS')
      expect(withoutPool!.message).toMatch(/jobs for its pools only/)
    } finally {
      await stranger.stop()
    }
    const status = await agentRequest<{ jobs: { refusedPool: number; refusedPublic: number } }>(
      dir('A'),
      '/status',
    )
    expect(status.jobs.refusedPool).toBeGreaterThanOrEqual(1)
    expect(status.jobs.refusedPublic).toBeGreaterThanOrEqual(1)
  }, 60_000)
})

/** Streams a job from A through the CLI and SIGKILLs `victim` as soon as the first text arrives. */
