import { modelDir } from '@meshnet/test-harness'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { createMeshnetEngine, type MeshnetEngine } from '../src/meshnet-engine.ts'
import { EmbeddingPooler, l2Normalize } from '../src/model/embedding.ts'
import { loadShard } from '../src/model/shard.ts'
import { StepBatcher } from '../src/model/step-batcher.ts'
import { Mt19937 } from '../src/sampling.ts'

// Embeddings pool the final hidden states (after the output norm). A ring computes them in steps on
// its last member; these pin that steps and shard boundaries change no bit of the vector.

function rows(n: number, embd: number, seed: number): Float32Array {
  const rng = new Mt19937(seed)
  return Float32Array.from({ length: n * embd }, () => (rng.next() / 2 ** 32) * 2 - 1)
}

describe('EmbeddingPooler', () => {
  it('gives the same bits whatever the steps the positions come in', () => {
    const embd = 48
    const all = rows(37, embd, 1)
    for (const pooling of ['mean', 'cls', 'last'] as const) {
      const whole = new EmbeddingPooler(pooling, embd)
      whole.add(all, 37)
      const stepped = new EmbeddingPooler(pooling, embd)
      for (const [from, to] of [
        [0, 1],
        [1, 9],
        [9, 32],
        [32, 37],
      ] as const) {
        stepped.add(all.subarray(from * embd, to * embd), to - from)
      }
      expect(stepped.positions).toBe(37)
      expect([...stepped.vector()]).toEqual([...whole.vector()])
    }
  })

  it('pools the mean, the first or the last position, and normalizes to unit length', () => {
    const embd = 8
    const all = rows(5, embd, 2)
    const mean = new Float64Array(embd)
    for (let i = 0; i < 5; i++) for (let j = 0; j < embd; j++) mean[j]! += all[i * embd + j]! / 5
    const pooled = (pooling: 'mean' | 'cls' | 'last') => {
      const p = new EmbeddingPooler(pooling, embd)
      p.add(all, 5)
      return p.vector()
    }
    const close = (a: Float32Array, b: ArrayLike<number>) => {
      const unit = l2Normalize(b)
      for (let j = 0; j < embd; j++) expect(a[j]).toBeCloseTo(unit[j]!, 6)
    }
    close(pooled('mean'), mean)
    close(pooled('cls'), all.subarray(0, embd))
    close(pooled('last'), all.subarray(4 * embd))
    const v = pooled('mean')
    expect(Math.hypot(...v)).toBeCloseTo(1, 6)
  })

  it('starts a new input on reset, and refuses a vector of nothing', () => {
    const p = new EmbeddingPooler('mean', 4)
    expect(() => p.vector()).toThrow(/at least one position/)
    p.add(Float32Array.of(1, 2, 3, 4), 1)
    p.reset()
    p.add(Float32Array.of(0, 0, 3, 4), 1)
    expect([...p.vector()]).toEqual([0, 0, Math.fround(0.6), Math.fround(0.8)])
    expect([...l2Normalize([0, 0])]).toEqual([0, 0])
  })
})

describe('final hidden states of a shard with the head', () => {
  let models: Awaited<ReturnType<typeof modelDir>>
  let path: string
  let engine: MeshnetEngine

  beforeAll(async () => {
    models = await modelDir()
    path = await models.model('embed-shards', {
      layers: 4,
      embd: 128,
      heads: 4,
      kvHeads: 2,
      ff: 256,
      vocab: 600,
      type: 'Q8_0',
    })
    engine = await createMeshnetEngine({ modelPath: path, contextSize: 128, threads: 1, maxBatch: 16 })
  })

  afterAll(async () => {
    await engine?.dispose()
    await models?.cleanup()
  })

  const TOKENS = Array.from({ length: 41 }, (_, i) => 1 + ((i * 53) % 590))

  it("logits 'none' gives the hidden states a split pipeline gives, and the logits of their output norm", async () => {
    const { kernels } = engine
    const first = await loadShard({ path, kernels, layers: [0, 2], contextSize: 64, maxBatch: 8 })
    const last = await loadShard({ path, kernels, layers: [2, 4], contextSize: 64, maxBatch: 8 })
    try {
      const batcher = new StepBatcher()
      const whole = await batcher.forwardChunked(engine.shard, { tokens: TOKENS }, 0, {
        chunk: 16,
        logits: 'none',
      })
      const all = await engine.shard.forward({ tokens: TOKENS }, 0, { logits: 'all' })
      const mid = await batcher.forwardChunked(first, { tokens: TOKENS }, 0, { chunk: 8 })
      if (mid.kind !== 'hidden' || whole.kind !== 'hidden' || all.kind !== 'logits') throw new Error('kinds')
      const end = await batcher.forwardChunked(last, { hidden: mid.hidden }, 0, { chunk: 8, logits: 'none' })
      if (end.kind !== 'hidden') throw new Error('kind')
      expect(end.n).toBe(TOKENS.length)
      expect(Buffer.from(end.hidden.buffer).equals(Buffer.from(whole.hidden.buffer))).toBe(true)
      const normed = last.outputNorm(end.hidden, end.n)
      expect([...normed]).toEqual([...engine.shard.outputNorm(whole.hidden, whole.n)])
      expect([...engine.shard.logits(whole.hidden, whole.n)]).toEqual([...all.logits])
      expect(() => first.outputNorm(mid.hidden, mid.n)).toThrow(/no output norm/)
      batcher.close()
    } finally {
      await first.dispose()
      await last.dispose()
    }
  })

  it('the engine embeds what pooling those states by hand gives, bit for bit', async () => {
    const out = await engine.shard.forward({ tokens: TOKENS }, 0, { logits: 'none' })
    if (out.kind !== 'hidden') throw new Error('kind')
    const pooler = new EmbeddingPooler('mean', 128)
    pooler.add(engine.shard.outputNorm(out.hidden, out.n), out.n)
    const [vector] = await engine.embed([TOKENS])
    expect([...vector!]).toEqual([...pooler.vector()])
  })
})
