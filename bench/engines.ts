// What the engine benchmarks share: generated models cached on disk, and the Meshnet engine against
// node-llama-cpp on one model, decode and prompt tokens/s, in the same run.
import { createHash } from 'node:crypto'
import { existsSync } from 'node:fs'
import { mkdir, rename, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { createMeshnetEngine, type InferenceEngine } from '@meshnet/engine'
import { type GenerateModelOptions, generateModel } from '@meshnet/gguf'
import { createLlamaCppEngine } from '@meshnet/llama-cpp'
import { summary } from './lib.ts'

/** A generated model, cached under the OS temp dir by its options (the same options, the same bytes). */
export async function cachedModel(options: Omit<GenerateModelOptions, 'out'>): Promise<string> {
  const dir = join(tmpdir(), 'meshnet-bench-models')
  const key = createHash('sha256').update(JSON.stringify(options)).digest('hex').slice(0, 12)
  const name = `${options.arch ?? 'llama'}-${options.layers}x${options.embd}-${options.type}-${key}.gguf`
  const path = join(dir, name)
  if (existsSync(path)) return path
  await mkdir(dir, { recursive: true })
  const partial = `${path}.${process.pid}.partial`
  const started = performance.now()
  try {
    await generateModel({ ...options, out: partial })
    await rename(partial, path)
  } finally {
    await rm(partial, { force: true })
  }
  console.log(`generated ${name} in ${((performance.now() - started) / 1000).toFixed(0)} s`)
  return path
}

export interface Speed {
  decode: number
  prompt: number
}

export interface SpeedOptions {
  /** Prompt tokens, then `decode` tokens decoded greedily. */
  prompt: number
  decode: number
  contextSize: number
  rounds: number
  /** The model's vocabulary size: prompt tokens are drawn below it. */
  vocab: number
}

/**
 * Prompt and decode tokens/s of one generation: a fresh prompt, then the decoded tokens. Decode is
 * 1000 / the median time between tokens, which a short stall of the machine does not move.
 */
export async function speed(engine: InferenceEngine, round: number, o: SpeedOptions): Promise<Speed> {
  // A different prompt every round, so that the Meshnet engine's prefix cache holds only BOS.
  const prompt = [
    1,
    ...Array.from({ length: o.prompt - 1 }, (_, i) => 300 + ((round * 7919 + i * 104_729) % (o.vocab - 300))),
  ]
  const stamps: number[] = []
  const result = await engine.generate(prompt, {
    maxTokens: o.decode,
    stopOnEog: false,
    onToken: () => {
      if (stamps.length < o.decode) stamps.push(performance.now())
    },
  })
  const steps = stamps.slice(1).map((t, i) => t - stamps[i]!)
  const t = result.timings
  return { decode: 1000 / summary(steps).median, prompt: (t.promptTokens * 1000) / t.promptMs }
}

/** Both engines on one model, alternating within each round; the best round of each. */
export async function compareEngines(
  path: string,
  threads: number,
  o: SpeedOptions,
): Promise<{ meshnet: Speed; llama: Speed }> {
  const meshnet = await createMeshnetEngine({ modelPath: path, threads, contextSize: o.contextSize })
  const llama = await createLlamaCppEngine({ modelPath: path, threads, contextSize: o.contextSize })
  const best = { meshnet: { decode: 0, prompt: 0 }, llama: { decode: 0, prompt: 0 } }
  const keep = (into: Speed, s: Speed) => {
    into.decode = Math.max(into.decode, s.decode)
    into.prompt = Math.max(into.prompt, s.prompt)
  }
  try {
    // A short warm-up each: the first generation compiles and touches everything.
    await meshnet.generate([1, 2, 3], { maxTokens: 4, stopOnEog: false })
    await llama.generate([1, 2, 3], { maxTokens: 4, stopOnEog: false })
    for (let round = 0; round < o.rounds; round++) {
      keep(best.meshnet, await speed(meshnet, round, o))
      keep(best.llama, await speed(llama, round, o))
    }
  } finally {
    await meshnet.dispose()
    await llama.dispose()
  }
  return best
}
