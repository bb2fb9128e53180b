import { join } from 'node:path'
import type { GeneratedToken, InferenceEngine } from '@meshnet/engine'
import { createJsKernels, createMeshnetEngine, loadShard } from '@meshnet/engine'
import {
  type GGMLTypeName,
  type GGUFTensorInput,
  type GGUFValueInput,
  openGGUF,
  writeGGUF,
} from '@meshnet/gguf'
import { modelDir } from '@meshnet/test-harness'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { createLlamaCppEngine } from '../src/engine.ts'
import { openModelTokenizer } from '../src/tokenizer.ts'

let models: Awaited<ReturnType<typeof modelDir>>
let path: string

beforeAll(async () => {
  models = await modelDir()
  path = await models.model('engine-q8', {
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

/** A copy of `src` with some metadata replaced and some tensors re-typed (bytes left as they are). */
async function rewrite(
  src: string,
  name: string,
  change: {
    metadata?: Record<string, GGUFValueInput>
    tensor?: { name: string; type: GGMLTypeName; bytes: number }
    /** An extra F32 vector tensor. */
    add?: { name: string; length: number }
  },
): Promise<string> {
  const file = await openGGUF(src)
  try {
    const metadata = new Map<string, GGUFValueInput>(file.metadata)
    for (const [k, v] of Object.entries(change.metadata ?? {})) metadata.set(k, v)
    const tensors: GGUFTensorInput[] = []
    for (const t of file.tensors) {
      const retyped = change.tensor?.name === t.name ? change.tensor : undefined
      tensors.push({
        name: t.name,
        dims: t.dims,
        type: retyped ? retyped.type : t.type,
        data: retyped ? new Uint8Array(retyped.bytes) : await file.readTensor(t.name),
      })
    }
    if (change.add) {
      tensors.push({
        name: change.add.name,
        dims: [change.add.length],
        type: 'F32',
        data: new Uint8Array(change.add.length * 4),
      })
    }
    const out = join(src, '..', `${name}.gguf`)
    await writeGGUF(out, { metadata, tensors })
    return out
  } finally {
    await file.close()
  }
}

describe.each([
  ['meshnet', () => createMeshnetEngine({ modelPath: path, contextSize: 64, threads: 1 })],
  ['llama-cpp', () => createLlamaCppEngine({ modelPath: path, contextSize: 64, threads: 1 })],
] as const)('the %s engine', (name, create) => {
  let engine: InferenceEngine

  beforeAll(async () => {
    engine = await create()
  })

  afterAll(async () => {
    await engine?.dispose()
  })

  it('streams tokens as they are sampled; the pieces add up to the result', async () => {
    const pieces: GeneratedToken[] = []
    const callbacks: GeneratedToken[] = []
    const stream = engine.stream('The picture of the mountain', {
      maxTokens: 12,
      stopOnEog: false,
      onToken: (t) => callbacks.push(t),
    })
    let step = await stream.next()
    while (!step.done) {
      pieces.push(step.value)
      step = await stream.next()
    }
    const result = step.value
    expect(result.tokens).toHaveLength(12)
    expect(result.stopReason).toBe('maxTokens')
    expect(pieces.map((p) => p.text).join('')).toBe(result.text)
    expect(callbacks).toEqual(pieces)
    expect(result.text).toBe(engine.tokenizer.detokenize(result.tokens, { context: [1] }))
    expect(result.timings).toMatchObject({ promptTokens: expect.any(Number), generatedTokens: 12 })
    // Greedy is deterministic, and a second run (reusing the cached prompt) gives the same tokens.
    expect(
      (await engine.generate('The picture of the mountain', { maxTokens: 12, stopOnEog: false })).tokens,
    ).toEqual(result.tokens)
  })

  it('stops when its AbortSignal fires, keeping the tokens so far', async () => {
    const controller = new AbortController()
    let seen = 0
    const result = await engine.generate('Once upon a time', {
      maxTokens: 30,
      stopOnEog: false,
      signal: controller.signal,
      onToken: () => {
        if (++seen === 3) controller.abort()
      },
    })
    expect(result.stopReason).toBe('abort')
    expect(result.tokens).toHaveLength(3)
    const before = await engine.generate('Once upon a time', { maxTokens: 5, signal: AbortSignal.abort() })
    expect(before).toMatchObject({ stopReason: 'abort', tokens: [] })
    // The engine is still usable afterwards.
    expect(
      (await engine.generate('Once upon a time', { maxTokens: 4, stopOnEog: false })).tokens,
    ).toHaveLength(4)
  })

  it('runs overlapping generations one after the other', async () => {
    const [a, b] = await Promise.all([
      engine.generate('the world', { maxTokens: 6, stopOnEog: false }),
      engine.generate('the world', { maxTokens: 6, stopOnEog: false, temperature: 0.7, seed: 3 }),
    ])
    expect(a.tokens).toHaveLength(6)
    expect(b.tokens).toHaveLength(6)
    expect((await engine.generate('the world', { maxTokens: 6, stopOnEog: false })).tokens).toEqual(a.tokens)
    const again = await engine.generate('the world', {
      maxTokens: 6,
      stopOnEog: false,
      temperature: 0.7,
      seed: 3,
    })
    expect(again.tokens).toEqual(b.tokens)
  })

  it('stops when the context is full and refuses prompts that do not fit', async () => {
    const prompt = Array.from({ length: 40 }, (_, i) => 300 + i)
    const result = await engine.generate(prompt, { maxTokens: 500, stopOnEog: false })
    expect(result.stopReason).toBe('contextFull')
    expect(prompt.length + result.tokens.length).toBeLessThanOrEqual(engine.contextSize + 1)
    const long = Array.from({ length: engine.contextSize + 5 }, () => 300)
    await expect(engine.generate(long, { maxTokens: 1 })).rejects.toMatchObject({
      name: 'ContextOverflowError',
    })
  })

  it('rejects bad options and empty prompts with an error naming them', async () => {
    await expect(engine.generate('x', { temperature: -1 })).rejects.toMatchObject({
      name: 'InvalidArgumentError',
      message: expect.stringContaining('temperature'),
    })
    await expect(engine.generate([], { maxTokens: 1 })).rejects.toMatchObject({
      name: 'InvalidArgumentError',
    })
  })

  it(`is named ${name}`, () => {
    expect(engine.engine).toBe(name)
  })
})

describe('meshnet engine options', () => {
  it('the JS reference kernels and the llama.cpp tokenizer give the same tokens and logits', async () => {
    const wasm = await createMeshnetEngine({ modelPath: path, contextSize: 64, threads: 1 })
    const js = await createMeshnetEngine({
      modelPath: path,
      contextSize: 64,
      kernels: 'js',
      tokenizer: 'llama-cpp',
      openTokenizer: openModelTokenizer,
    })
    try {
      const text = 'naïve café, the world'
      const tokens = wasm.tokenizer.tokenize(text, { addSpecial: true })
      expect(js.tokenizer.tokenize(text, { addSpecial: true })).toEqual(tokens)
      const a = await wasm.evaluateLogits(tokens)
      const b = await js.evaluateLogits(tokens)
      let worst = 0
      for (const [i, row] of a.entries())
        for (const [j, v] of row.entries()) worst = Math.max(worst, Math.abs(v - b[i]![j]!))
      expect(worst).toBeLessThan(1e-3)
    } finally {
      await js.dispose()
      await wasm.dispose()
    }
  })

  it('can no longer be used after dispose', async () => {
    const engine = await createMeshnetEngine({ modelPath: path, contextSize: 64, threads: 1 })
    await engine.dispose()
    await expect(engine.generate('x', { maxTokens: 1 })).rejects.toMatchObject({
      name: 'EngineDisposedError',
    })
  })
})

describe('unsupported models', () => {
  it('names the architecture it cannot run and points to the llama-cpp engine', async () => {
    const gpt2 = await rewrite(path, 'gpt2', {
      metadata: { 'general.architecture': { type: 'string', value: 'gpt2' } },
    })
    const kernels = createJsKernels()
    await expect(loadShard({ path: gpt2, kernels })).rejects.toMatchObject({
      name: 'UnsupportedModelError',
      message: expect.stringMatching(/'gpt2' model.*--engine llama-cpp/),
    })
    await expect(createMeshnetEngine({ modelPath: gpt2, threads: 1 })).rejects.toMatchObject({
      name: 'UnsupportedModelError',
    })
  })

  it('says mixture-of-experts and LongRoPE are not run, and what runs them', async () => {
    const moe = await rewrite(path, 'qwen3moe', {
      metadata: { 'general.architecture': { type: 'string', value: 'qwen3moe' } },
    })
    await expect(loadShard({ path: moe, kernels: createJsKernels() })).rejects.toMatchObject({
      name: 'UnsupportedModelError',
      message: expect.stringMatching(
        /'qwen3moe' model; the Meshnet engine runs llama, qwen2, qwen3, gemma2, gemma3, phi3 \(not mixture-of-experts\); use --engine llama-cpp \(or auto/,
      ),
    })
    const longRope = await rewrite(path, 'long-rope', {
      add: { name: 'rope_factors_long.weight', length: 16 },
    })
    await expect(loadShard({ path: longRope, kernels: createJsKernels() })).rejects.toMatchObject({
      name: 'UnsupportedModelError',
      message: expect.stringContaining("LongRoPE ('rope_factors_long.weight') is not supported"),
    })
    const experts = await rewrite(path, 'experts', {
      add: { name: 'blk.0.ffn_gate_inp.weight', length: 256 },
    })
    await expect(loadShard({ path: experts, kernels: createJsKernels() })).rejects.toMatchObject({
      message: expect.stringContaining("mixture-of-experts (tensor 'blk.0.ffn_gate_inp.weight')"),
    })
  })

  it('names a tensor type it has no kernel for', async () => {
    // IQ2_XXS: 66 bytes per 256 weights; attn_q is 256 rows of 256.
    const iq2 = await rewrite(path, 'iq2', {
      tensor: { name: 'blk.1.attn_q.weight', type: 'IQ2_XXS', bytes: 66 * 256 },
    })
    await expect(createMeshnetEngine({ modelPath: iq2, threads: 1 })).rejects.toMatchObject({
      name: 'UnsupportedTensorTypeError',
      message: expect.stringMatching(/'blk\.1\.attn_q\.weight' is IQ2_XXS;.*use --engine llama-cpp/),
    })
    // A shard whose layers do not include that tensor loads fine.
    const shard = await loadShard({ path: iq2, layers: [0, 1], kernels: createJsKernels() })
    expect(shard.layers).toEqual([0, 1])
    await shard.dispose()
  })

  it('says so when llama.cpp cannot load a file', async () => {
    await expect(createLlamaCppEngine({ modelPath: join(path, '..', 'missing.gguf') })).rejects.toMatchObject(
      {
        name: 'ModelLoadError',
      },
    )
  })
})
