// The Meshnet engine against node-llama-cpp, in the same run, on the files people download: the
// llama-quantize mixes Q4_K_M and Q5_K_M and the single types Q6_K, Q8_0 and IQ4_XS, on generated
// llama and qwen3 models of ~125M and ~1B parameters, at 1 and 2 threads. Decode and prompt
// tokens/s of each engine and their ratio.
//
// Bar: Meshnet decode ≥ 0.8 × llama.cpp's at 1 thread for Q4_K_M and Q5_K_M.
//
//   pnpm bench models                                   # ~15 minutes (the first run also writes the models)
//   BENCH_QUICK=1 pnpm bench models                     # 125M llama, Q4_K_M and Q5_K_M, 1 thread
//   BENCH_MODELS_ARCHS=qwen3 BENCH_MODELS_SIZES=1b BENCH_MODELS_TYPES=Q4_K_M BENCH_MODELS_THREADS=1,2 ...
//
// Each figure is the best of BENCH_MODELS_ROUNDS rounds (the engines alternate within a round).
import type { GenerateModelOptions, ModelArchitecture, ModelWeightType } from '@meshnet/gguf'
import { cachedModel, compareEngines } from './engines.ts'
import { table } from './lib.ts'

type Size = '125m' | '1b'
type Shape = Omit<GenerateModelOptions, 'out' | 'type'>

const QUICK = process.env.BENCH_QUICK === '1'
const list = (name: string, fallback: string) => (process.env[name] ?? fallback).split(',').filter(Boolean)
const ARCHS = list('BENCH_MODELS_ARCHS', QUICK ? 'llama' : 'llama,qwen3') as ModelArchitecture[]
const SIZES = list('BENCH_MODELS_SIZES', QUICK ? '125m' : '125m,1b') as Size[]
const TYPES = list(
  'BENCH_MODELS_TYPES',
  QUICK ? 'Q4_K_M,Q5_K_M' : 'Q4_K_M,Q5_K_M,Q6_K,Q8_0,IQ4_XS',
) as ModelWeightType[]
const THREADS = list('BENCH_MODELS_THREADS', QUICK ? '1' : '1,2').map(Number)
/** The ~1B shapes take 1 thread and the two mixes of the bar unless told otherwise (time). */
const BIG_TYPES = list('BENCH_MODELS_BIG_TYPES', 'Q4_K_M,Q5_K_M') as ModelWeightType[]
const BIG_THREADS = list('BENCH_MODELS_BIG_THREADS', '1').map(Number)
const ROUNDS = Number(process.env.BENCH_MODELS_ROUNDS ?? (QUICK ? 2 : 3))
const BAR = 0.8

// Llama: SmolLM-135M-like and Llama-3.2-1B-like (vocabulary 32000 instead of 128256, to keep the
// files and the output projection small). Qwen 3: a 125M shape with Qwen's head size of 128, and
// Qwen3-0.6B's (28 layers, embd 1024, 16 heads over 8 of 128, FFN 3072; vocabulary 32000).
const SHAPES: Record<ModelArchitecture, Partial<Record<Size, Shape>>> = {
  llama: {
    '125m': { layers: 12, embd: 768, heads: 12, kvHeads: 4, ff: 2048, vocab: 32000 },
    '1b': { layers: 16, embd: 2048, heads: 32, kvHeads: 8, ff: 8192, vocab: 32000 },
  },
  qwen3: {
    '125m': {
      arch: 'qwen3',
      layers: 12,
      embd: 768,
      heads: 8,
      kvHeads: 4,
      headDim: 128,
      ff: 2048,
      vocab: 32000,
    },
    '1b': {
      arch: 'qwen3',
      layers: 28,
      embd: 1024,
      heads: 16,
      kvHeads: 8,
      headDim: 128,
      ff: 3072,
      vocab: 32000,
    },
  },
  qwen2: {},
  gemma2: {},
  gemma3: {},
  phi3: {},
}

async function main(): Promise<void> {
  const started = performance.now()
  console.log(
    `prompt 128 tokens, then 64 decoded greedily (decode: 1000 / median time between tokens); context 512; best of ${ROUNDS} rounds`,
  )
  const rows: Array<Record<string, string | number>> = []
  const bar: Array<{ model: string; ratio: number }> = []
  for (const arch of ARCHS) {
    for (const size of SIZES) {
      const shape = SHAPES[arch][size]
      if (shape === undefined) {
        console.log(`${arch} ${size}: no shape here; skipped`)
        continue
      }
      const big = size === '1b'
      for (const type of big ? TYPES.filter((t) => BIG_TYPES.includes(t)) : TYPES) {
        const path = await cachedModel({ ...shape, type, context: 2048, seed: 7 })
        for (const threads of big ? THREADS.filter((t) => BIG_THREADS.includes(t)) : THREADS) {
          const { meshnet, llama } = await compareEngines(path, threads, {
            prompt: 128,
            decode: 64,
            contextSize: 512,
            rounds: ROUNDS,
            vocab: shape.vocab,
          })
          const ratio = meshnet.decode / llama.decode
          const model = `${arch} ${size} ${type}`
          if (threads === 1 && (type === 'Q4_K_M' || type === 'Q5_K_M')) bar.push({ model, ratio })
          console.log(
            `  ${model}, ${threads} thread${threads > 1 ? 's' : ''}: decode ${meshnet.decode.toFixed(1)} vs ${llama.decode.toFixed(1)} t/s (${ratio.toFixed(2)}), prompt ${(meshnet.prompt / llama.prompt).toFixed(2)}`,
          )
          rows.push({
            model,
            threads,
            'meshnet decode t/s': meshnet.decode,
            'llama.cpp decode t/s': llama.decode,
            'decode ratio': ratio,
            'meshnet prompt t/s': meshnet.prompt,
            'llama.cpp prompt t/s': llama.prompt,
            'prompt ratio': meshnet.prompt / llama.prompt,
          })
        }
      }
    }
  }
  console.log('tokens/s, Meshnet engine vs node-llama-cpp (same machine, same run)')
  table(rows)
  console.log(`\nbar: Meshnet decode ≥ ${BAR} × llama.cpp's at 1 thread for Q4_K_M and Q5_K_M`)
  for (const { model, ratio } of bar) {
    console.log(`  ${model}: ${ratio.toFixed(2)} — ${ratio >= BAR ? 'met' : 'NOT MET'}`)
  }
  console.log(`(${((performance.now() - started) / 1000).toFixed(0)} s)`)
}

await main()
