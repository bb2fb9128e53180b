import { modelDir } from '@meshnet/test-harness'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import type { Kernels } from '../src/kernels/api.ts'
import { createJsKernels } from '../src/kernels/js.ts'
import { createLocalAllReduce } from '../src/model/all-reduce.ts'
import { type LoadShardOptions, loadShard } from '../src/model/shard.ts'
import { shardSessionBytes } from '../src/model/shard-layout.ts'
import type { LlamaShard, ShardOutput } from '../src/model/shard-types.ts'

const kernels = createJsKernels()
let models: Awaited<ReturnType<typeof modelDir>>
let gqa: string
let mqaK: string
const shards: LlamaShard[] = []

beforeAll(async () => {
  models = await modelDir()
  // 2 layers, 4 query heads over 2 KV heads of 64 dims, FFN 512.
  gqa = await models.model('gqa-q8', {
    layers: 2,
    embd: 256,
    heads: 4,
    kvHeads: 2,
    ff: 512,
    vocab: 301,
    type: 'Q8_0',
  })
  // MQA with a K-quant: 256-element blocks, so 64-column head slices cut inside blocks.
  mqaK = await models.model('mqa-q4k', {
    layers: 2,
    embd: 256,
    heads: 4,
    kvHeads: 1,
    ff: 512,
    vocab: 307,
    type: 'Q4_K',
  })
})

afterAll(async () => {
  for (const s of shards) await s.dispose()
  await models.cleanup()
})

async function shard(
  options: Omit<LoadShardOptions, 'kernels'> & { kernels?: Kernels },
): Promise<LlamaShard> {
  const s = await loadShard({ kernels, contextSize: 64, maxBatch: 8, ...options })
  shards.push(s)
  return s
}

const prompt = [1, 20, 57, 300, 4, 99, 250, 3, 17, 200, 150, 42]

function logitsOf(out: ShardOutput): Float32Array {
  if (out.kind !== 'logits') throw new Error(`expected logits, got ${out.kind}`)
  return out.logits
}

function hiddenOf(out: ShardOutput): Float32Array {
  if (out.kind !== 'hidden') throw new Error(`expected hidden, got ${out.kind}`)
  return out.hidden
}

function maxAbsDiff(a: Float32Array, b: Float32Array): number {
  expect(a.length).toBe(b.length)
  let m = 0
  for (let i = 0; i < a.length; i++) m = Math.max(m, Math.abs(a[i]! - b[i]!))
  return m
}

describe('layer slices', () => {
  it('chained layer ranges give the whole model’s logits bit for bit, prompt and decode steps', async () => {
    const whole = await shard({ path: gqa })
    const first = await shard({ path: gqa, layers: [0, 1] })
    const second = await shard({ path: gqa, layers: [1, 2] })
    expect(first.hasHead).toBe(false)
    expect(second.embeds).toBe(false)
    const expected = logitsOf(await whole.forward({ tokens: prompt }, 0, { logits: 'all' }))
    const hidden = hiddenOf(await first.forward({ tokens: prompt }, 0))
    expect(hidden.length).toBe(prompt.length * 256)
    const got = logitsOf(await second.forward({ hidden }, 0, { logits: 'all' }))
    expect(got).toEqual(expected)
    // Decode three more positions one at a time through both chains.
    for (const [i, token] of [7, 8, 9].entries()) {
      const pos = prompt.length + i
      const a = logitsOf(await whole.forward({ tokens: [token] }, pos))
      const h = hiddenOf(await first.forward({ tokens: [token] }, pos))
      const b = logitsOf(await second.forward({ hidden: h }, pos))
      expect(b).toEqual(a)
    }
    expect(second.length).toBe(prompt.length + 3)
  })

  it('rewinds the KV cache to an earlier position and recomputes the same logits', async () => {
    const s = await shard({ path: gqa })
    const full = logitsOf(await s.forward({ tokens: prompt }, 0, { logits: 'all' }))
    const again = logitsOf(await s.forward({ tokens: prompt.slice(5) }, 5, { logits: 'all' }))
    expect(again).toEqual(full.subarray(5 * 301))
  })

  it('keeps its logits as the KV cache grows past its first capacity, one token at a time or rewound', async () => {
    const tokens = Array.from({ length: 150 }, (_, i) => (i * 37 + 5) % 301)
    const batched = await shard({ path: gqa, contextSize: 160 })
    const all = logitsOf(await batched.forward({ tokens }, 0, { logits: 'all' }))
    const stepped = await shard({ path: gqa, contextSize: 160 })
    for (const [pos, token] of tokens.entries()) {
      const row = logitsOf(await stepped.forward({ tokens: [token] }, pos))
      expect(maxAbsDiff(row, all.subarray(pos * 301, (pos + 1) * 301))).toBeLessThan(1e-5)
    }
    const again = logitsOf(await batched.forward({ tokens: tokens.slice(40) }, 40, { logits: 'all' }))
    expect(maxAbsDiff(again, all.subarray(40 * 301))).toBeLessThan(1e-5)
  })

  it('splits a batch’s attention into chunks when a long context would make its scores too large', async () => {
    // 2 query heads per KV head × 70000 positions: 7 positions' scores fit the 2^20-float budget.
    const long = await shard({ path: gqa, contextSize: 70_000 })
    const short = await shard({ path: gqa, contextSize: 64 })
    const a = logitsOf(await long.forward({ tokens: prompt }, 0, { logits: 'all' }))
    const b = logitsOf(await short.forward({ tokens: prompt }, 0, { logits: 'all' }))
    expect(maxAbsDiff(a, b)).toBeLessThan(1e-5)
    await long.dispose()
  })

  it('asks the kernels for its weights, KV cache and scratch, as shardSessionBytes counts them', async () => {
    let requested = 0
    const counting: Kernels = {
      ...kernels,
      alloc(byteLength) {
        requested += byteLength
        return kernels.alloc(byteLength)
      },
    }
    const cases: Array<Omit<LoadShardOptions, 'kernels' | 'path'>> = [
      { layers: [0, 1] },
      { columns: { heads: [1, 3], ffn: [0, 256] } },
    ]
    for (const options of cases) {
      requested = 0
      const s = await shard({ path: gqa, kernels: counting, contextSize: 48, maxBatch: 4, ...options })
      const range = (r: readonly [number, number]): [number, number] => [r[0], r[1]]
      const plan = {
        layers: range(s.layers),
        heads: range(s.columns.heads),
        kvHeads: range(s.columns.kvHeads),
        ffn: range(s.columns.ffn),
        partial: s.partial,
        embed: s.embeds,
        head: s.hasHead,
        contextSize: s.contextSize,
      }
      const { kvBytes, scratchBytes } = shardSessionBytes(s.config, plan, {
        maxBatch: 4,
        kvCacheType: 'f16',
        kernels,
      })
      expect(kvBytes).toBe(
        (s.layers[1] - s.layers[0]) * 2 * 48 * (s.columns.kvHeads[1] - s.columns.kvHeads[0]) * 64 * 2,
      )
      expect(requested).toBe(s.weightBytes + kvBytes + scratchBytes)
    }
  })

  it('loads only its layers', async () => {
    const whole = await shard({ path: gqa })
    const middle = await shard({ path: gqa, layers: [1, 2], head: false })
    expect(middle.weightBytes).toBeLessThan(whole.weightBytes / 2)
  })
})

describe('column slices', () => {
  async function group(path: string, slices: Array<{ heads: [number, number]; ffn: [number, number] }>) {
    const loaded = []
    for (const [i, columns] of slices.entries()) loaded.push(await shard({ path, columns, head: i === 0 }))
    return loaded
  }

  it('partial attention and FFN outputs sum to the whole layer’s (GQA, block-aligned slices)', async () => {
    const whole = await shard({ path: gqa })
    const parts = await group(gqa, [
      { heads: [0, 2], ffn: [0, 256] },
      { heads: [2, 4], ffn: [256, 512] },
    ])
    expect(parts[0]!.columns.kvHeads).toEqual([0, 1])
    expect(parts[1]!.columns.kvHeads).toEqual([1, 2])
    const x = whole.embed(prompt.slice(0, 8))
    const expected = whole.attention(0, x, 8, 0)
    const sum = new Float32Array(expected.length)
    for (const p of parts) {
      const partial = p.attention(0, x, 8, 0)
      for (let i = 0; i < sum.length; i++) sum[i] = sum[i]! + partial[i]!
    }
    expect(maxAbsDiff(sum, expected)).toBeLessThan(1e-5)
    const ffnWhole = whole.ffn(0, x, 8)
    const ffnSum = new Float32Array(ffnWhole.length)
    for (const p of parts) {
      const partial = p.ffn(0, x, 8)
      for (let i = 0; i < ffnSum.length; i++) ffnSum[i] = ffnSum[i]! + partial[i]!
    }
    expect(maxAbsDiff(ffnSum, ffnWhole)).toBeLessThan(1e-5)
  })

  it('column shards joined by an all-reduce give the whole model’s logits', async () => {
    const whole = await shard({ path: gqa })
    const parts = await group(gqa, [
      { heads: [0, 1], ffn: [0, 128] },
      { heads: [1, 3], ffn: [128, 384] },
      { heads: [3, 4], ffn: [384, 512] },
    ])
    const reduce = createLocalAllReduce(parts.length)
    const run = async (tokens: number[], pos: number) => {
      const outs = await Promise.all(
        parts.map((p, i) => p.forward({ tokens }, pos, { logits: 'all', allReduce: reduce[i]! })),
      )
      expect(outs[1]!.kind).toBe('hidden')
      return logitsOf(outs[0]!)
    }
    const expected = logitsOf(await whole.forward({ tokens: prompt }, 0, { logits: 'all' }))
    expect(maxAbsDiff(await run(prompt, 0), expected)).toBeLessThan(1e-3)
    const next = logitsOf(await whole.forward({ tokens: [5] }, prompt.length))
    expect(maxAbsDiff(await run([5], prompt.length), next)).toBeLessThan(1e-3)
  })

  it('MQA head slices that cut K-quant blocks fall back to F32 slices and still sum to the whole', async () => {
    const whole = await shard({ path: mqaK })
    const parts = await group(mqaK, [
      { heads: [0, 1], ffn: [0, 100] },
      { heads: [1, 4], ffn: [100, 512] },
    ])
    // Both shards compute the single KV head.
    expect(parts.map((p) => p.columns.kvHeads)).toEqual([
      [0, 1],
      [0, 1],
    ])
    const reduce = createLocalAllReduce(2)
    const outs = await Promise.all(
      parts.map((p, i) => p.forward({ tokens: prompt }, 0, { logits: 'all', allReduce: reduce[i]! })),
    )
    const expected = logitsOf(await whole.forward({ tokens: prompt }, 0, { logits: 'all' }))
    // The F32 slices skip ggml's 8-bit activation rounding, hence a looser bound.
    expect(maxAbsDiff(logitsOf(outs[0]!), expected)).toBeLessThan(0.1)
  })

  it('layer and column slices combine: two stages of two column shards', async () => {
    const whole = await shard({ path: gqa })
    const stage = async (layers: [number, number]) => {
      const a = await shard({
        path: gqa,
        layers,
        columns: { heads: [0, 2], ffn: [0, 256] },
        head: layers[1] === 2,
      })
      const b = await shard({ path: gqa, layers, columns: { heads: [2, 4], ffn: [256, 512] }, head: false })
      return [a, b]
    }
    const s0 = await stage([0, 1])
    const s1 = await stage([1, 2])
    const r0 = createLocalAllReduce(2)
    const r1 = createLocalAllReduce(2)
    const h = await Promise.all(s0.map((p, i) => p.forward({ tokens: prompt }, 0, { allReduce: r0[i]! })))
    const hidden = hiddenOf(h[0]!)
    expect(hiddenOf(h[1]!)).toEqual(hidden)
    const out = await Promise.all(
      s1.map((p, i) => p.forward({ hidden }, 0, { logits: 'all', allReduce: r1[i]! })),
    )
    const expected = logitsOf(await whole.forward({ tokens: prompt }, 0, { logits: 'all' }))
    expect(maxAbsDiff(logitsOf(out[0]!), expected)).toBeLessThan(1e-3)
  })

  it('a column shard without an allReduce refuses to run and says why', async () => {
    const [part] = await group(gqa, [{ heads: [0, 2], ffn: [0, 256] }])
    await expect(part!.forward({ tokens: prompt }, 0)).rejects.toMatchObject({
      name: 'InvalidShardError',
      message: expect.stringContaining('allReduce'),
    })
  })
})

describe('shard errors', () => {
  it('rejects layer and column ranges outside the model', async () => {
    await expect(shard({ path: gqa, layers: [1, 3] })).rejects.toMatchObject({
      name: 'InvalidShardError',
      message: expect.stringContaining('the model has 2 layers'),
    })
    await expect(shard({ path: gqa, columns: { heads: [0, 5], ffn: [0, 512] } })).rejects.toMatchObject({
      name: 'InvalidShardError',
    })
    await expect(shard({ path: gqa, layers: [2, 1] })).rejects.toMatchObject({ name: 'InvalidArgumentError' })
  })

  it('asks for hidden states when the shard has no embedding, and for room in the context', async () => {
    const second = await shard({ path: gqa, layers: [1, 2] })
    await expect(second.forward({ tokens: [1, 2] }, 0)).rejects.toMatchObject({ name: 'InvalidShardError' })
    const whole = await shard({ path: gqa, contextSize: 8 })
    await expect(whole.forward({ tokens: prompt }, 0)).rejects.toMatchObject({ name: 'ContextOverflowError' })
    await expect(whole.forward({ tokens: [1] }, 3)).rejects.toMatchObject({ name: 'InvalidArgumentError' })
  })
})
