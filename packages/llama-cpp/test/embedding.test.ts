import { join } from 'node:path'
import { createMeshnetEngine, type InferenceEngine, type MeshnetEngine } from '@meshnet/engine'
import { type GGUFTensorInput, type GGUFValueInput, openGGUF, writeGGUF } from '@meshnet/gguf'
import { modelDir } from '@meshnet/test-harness'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { createLlamaCppEngine, type LlamaCppEngine } from '../src/engine.ts'

// Embeddings of llama.cpp (an embedding context of node-llama-cpp) against the Meshnet engine's on
// generated models: the same pooling of the same final hidden states, so the same direction.

let models: Awaited<ReturnType<typeof modelDir>>
let path: string

const INPUTS = ['the quick brown fox', 'jumps over the lazy dog', 'the quick brown fox']

beforeAll(async () => {
  models = await modelDir()
  path = await models.model('embed-q8', {
    layers: 2,
    embd: 256,
    heads: 4,
    kvHeads: 2,
    ff: 512,
    vocab: 1000,
    type: 'Q8_0',
  })
})

afterAll(async () => {
  await models.cleanup()
})

/** A copy of `src` with some metadata set (tensors as they are). */
async function withMetadata(src: string, name: string, metadata: Record<string, GGUFValueInput>) {
  const file = await openGGUF(src)
  try {
    const all = new Map<string, GGUFValueInput>(file.metadata)
    for (const [k, v] of Object.entries(metadata)) all.set(k, v)
    const tensors: GGUFTensorInput[] = []
    for (const t of file.tensors) {
      tensors.push({ name: t.name, dims: t.dims, type: t.type, data: await file.readTensor(t.name) })
    }
    const out = join(src, '..', `${name}.gguf`)
    await writeGGUF(out, { metadata: all, tensors })
    return out
  } finally {
    await file.close()
  }
}

function cosine(a: Float32Array, b: Float32Array): number {
  let dot = 0
  let na = 0
  let nb = 0
  for (let i = 0; i < a.length; i++) {
    dot += a[i]! * b[i]!
    na += a[i]! * a[i]!
    nb += b[i]! * b[i]!
  }
  return dot / Math.sqrt(na * nb)
}

function norm(v: Float32Array): number {
  return Math.sqrt(v.reduce((sum, x) => sum + x * x, 0))
}

async function both<T>(
  modelPath: string,
  run: (llama: LlamaCppEngine, meshnet: MeshnetEngine) => Promise<T>,
  contextSize = 128,
): Promise<T> {
  const llama = await createLlamaCppEngine({ modelPath, contextSize, threads: 1 })
  const meshnet = await createMeshnetEngine({ modelPath, contextSize, threads: 1 })
  try {
    return await run(llama, meshnet)
  } finally {
    await llama.dispose()
    await meshnet.dispose()
  }
}

const tokensOf = (engine: InferenceEngine, texts: readonly string[]) =>
  texts.map((t) => engine.tokenizer.tokenize(t, { addSpecial: true }))

describe('llama.cpp embeddings', () => {
  it('pools by the mean when the GGUF names no pooling, unit vectors of the model width, as the Meshnet engine does', async () => {
    await both(path, async (llama, meshnet) => {
      expect(llama.embeddingPooling).toBe('mean')
      expect(meshnet.embeddingPooling).toBe('mean')
      const tokens = tokensOf(llama, INPUTS)
      expect(tokensOf(meshnet, INPUTS)).toEqual(tokens)
      const a = await llama.embed(tokens)
      const b = await meshnet.embed(tokens)
      expect(a).toHaveLength(3)
      for (const [i, v] of a.entries()) {
        expect(v).toHaveLength(256)
        expect(norm(v)).toBeCloseTo(1, 5)
        expect(norm(b[i]!)).toBeCloseTo(1, 5)
        expect(cosine(v, b[i]!)).toBeGreaterThan(0.999)
      }
      // Same input, same vector; another input, another vector.
      expect([...a[2]!]).toEqual([...a[0]!])
      expect([...b[2]!]).toEqual([...b[0]!])
      expect(cosine(a[0]!, a[1]!)).toBeLessThan(0.999)
      // One at a time gives what a batch gives.
      expect([...(await llama.embed([tokens[1]!]))[0]!]).toEqual([...a[1]!])
      expect([...(await meshnet.embed([tokens[1]!]))[0]!]).toEqual([...b[1]!])
    })
  }, 60_000)

  it('pools as the GGUF says (last, cls), and the engines still agree', async () => {
    const last = await withMetadata(path, 'embed-last', {
      'llama.pooling_type': { type: 'uint32', value: 3 },
    })
    const cls = await withMetadata(path, 'embed-cls', { 'llama.pooling_type': { type: 'uint32', value: 2 } })
    const mean = await both(path, async (llama) => (await llama.embed(tokensOf(llama, INPUTS)))[1]!)
    for (const [modelPath, pooling] of [
      [last, 'last'],
      [cls, 'cls'],
    ] as const) {
      await both(modelPath, async (llama, meshnet) => {
        expect(llama.embeddingPooling).toBe(pooling)
        expect(meshnet.embeddingPooling).toBe(pooling)
        const tokens = tokensOf(llama, INPUTS)
        const a = await llama.embed(tokens)
        const b = await meshnet.embed(tokens)
        for (const [i, v] of a.entries()) expect(cosine(v, b[i]!)).toBeGreaterThan(0.999)
        expect(cosine(a[1]!, mean)).toBeLessThan(0.999)
      })
    }
  }, 60_000)

  it('grows its embedding context for a long input, and refuses one longer than the context', async () => {
    await both(
      path,
      async (llama, meshnet) => {
        // Past the first embedding context (256 positions).
        const long = Array.from({ length: 300 }, (_, i) => 3 + ((i * 37) % 900))
        long[0] = llama.tokenizer.bos!
        const [short] = await llama.embed([long.slice(0, 20)])
        const [a] = await llama.embed([long])
        const [b] = await meshnet.embed([long])
        expect(cosine(a!, b!)).toBeGreaterThan(0.999)
        expect([...(await llama.embed([long.slice(0, 20)]))[0]!]).toEqual([...short!])
        for (const engine of [llama, meshnet]) {
          const tooLong = Array.from({ length: engine.contextSize + 1 }, () => 5)
          await expect(engine.embed([tooLong])).rejects.toMatchObject({ name: 'ContextOverflowError' })
        }
        await expect(llama.embed([[]])).rejects.toMatchObject({ name: 'InvalidArgumentError' })
        await expect(llama.embed([[5000]])).rejects.toMatchObject({ name: 'InvalidArgumentError' })
      },
      512,
    )
  }, 60_000)

  it('refuses embeddings of a reranker (pooling rank)', async () => {
    const rank = await withMetadata(path, 'embed-rank', {
      'llama.pooling_type': { type: 'uint32', value: 4 },
    })
    const llama = await createLlamaCppEngine({ modelPath: rank, contextSize: 64, threads: 1 })
    try {
      expect(llama.embeddingPooling).toBeUndefined()
      await expect(llama.embed([[1, 2, 3]])).rejects.toMatchObject({ name: 'UnsupportedModelError' })
    } finally {
      await llama.dispose()
    }
  }, 60_000)
})
