// The Meshnet engine against node-llama-cpp on one node, in the same run: decode and prompt
// tokens/s on generated ~100M-parameter llama models (F32, Q8_0, Q4_0) at 1 and 2 threads, how close
// each engine's decode comes to the memory bound (weight bytes read per token × tokens/s against the
// memory read bandwidth measured here), and peak RSS against file size for a whole model and for
// half its layers, each in its own child process.
//
// Bar: Meshnet decode ≥ 0.5 × llama.cpp's at 1 thread on Q8_0 and Q4_0. Goal: ≥ 0.8.
//
//   pnpm bench inference                       # ~5-8 minutes (the first run also writes the models)
//   BENCH_QUICK=1 pnpm bench inference         # 4 layers, Q8_0 and Q4_0, 1 thread: ~1 minute
//   BENCH_INFERENCE_TYPES=Q4_0 BENCH_INFERENCE_THREADS=1 BENCH_INFERENCE_ROUNDS=5 ...
//
// Each figure is the best of BENCH_INFERENCE_ROUNDS rounds (the engines alternate within a round):
// on a shared machine the fastest round is the one least disturbed by other processes. Decode
// tokens/s of a round is 1000 / the median time between two tokens.
import { spawn } from 'node:child_process'
import { stat } from 'node:fs/promises'
import { Worker } from 'node:worker_threads'
import { createMeshnetEngine, createWasmKernels, loadShard } from '@meshnet/engine'
import { type ModelWeightType, openGGUF } from '@meshnet/gguf'
import { createLlamaCppEngine } from '@meshnet/llama-cpp'
import { kernelsModule } from '../packages/engine/src/kernels/wasm.ts'
import { cachedModel, compareEngines } from './engines.ts'
import { table } from './lib.ts'

const QUICK = process.env.BENCH_QUICK === '1'
const TYPES = (process.env.BENCH_INFERENCE_TYPES ?? (QUICK ? 'Q8_0,Q4_0' : 'F32,Q8_0,Q4_0')).split(
  ',',
) as ModelWeightType[]
const THREADS = (process.env.BENCH_INFERENCE_THREADS ?? (QUICK ? '1' : '1,2')).split(',').map(Number)
const ROUNDS = Number(process.env.BENCH_INFERENCE_ROUNDS ?? (QUICK ? 2 : 5))
const SHAPE = {
  layers: QUICK ? 4 : 12,
  embd: 768,
  heads: 12,
  kvHeads: 4,
  ff: 2048,
  vocab: 32000,
  context: 2048,
  seed: 7,
}
const PROMPT = QUICK ? 64 : 128
const DECODE = QUICK ? 32 : 64
const CONTEXT = 512
const BAR = 0.5
const GOAL = 0.8
const MiB = 1024 * 1024
const GB = 1e9

/** A generated model of SHAPE, cached under the OS temp dir. */
function model(type: ModelWeightType): Promise<string> {
  return cachedModel({ ...SHAPE, type })
}

/** Bytes of weights a decode step reads: every tensor but the embedding table (a row lookup). */
async function bytesPerToken(path: string): Promise<{ perToken: number; parameters: number }> {
  const file = await openGGUF(path)
  try {
    const tied = file.tensor('output.weight') === undefined
    let perToken = 0
    let parameters = 0
    for (const t of file.tensors) {
      parameters += t.elements
      if (t.name !== 'token_embd.weight' || tied) perToken += t.byteLength
    }
    return { perToken, parameters }
  } finally {
    await file.close()
  }
}

// The bandwidth workers: each sums its own 256/threads MiB of f32 with the kernels' `sumF32`
// (WebAssembly SIMD) `passes` times per round, started together.
const BANDWIDTH_WORKER = `'use strict'
const { parentPort, workerData } = require('node:worker_threads')
const { module, bytes } = workerData
const memory = new WebAssembly.Memory({ initial: bytes / 65536 + 2, maximum: 65536, shared: true })
const { exports } = new WebAssembly.Instance(module, { env: { memory } })
new Float32Array(memory.buffer, 65536, bytes / 4).fill(1)
parentPort.on('message', (passes) => {
  let sink = 0
  for (let i = 0; i < passes; i++) sink += exports.sumF32(65536, bytes / 4)
  parentPort.postMessage(sink)
})
parentPort.postMessage('ready')
`

/** Memory read bandwidth with `threads` threads reading at once: the best of 12 rounds, GB/s. */
async function memoryBandwidth(threads: number): Promise<number> {
  const module = await kernelsModule()
  const bytes = Math.floor((256 * MiB) / threads / 65536) * 65536
  const workers = Array.from(
    { length: threads },
    () => new Worker(BANDWIDTH_WORKER, { eval: true, workerData: { module, bytes } }),
  )
  const next = (w: Worker) => new Promise<unknown>((resolve) => w.once('message', resolve))
  try {
    await Promise.all(workers.map(next))
    let best = 0
    for (let round = 0; round < 12; round++) {
      const passes = 2
      const started = performance.now()
      const done = workers.map(next)
      for (const w of workers) w.postMessage(passes)
      await Promise.all(done)
      const seconds = (performance.now() - started) / 1000
      best = Math.max(best, (passes * bytes * threads) / seconds / GB)
    }
    return best
  } finally {
    await Promise.all(workers.map((w) => w.terminate()))
  }
}

const SPEED = { prompt: PROMPT, decode: DECODE, contextSize: CONTEXT, rounds: ROUNDS, vocab: SHAPE.vocab }

// ---------------------------------------------------------------------------------------------
// Peak RSS, each figure from a child process of its own (this file with --rss <what> <path>).

type RssCase = 'baseline' | 'meshnet' | 'meshnet-half' | 'llama-cpp'

async function rssChild(what: RssCase, path: string): Promise<void> {
  const prompt = Array.from({ length: 16 }, (_, i) => 1 + i * 37)
  if (what === 'meshnet') {
    const engine = await createMeshnetEngine({ modelPath: path, threads: 1, contextSize: CONTEXT })
    await engine.generate(prompt, { maxTokens: 8, stopOnEog: false })
    await engine.dispose()
  } else if (what === 'llama-cpp') {
    const engine = await createLlamaCppEngine({ modelPath: path, threads: 1, contextSize: CONTEXT })
    await engine.generate(prompt, { maxTokens: 8, stopOnEog: false })
    await engine.dispose()
  } else if (what === 'meshnet-half') {
    const kernels = await createWasmKernels({ threads: 1 })
    const shard = await loadShard({ path, layers: [0, SHAPE.layers / 2], kernels, contextSize: CONTEXT })
    await shard.forward({ tokens: prompt }, 0)
    await shard.dispose()
    await kernels.dispose()
  }
  process.stdout.write(JSON.stringify({ maxRssKiB: process.resourceUsage().maxRSS }))
}

async function peakRss(what: RssCase, path: string): Promise<number> {
  const child = spawn(process.execPath, [...process.execArgv, import.meta.filename, '--rss', what, path], {
    stdio: ['ignore', 'pipe', 'inherit'],
  })
  let out = ''
  child.stdout.setEncoding('utf8').on('data', (chunk: string) => {
    out += chunk
  })
  const code = await new Promise<number | null>((resolve) => child.once('exit', resolve))
  if (code !== 0) throw new Error(`the ${what} RSS child exited with ${code}`)
  const report = out.slice(out.lastIndexOf('{"maxRssKiB"'))
  return ((JSON.parse(report) as { maxRssKiB: number }).maxRssKiB * 1024) / MiB
}

// ---------------------------------------------------------------------------------------------

async function main(): Promise<void> {
  const started = performance.now()
  const s = SHAPE
  console.log(
    `models: ${s.layers} layers, embd ${s.embd}, ${s.heads} heads over ${s.kvHeads} KV heads, FFN ${s.ff}, vocab ${s.vocab}; ` +
      `prompt ${PROMPT} tokens, then ${DECODE} decoded greedily (decode: 1000 / median time between tokens); context ${CONTEXT}; best of ${ROUNDS} rounds`,
  )
  // Measured before and after the engines (the better of the two): a busy moment of the machine
  // lowers one measurement, and a bound that is too low would flatter both engines.
  const bandwidth = new Map<number, number>()
  const measureBandwidth = async () => {
    for (const threads of THREADS) {
      bandwidth.set(threads, Math.max(bandwidth.get(threads) ?? 0, await memoryBandwidth(threads)))
    }
  }
  await measureBandwidth()

  const speedRows: Array<Record<string, string | number>> = []
  const boundRows: Array<Record<string, string | number>> = []
  const bound: Array<{ type: string; threads: number; perToken: number; meshnet: number; llama: number }> = []
  const bar: Array<{ type: string; ratio: number }> = []
  const paths = new Map<ModelWeightType, string>()
  for (const type of TYPES) {
    const path = await model(type)
    paths.set(type, path)
    const { perToken, parameters } = await bytesPerToken(path)
    for (const threads of THREADS) {
      const { meshnet, llama } = await compareEngines(path, threads, SPEED)
      const ratio = meshnet.decode / llama.decode
      if (threads === 1 && (type === 'Q8_0' || type === 'Q4_0')) bar.push({ type, ratio })
      speedRows.push({
        type,
        params: `${(parameters / 1e6).toFixed(0)}M`,
        threads,
        'meshnet decode t/s': meshnet.decode,
        'llama.cpp decode t/s': llama.decode,
        'decode ratio': ratio,
        'meshnet prompt t/s': meshnet.prompt,
        'llama.cpp prompt t/s': llama.prompt,
        'prompt ratio': meshnet.prompt / llama.prompt,
      })
      bound.push({ type, threads, perToken, meshnet: meshnet.decode, llama: llama.decode })
    }
  }
  await measureBandwidth()
  for (const b of bound) {
    const bw = bandwidth.get(b.threads)!
    boundRows.push({
      type: b.type,
      threads: b.threads,
      'weights MB/token': b.perToken / 1e6,
      'mem GB/s': bw,
      'meshnet GB/s': (b.meshnet * b.perToken) / GB,
      'meshnet / bound': (b.meshnet * b.perToken) / GB / bw,
      'llama.cpp GB/s': (b.llama * b.perToken) / GB,
      'llama.cpp / bound': (b.llama * b.perToken) / GB / bw,
    })
  }
  console.log(
    `memory read bandwidth (WebAssembly SIMD Σ over 256 MiB, best before/after): ${THREADS.map((t) => `${bandwidth.get(t)!.toFixed(1)} GB/s at ${t} thread${t > 1 ? 's' : ''}`).join(', ')}\n`,
  )
  console.log('tokens/s, Meshnet engine vs node-llama-cpp (same machine, same run)')
  table(speedRows)
  console.log('\ndecode against the memory bound (weight bytes read per token × tokens/s ÷ memory bandwidth)')
  table(boundRows)

  console.log(
    '\npeak RSS (each in its own process: createMeshnetEngine / loadShard / node-llama-cpp, context 512)',
  )
  const baseline = await peakRss('baseline', paths.get(TYPES[0]!)!)
  const rssRows: Array<Record<string, string | number>> = []
  for (const [type, path] of paths) {
    const file = (await stat(path)).size / MiB
    const whole = await peakRss('meshnet', path)
    const half = await peakRss('meshnet-half', path)
    const llama = await peakRss('llama-cpp', path)
    const net = (rss: number) => (rss - baseline) / file
    rssRows.push({
      type,
      'file MiB': file,
      'meshnet MiB': whole,
      'meshnet net/file': net(whole),
      [`layers [0,${s.layers / 2}) MiB`]: half,
      'half net/file': net(half),
      'llama.cpp MiB': llama,
      'llama.cpp net/file': net(llama),
    })
  }
  table(rssRows)
  console.log(
    `(net = peak RSS − ${baseline.toFixed(0)} MiB, the peak of a Node process with the same packages imported and no model; llama.cpp maps the file, so its RSS counts the pages it touched)`,
  )

  console.log(`\nbar: Meshnet decode ≥ ${BAR} × llama.cpp's at 1 thread on Q8_0 and Q4_0; goal ≥ ${GOAL}`)
  for (const { type, ratio } of bar) {
    const verdict = ratio >= GOAL ? 'goal met' : ratio >= BAR ? 'bar met, goal not' : 'BAR NOT MET'
    console.log(`  ${type}: ${ratio.toFixed(2)} — ${verdict}`)
  }
  console.log(`(${((performance.now() - started) / 1000).toFixed(0)} s)`)
}

const rssAt = process.argv.indexOf('--rss')
if (rssAt >= 0) await rssChild(process.argv[rssAt + 1] as RssCase, process.argv[rssAt + 2]!)
else await main()
