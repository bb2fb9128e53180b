import { mkdtemp, readFile, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { readShardModelFacts } from '@meshnet/shards'
import {
  type AgentProcess,
  agentRequest,
  beaconPort,
  createModel,
  eventually,
  runMesh,
  startAgentProcess,
} from '@meshnet/test-harness'
import { afterAll, afterEach, describe, expect, it } from 'vitest'
import { converged, llamaCppTokens, offerFor, poolOf, ringStatus, streamAndKill } from './mesh-fixture.ts'

// Rings of `mesh start` processes on loopback whose members each offer only part of what a model
// needs (`--memory`): plans that fit every member, survivors that grow their ranges on failover
// within their offer, a ring too small refused before anything loads, and a member holding more
// than one 4 GiB WebAssembly memory.

const MiB = 2 ** 20
const PROMPT = 'A ring of laptops holds the model'
const roots: string[] = []
const agents: AgentProcess[] = []

afterEach(async () => {
  await Promise.all(agents.splice(0).map((a) => a.stop()))
  for (const root of roots.splice(0)) await rm(root, { recursive: true, force: true })
})

afterAll(async () => {
  await Promise.all(agents.splice(0).map((a) => a.kill()))
})

interface Ring {
  poolId: string
  dir: (name: string) => string
  byName: Map<string, AgentProcess>
  /** What every agent of the ring is started with, but `--memory`. */
  args: string[]
}

/** Agents named by `memory`'s keys, each offering that many MiB, in one pool, converged. */
async function ringOf(
  root: string,
  model: string,
  memory: Record<string, number>,
  /** Data dirs that join the pool too, to be started by the test later. */
  spare: readonly string[] = [],
): Promise<Ring> {
  const port = beaconPort()
  const common = ['--beacon-interval', '300', '--model', model, '--threads', '1']
  const names = Object.keys(memory)
  const made = await poolOf(root, [...names, ...spare], port, [
    ...common,
    '--memory',
    String(memory[names[0]!]),
  ])
  agents.push(made.admin)
  const byName = new Map([[names[0]!, made.admin]])
  for (const name of names.slice(1)) {
    const agent = await startAgentProcess(made.dir(name), [
      '--local-only',
      '--beacon-port',
      port,
      ...common,
      '--memory',
      String(memory[name]),
    ])
    agents.push(agent)
    byName.set(name, agent)
  }
  await converged(names.map(made.dir), made.pool.poolId, names.length, 60_000)
  return {
    poolId: made.pool.poolId,
    dir: made.dir,
    byName,
    args: ['--local-only', '--beacon-port', port, ...common],
  }
}

/** Peak resident memory of a process so far (VmHWM), in bytes. */
async function peakRss(agent: AgentProcess): Promise<number> {
  const status = await readFile(`/proc/${agent.process.pid}/status`, 'utf8')
  const kb = /VmHWM:\s+(\d+) kB/.exec(status)
  if (kb === null) throw new Error('no VmHWM in /proc/<pid>/status')
  return Number(kb[1]) * 1024
}

async function ready(ring: Ring, name: string) {
  return eventually(
    'every member to load its shard',
    async () => {
      const status = await ringStatus(ring.dir(name), ring.poolId)
      return status.ready ? status : undefined
    },
    120_000,
  )
}

async function infer(ring: Ring, name: string, ...args: string[]) {
  const result = await runMesh([
    'inference',
    '--prompt',
    PROMPT,
    '--json',
    '--data-dir',
    ring.dir(name),
    ...args,
  ])
  return { ...result, job: result.code === 0 ? (JSON.parse(result.stdout) as JobJson) : undefined }
}

interface JobJson {
  tokens: number[]
  text: string
  mode: string
  stats: { failovers: number; members: string[] }
}

describe('big models over a ring of agents', () => {
  it('one member holds more than 4 GiB of a two-member pipeline, with llama.cpp’s tokens on the whole file', async () => {
    const root = await mkdtemp(join(tmpdir(), 'meshnet-big-'))
    roots.push(root)
    const model = join(root, 'model.gguf')
    // 26 layers of ~188 MB of Q8_0 (Llama 2 7B's width, fewer layers): 4.9 GB in all.
    await createModel(model, {
      layers: 26,
      embd: 4096,
      heads: 32,
      kvHeads: 8,
      ff: 11008,
      vocab: 8000,
      type: 'Q8_0',
      fill: 'tiled',
      seed: 7,
    })
    const facts = await readShardModelFacts(model)
    const reference = await llamaCppTokens(model, PROMPT, 8)
    // A has room for 24 layers (4.5 GB with the embedding), B for two and the head.
    const ring = await ringOf(root, model, { A: offerFor(facts, 24), B: offerFor(facts, 2) })
    const planned = await ready(ring, 'A')
    const { nodeId: a } = await agentRequest<{ nodeId: string }>(ring.dir('A'), '/status')
    const layers = planned.members.find((m) => m.nodeId === a)!.shard!.layers
    expect(layers[1] - layers[0]).toBe(24)
    const held = await agentRequest<{
      jobs: { shards: { weightBytes: number; segments: Array<{ layers: [number, number] }> } }
    }>(ring.dir('A'), '/status')
    expect(held.jobs.shards.weightBytes).toBeGreaterThan(4 * 2 ** 30)
    // More than one kernel memory: each segment has its own.
    expect(held.jobs.shards.segments.length).toBeGreaterThan(1)
    const job = await infer(ring, 'A', '--max-tokens', '8')
    expect(job.code, job.stderr).toBe(0)
    expect(job.job!.mode).toBe('pipeline')
    expect(new Set(job.job!.stats.members).size).toBe(2)
    expect(job.job!.tokens).toEqual(reference)
  }, 600_000)

  it('refuses a ring too small before loading anything, naming what is short and what each member offers', async () => {
    const root = await mkdtemp(join(tmpdir(), 'meshnet-small-ring-'))
    roots.push(root)
    const model = join(root, 'model.gguf')
    await createModel(model, {
      layers: 8,
      embd: 512,
      heads: 8,
      kvHeads: 4,
      ff: 1536,
      vocab: 4000,
      type: 'Q8_0',
    })
    const facts = await readShardModelFacts(model)
    // Each offers room for two of the eight layers.
    const offer = offerFor(facts, 2)
    const ring = await ringOf(root, model, { A: offer, B: offer })
    const status = await eventually(
      'the ring to report its plan problem',
      async () => {
        const s = await ringStatus(ring.dir('A'), ring.poolId)
        return s.planProblem ? s : undefined
      },
      30_000,
    )
    expect(status.planProblem).toMatch(
      /the model needs about \d+ MiB \(weights \d+ MiB, KV cache \d+ MiB for \d+ positions, \d+ MiB per member for the process\) but the ring offers \d+ MiB, \d+ MiB short/,
    )
    expect(status.planProblem).toMatch(new RegExp(`offers ${offer} MiB \\(room for about \\d of 8 layers\\)`))
    expect(status.ready).toBe(false)
    const job = await infer(ring, 'A', '--max-tokens', '4')
    expect(job.code).not.toBe(0)
    expect(`${job.stdout}${job.stderr}`).toMatch(/ring offers \d+ MiB, \d+ MiB short/)
    // Nothing was loaded, on either member.
    for (const name of ['A', 'B']) {
      const s = await agentRequest<{ jobs: { shards: { segments: unknown[]; weightBytes: number } } }>(
        ring.dir(name),
        '/status',
      )
      expect(s.jobs.shards.segments).toEqual([])
      expect(s.jobs.shards.weightBytes).toBe(0)
    }
  }, 120_000)

  it('SIGKILL of a member whose survivors must grow: the same tokens, and no survivor above its offer', async () => {
    const root = await mkdtemp(join(tmpdir(), 'meshnet-grow-'))
    roots.push(root)
    const model = join(root, 'model.gguf')
    // ~600 MB of Q8_0: 12 layers of ~48 MB, so weights, not the process, make up a member's memory.
    await createModel(model, {
      layers: 12,
      embd: 2048,
      heads: 16,
      kvHeads: 4,
      ff: 5632,
      vocab: 8000,
      type: 'Q8_0',
      fill: 'tiled',
    })
    const facts = await readShardModelFacts(model)
    // Room for six layers each: three members take four each; two survivors must take six each.
    const offer = offerFor(facts, 6)
    // A and B first: six layers each. Then C joins and the plan changes to four each, so every
    // member's peak below covers a change of plan (its old shard freed, not held beside the new).
    const ring = await ringOf(root, model, { A: offer, B: offer }, ['C'])
    expect((await ready(ring, 'A')).members.map((m) => m.shard!.layers[1] - m.shard!.layers[0])).toEqual([
      6, 6,
    ])
    const c = await startAgentProcess(ring.dir('C'), [...ring.args, '--memory', String(offer)])
    agents.push(c)
    ring.byName.set('C', c)
    await converged(['A', 'B', 'C'].map(ring.dir), ring.poolId, 3, 60_000)
    const planned = await ready(ring, 'A')
    expect(planned.members.map((m) => m.shard!.layers[1] - m.shard!.layers[0])).toEqual([4, 4, 4])
    const uninterrupted = await infer(ring, 'A', '--max-tokens', '24')
    expect(uninterrupted.code, uninterrupted.stderr).toBe(0)
    expect(uninterrupted.job!.mode).toBe('pipeline')
    // The victim: the member after A in ring order (not A, which coordinates).
    const { nodeId: self } = await agentRequest<{ nodeId: string }>(ring.dir('A'), '/status')
    const order = planned.members.map((m) => m.nodeId)
    const names = new Map<string, string>()
    for (const name of ['A', 'B', 'C']) {
      names.set((await agentRequest<{ nodeId: string }>(ring.dir(name), '/status')).nodeId, name)
    }
    const victimName = names.get(order.find((id) => id !== self)!)!
    const { out, code, err, killed } = await streamAndKill(
      ring.dir('A'),
      ['--prompt', PROMPT, '--max-tokens', '24'],
      ring.byName.get(victimName)!,
    )
    expect(code, err).toBe(0)
    expect(killed).toBe(true)
    expect(out.trimEnd()).toBe(uninterrupted.job!.text.trimEnd())
    const { jobs: list } = await agentRequest<{ jobs: Array<{ failovers: number; status: string }> }>(
      ring.dir('A'),
      '/jobs',
    )
    expect(list[0]).toMatchObject({ status: 'completed' })
    expect(list[0]!.failovers).toBeGreaterThanOrEqual(1)
    const survivors = ['A', 'B', 'C'].filter((n) => n !== victimName)
    for (const name of survivors) {
      const peak = await peakRss(ring.byName.get(name)!)
      expect(peak, `${name}'s peak RSS against its ${offer} MiB offer`).toBeLessThanOrEqual(offer * MiB)
      // It keeps the layers it had and took only the ones it gained: no layer held twice.
      const { jobs } = await agentRequest<{
        jobs: { shards: { segments: Array<{ layers: [number, number] }> } }
      }>(ring.dir(name), '/status')
      const layers = jobs.shards.segments.flatMap((s) =>
        Array.from({ length: s.layers[1] - s.layers[0] }, (_, k) => s.layers[0] + k),
      )
      expect(new Set(layers).size).toBe(layers.length)
      expect(layers.length).toBe(6)
    }
  }, 300_000)
})
