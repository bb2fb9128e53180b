import {
  createMeshnetEngine,
  type GeneratedToken,
  type GenerateOptions,
  type InferenceEngine,
  logSumExp,
  type MeshnetEngine,
} from '@meshnet/engine'
import { modelDir } from '@meshnet/test-harness'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { createLlamaCppEngine, type LlamaCppEngine } from '../src/engine.ts'

// OpenAI's sampling parameters on both engines of a generated F32 model (whose logits agree to
// ~1e-5): presence and frequency penalties pick the same tokens, greedy and seeded, and the
// log-probabilities agree; llama.cpp's are those of its own logits (teacher-forced) after the
// penalties.

const PROMPT = 'Once upon a time, in a land far away, there lived a'
const STEPS = 40

let models: Awaited<ReturnType<typeof modelDir>>
let llama: LlamaCppEngine
let meshnet: MeshnetEngine
let prompt: number[]

beforeAll(async () => {
  models = await modelDir()
  const path = await models.model('gqa-F32', {
    layers: 2,
    embd: 256,
    heads: 4,
    kvHeads: 2,
    ff: 512,
    vocab: 259,
    type: 'F32',
  })
  llama = await createLlamaCppEngine({ modelPath: path, contextSize: 128, threads: 1 })
  meshnet = await createMeshnetEngine({ modelPath: path, contextSize: 128, threads: 1 })
  prompt = llama.tokenizer.tokenize(PROMPT, { addSpecial: true })
}, 60_000)

afterAll(async () => {
  await meshnet?.dispose()
  await llama?.dispose()
  await models?.cleanup()
})

async function run(engine: InferenceEngine, options: GenerateOptions) {
  const pieces: GeneratedToken[] = []
  const result = await engine.generate(prompt, {
    maxTokens: STEPS,
    stopOnEog: false,
    ...options,
    onToken: (t) => pieces.push(t),
  })
  return { tokens: result.tokens, pieces: pieces.filter((p) => !p.textOnly) }
}

const PENALTIES = { presencePenalty: 0.6, frequencyPenalty: 1.2 }

describe('presence and frequency penalties', () => {
  it('change a greedy continuation the same way on both engines', async () => {
    const plain = await run(llama, {})
    const a = await run(llama, PENALTIES)
    const b = await run(meshnet, PENALTIES)
    expect(a.tokens).not.toEqual(plain.tokens)
    expect(b.tokens).toEqual(a.tokens)
    // Unpenalized, this greedy continuation falls into a loop; penalized, it repeats itself less.
    expect(new Set(a.tokens).size).toBeGreaterThan(new Set(plain.tokens).size)
  })

  it('draw the same seeded samples on both engines', async () => {
    const options = { temperature: 0.9, topK: 0, topP: 1, seed: 77, ...PENALTIES }
    const a = await run(llama, options)
    expect(await run(meshnet, options)).toMatchObject({ tokens: a.tokens })
    expect((await run(llama, { ...options, presencePenalty: 0, frequencyPenalty: 0 })).tokens).not.toEqual(
      a.tokens,
    )
  })

  it('favour repetition when negative, on both engines', async () => {
    const options = { presencePenalty: -2, frequencyPenalty: -0.5 }
    const a = await run(llama, options)
    expect((await run(meshnet, options)).tokens).toEqual(a.tokens)
    expect(new Set(a.tokens).size).toBeLessThan(4)
  })
})

describe('log-probabilities', () => {
  it.each([
    ['greedy', {}],
    ['greedy, penalized', PENALTIES],
    ['seeded', { temperature: 1, topK: 0, topP: 1, seed: 5 }],
    ['seeded, top-k and top-p, penalized', { temperature: 0.7, topK: 20, topP: 0.9, seed: 9, ...PENALTIES }],
  ])(
    '%s: the same tokens as without them, and the log-softmax of llama.cpp’s logits after the penalties',
    async (_, options) => {
      const without = await run(llama, options)
      const a = await run(llama, { ...options, logprobs: 5 })
      const b = await run(meshnet, { ...options, logprobs: 5 })
      expect(a.tokens).toEqual(without.tokens)
      expect(b.tokens).toEqual(a.tokens)
      // The reference: llama.cpp's logits at every position, penalized here, log-softmaxed.
      const rows = await llama.evaluateLogits([...prompt, ...a.tokens], { decodeFrom: prompt.length })
      const counts = new Map<number, number>()
      let worst = 0
      let between = 0
      for (const [i, piece] of a.pieces.entries()) {
        const row = rows[prompt.length - 1 + i]!.slice()
        const presence = 'presencePenalty' in options ? options.presencePenalty : 0
        const frequency = 'frequencyPenalty' in options ? options.frequencyPenalty : 0
        for (const [t, n] of counts) row[t] = row[t]! - (n * frequency + presence)
        const lse = logSumExp(row)
        const lp = piece.logprobs!
        worst = Math.max(worst, Math.abs(lp.logprob - (row[piece.id]! - lse)))
        expect(lp.top).toHaveLength(5)
        for (const t of lp.top) worst = Math.max(worst, Math.abs(t.logprob - (row[t.id]! - lse)))
        expect(lp.top.every((t, k) => k === 0 || t.logprob <= lp.top[k - 1]!.logprob)).toBe(true)
        if (!('temperature' in options)) expect(lp.top[0]!.id).toBe(piece.id)
        const other = b.pieces[i]!.logprobs!
        between = Math.max(between, Math.abs(other.logprob - lp.logprob))
        expect(other.top.map((t) => t.id)).toEqual(lp.top.map((t) => t.id))
        for (const [k, t] of other.top.entries())
          between = Math.max(between, Math.abs(t.logprob - lp.top[k]!.logprob))
        counts.set(piece.id, (counts.get(piece.id) ?? 0) + 1)
      }
      expect(worst).toBeLessThan(1e-4)
      expect(between).toBeLessThan(1e-4)
    },
  )
})
