import { openGGUF } from '@meshnet/gguf'
import { modelDir } from '@meshnet/test-harness'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { createWasmKernels } from '../src/kernels/wasm.ts'
import { readLlamaConfig } from '../src/model/config.ts'
import { chainSessions, planSegments } from '../src/model/segments.ts'
import { resolveSpec } from '../src/model/shard.ts'
import type { LlamaShard, ShardOutput } from '../src/model/shard-types.ts'
import { estimateWeightBytes, ShardWeights } from '../src/model/shard-weights.ts'
import { StepBatcher } from '../src/model/step-batcher.ts'
import { createSampler, Mt19937 } from '../src/sampling.ts'

// Continuous batching must not change what a session computes: the steps of several sessions
// share one pass over the weights, and every session gets the logits it gets alone, bit for bit,
// so its tokens (greedy or seeded) are the same too.
let models: Awaited<ReturnType<typeof modelDir>>
const disposables: Array<{ dispose(): unknown }> = []

beforeAll(async () => {
  models = await modelDir()
})

afterAll(async () => {
  for (const d of disposables.splice(0).reverse()) await d.dispose()
  await models.cleanup()
})

const BASE = { layers: 4, embd: 256, heads: 4, kvHeads: 2, ff: 512, vocab: 1000 }

/** What one session does: a prompt, then `decode` sampled tokens; it joins after `delay` passes. */
interface Plan {
  prompt: number[]
  decode: number
  delay: number
  /** Seeded sampling at temperature 0.8, or greedy. */
  seed?: number
}

function plans(vocab: number, count: number): Plan[] {
  const rng = new Mt19937(1234)
  const lengths = [7, 1, 13, 40, 3, 22, 2]
  return Array.from({ length: count }, (_, i) => ({
    prompt: Array.from({ length: lengths[i % lengths.length]! }, () => rng.next() % vocab),
    decode: 6 + ((i * 7) % 13),
    delay: [0, 0, 2, 5, 3, 9, 1][i % 7]!,
    ...(i % 2 === 1 ? { seed: 100 + i } : {}),
  }))
}

/** Runs one session through `batcher`: its logits at every step and its tokens. */
async function run(
  batcher: StepBatcher,
  shard: LlamaShard,
  plan: Plan,
  join = true,
): Promise<{ logits: Float32Array[]; tokens: number[] }> {
  // Joins a batch already running: after `delay` passes of the others.
  while (join && batcher.stats().passes < plan.delay) await new Promise((resolve) => setImmediate(resolve))
  const sampler = createSampler(
    plan.seed === undefined
      ? { temperature: 0 }
      : { temperature: 0.8, topK: 40, topP: 0.95, seed: plan.seed },
  )
  const logits: Float32Array[] = []
  const tokens: number[] = []
  let out: ShardOutput = await batcher.forwardChunked(shard, { tokens: plan.prompt }, 0, { chunk: 16 })
  let pos = plan.prompt.length
  for (let i = 0; ; i++) {
    if (out.kind !== 'logits') throw new Error('expected logits')
    logits.push(out.logits)
    const token = sampler.sample(out.logits)
    tokens.push(token)
    if (i === plan.decode) break
    out = await batcher.forward(shard, { tokens: [token] }, pos++)
  }
  return { logits, tokens }
}

function sameBits(a: Float32Array, b: Float32Array): boolean {
  return Buffer.from(a.buffer, a.byteOffset, a.byteLength).equals(
    Buffer.from(b.buffer, b.byteOffset, b.byteLength),
  )
}

/** The whole model of `shape` (Q8_0 unless it says) on kernels of one thread, disposed after the tests. */
async function wholeModel(name: string, shape: Partial<typeof BASE> = {}): Promise<ShardWeights> {
  const path = await models.model(name, { ...BASE, type: 'Q8_0', ...shape })
  const kernels = await createWasmKernels({ threads: 1 })
  disposables.push(kernels)
  const weights = await ShardWeights.load(path, { embed: true, head: true }, kernels)
  disposables.push(weights)
  return weights
}

const CASES = [
  { name: 'llama Q8_0', shape: { ...BASE, type: 'Q8_0' as const } },
  { name: 'qwen3 Q4_K_M', shape: { ...BASE, arch: 'qwen3' as const, headDim: 128, type: 'Q4_K_M' as const } },
  {
    name: 'gemma3 F16',
    shape: {
      ...BASE,
      arch: 'gemma3' as const,
      layers: 6,
      headDim: 128,
      slidingWindow: 12,
      type: 'F16' as const,
    },
  },
  { name: 'qwen2 Q5_K_M', shape: { ...BASE, arch: 'qwen2' as const, type: 'Q5_K_M' as const } },
]

describe.each(CASES)('$name', ({ name, shape }) => {
  it('gives every session in a batch the logits and tokens it gets alone, as sessions join and leave', async () => {
    const path = await models.model(name.replace(/ /g, '-'), shape)
    const kernels = await createWasmKernels({ threads: 2 })
    disposables.push(kernels)
    const weights = await ShardWeights.load(path, { embed: true, head: true }, kernels)
    disposables.push(weights)
    const options = { contextSize: 128, kvCacheType: 'f16' as const, maxBatch: 32 }
    const sessions = plans(weights.config.vocab, 7).map(() => weights.createSession(options).shard)
    disposables.push(...sessions)

    const alone: Awaited<ReturnType<typeof run>>[] = []
    for (const [i, plan] of plans(weights.config.vocab, 7).entries()) {
      alone.push(await run(new StepBatcher(), sessions[i]!, plan, false))
    }
    const batcher = new StepBatcher()
    const together = await Promise.all(
      plans(weights.config.vocab, 7).map((plan, i) => run(batcher, sessions[i]!, plan)),
    )

    const stats = batcher.stats()
    expect(stats.widest).toBeGreaterThanOrEqual(5)
    expect(stats.passes).toBeLessThan(stats.steps)
    for (const [i, got] of together.entries()) {
      expect(got.tokens, `session ${i}`).toEqual(alone[i]!.tokens)
      expect(got.logits.length).toBe(alone[i]!.logits.length)
      got.logits.forEach((row, step) => {
        expect(sameBits(row, alone[i]!.logits[step]!), `session ${i} step ${step}`).toBe(true)
      })
    }
  })
})

it('batches sessions of a shard held in several weight segments, each segment as one pass', async () => {
  const path = await models.model('batch-segments', { ...BASE, layers: 6, type: 'Q4_K_M' })
  const file = await openGGUF(path)
  let segments: ReturnType<typeof planSegments>
  try {
    const config = readLlamaConfig(file)
    const spec = { embed: true, head: true }
    const layer = estimateWeightBytes(
      file,
      config,
      resolveSpec(config, { layers: [1, 2], embed: false, head: false }),
    )
    segments = planSegments(file, config, spec, layer * 2.5)
  } finally {
    await file.close()
  }
  expect(segments.length).toBeGreaterThan(1)
  const weights: ShardWeights[] = []
  for (const spec of segments) {
    const w = await ShardWeights.load(path, spec, await createWasmKernels({ threads: 1 }), {
      ownsKernels: true,
    })
    disposables.push(w)
    weights.push(w)
  }
  const options = { contextSize: 96, kvCacheType: 'f16' as const, maxBatch: 32 }
  const all = plans(1000, 5)
  const sessions = all.map(() => chainSessions(weights, options).shard)
  disposables.push(...sessions)
  const alone: Awaited<ReturnType<typeof run>>[] = []
  for (const [i, plan] of all.entries()) alone.push(await run(new StepBatcher(), sessions[i]!, plan, false))
  const batcher = new StepBatcher()
  const together = await Promise.all(all.map((plan, i) => run(batcher, sessions[i]!, plan)))
  expect(batcher.stats().widest).toBeGreaterThanOrEqual(4)
  for (const [i, got] of together.entries()) {
    expect(got.tokens).toEqual(alone[i]!.tokens)
    for (const [step, row] of got.logits.entries()) {
      expect(sameBits(row, alone[i]!.logits[step]!)).toBe(true)
    }
  }
})

it('fails only the step that is wrong, not the others in its pass', async () => {
  const weights = await wholeModel('batch-faults')
  const options = { contextSize: 64, kvCacheType: 'f16' as const, maxBatch: 16 }
  const [a, b, c] = [0, 1, 2].map(() => weights.createSession(options).shard)
  disposables.push(a!, b!, c!)
  const batcher = new StepBatcher()
  const alone = await new StepBatcher().forward(c!, { tokens: [5, 6, 7] }, 0)
  c!.truncate(0)
  const results = await Promise.allSettled([
    batcher.forward(a!, { tokens: [1, 2, 3] }, 0),
    // b's cache is empty: position 9 is past its end.
    batcher.forward(b!, { tokens: [4] }, 9),
    batcher.forward(c!, { tokens: [5, 6, 7] }, 0),
  ])
  expect(results[0]!.status).toBe('fulfilled')
  expect(results[1]!.status).toBe('rejected')
  expect(String((results[1] as PromiseRejectedResult).reason)).toMatch(/position 9/)
  const got = (results[2] as PromiseFulfilledResult<ShardOutput>).value
  expect(got.kind === 'logits' && alone.kind === 'logits' && sameBits(got.logits, alone.logits)).toBe(true)
  expect(batcher.stats().passes).toBe(1)
})

it('a meshnet engine with parallel sequences decodes concurrent generations together, each as it would alone', async () => {
  const { createMeshnetEngine } = await import('../src/meshnet-engine.ts')
  const path = await models.model('batch-engine', { ...BASE, type: 'Q8_0' })
  const engine = await createMeshnetEngine({
    modelPath: path,
    threads: 1,
    parallel: 3,
    contextSize: 128,
    maxBatch: 16,
  })
  disposables.push(engine)
  const prompts = plans(1000, 5)
  const options = (i: number) =>
    i % 2 === 1 ? { maxTokens: 10 + i, temperature: 0.8, seed: i } : { maxTokens: 10 + i, temperature: 0 }
  const alone = []
  for (const [i, p] of prompts.entries()) alone.push((await engine.generate(p.prompt, options(i))).tokens)
  // Five calls on three sequences: two wait for a sequence to come free, then join the batch.
  const together = await Promise.all(prompts.map((p, i) => engine.generate(p.prompt, options(i))))
  expect(together.map((r) => r.tokens)).toEqual(alone)
})

it('waits for the sessions of the last pass, so that steps coming back one after another share a pass', async () => {
  // Passes of a few milliseconds, so that steps coming back within turns of the event loop are
  // well inside a wait.
  const weights = await wholeModel('batch-fill-wide', { embd: 512, ff: 2048 })
  const options = { contextSize: 64, kvCacheType: 'f16' as const, maxBatch: 16 }
  const decodes = [3, 6, 6, 6]
  // Session i steps again i + 1 event-loop turns after its result: as a round trip to a
  // coordinator would bring them back, one after another. Session 0 stops first.
  const generate = async (batcher: StepBatcher, i: number, shard: LlamaShard) => {
    const tokens: number[] = []
    let out = await batcher.forward(shard, { tokens: [1 + i, 2 + i, 3 + i] }, 0)
    for (let pos = 3; ; pos++) {
      if (out.kind !== 'logits') throw new Error('expected logits')
      tokens.push(createSampler({ temperature: 0 }).sample(out.logits))
      if (tokens.length > decodes[i]!) return tokens
      for (let turn = 0; turn <= i; turn++) await new Promise((resolve) => setImmediate(resolve))
      out = await batcher.forward(shard, { tokens: [tokens.at(-1)!] }, pos)
    }
  }
  const runAll = async (batcher: StepBatcher) => {
    const sessions = decodes.map(() => weights.createSession(options).shard)
    disposables.push(...sessions)
    return {
      tokens: await Promise.all(sessions.map((s, i) => generate(batcher, i, s))),
      stats: batcher.stats(),
    }
  }
  // Waiting up to the whole last pass's time: turns of the event loop take microseconds.
  const filled = await runAll(new StepBatcher({ fillWaitShare: 1, maxFillWaitMs: 60_000 }))
  const unfilled = await runAll(new StepBatcher({ fillWaitShare: 0 }))
  expect(filled.tokens).toEqual(unfilled.tokens)
  // At best the prompts in one pass, 3 decode passes of all 4 sessions and 3 of the 3 left; a
  // busy machine may hold a session past one wait (a wait lasts at most the last pass's time).
  expect(filled.stats.widest).toBe(4)
  expect(filled.stats.passes).toBeGreaterThanOrEqual(7)
  expect(filled.stats.passes).toBeLessThanOrEqual(9)
  // Without the wait, session 0 (back first) runs alone each time and the others after it.
  expect(unfilled.stats.passes).toBeGreaterThanOrEqual(11)
  expect(unfilled.stats.fills.waits).toBe(0)
})

it('does not wait for a session whose steps come back later than a wait would last', async () => {
  const weights = await wholeModel('batch-fill')
  const options = { contextSize: 256, kvCacheType: 'f16' as const, maxBatch: 16 }
  const [fast, slow] = [0, 1].map(() => weights.createSession(options).shard)
  disposables.push(fast!, slow!)
  // The slow session is away 5 ms between its steps, as in a pipeline where the other stages run
  // it, and rejoins the fast one's passes each time; a wait lasts at most 2 ms.
  const batcher = new StepBatcher({ fillWaitShare: 1, maxFillWaitMs: 2 })
  let slowDone = false
  const generate = async (shard: LlamaShard, awayMs: number) => {
    let out = await batcher.forward(shard, { tokens: [1, 2, 3] }, 0)
    for (let pos = 3; awayMs > 0 ? pos < 9 : !slowDone && pos < 250; pos++) {
      if (out.kind !== 'logits') throw new Error('expected logits')
      const token = createSampler({ temperature: 0 }).sample(out.logits)
      await new Promise((resolve) => (awayMs > 0 ? setTimeout(resolve, awayMs) : setImmediate(resolve)))
      out = await batcher.forward(shard, { tokens: [token] }, pos)
    }
    if (awayMs > 0) slowDone = true
  }
  await Promise.all([generate(fast!, 0), generate(slow!, 5)])
  const { fills, widest } = batcher.stats()
  expect(widest).toBe(2)
  // Missed: the slow session once (before its first return was seen), the fast one at its end.
  // Waiting for the slow one would miss it after every pass it shared with the fast one.
  expect(fills.missed).toBeLessThanOrEqual(2)
})
