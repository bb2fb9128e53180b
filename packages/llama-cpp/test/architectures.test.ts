import {
  argmax,
  createLocalAllReduce,
  createMeshnetEngine,
  createWasmKernels,
  type Kernels,
  type LlamaShard,
  loadShard,
  type MeshnetEngine,
} from '@meshnet/engine'
import { type ModelArchitecture, type ModelWeightType, splitGGUF } from '@meshnet/gguf'
import { type ModelShape, modelDir } from '@meshnet/test-harness'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { createLlamaCppEngine, type LlamaCppEngine } from '../src/engine.ts'
import { topGap } from './logits.ts'

// Every architecture the Meshnet engine runs, in a spread of weight types and llama-quantize mixes,
// against llama.cpp (node-llama-cpp, CPU, F16 KV cache) on generated models: teacher-forced logits
// at every position within a tolerance, greedy tokens equal except at llama.cpp's own near ties;
// then the same model split over two members, as a pipeline (layers) and tensor-parallel (heads
// and FFN columns), run in this process with an in-process all-reduce.

/**
 * Largest |Δlogit| allowed: both engines round activations alike (8-bit blocks, halves for F16
 * weights and the KV cache) and agree to ~1e-6 until an activation lands within float noise of a
 * rounding boundary; that flip moves later logits by up to a few hundredths.
 */
function tolerance(type: ModelWeightType): number {
  if (type === 'F32') return 2e-3
  if (type === 'F16') return 1e-2
  // BF16 weights meet activations rounded to bf16 (8 significant bits against f16's 11): one flip
  // moves a logit more.
  if (type === 'BF16') return 5e-2
  return 0.1
}

const BASE: ModelShape = { layers: 4, embd: 256, heads: 4, kvHeads: 2, ff: 512, vocab: 1000 }

const SHAPES: Record<ModelArchitecture, ModelShape> = {
  llama: BASE,
  qwen2: BASE,
  // Qwen 3 and Gemma 3 have a head size of their own (here 128, so heads × size ≠ embd).
  qwen3: { ...BASE, headDim: 128 },
  // Gemma 2 alternates local and global layers; a window shorter than the test's 50 positions.
  gemma2: { ...BASE, slidingWindow: 12 },
  // Gemma 3: five local layers, then a global one.
  gemma3: { ...BASE, layers: 6, headDim: 128, slidingWindow: 12 },
  phi3: BASE,
}

const CASES: Array<[arch: ModelArchitecture, type: ModelWeightType]> = [
  ['llama', 'Q4_K_M'],
  ['llama', 'Q5_K_M'],
  ['llama', 'IQ4_XS'],
  ['llama', 'Q4_1'],
  ['qwen2', 'Q8_0'],
  ['qwen2', 'Q5_K_M'],
  ['qwen2', 'Q5_0'],
  ['qwen3', 'Q4_K_M'],
  ['qwen3', 'Q6_K'],
  ['qwen3', 'Q3_K_M'],
  ['gemma2', 'Q8_0'],
  ['gemma2', 'Q4_K_M'],
  ['gemma2', 'BF16'],
  ['gemma2', 'F32'],
  ['gemma3', 'Q4_K_M'],
  ['gemma3', 'IQ4_NL'],
  ['gemma3', 'F16'],
  ['phi3', 'Q4_K_M'],
  ['phi3', 'Q5_1'],
  ['phi3', 'Q2_K'],
  ['phi3', 'F32'],
]

const PROMPT = 'Once upon a time, in a land far away, there lived a'
const STEPS = 24

let models: Awaited<ReturnType<typeof modelDir>>
let kernels: Kernels
/** Max |Δlogit| against llama.cpp per case and run (printed with MESHNET_PARITY_REPORT=1). */
const measured: Array<{ model: string; whole?: number; pipeline?: number; tensor?: number }> = []

beforeAll(async () => {
  models = await modelDir()
  kernels = await createWasmKernels({ threads: 1 })
})

afterAll(async () => {
  if (process.env.MESHNET_PARITY_REPORT) console.table(measured)
  await kernels?.dispose()
  await models?.cleanup()
})

function maxDifference(a: Float32Array[], b: Float32Array[]): number {
  expect(b).toHaveLength(a.length)
  let worst = 0
  for (const [i, row] of a.entries()) {
    for (let j = 0; j < row.length; j++) worst = Math.max(worst, Math.abs(row[j]! - b[i]![j]!))
  }
  return worst
}

/** Argmax differs only where llama.cpp's own top two are closer than twice the difference. */
function expectSameChoices(reference: Float32Array[], got: Float32Array[], worst: number): void {
  for (const [i, row] of reference.entries()) {
    if (argmax(row) !== argmax(got[i]!)) expect(topGap(row)).toBeLessThan(2 * worst)
  }
}

/**
 * Teacher-forced logits through shards that run in lockstep, as generation runs them: the prompt
 * in one batch (logits of every position), then one token at a time. `stages` are pipeline stages
 * in order; each stage is one shard, or a tensor-parallel group whose members run together.
 */
async function shardLogits(
  stages: Array<Array<{ shard: LlamaShard; allReduce?: Parameters<LlamaShard['forward']>[2] }>>,
  tokens: number[],
  decodeFrom: number,
): Promise<Float32Array[]> {
  const rows: Float32Array[] = []
  const vocab = stages[0]![0]!.shard.config.vocab
  const step = async (batch: number[], pos: number) => {
    let input: { tokens: number[] } | { hidden: Float32Array } = { tokens: batch }
    for (const group of stages) {
      const outs = await Promise.all(
        group.map(({ shard, allReduce }) => shard.forward(input, pos, { ...allReduce, logits: 'all' })),
      )
      const out = outs.find((o) => o.kind === 'logits') ?? outs[0]!
      if (out.kind === 'logits') {
        for (let i = 0; i < out.rows; i++) rows.push(out.logits.slice(i * vocab, (i + 1) * vocab))
        return
      }
      input = { hidden: out.hidden }
    }
  }
  await step(tokens.slice(0, decodeFrom), 0)
  for (let pos = decodeFrom; pos < tokens.length; pos++) await step([tokens[pos]!], pos)
  return rows
}

describe.each(CASES)('%s, %s weights', (arch, type) => {
  let path: string
  let llama: LlamaCppEngine
  let meshnet: MeshnetEngine
  let prompt: number[]
  let sequence: number[]
  let reference: Float32Array[]
  let continuation: number[]
  const shards: LlamaShard[] = []
  const row: (typeof measured)[number] = { model: `${arch} ${type}` }
  measured.push(row)

  beforeAll(async () => {
    path = await models.model(`${arch}-${type}`, { ...SHAPES[arch], arch, type })
    llama = await createLlamaCppEngine({ modelPath: path, contextSize: 128, threads: 1 })
    meshnet = await createMeshnetEngine({ modelPath: path, contextSize: 128, threads: 1, kernels })
    prompt = llama.tokenizer.tokenize(PROMPT, { addSpecial: true })
    continuation = (await llama.generate(prompt, { maxTokens: STEPS, stopOnEog: false })).tokens
    sequence = [...prompt, ...continuation]
    reference = await llama.evaluateLogits(sequence, { decodeFrom: prompt.length })
  }, 120_000)

  afterAll(async () => {
    for (const shard of shards.splice(0)) await shard.dispose()
    await meshnet?.dispose()
    await llama?.dispose()
  })

  it('matches llama.cpp on the whole model: logits at every position, greedy tokens', async () => {
    expect(meshnet.shard.config.architecture).toBe(arch)
    const logits = await meshnet.evaluateLogits(sequence, { decodeFrom: prompt.length })
    const worst = maxDifference(reference, logits)
    row.whole = worst
    expect(worst).toBeLessThan(tolerance(type))
    expectSameChoices(reference, logits, worst)
    const got = await meshnet.generate(prompt, { maxTokens: STEPS, stopOnEog: false })
    const diverged = got.tokens.findIndex((t, i) => t !== continuation[i])
    if (diverged >= 0) expect(topGap(reference[prompt.length - 1 + diverged]!)).toBeLessThan(2 * worst)
  })

  it('gives the whole model’s logits as a 2-member pipeline (bit for bit unless the output is tied)', async () => {
    const layers = SHAPES[arch].layers
    const half = Math.floor(layers / 2)
    const first = await loadShard({ path, layers: [0, half], kernels, contextSize: 128 })
    shards.push(first)
    const second = await loadShard({ path, layers: [half, layers], kernels, contextSize: 128 })
    shards.push(second)
    const whole = await loadShard({ path, kernels, contextSize: 128 })
    shards.push(whole)
    const split = await shardLogits([[{ shard: first }], [{ shard: second }]], sequence, prompt.length)
    const single = await shardLogits([[{ shard: whole }]], sequence, prompt.length)
    // Hidden states travel as f32, so the stages compute what the whole model computes. One
    // exception: with a tied output (Gemma) the whole model multiplies by its embedding table in the
    // ggml layout, while a last stage without the embedding packs its copy (Q4_0/Q8_0), which
    // changes the order of f32 additions in the output projection.
    const tied = arch === 'gemma2' || arch === 'gemma3'
    expect(maxDifference(single, split)).toBeLessThan(tied ? 1e-4 : Number.MIN_VALUE)
    row.pipeline = maxDifference(reference, split)
    expect(row.pipeline).toBeLessThan(tolerance(type))
  })

  it('matches llama.cpp split tensor-parallel over 2 members (heads and FFN columns)', async () => {
    const { heads, ff } = { heads: SHAPES[arch].heads, ff: SHAPES[arch].ff }
    const [ra, rb] = createLocalAllReduce(2)
    const a = await loadShard({
      path,
      kernels,
      contextSize: 128,
      columns: { heads: [0, heads / 2], ffn: [0, ff / 2] },
    })
    shards.push(a)
    const b = await loadShard({
      path,
      kernels,
      contextSize: 128,
      columns: { heads: [heads / 2, heads], ffn: [ff / 2, ff] },
      head: false,
    })
    shards.push(b)
    const logits = await shardLogits(
      [
        [
          { shard: a, allReduce: { allReduce: ra } },
          { shard: b, allReduce: { allReduce: rb } },
        ],
      ],
      sequence,
      prompt.length,
    )
    // The members' partial sums are added in another order than one member adds them, which flips
    // a few more activation roundings: twice the whole model's allowance.
    const worst = maxDifference(reference, logits)
    row.tensor = worst
    expect(worst).toBeLessThan(2 * tolerance(type))
    expectSameChoices(reference, logits, worst)
  })
})

describe('a split model (name-00001-of-00003.gguf)', () => {
  it('gives the same tokens as the same model in one file, on llama.cpp and on the Meshnet engine', async () => {
    const whole = await models.model('split-source', { ...SHAPES.qwen3, arch: 'qwen3', type: 'Q4_K_M' })
    const parts = await splitGGUF(whole, { parts: 3, prefix: whole.replace(/\.gguf$/, '-split') })
    expect(parts.map((p) => p.slice(-20))).toEqual([
      '-00001-of-00003.gguf',
      '-00002-of-00003.gguf',
      '-00003-of-00003.gguf',
    ])
    const run = async (path: string) => {
      const llama = await createLlamaCppEngine({ modelPath: path, contextSize: 128, threads: 1 })
      const meshnet = await createMeshnetEngine({ modelPath: path, contextSize: 128, threads: 1, kernels })
      try {
        const prompt = llama.tokenizer.tokenize(PROMPT, { addSpecial: true })
        const options = { maxTokens: STEPS, stopOnEog: false }
        return {
          llama: (await llama.generate(prompt, options)).tokens,
          meshnet: (await meshnet.generate(prompt, options)).tokens,
          logits: await meshnet.evaluateLogits(prompt),
        }
      } finally {
        await meshnet.dispose()
        await llama.dispose()
      }
    }
    const one = await run(whole)
    const split = await run(parts[0]!)
    expect(split.llama).toEqual(one.llama)
    expect(split.meshnet).toEqual(one.meshnet)
    expect(maxDifference(one.logits, split.logits)).toBe(0)
  })
})
