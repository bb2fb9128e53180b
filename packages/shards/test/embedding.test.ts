import { createMeshnetEngine, createWasmKernels, type Kernels } from '@meshnet/engine'
import { planPipeline, planTensor } from '@meshnet/ring'
import { modelDir } from '@meshnet/test-harness'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { runShardedEmbedding, type ShardedEmbeddingOptions } from '../src/embedding.ts'
import { fileSha256 } from '../src/model-hash.ts'
import { readShardModelFacts, type ShardedPlan, type ShardModelFacts } from '../src/plan.ts'
import { type TestMember, TestMesh, type TestPool } from './mesh.ts'

// Embedding sessions over real libp2p nodes on 127.0.0.1 with real pool certificates: the last
// member of a pipeline pools the final hidden states, and the vector must be the one the Meshnet
// engine computes for the whole model, bit for bit, whatever the steps and the members.

const mesh = new TestMesh()
let models: Awaited<ReturnType<typeof modelDir>>
let path: string
let sha256: string
let facts: ShardModelFacts
let kernels: Kernels
let pool: TestPool
let members: TestMember[]
let coordinator: TestMember

/** Inputs of one, several and many steps of 8 positions. */
const INPUTS = [
  [1, 20, 57],
  Array.from({ length: 20 }, (_, i) => 1 + ((i * 31) % 990)),
  Array.from({ length: 41 }, (_, i) => 1 + ((i * 17 + 5) % 990)),
]
let reference: Float32Array[]

beforeAll(async () => {
  models = await modelDir()
  path = await models.model('embedding-q8', {
    layers: 4,
    embd: 256,
    heads: 4,
    kvHeads: 2,
    ff: 512,
    vocab: 1000,
    type: 'Q8_0',
    seed: 3,
  })
  sha256 = await fileSha256(path)
  facts = await readShardModelFacts(path)
  kernels = await createWasmKernels({ threads: 1 })
  const engine = await createMeshnetEngine({ modelPath: path, contextSize: 64, kernels })
  reference = await engine.embed(INPUTS).finally(() => engine.dispose())
  pool = await mesh.pool('embedding')
  members = []
  for (let i = 0; i < 3; i++) members.push(await member())
  coordinator = await mesh.member({ pools: [pool] })
}, 120_000)

afterAll(async () => {
  await mesh.cleanup()
  await kernels?.dispose()
  await models?.cleanup()
})

function member(): Promise<TestMember> {
  return mesh.member({ pools: [pool], kernels, models: (sha) => (sha === sha256 ? path : undefined) })
}

function planOf(on: TestMember[], mode: 'pipeline' | 'tensor' = 'pipeline'): ShardedPlan {
  const ring = on.map((m) => ({ nodeId: m.nodeId, capacityBytes: 2 ** 30 }))
  const withAddrs = <T extends { nodeId: string }>(s: T) => ({
    ...s,
    addrs: on.find((m) => m.nodeId === s.nodeId)!.addrs,
  })
  return mode === 'pipeline'
    ? { mode, shards: planPipeline(ring, facts).map(withAddrs) }
    : { mode, shards: planTensor(ring, facts).map(withAddrs) }
}

function embed(options: Partial<ShardedEmbeddingOptions> & { plan: ShardedPlan }) {
  return runShardedEmbedding({
    node: coordinator.node,
    gate: coordinator.gate,
    poolId: pool.id,
    model: { sha256 },
    inputs: INPUTS,
    pooling: 'mean',
    maxBatch: 8,
    ...options,
  })
}

const bits = (v: Float32Array) => Buffer.from(v.buffer, v.byteOffset, v.byteLength).toString('hex')

function cosine(a: Float32Array, b: Float32Array): number {
  let dot = 0
  for (let i = 0; i < a.length; i++) dot += a[i]! * b[i]!
  return dot
}

describe('embeddings over a pipeline of members', () => {
  it('gives the whole-model vectors of the Meshnet engine, bit for bit, over direct and libp2p links', async () => {
    for (const links of ['direct', 'libp2p'] as const) {
      const result = await embed({ plan: planOf(members), links })
      expect(result.vectors.map(bits)).toEqual(reference.map(bits))
      expect(result.stats).toMatchObject({ members: 3, promptTokens: 64, failovers: [] })
      expect(result.stats.bytes.links).toBeGreaterThan(0)
    }
  })

  it('gives the same bits in one step per input, on one member, and with the coordinator holding a shard', async () => {
    const wide = await embed({ plan: planOf(members), maxBatch: 64 })
    expect(wide.vectors.map(bits)).toEqual(reference.map(bits))
    const alone = await embed({ plan: planOf([members[0]!]) })
    expect(alone.vectors.map(bits)).toEqual(reference.map(bits))
    const self = await mesh.member({
      pools: [pool],
      kernels,
      models: (sha) => (sha === sha256 ? path : undefined),
    })
    const withSelf = await runShardedEmbedding({
      node: self.node,
      gate: self.gate,
      local: self.server,
      poolId: pool.id,
      model: { sha256 },
      inputs: INPUTS,
      pooling: 'mean',
      maxBatch: 8,
      plan: planOf([self, members[1]!]),
    })
    expect(withSelf.vectors.map(bits)).toEqual(reference.map(bits))
    await self.stop()
  })

  it('pools as asked (cls, last), and f16 activations round the vector only a little', async () => {
    const engine = await createMeshnetEngine({ modelPath: path, contextSize: 64, kernels })
    try {
      for (const pooling of ['cls', 'last'] as const) {
        const result = await embed({ plan: planOf(members), pooling })
        // The engine pools as its GGUF says (mean): pool its hidden states by hand as asked.
        const out = await engine.shard.forward({ tokens: INPUTS[2]! }, 0, { logits: 'none' })
        if (out.kind !== 'hidden') throw new Error('kind')
        const normed = engine.shard.outputNorm(out.hidden, out.n)
        const row = pooling === 'cls' ? normed.subarray(0, 256) : normed.subarray((out.n - 1) * 256)
        const unit = row.map((x) => x / Math.hypot(...row))
        expect(cosine(result.vectors[2]!, unit)).toBeGreaterThan(0.999999)
        expect(cosine(result.vectors[2]!, reference[2]!)).toBeLessThan(0.9999)
      }
    } finally {
      await engine.dispose()
    }
    const half = await embed({ plan: planOf(members), activations: 'f16' })
    for (const [i, v] of half.vectors.entries()) expect(cosine(v, reference[i]!)).toBeGreaterThan(0.9999)
  })

  it('runs many inputs in groups of steps, every vector the engine’s', async () => {
    const inputs = Array.from({ length: 40 }, (_, k) => INPUTS[k % 3]!)
    const result = await embed({ plan: planOf(members), inputs })
    expect(result.vectors.map(bits)).toEqual(inputs.map((_, k) => bits(reference[k % 3]!)))
  })

  it('fails over when a member dies mid-run, and still gives the engine’s vectors', async () => {
    const group: TestMember[] = []
    for (let i = 0; i < 3; i++) group.push(await member())
    const victim = group[1]!
    const inputs = Array.from({ length: 60 }, (_, k) => INPUTS[k % 3]!)
    const replans: string[][] = []
    const running = embed({
      plan: planOf(group),
      inputs,
      replan: (dead) => {
        replans.push(dead)
        return planOf(group.filter((m) => !dead.includes(m.nodeId)))
      },
    })
    // Once the victim has run steps of this session.
    for (let i = 0; i < 400 && victim.server!.stats().steps === 0; i++) {
      await new Promise((resolve) => setTimeout(resolve, 5))
    }
    await victim.kill()
    const result = await running
    expect(replans).toEqual([[victim.nodeId]])
    expect(result.stats.failovers).toHaveLength(1)
    expect(result.stats.failovers[0]).toMatchObject({ deadNodeIds: [victim.nodeId] })
    expect(result.plan.shards.map((s) => s.nodeId)).not.toContain(victim.nodeId)
    expect(result.vectors.map(bits)).toEqual(inputs.map((_, k) => bits(reference[k % 3]!)))
    for (const m of group) await m.stop()
  })

  it('refuses a tensor-parallel plan', async () => {
    await expect(embed({ plan: planOf(members, 'tensor') })).rejects.toMatchObject({
      name: 'ShardedRunError',
      message: expect.stringMatching(/pipeline plan/),
    })
  })
})
