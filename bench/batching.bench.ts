// Continuous batching and prompt speed on one member, against llama.cpp measured in the same run,
// on the 507M-parameter llama of the sharded bench in Q8_0 and in Q4_K_M, at 1 thread:
//
//   - the Meshnet engine with 4 sequences: the aggregate tokens/s of 4 concurrent generations
//     against its own single stream (goal ≥ 2.5×: decode reads every weight once per pass, and a
//     pass with 4 rows should cost little more than one with 1);
//   - llama.cpp's own batching for the same: node-llama-cpp with 4 sequences, and
//     `llama-batched-bench` (built from node-llama-cpp's llama.cpp source; skipped with a message
//     where it cannot be built) at 1 and 4 parallel sequences;
//   - prompt tokens/s of a 128-token prompt against llama.cpp's (goal ≥ 0.8).
//
//   node --conditions=meshnet-source bench/batching.bench.ts
//   BATCHING_BENCH_TYPES=Q8_0,Q4_K_M   BATCHING_BENCH_THREADS=1   BATCHING_BENCH_REPEAT=3
//   BATCHING_BENCH_MODEL=quick         a 30M-parameter model instead (a quick run)
import { createMeshnetEngine, type InferenceEngine } from '@meshnet/engine'
import type { ModelWeightType } from '@meshnet/gguf'
import { createLlamaCppEngine } from '@meshnet/llama-cpp'
import { BENCH_507M, cachedModel, table } from './lib.ts'
import { llamaTools, measureBatched } from './llama-tools.ts'

const TYPES = (process.env.BATCHING_BENCH_TYPES ?? 'Q8_0,Q4_K_M').split(',') as ModelWeightType[]
const THREADS = Number(process.env.BATCHING_BENCH_THREADS ?? 1)
const REPEAT = Number(process.env.BATCHING_BENCH_REPEAT ?? 3)
const QUICK = { layers: 8, embd: 512, heads: 8, kvHeads: 4, ff: 1536, vocab: 8000 }
const SHAPE = process.env.BATCHING_BENCH_MODEL === 'quick' ? QUICK : BENCH_507M
const CONCURRENT = 4
const TOKENS = 32
const PROMPT = 32
const LONG_PROMPT = 128
let salt = 0

/** A prompt of `n` token ids nobody has asked for before (no engine reuses a cached prefix). */
function promptOf(n: number, vocab: number): number[] {
  salt++
  return Array.from({ length: n }, (_, i) => (i === 0 ? 1 : (i * 7919 + salt * 104729) % vocab))
}

/** Decode tokens/s of one stream: from the median gap between its tokens. */
async function single(engine: InferenceEngine, vocab: number): Promise<number> {
  const times: number[] = []
  await engine.generate(promptOf(PROMPT, vocab), {
    maxTokens: TOKENS,
    stopOnEog: false,
    onToken: () => times.push(performance.now()),
  })
  const gaps = times.slice(1).map((t, i) => t - times[i]!)
  return 1000 / median(gaps)
}

/** Tokens/s of `CONCURRENT` generations started together: every token after each one's first, over their common span. */
async function aggregate(engine: InferenceEngine, vocab: number): Promise<number> {
  const runs = await Promise.all(
    Array.from({ length: CONCURRENT }, async () => {
      const times: number[] = []
      await engine.generate(promptOf(PROMPT, vocab), {
        maxTokens: TOKENS,
        stopOnEog: false,
        onToken: () => times.push(performance.now()),
      })
      return times
    }),
  )
  const tokens = runs.reduce((sum, t) => sum + t.length - 1, 0)
  const span = Math.max(...runs.map((t) => t.at(-1)!)) - Math.min(...runs.map((t) => t[0]!))
  return (tokens * 1000) / span
}

/** Prompt tokens/s: a fresh `LONG_PROMPT`-token prompt to its first token. */
async function prompt(engine: InferenceEngine, vocab: number): Promise<number> {
  const result = await engine.generate(promptOf(LONG_PROMPT, vocab), { maxTokens: 1, stopOnEog: false })
  return (LONG_PROMPT * 1000) / result.timings.promptMs
}

function median(values: readonly number[]): number {
  const sorted = [...values].sort((a, b) => a - b)
  return sorted[Math.floor(sorted.length / 2)] ?? Number.NaN
}

const tools = await llamaTools({ log: (line) => console.log(`  llama.cpp tools: ${line}`) })
if ('skip' in tools) console.log(`llama-batched-bench: skipped (${tools.skip})`)
console.log(
  `${THREADS} thread(s); ${CONCURRENT} sequences; prompt ${PROMPT} tokens then ${TOKENS} decoded per generation; prompt speed from a ${LONG_PROMPT}-token prompt; best of ${REPEAT} rounds, engines interleaved`,
)
const verdict = (ratio: number, goal: number) =>
  `${ratio.toFixed(2)}× (goal ≥ ${goal}×: ${ratio >= goal ? 'met' : 'NOT met'})`
for (const type of TYPES) {
  const modelPath = await cachedModel(SHAPE, type, type === 'Q8_0' ? {} : { fill: 'tiled' })
  const engines = {
    meshnet: await createMeshnetEngine({
      modelPath,
      threads: THREADS,
      parallel: CONCURRENT,
      contextSize: 512,
      spinIterations: 0,
    }),
    llama: await createLlamaCppEngine({
      modelPath,
      threads: THREADS,
      parallel: CONCURRENT,
      contextSize: 512,
    }),
  }
  const vocab = SHAPE.vocab
  const best = { meshnet: { one: 0, four: 0, prompt: 0 }, llama: { one: 0, four: 0, prompt: 0 } }
  try {
    for (const engine of Object.values(engines)) await engine.generate(promptOf(8, vocab), { maxTokens: 2 })
    for (let r = 0; r < REPEAT; r++) {
      for (const name of ['meshnet', 'llama'] as const) {
        const engine = engines[name]
        const b = best[name]
        b.one = Math.max(b.one, await single(engine, vocab))
        b.four = Math.max(b.four, await aggregate(engine, vocab))
        b.prompt = Math.max(b.prompt, await prompt(engine, vocab))
      }
    }
  } finally {
    for (const engine of Object.values(engines)) await engine.dispose()
  }
  let batched: { one: number; four: number } | undefined
  if (!('skip' in tools)) {
    const figures = await measureBatched(tools, modelPath, {
      threads: THREADS,
      pp: PROMPT,
      tg: TOKENS,
      parallel: [1, CONCURRENT],
    })
    const at = (pl: number) => figures.find((f) => f.pl === pl)?.speedTg ?? Number.NaN
    batched = { one: at(1), four: at(CONCURRENT) }
  }
  console.log(`\n${type}, ${modelPath.split('/').at(-1)}`)
  table([
    {
      engine: 'Meshnet engine',
      '1 stream tok/s': best.meshnet.one,
      [`${CONCURRENT} streams tok/s`]: best.meshnet.four,
      'batching gain': `${(best.meshnet.four / best.meshnet.one).toFixed(2)}×`,
      'prompt tok/s': best.meshnet.prompt,
    },
    {
      engine: 'node-llama-cpp',
      '1 stream tok/s': best.llama.one,
      [`${CONCURRENT} streams tok/s`]: best.llama.four,
      'batching gain': `${(best.llama.four / best.llama.one).toFixed(2)}×`,
      'prompt tok/s': best.llama.prompt,
    },
    batched === undefined
      ? {
          engine: 'llama-batched-bench',
          '1 stream tok/s': '-',
          [`${CONCURRENT} streams tok/s`]: '-',
          'batching gain': 'skipped',
          'prompt tok/s': '-',
        }
      : {
          engine: 'llama-batched-bench',
          '1 stream tok/s': batched.one,
          [`${CONCURRENT} streams tok/s`]: batched.four,
          'batching gain': `${(batched.four / batched.one).toFixed(2)}×`,
          'prompt tok/s': '-',
        },
  ])
  console.log(
    `  Meshnet, ${CONCURRENT} sessions against its single stream: ${verdict(best.meshnet.four / best.meshnet.one, 2.5)}`,
  )
  console.log(
    `  Meshnet ${CONCURRENT} sessions against llama.cpp's ${CONCURRENT}: ${(best.meshnet.four / best.llama.four).toFixed(2)}×`,
  )
  console.log(`  prompt against llama.cpp: ${verdict(best.meshnet.prompt / best.llama.prompt, 0.8)}`)
}
