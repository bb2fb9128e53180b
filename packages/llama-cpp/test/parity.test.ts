import { argmax, createMeshnetEngine, createSampler, type MeshnetEngine } from '@meshnet/engine'
import type { ModelWeightType } from '@meshnet/gguf'
import { type ModelShape, modelDir } from '@meshnet/test-harness'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { createLlamaCppEngine, type LlamaCppEngine } from '../src/engine.ts'
import { topGap } from './logits.ts'

// The Meshnet engine against llama.cpp (node-llama-cpp, CPU, classic attention, F16 KV cache) on
// generated llama models: the same tokens, the same greedy continuation, the same logits at every
// position within a tolerance, and the same seeded samples.

/**
 * Largest |Δlogit| allowed per weight type. Both engines round activations the same way (8-bit
 * blocks for quantized weights, f16 for F16 weights and the KV cache) and agree to ~1e-6 until an
 * activation lands within float noise of a rounding boundary; that one flip then moves the logits
 * of its position and the later ones by up to a few 1e-2.
 */
const TOLERANCE: Partial<Record<ModelWeightType, number>> = {
  F32: 2e-3,
  F16: 1e-2,
  Q8_0: 0.1,
  Q4_0: 0.1,
  Q4_K: 0.1,
  Q6_K: 0.1,
}

const SHAPES: Record<string, ModelShape> = {
  // grouped-query attention, even vocabulary, 2 layers
  gqa: { layers: 2, embd: 256, heads: 4, kvHeads: 2, ff: 512, vocab: 1000 },
  // multi-head attention (no grouping), the smallest vocabulary (odd), 1 layer
  mha: { layers: 1, embd: 256, heads: 8, kvHeads: 8, ff: 512, vocab: 259 },
  // multi-query attention, odd vocabulary, 3 layers, FFN of 3 K-quant blocks
  mqa: { layers: 3, embd: 256, heads: 4, kvHeads: 1, ff: 768, vocab: 517 },
}

const CASES: Array<[shape: keyof typeof SHAPES, type: ModelWeightType]> = [
  ['gqa', 'F32'],
  ['gqa', 'F16'],
  ['gqa', 'Q8_0'],
  ['gqa', 'Q4_0'],
  ['gqa', 'Q4_K'],
  ['gqa', 'Q6_K'],
  ['mha', 'F32'],
  ['mha', 'Q8_0'],
  ['mha', 'Q4_K'],
  ['mqa', 'F16'],
  ['mqa', 'Q4_0'],
  ['mqa', 'Q6_K'],
]

const PROMPT = 'Once upon a time, in a land far away, there lived a'
const STEPS = 32

let models: Awaited<ReturnType<typeof modelDir>>
const matched: Array<{ model: string; agreed: number; worst: number }> = []
const sampled: Array<{ model: string; agreed: number }> = []

function firstDifference(a: number[], b: number[]): number {
  const i = a.findIndex((t, k) => t !== b[k])
  return i < 0 ? a.length : i
}

beforeAll(async () => {
  models = await modelDir()
})

afterAll(async () => {
  await models.cleanup()
  if (process.env.MESHNET_PARITY_REPORT) console.table([...matched, ...sampled])
})

async function engines(path: string): Promise<[LlamaCppEngine, MeshnetEngine]> {
  const llama = await createLlamaCppEngine({ modelPath: path, contextSize: 128, threads: 1 })
  try {
    return [llama, await createMeshnetEngine({ modelPath: path, contextSize: 128, threads: 1 })]
  } catch (err) {
    await llama.dispose()
    throw err
  }
}

describe.each(CASES)('%s model, %s weights', (shapeName, type) => {
  let llama: LlamaCppEngine
  let meshnet: MeshnetEngine
  const tolerance = TOLERANCE[type]!

  beforeAll(async () => {
    const path = await models.model(`${shapeName}-${type}`, { ...SHAPES[shapeName]!, type })
    ;[llama, meshnet] = await engines(path)
  }, 60_000)

  afterAll(async () => {
    await meshnet?.dispose()
    await llama?.dispose()
  })

  it(`continues the prompt greedily with llama.cpp’s ${STEPS} tokens, and its logits at every position`, async () => {
    const prompt = llama.tokenizer.tokenize(PROMPT, { addSpecial: true })
    const expected = await llama.generate(prompt, { maxTokens: STEPS, stopOnEog: false })
    const got = await meshnet.generate(prompt, { maxTokens: STEPS, stopOnEog: false })
    expect(expected.tokens).toHaveLength(STEPS)
    // Teacher-forced over llama.cpp's continuation: the logits after every token, evaluated as
    // generation evaluates them (the prompt in one batch, then one token at a time).
    const sequence = [...prompt, ...expected.tokens]
    const reference = await llama.evaluateLogits(sequence, { decodeFrom: prompt.length })
    const logits = await meshnet.evaluateLogits(sequence, { decodeFrom: prompt.length })
    let worst = 0
    for (const [i, row] of reference.entries()) {
      for (let j = 0; j < row.length; j++) worst = Math.max(worst, Math.abs(row[j]! - logits[i]![j]!))
    }
    expect(worst).toBeLessThan(tolerance)
    // The greedy choice agrees at every position, except where llama.cpp's own top two logits are
    // closer than twice the measured difference (a tie the engines' rounding can break either way).
    for (const [i, row] of reference.entries()) {
      if (argmax(row) !== argmax(logits[i]!)) expect(topGap(row)).toBeLessThan(2 * worst)
    }
    const diverged = got.tokens.findIndex((t, i) => t !== expected.tokens[i])
    if (diverged >= 0) expect(topGap(reference[prompt.length - 1 + diverged]!)).toBeLessThan(2 * worst)
    const agreed = diverged < 0 ? STEPS : diverged
    expect(got.tokens.slice(0, agreed)).toEqual(expected.tokens.slice(0, agreed))
    if (diverged < 0) expect(got.text).toBe(expected.text)
    matched.push({ model: `${shapeName} ${type}`, agreed, worst })
  })

  it('draws the same samples as llama.cpp from the same seed (temperature, top-k, top-p)', async () => {
    const prompt = llama.tokenizer.tokenize(PROMPT, { addSpecial: true })
    const options = { temperature: 0.8, topK: 40, topP: 0.95, seed: 1234 }
    const expected = await llama.generate(prompt, { ...options, maxTokens: STEPS, stopOnEog: false })
    // The sampler over llama.cpp's own logits picks llama.cpp's tokens, draw for draw.
    const reference = await llama.evaluateLogits([...prompt, ...expected.tokens], {
      decodeFrom: prompt.length,
    })
    const sampler = createSampler(options)
    const picks = expected.tokens.map((_, i) => sampler.sample(reference[prompt.length - 1 + i]!))
    expect(picks).toEqual(expected.tokens)
    // End to end, a draw can land on the other side of a cumulative-probability boundary that the
    // engines' logit difference moved; with F32 weights the logits agree closely enough not to.
    const got = await meshnet.generate(prompt, { ...options, maxTokens: STEPS, stopOnEog: false })
    sampled.push({ model: `${shapeName} ${type}`, agreed: firstDifference(got.tokens, expected.tokens) })
    if (type === 'F32') expect(got.tokens).toEqual(expected.tokens)
  })
})
