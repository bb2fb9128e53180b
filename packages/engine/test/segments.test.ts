import { openGGUF } from '@meshnet/gguf'
import { modelDir } from '@meshnet/test-harness'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import type { Kernels } from '../src/kernels/api.ts'
import { createWasmKernels } from '../src/kernels/wasm.ts'
import { readLlamaConfig } from '../src/model/config.ts'
import { chainSessions, planSegments } from '../src/model/segments.ts'
import { resolveSpec } from '../src/model/shard.ts'
import type { ShardOutput } from '../src/model/shard-types.ts'
import { estimateWeightBytes, type ShardSpec, ShardWeights } from '../src/model/shard-weights.ts'

// A shard held in several kernel memories (one per segment of layers) computes what one memory
// holding it all computes: the segments pass the hidden state along, bit for bit.
let models: Awaited<ReturnType<typeof modelDir>>
let path: string
const disposables: Array<{ dispose(): unknown }> = []

beforeAll(async () => {
  models = await modelDir()
  path = await models.model('segments-q4k', {
    layers: 6,
    embd: 256,
    heads: 4,
    kvHeads: 2,
    ff: 512,
    vocab: 400,
    type: 'Q4_K_M',
  })
})

afterAll(async () => {
  for (const d of disposables.splice(0).reverse()) await d.dispose()
  await models.cleanup()
})

async function sizes(spec: ShardSpec): Promise<{ whole: number; layer: number; head: number }> {
  const file = await openGGUF(path)
  try {
    const config = readLlamaConfig(file)
    const cost = (s: ShardSpec) => estimateWeightBytes(file, config, resolveSpec(config, s), s.vocab)
    return {
      whole: cost(spec),
      layer: cost({ layers: [1, 2], embed: false, head: false }),
      head: cost({ layers: [6, 6], embed: false, head: true }),
    }
  } finally {
    await file.close()
  }
}

async function segmentsOf(spec: ShardSpec, maxBytes: number): Promise<ShardSpec[]> {
  const file = await openGGUF(path)
  try {
    return planSegments(file, readLlamaConfig(file), spec, maxBytes)
  } finally {
    await file.close()
  }
}

function logitsOf(out: ShardOutput): Float32Array {
  if (out.kind !== 'logits') throw new Error(`expected logits, got ${out.kind}`)
  return out.logits
}

describe('weight segments', () => {
  it('cuts a shard into consecutive layer ranges that each fit, the embedding first and the head last', async () => {
    const spec: ShardSpec = { layers: [0, 6], embed: true, head: true }
    const { whole, layer, head } = await sizes(spec)
    expect(await segmentsOf(spec, whole)).toEqual([spec])
    const cut = await segmentsOf(spec, 2 * layer + head)
    expect(cut.length).toBeGreaterThan(2)
    expect(cut[0]).toMatchObject({ layers: [0, expect.any(Number)], embed: true, head: false })
    expect(cut.at(-1)).toMatchObject({ head: true, embed: false })
    for (let i = 1; i < cut.length; i++) expect(cut[i]!.layers![0]).toBe(cut[i - 1]!.layers![1])
    expect(cut.at(-1)!.layers![1]).toBe(6)
    // No segment takes more than asked.
    for (const s of cut) expect((await sizes(s)).whole).toBeLessThanOrEqual(2 * layer + head)
  })

  it('refuses a segment size smaller than one layer, naming the layer', async () => {
    const { layer } = await sizes({ layers: [0, 6], embed: true, head: true })
    await expect(segmentsOf({ layers: [0, 6], embed: false, head: false }, layer - 1)).rejects.toThrow(
      /layer 0 alone takes .* more than one kernel memory segment holds/,
    )
  })

  it('segments in kernel memories of their own give the logits of one memory, prompt and decode', async () => {
    const spec: ShardSpec = { layers: [0, 6], embed: true, head: true }
    const options = { contextSize: 64, kvCacheType: 'f16' as const, maxBatch: 8 }
    const one = await createWasmKernels()
    disposables.push(one)
    const whole = await ShardWeights.load(path, spec, one)
    disposables.push(whole)
    const { layer, head } = await sizes(spec)
    const cut = await segmentsOf(spec, 2 * layer + head)
    const memories: Kernels[] = []
    const parts: ShardWeights[] = []
    for (const s of cut) {
      const kernels = await createWasmKernels({ maxMemoryBytes: 64 * 2 ** 20 })
      memories.push(kernels)
      parts.push(await ShardWeights.load(path, s, kernels, { ownsKernels: true }))
    }
    disposables.push(...parts)
    const a = chainSessions([whole], options).shard
    const b = chainSessions(parts, options).shard
    disposables.push(a, b)
    expect(b.layers).toEqual([0, 6])
    expect(b.weightBytes).toBe(a.weightBytes)
    const prompt = [1, 20, 57, 300, 4, 99, 250, 3, 17]
    expect(logitsOf(await b.forward({ tokens: prompt }, 0))).toEqual(
      logitsOf(await a.forward({ tokens: prompt }, 0)),
    )
    for (const [i, token] of [42, 7, 399].entries()) {
      const pos = prompt.length + i
      expect(logitsOf(await b.forward({ tokens: [token] }, pos))).toEqual(
        logitsOf(await a.forward({ tokens: [token] }, pos)),
      )
    }
    expect(b.length).toBe(prompt.length + 3)
    // Rewound, the chain recomputes the same step.
    b.truncate(prompt.length)
    a.truncate(prompt.length)
    expect(logitsOf(await b.forward({ tokens: [5] }, prompt.length))).toEqual(
      logitsOf(await a.forward({ tokens: [5] }, prompt.length)),
    )
  })

  it('disposes the kernels it owns with its weights', async () => {
    const kernels = await createWasmKernels({ threads: 2, maxMemoryBytes: 64 * 2 ** 20 })
    const weights = await ShardWeights.load(path, { layers: [0, 1], embed: true, head: false }, kernels, {
      ownsKernels: true,
    })
    weights.dispose()
    await new Promise((resolve) => setTimeout(resolve, 50))
    expect(() => kernels.alloc(64)).toThrow()
  })
})
