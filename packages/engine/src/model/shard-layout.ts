import { GGML_TYPE } from '@meshnet/gguf'
import type { KernelBuffer, Kernels } from '../kernels/api.ts'
import { roundActivations } from './activations.ts'
import type { LlamaConfig } from './config.ts'
import type { LayerWeights, ShardPlan } from './shard-types.ts'
import type { Matrix } from './weights.ts'

export const f = Math.fround
/** Floats of attention scores one kernel call may produce (a prompt's positions go in chunks). */
const SCORE_BUDGET = 1 << 20
/** Positions the transposed V cache first makes room for per row; it doubles as the cache fills. */
export const V_FIRST_CAPACITY = 64

export interface LlamaShardParts {
  config: LlamaConfig
  plan: ShardPlan
  kernels: Kernels
  /** The layers' weights; the shard allocates their KV cache itself, in kernel memory. */
  layers: LayerWeights[]
  embedding: Matrix | undefined
  head: { norm: Float32Array; output: Matrix } | undefined
  freqFactors: Float32Array | undefined
  weightBytes: number
  /** Kernel buffers the shard frees on dispose (the weights it owns; none when they are shared). */
  buffers: KernelBuffer[]
  maxBatch: number
  kvCacheType: 'f16' | 'f32'
}

/** Element access to a Float16Array (Node 24 has it; TypeScript's ES2024 lib does not declare it). */
export interface HalfArray {
  [index: number]: number
  set(values: ArrayLike<number>, offset?: number): void
}
export const HalfArrayCtor = (
  globalThis as unknown as {
    Float16Array?: new (buffer: ArrayBufferLike, byteOffset: number, length: number) => HalfArray
  }
).Float16Array

/** One layer's weights, its KV cache in kernel memory, and views of one KV head each. */
export interface LayerState {
  w: LayerWeights
  /** Keys, [position][kv head][dim]. */
  k: KernelBuffer
  /**
   * Values transposed, [kv head][dim][position], so that p·V is a matrix × vector. A row holds
   * `vCapacity` positions, doubled (and the rows moved apart) as the cache fills, up to the context
   * size: the kernel then reads rows that are mostly the positions it needs, not a few hundred
   * bytes out of every `contextSize · 2`.
   */
  v: KernelBuffer
  vCapacity: number
  kHead: KernelBuffer[]
  vHead: KernelBuffer[]
  length: number
}

/** Scratch buffers in kernel memory, sized for `maxBatch` positions. */
export interface Scratch {
  /** Normalized hidden states: the input of q/k/v, gate/up and the output projection. */
  x: KernelBuffer
  q: KernelBuffer
  k: KernelBuffer
  v: KernelBuffer
  /** Attention output per query head, the input of `attn_output`. */
  attn: KernelBuffer
  /** Attention scores, then weights: rows of (position, query head) × cached positions. */
  scores: KernelBuffer
  /** Query rows of one KV head's heads, gathered for a prompt; that head's attention output. */
  qHead: KernelBuffer
  oHead: KernelBuffer
  out: KernelBuffer
  gate: KernelBuffer
  up: KernelBuffer
  logits: KernelBuffer | undefined
  /** Activations rounded as ggml rounds them, for kernels that do not round them themselves. */
  rounded: KernelBuffer | undefined
}

/** The views one decode step (one position) uses for a KV head: its query heads and their output. */
export interface HeadViews {
  /** Query heads `[first, first + count)` of the shard read this KV head. */
  first: number
  count: number
  q: KernelBuffer
  attn: KernelBuffer
}

type ScratchName = keyof Scratch

/** Bytes of each kernel buffer a shard session allocates besides its weights. */
export interface SessionLayout {
  scratch: Record<ScratchName, number>
  /** K and V cache of one layer. */
  kvBytesPerLayer: number
  /** Prompt positions per attention chunk. */
  chunk: number
}

export function sessionLayout(
  config: LlamaConfig,
  plan: ShardPlan,
  maxBatch: number,
  kvCacheType: 'f16' | 'f32',
  kernelsRound: boolean,
): SessionLayout {
  const n = maxBatch
  const d = config.headDim
  const nq = plan.heads[1] - plan.heads[0]
  const nkv = plan.kvHeads[1] - plan.kvHeads[0]
  const q = nq * d
  const kv = nkv * d
  const ff = plan.ffn[1] - plan.ffn[0]
  const perKv = Math.min(config.heads / config.kvHeads, nq)
  const context = plan.contextSize
  const chunk = Math.max(1, Math.min(n, Math.floor(SCORE_BUDGET / Math.max(1, perKv * context))))
  const floats = (count: number) => Math.max(16, count * 4)
  return {
    scratch: {
      x: floats(n * config.embd),
      q: floats(n * q),
      k: floats(n * kv),
      v: floats(n * kv),
      attn: floats(n * q),
      scores: floats(nq === 0 ? 0 : chunk * perKv * context),
      qHead: floats(nkv > 1 ? n * perKv * d : 0),
      oHead: floats(nkv > 1 ? n * perKv * d : 0),
      out: floats(n * config.embd),
      gate: floats(n * ff),
      up: floats(n * ff),
      logits: plan.head ? floats(config.vocab) : 0,
      rounded: kernelsRound ? 0 : floats(n * Math.max(config.embd, ff, q)),
    },
    kvBytesPerLayer: 2 * Math.max(16, context * kv * (kvCacheType === 'f16' ? 2 : 4)),
    chunk,
  }
}

/**
 * Kernel memory one shard session asks the kernels for besides its weights, as `LlamaShardImpl`
 * allocates it (before a `logits: 'all'` call grows the logits buffer to `maxBatch` rows): the KV
 * cache of every layer, and scratch for `maxBatch` positions. The kernels round each allocation up
 * to 64 bytes.
 */
export function shardSessionBytes(
  config: LlamaConfig,
  plan: ShardPlan,
  options: { maxBatch: number; kvCacheType: 'f16' | 'f32'; kernels: Pick<Kernels, 'name'> },
): { kvBytes: number; scratchBytes: number } {
  const layout = sessionLayout(
    config,
    plan,
    options.maxBatch,
    options.kvCacheType,
    options.kernels.name === 'wasm-simd',
  )
  let scratchBytes = 0
  for (const bytes of Object.values(layout.scratch)) scratchBytes += bytes
  return { kvBytes: (plan.layers[1] - plan.layers[0]) * layout.kvBytesPerLayer, scratchBytes }
}
/** The buffer's bytes as halves (a Float16Array over kernel memory). */
export function halves(buf: KernelBuffer): HalfArray {
  const bytes = buf.bytes()
  return new HalfArrayCtor!(bytes.buffer, bytes.byteOffset, bytes.byteLength >>> 1)
}

/** Rounds `n` floats to halves in place (for kernels that do not round F16 activations). */
export function halfRound(x: Float32Array, n: number): void {
  roundActivations(GGML_TYPE.F16, x, n, n, x)
}

/** Copies the keys of positions `[pos, pos + n)` (`[position][KV head][dim]`) into a head-major cache. */
export function storeKeys(
  cache: Float32Array | HalfArray,
  k: Float32Array,
  n: number,
  pos: number,
  headDim: number,
  kvHeads: number,
  contextSize: number,
): void {
  const headSpan = contextSize * headDim
  for (let i = 0; i < n; i++) {
    for (let h = 0; h < kvHeads; h++) {
      const from = (i * kvHeads + h) * headDim
      cache.set(k.subarray(from, from + headDim), h * headSpan + (pos + i) * headDim)
    }
  }
}

/**
 * Makes the transposed V rows of `L` `capacity` positions long, moving the positions they hold,
 * and makes the per-head views over them.
 */
export function reserveV(
  kernels: Kernels,
  L: LayerState,
  kvCacheType: 'f16' | 'f32',
  headDim: number,
  kvHeads: number,
  capacity: number,
): void {
  if (capacity === L.vCapacity) return
  const es = kvCacheType === 'f16' ? 2 : 4
  const d = headDim
  const rows = kvHeads * d
  const bytes = L.v.bytes()
  const held = Math.min(L.length, L.vCapacity) * es
  // From the last row down: a row moves only to higher addresses, over rows already moved.
  for (let j = rows - 1; j > 0 && held > 0; j--) {
    bytes.copyWithin(j * capacity * es, j * L.vCapacity * es, j * L.vCapacity * es + held)
  }
  L.vCapacity = capacity
  L.vHead = []
  for (let h = 0; h < rows / d; h++) L.vHead.push(kernels.view(L.v, h * d * capacity * es, d * capacity * es))
}

/** The scratch buffers of a shard, of the sizes its session layout says. */
export function allocateScratch(
  alloc: (bytes: number) => KernelBuffer,
  b: SessionLayout['scratch'],
  head: boolean,
  kernelsRound: boolean,
): Scratch {
  return {
    x: alloc(b.x),
    q: alloc(b.q),
    k: alloc(b.k),
    v: alloc(b.v),
    attn: alloc(b.attn),
    scores: alloc(b.scores),
    qHead: alloc(b.qHead),
    oHead: alloc(b.oHead),
    out: alloc(b.out),
    gate: alloc(b.gate),
    up: alloc(b.up),
    logits: head ? alloc(b.logits) : undefined,
    rounded: kernelsRound ? undefined : alloc(b.rounded),
  }
}

/**
 * Writes the keys and values of positions `[pos, pos + n)` (`kvHeads · headDim` floats each) into a
 * layer's cache, first making room in the transposed V cache. The f16 and f32 caches have a loop
 * each, so that each loop sees one array type.
 */
export function storeKV(
  kernels: Kernels,
  L: LayerState,
  kvCacheType: 'f16' | 'f32',
  o: {
    headDim: number
    kvHeads: number
    contextSize: number
    k: Float32Array
    v: Float32Array
    n: number
    pos: number
  },
): void {
  const { headDim, kvHeads, contextSize, k, v, n, pos } = o
  const kvRows = kvHeads * headDim
  let capacity = L.vCapacity
  while (capacity < pos + n) capacity *= 2
  reserveV(kernels, L, kvCacheType, headDim, kvHeads, Math.min(capacity, contextSize))
  const context = L.vCapacity
  if (kvCacheType === 'f16') {
    // Float16Array stores round to nearest even, as ggml's fp32 -> fp16 conversion does.
    const vc = halves(L.v)
    storeKeys(halves(L.k), k, n, pos, headDim, kvHeads, contextSize)
    for (let i = 0; i < n; i++) {
      const row = i * kvRows
      for (let j = 0; j < kvRows; j++) vc[j * context + pos + i] = v[row + j]!
    }
  } else {
    const vc = L.v.f32()
    storeKeys(L.k.f32(), k, n, pos, headDim, kvHeads, contextSize)
    for (let i = 0; i < n; i++) {
      const row = i * kvRows
      for (let j = 0; j < kvRows; j++) vc[j * context + pos + i] = v[row + j]!
    }
  }
}
