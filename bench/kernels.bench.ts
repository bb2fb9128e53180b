// Throughput of the inference kernels: GB/s of weight bytes through matvec (decode) and matmul
// (prompt) for each ggml type, and through a matmul of 4 rows (a continuous-batching decode step of
// four sessions, with its cost in matvec passes), JS reference vs WebAssembly on 1 and 2 threads, as a ratio to the
// memory read bandwidth measured in the same run; Q4_0 and Q8_0 packed four rows together as the
// engine runs them, and in their ggml layout. The weights are the matrices of a ~100M-parameter
// llama (12 layers of 768×768 ×4 and 2048×768 ×3, 85M weights), more than the caches hold, so a
// pass over them is what one decode step costs. With --llama it also measures node-llama-cpp's
// decode tokens/s on generated 134M-parameter models of the --llama-types (a type or a mix such as
// Q4_K_M, as `generateModel` writes them), as weight GB/s, next to these kernels' matvecs over the
// same file's matrices (an upper bound of the Meshnet engine's decode: no attention, no norms).
//
//   node --conditions=meshnet-source bench/kernels.bench.ts [--llama] [--llama-types Q4_K_M,Q5_K_M]
//     [--types Q8_0,Q4_0] [--threads 1,2] [--seconds 1]
import { existsSync } from 'node:fs'
import { mkdir } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { parseArgs } from 'node:util'
import { createJsKernels, createWasmKernels, type KernelBuffer, type Kernels } from '@meshnet/engine'
import {
  GGML_TYPE,
  generateModel,
  MODEL_WEIGHT_TYPES,
  type ModelWeightType,
  openGGUF,
  QUANTIZABLE_TYPES,
  quantizeRow,
  rowByteLength,
} from '@meshnet/gguf'
import { acquireLlama } from '@meshnet/llama-cpp'
import { type KernelsExports, kernelsModule } from '../packages/engine/src/kernels/wasm.ts'
import { wasmApi } from '../packages/engine/src/kernels/webassembly.ts'
import { table } from './lib.ts'

const { values: flags } = parseArgs({
  options: {
    llama: { type: 'boolean', default: false },
    'llama-types': { type: 'string', default: 'Q8_0,Q4_0,Q4_K_M,Q5_K_M' },
    types: {
      type: 'string',
      default: 'F32,F16,BF16,Q8_0,Q4_0,Q4_1,Q5_0,Q5_1,IQ4_NL,Q2_K,Q3_K,Q4_K,Q5_K,Q6_K,IQ4_XS',
    },
    seconds: { type: 'string', default: '1' },
    threads: { type: 'string', default: '1,2' },
  },
})
const SECONDS = Number(flags.seconds)
const TYPES = flags.types.split(',') as Array<keyof typeof GGML_TYPE>
const THREADS = flags.threads.split(',').map(Number)
const EMBD = 768
const FF = 2048
const LAYERS = 12
/** [rows, cols] of the matrices of one layer: q, k, v, o, gate, up, down. */
const LAYER: ReadonlyArray<readonly [number, number]> = [
  [EMBD, EMBD],
  [EMBD, EMBD],
  [EMBD, EMBD],
  [EMBD, EMBD],
  [FF, EMBD],
  [FF, EMBD],
  [EMBD, FF],
]
const PROMPT = 64
/** Activation rows of a continuous-batching decode step (one per session). */
const BATCH = 4
const GB = 1e9

/**
 * Seconds per call of `fn`: the fastest of repeated samples of at least 20 ms each over about
 * `seconds`, after a warm-up call. The fastest sample is the one least disturbed by other processes
 * on the machine, and the same rule is applied to the reference.
 */
function time(fn: () => void, seconds = SECONDS): number {
  fn()
  let best = Number.POSITIVE_INFINITY
  const end = performance.now() + seconds * 1000
  do {
    const start = performance.now()
    let calls = 0
    let now = start
    do {
      fn()
      calls++
      now = performance.now()
    } while (now - start < 20)
    best = Math.min(best, (now - start) / 1000 / calls)
  } while (performance.now() < end)
  return best
}

/** Memory read bandwidth: Σ over 256 MiB of floats, in WebAssembly SIMD and as a JS Float64Array. */
async function memoryBandwidth(): Promise<{ wasm: number; js: number }> {
  const bytes = 256 * 1024 * 1024
  const memory = new wasmApi.Memory({ initial: bytes / 65536 + 1, maximum: 65536, shared: true })
  const { exports } = await wasmApi.instantiate(await kernelsModule(), { env: { memory } })
  new Float32Array(memory.buffer, 65536, bytes / 4).fill(1)
  const sum = (exports as unknown as KernelsExports).sumF32
  const wasm = bytes / time(() => sum(65536, bytes / 4)) / GB
  const f64 = new Float64Array(bytes / 8).fill(1)
  let sink = 0
  const js =
    bytes /
    time(() => {
      let s = 0
      for (let i = 0; i < f64.length; i++) s += f64[i]!
      sink += s
    }) /
    GB
  if (sink === 0) console.log('')
  return { wasm, js }
}

interface Matrix {
  w: KernelBuffer
  /** The type to multiply it as: its ggml type, or the packed layout `Kernels.pack` made. */
  type: number
  rows: number
  cols: number
}

/**
 * The model's matrices of `type` in `k`'s memory (64 quantized rows repeated: speed does not depend
 * on values), packed as the engine packs them (`Kernels.pack`) unless `ggmlLayout`.
 */
function loadModel(
  k: Kernels,
  type: number,
  layers: number,
  ggmlLayout: boolean,
): { matrices: Matrix[]; bytes: number } {
  const matrices: Matrix[] = []
  let bytes = 0
  const seeds = new Map<number, Uint8Array>()
  for (let l = 0; l < layers; l++) {
    for (const [rows, cols] of LAYER) {
      const rowBytes = rowByteLength(type, cols)
      let block = seeds.get(cols)
      if (block === undefined) {
        block = new Uint8Array(64 * rowBytes)
        const v = new Float32Array(cols)
        for (let r = 0; r < 64; r++) {
          for (let c = 0; c < cols; c++) v[c] = Math.sin(r * 131 + c * 0.37) * 0.05
          quantizeRow(type, v, block.subarray(r * rowBytes))
        }
        seeds.set(cols, block)
      }
      const w = k.alloc(rows * rowBytes)
      const view = w.bytes()
      for (let r = 0; r < rows; r += 64)
        view.set(block.subarray(0, Math.min(64, rows - r) * rowBytes), r * rowBytes)
      const as = ggmlLayout ? type : (k.pack?.(type, w, rows, cols) ?? type)
      matrices.push({ w, type: as, rows, cols })
      bytes += rows * rowBytes
    }
  }
  return { matrices, bytes }
}

interface Throughput {
  /** Weight GB/s of a decode pass (matvec over every matrix). */
  decode: number
  /**
   * Weight GB/s × rows of a pass over BATCH activation rows (matmul): continuous batching's decode
   * step, which costs BATCH / (this / decode) matvec passes.
   */
  batch: number
  /** Weight GB/s of a prompt pass (matmul of PROMPT rows), counting the weights once per row. */
  prompt: number
}

function measure(k: Kernels, type: number, layers: number, prompt: boolean, ggmlLayout = false): Throughput {
  const { matrices, bytes } = loadModel(k, type, layers, ggmlLayout)
  const x = k.alloc(PROMPT * FF * 4)
  x.f32().forEach((_, i, a) => {
    a[i] = Math.cos(i * 0.11)
  })
  const out = k.alloc(PROMPT * FF * 4)
  const decode =
    bytes /
    time(() => {
      for (const m of matrices) k.matvec(m.type, m.w, m.rows, m.cols, x, out)
    }) /
    GB
  const batch = prompt
    ? (BATCH * bytes) /
      time(() => {
        for (const m of matrices) k.matmul(m.type, m.w, m.rows, m.cols, x, BATCH, out)
      }) /
      GB
    : Number.NaN
  const promptRate = prompt
    ? (PROMPT * bytes) /
      time(() => {
        for (const m of matrices) k.matmul(m.type, m.w, m.rows, m.cols, x, PROMPT, out)
      }) /
      GB
    : Number.NaN
  for (const m of matrices) k.free(m.w)
  k.free(x)
  k.free(out)
  return { decode, batch, prompt: promptRate }
}

/** A generated 134M-parameter llama of `type` (a ggml type or a llama-quantize mix), cached. */
async function benchModel(type: ModelWeightType): Promise<string> {
  const dir = join(tmpdir(), 'meshnet-bench-models')
  await mkdir(dir, { recursive: true })
  const path = join(dir, `llama-134m-${type}.gguf`)
  if (!existsSync(path)) {
    await generateModel({ out: path, layers: LAYERS, embd: EMBD, heads: 12, ff: FF, vocab: 32000, type })
  }
  return path
}

/**
 * The weight matrices a decode step reads from a model file: every 2-D tensor but the token
 * embedding (a lookup), which is read as the output matrix when the file has none.
 */
async function decodeMatrices(
  path: string,
): Promise<Array<{ name: string; type: number; rows: number; cols: number; bytes: number }>> {
  const file = await openGGUF(path)
  try {
    const tied = file.tensor('output.weight') === undefined
    return file.tensors
      .filter((t) => t.dims.length === 2 && (tied || t.name !== 'token_embd.weight'))
      .map((t) => ({ name: t.name, type: t.type, rows: t.rows, cols: t.dims[0]!, bytes: t.byteLength }))
  } finally {
    await file.close()
  }
}

/** These kernels' weight GB/s over one decode step's matvecs of the model file at `path`. */
async function meshnetFileDecode(path: string, threads: number): Promise<number> {
  const matrices = await decodeMatrices(path)
  const file = await openGGUF(path)
  const k = await createWasmKernels({ threads })
  try {
    const loaded: Matrix[] = []
    let bytes = 0
    for (const m of matrices) {
      const w = k.alloc(m.bytes)
      w.bytes().set(await file.readTensor(m.name))
      loaded.push({ w, type: k.pack?.(m.type, w, m.rows, m.cols) ?? m.type, rows: m.rows, cols: m.cols })
      bytes += m.bytes
    }
    const x = k.alloc(32000 * 4)
    x.f32().forEach((_, i, a) => {
      a[i] = Math.cos(i * 0.11)
    })
    const out = k.alloc(32000 * 4)
    return (
      bytes /
      time(() => {
        for (const m of loaded) k.matvec(m.type, m.w, m.rows, m.cols, x, out)
      }) /
      GB
    )
  } finally {
    await k.dispose()
    await file.close()
  }
}

/** node-llama-cpp decode tokens/s on the model file at `path`, at `threads` threads. */
async function llamaCppDecode(path: string, threads: number): Promise<{ tps: number; gbps: number }> {
  const runtime = await acquireLlama()
  const { llama } = runtime
  const model = await llama.loadModel({ modelPath: path, gpuLayers: 0 })
  const context = await model.createContext({ contextSize: 512, threads, flashAttention: false })
  const sequence = context.getSequence()
  const best: number[] = []
  for (let run = 0; run < 3; run++) {
    await sequence.clearHistory()
    let n = 0
    let first = 0
    for await (const _ of sequence.evaluate(model.tokenize('The quick brown fox'), { temperature: 0 })) {
      if (n === 0) first = performance.now()
      if (++n === 65) break
    }
    best.push(64 / ((performance.now() - first) / 1000))
  }
  await context.dispose()
  await model.dispose()
  await runtime.release()
  const tps = Math.max(...best)
  const perToken = (await decodeMatrices(path)).reduce((s, m) => s + m.bytes, 0)
  return { tps, gbps: (tps * perToken) / GB }
}

const bandwidth = await memoryBandwidth()
console.log(
  `memory read bandwidth, 1 thread: ${bandwidth.wasm.toFixed(1)} GB/s (wasm SIMD Σ), ${bandwidth.js.toFixed(1)} GB/s (JS Float64Array Σ)`,
)
console.log(
  `decode: matvec over ${LAYERS} layers of 768/2048 matrices; prompt: matmul of ${PROMPT} rows, weight bytes × rows / s\n`,
)

const rows: Array<Record<string, string | number>> = []
for (const name of TYPES) {
  const type = GGML_TYPE[name]
  if (!(QUANTIZABLE_TYPES as readonly string[]).includes(name)) {
    console.log(`${name}: @meshnet/gguf cannot quantize it yet; skipped`)
    continue
  }
  const js = createJsKernels()
  const jsRate = measure(js, type, 1, false)
  await js.dispose()
  const row: Record<string, string | number> = { type: name, 'js GB/s': jsRate.decode }
  for (const threads of THREADS) {
    const wasm = await createWasmKernels({ threads })
    const rate = measure(wasm, type, LAYERS, true)
    await wasm.dispose()
    row[`wasm ${threads}T GB/s`] = rate.decode
    row[`${threads}T / mem bw`] = rate.decode / bandwidth.wasm
    row[`${BATCH}-row ${threads}T GB/s×rows`] = rate.batch
    row[`${BATCH}-row / matvec`] = BATCH / (rate.batch / rate.decode)
    row[`prompt ${threads}T GB/s`] = rate.prompt
  }
  // Q4_0 and Q8_0 run packed four rows together (Kernels.pack); their ggml layout, for comparison.
  const wasm = await createWasmKernels({ threads: 1 })
  const plain = measure(wasm, type, LAYERS, true, true)
  const packable = wasm.pack?.(type, wasm.alloc(rowByteLength(type, EMBD) * 4), 4, EMBD) !== type
  await wasm.dispose()
  row['ggml layout 1T GB/s'] = packable ? plain.decode : '-'
  row['ggml layout prompt 1T'] = packable ? plain.prompt : '-'
  rows.push(row)
}
table(rows)

if (flags.llama) {
  console.log('\nnode-llama-cpp decode (134M-parameter generated llama, 64 tokens, best of 3)')
  const ref: Array<Record<string, string | number>> = []
  for (const type of flags['llama-types'].split(',') as ModelWeightType[]) {
    if (!MODEL_WEIGHT_TYPES.includes(type)) {
      console.log(`${type}: generateModel does not write it; skipped`)
      continue
    }
    const path = await benchModel(type)
    for (const threads of THREADS) {
      const { tps, gbps } = await llamaCppDecode(path, threads)
      const meshnet = await meshnetFileDecode(path, threads)
      ref.push({
        type,
        threads,
        'tokens/s': tps,
        'weight GB/s': gbps,
        '/ mem bw': gbps / bandwidth.wasm,
        'meshnet matvecs GB/s': meshnet,
        'meshnet / llama.cpp': meshnet / gbps,
      })
    }
  }
  table(ref)
}
