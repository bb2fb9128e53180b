import { findGGMLType, type GGUFReader, openGGUF, rowByteLength } from '@meshnet/gguf'
import { InvalidShardError } from '../errors.ts'
import type { KernelBuffer, Kernels } from '../kernels/api.ts'
import { roundActivations } from './activations.ts'
import { type LlamaConfig, readLlamaConfig } from './config.ts'
import { LlamaShardImpl } from './llama-shard.ts'
import { rmsNorm, softcap } from './ops.ts'
import { layerSources, loadShardTensors, resolveSpec } from './shard.ts'
import type { LayerWeights, LlamaShard, ShardPlan, ShardRanges } from './shard-types.ts'
import { type Matrix, WeightLoader } from './weights.ts'

/** The part of a model one member runs: a layer range, optionally a column slice of it. */
export interface ShardSpec extends ShardRanges {
  /**
   * Tensor parallel: this member's rows of the output projection (a vocabulary range), computed
   * apart from the shard (which then has no head). The members' ranges partition the vocabulary.
   */
  vocab?: readonly [number, number] | undefined
}

export interface ShardLoadOptions {
  signal?: AbortSignal | undefined
  /** Hears the bytes loaded so far, after each tensor (or slice of one). */
  onProgress?: ((bytes: number) => void) | undefined
  /** The weights own the kernels: disposing the weights disposes them (and frees their memory). */
  ownsKernels?: boolean
}

/** The vocabulary rows a tensor-parallel member projects: its share of FFN columns, scaled. */
export function vocabSlice(config: LlamaConfig, ffn: readonly [number, number]): [number, number] {
  return [Math.floor((ffn[0] * config.vocab) / config.ff), Math.floor((ffn[1] * config.vocab) / config.ff)]
}

/** Kernel-memory bytes `ShardWeights.load` will allocate for a shard (from the file's tensor table). */
export function estimateWeightBytes(
  file: GGUFReader,
  config: LlamaConfig,
  plan: Omit<ShardPlan, 'contextSize'>,
  vocabRange?: readonly [number, number],
): number {
  const { embd, headDim: d, vocab, ff } = config
  const info = (name: string) => {
    const t = file.tensor(name)
    if (t === undefined) throw new InvalidShardError(`${file.path} has no tensor '${name}'`)
    return t
  }
  const rows = (name: string, start: number, end: number) => (end - start) * info(name).rowByteLength
  const columns = (name: string, cols: number, outRows: number, start: number, end: number) => {
    const t = info(name)
    if (start === 0 && end === cols) return outRows * t.rowByteLength
    const block = findGGMLType(t.type)?.blockSize ?? 1
    if (start % block === 0 && end % block === 0) return outRows * rowByteLength(t.type, end - start)
    return outRows * (end - start) * 4
  }
  const [h0, h1] = plan.heads
  const [kv0, kv1] = plan.kvHeads
  const [f0, f1] = plan.ffn
  let bytes = 0
  for (let l = plan.layers[0]; l < plan.layers[1]; l++) {
    const b = `blk.${l}`
    const src = layerSources(config, l)
    bytes += rows(src.q.name, h0 * d, h1 * d)
    bytes += rows(src.k.name, kv0 * d, kv1 * d)
    bytes += rows(src.v.name, kv0 * d, kv1 * d)
    bytes += columns(`${b}.attn_output.weight`, config.heads * d, embd, h0 * d, h1 * d)
    bytes += rows(src.gate.name, f0, f1)
    bytes += rows(src.up.name, f0, f1)
    bytes += columns(`${b}.ffn_down.weight`, ff, embd, f0, f1)
  }
  if (plan.embed) bytes += rows('token_embd.weight', 0, vocab)
  if (plan.head && !(config.tiedOutput && plan.embed)) {
    bytes += rows(config.tiedOutput ? 'token_embd.weight' : 'output.weight', 0, vocab)
  }
  if (vocabRange !== undefined && !(config.tiedOutput && plan.embed)) {
    bytes += rows(config.tiedOutput ? 'token_embd.weight' : 'output.weight', vocabRange[0], vocabRange[1])
  }
  return bytes
}

/** Floats of attention scores a shard's scratch holds at most (`SCORE_BUDGET` of llama-shard.ts). */
const SCORE_FLOATS = 1 << 20

/**
 * Kernel memory one session of a shard takes besides the weights: its KV cache and the scratch
 * buffers of `LlamaShardImpl` (an upper bound: the activation-rounding buffer counted too).
 */
export function sessionBytes(
  config: LlamaConfig,
  plan: Omit<ShardPlan, 'contextSize'>,
  options: {
    contextSize: number
    kvCacheType: 'f16' | 'f32'
    maxBatch: number
    vocab?: readonly [number, number] | undefined
  },
): { kvBytes: number; scratchBytes: number } {
  const d = config.headDim
  const nq = plan.heads[1] - plan.heads[0]
  const q = nq * d
  const kv = (plan.kvHeads[1] - plan.kvHeads[0]) * d
  const ff = plan.ffn[1] - plan.ffn[0]
  const layers = plan.layers[1] - plan.layers[0]
  const kvBytes = options.contextSize * kv * layers * 2 * (options.kvCacheType === 'f16' ? 2 : 4)
  const n = options.maxBatch
  const perKv = Math.min(config.heads / config.kvHeads, nq)
  const scores =
    nq === 0
      ? 0
      : Math.min(n * perKv * options.contextSize, Math.max(SCORE_FLOATS, perKv * options.contextSize))
  const vocabRows = options.vocab === undefined ? 0 : options.vocab[1] - options.vocab[0]
  const floats =
    n * (2 * config.embd + 2 * q + 2 * kv + 2 * perKv * d + 2 * ff + Math.max(config.embd, ff, q)) +
    scores +
    (plan.head ? n * config.vocab : 0) +
    (options.vocab === undefined ? 0 : 2 * config.embd + vocabRows)
  return { kvBytes, scratchBytes: floats * 4 }
}

/**
 * The weights of one shard in kernel memory, loaded once and shared by every session of that shard
 * on this member; each session gets its own KV cache and scratch (`createSession`).
 */
export class ShardWeights {
  readonly config: Readonly<LlamaConfig>
  readonly plan: Readonly<Omit<ShardPlan, 'contextSize'>>
  readonly weightBytes: number
  readonly #kernels: Kernels
  readonly #layers: LayerWeights[]
  readonly #embedding: Matrix | undefined
  readonly #head: { norm: Float32Array; output: Matrix } | undefined
  readonly #freqFactors: Float32Array | undefined
  readonly #vocabHead: { range: [number, number]; norm: Float32Array; output: Matrix } | undefined
  readonly #buffers: WeightLoader['allocated']
  readonly #ownsKernels: boolean
  #disposed = false

  private constructor(parts: {
    config: LlamaConfig
    plan: Omit<ShardPlan, 'contextSize'>
    kernels: Kernels
    layers: LayerWeights[]
    embedding: Matrix | undefined
    head: { norm: Float32Array; output: Matrix } | undefined
    freqFactors: Float32Array | undefined
    vocabHead: { range: [number, number]; norm: Float32Array; output: Matrix } | undefined
    loader: WeightLoader
    ownsKernels: boolean
  }) {
    this.config = parts.config
    this.plan = parts.plan
    this.#kernels = parts.kernels
    this.#layers = parts.layers
    this.#embedding = parts.embedding
    this.#head = parts.head
    this.#freqFactors = parts.freqFactors
    this.#vocabHead = parts.vocabHead
    this.#buffers = parts.loader.allocated
    this.weightBytes = parts.loader.bytes
    this.#ownsKernels = parts.ownsKernels
  }

  /**
   * Reads the shard's tensors (only its rows and columns) from the GGUF file into kernel memory.
   * With `ownsKernels`, the weights take `kernels` over: `dispose()` (or a failed load) disposes them
   * too, and with them their memory (one kernel memory per weight segment, see `loadSegments`).
   */
  static async load(
    path: string,
    spec: ShardSpec,
    kernels: Kernels,
    options: ShardLoadOptions = {},
  ): Promise<ShardWeights> {
    const { signal, onProgress, ownsKernels = false } = options
    const file = await openGGUF(path)
    let loader: WeightLoader | undefined
    try {
      const config = readLlamaConfig(file)
      const plan = resolveSpec(config, spec)
      loader = new WeightLoader(file, kernels, signal, onProgress)
      const { layers, embedding, head, freqFactors } = await loadShardTensors(file, loader, config, plan)
      const { embd, vocab } = config
      let vocabHead: { range: [number, number]; norm: Float32Array; output: Matrix } | undefined
      if (spec.vocab !== undefined) {
        const [v0, v1] = spec.vocab
        if (plan.head || v0 > v1 || v1 > vocab) {
          throw new InvalidShardError(`vocabulary rows [${v0}, ${v1}) do not fit a model of ${vocab} tokens`)
        }
        const norm = await loader.vector('output_norm.weight', embd)
        let output: Matrix
        if (config.tiedOutput && embedding) {
          // Tied output: the rows are in the embedding table already.
          const rowBytes = rowByteLength(embedding.type, embd)
          const buf = kernels.view(embedding.buf, v0 * rowBytes, Math.max(0, (v1 - v0) * rowBytes))
          output = { buf, type: embedding.type, rows: v1 - v0, cols: embd }
        } else {
          output = loader.packed(
            await loader.rows(config.tiedOutput ? 'token_embd.weight' : 'output.weight', embd, vocab, v0, v1),
          )
        }
        vocabHead = { range: [v0, v1], norm, output }
      }
      return new ShardWeights({
        config,
        plan,
        kernels,
        layers,
        embedding,
        head,
        freqFactors,
        vocabHead,
        loader,
        ownsKernels,
      })
    } catch (err) {
      if (ownsKernels) await kernels.dispose()
      else for (const buf of loader?.allocated ?? []) kernels.free(buf)
      throw err
    } finally {
      await file.close()
    }
  }

  /** This shard's vocabulary rows of the output projection (tensor parallel), if any. */
  get vocab(): readonly [number, number] | undefined {
    return this.#vocabHead?.range
  }

  /**
   * A shard over these weights with its own KV cache and scratch buffers, and its vocabulary head
   * when it has one (dispose both when done).
   */
  createSession(options: { contextSize: number; kvCacheType: 'f16' | 'f32'; maxBatch: number }): {
    shard: LlamaShard
    head: VocabHead | undefined
  } {
    if (this.#disposed) throw new InvalidShardError('the shard weights were released')
    const shard = this.#shard(options)
    if (this.#vocabHead === undefined) return { shard, head: undefined }
    try {
      return { shard, head: new VocabHead(this.config, this.#kernels, this.#vocabHead) }
    } catch (err) {
      void shard.dispose()
      throw err
    }
  }

  #shard(options: { contextSize: number; kvCacheType: 'f16' | 'f32'; maxBatch: number }): LlamaShard {
    return new LlamaShardImpl({
      config: { ...this.config },
      plan: {
        layers: [...this.plan.layers],
        heads: [...this.plan.heads],
        kvHeads: [...this.plan.kvHeads],
        ffn: [...this.plan.ffn],
        partial: this.plan.partial,
        embed: this.plan.embed,
        head: this.plan.head,
        contextSize: options.contextSize,
      },
      kernels: this.#kernels,
      layers: this.#layers,
      embedding: this.#embedding,
      head: this.#head,
      freqFactors: this.#freqFactors,
      weightBytes: this.weightBytes,
      // The session frees only its KV cache and scratch; the weights are ours.
      buffers: [],
      maxBatch: options.maxBatch,
      kvCacheType: options.kvCacheType,
    })
  }

  dispose(): void {
    if (this.#disposed) return
    this.#disposed = true
    if (this.#ownsKernels) void this.#kernels.dispose()
    else for (const buf of this.#buffers) this.#kernels.free(buf)
    this.#buffers.length = 0
  }

  /**
   * Frees the weights and hands back the kernels they own, with their memory, for other weights
   * to load into (`ShardWeights.load(…, { ownsKernels: true })` again). A WebAssembly memory never
   * shrinks and is returned to the system only when garbage-collected, so reusing it is what keeps
   * a process's resident memory at what it holds when its shard changes. Only for weights that own
   * their kernels, and only once every session over them is disposed.
   */
  releaseKernels(): Kernels {
    if (!this.#ownsKernels) throw new InvalidShardError('these weights do not own their kernels')
    if (this.#disposed) throw new InvalidShardError('the shard weights were released')
    this.#disposed = true
    for (const buf of this.#buffers) this.#kernels.free(buf)
    this.#buffers.length = 0
    return this.#kernels
  }
}

/**
 * The output norm and a vocabulary range of the output projection, with one session's scratch:
 * the logits of those rows for one position, computed as the whole head computes them (row by row,
 * the same rounding), so that the members' candidates merge into the whole head's.
 */
export class VocabHead {
  readonly range: readonly [number, number]
  readonly #config: Readonly<LlamaConfig>
  readonly #kernels: Kernels
  readonly #norm: Float32Array
  readonly #output: Matrix
  readonly #x: KernelBuffer
  readonly #rounded: KernelBuffer | undefined
  readonly #out: KernelBuffer
  #disposed = false

  constructor(
    config: Readonly<LlamaConfig>,
    kernels: Kernels,
    head: { range: [number, number]; norm: Float32Array; output: Matrix },
  ) {
    this.range = head.range
    this.#config = config
    this.#kernels = kernels
    this.#norm = head.norm
    this.#output = head.output
    const taken: KernelBuffer[] = []
    const alloc = (bytes: number) => {
      const buf = kernels.alloc(Math.max(16, bytes))
      taken.push(buf)
      return buf
    }
    try {
      this.#x = alloc(config.embd * 4)
      // The WebAssembly kernels round activations to the weight type's vec_dot_type themselves.
      this.#rounded = kernels.name === 'wasm-simd' ? undefined : alloc(config.embd * 4)
      this.#out = alloc(head.output.rows * 4)
    } catch (err) {
      for (const buf of taken) kernels.free(buf)
      throw err
    }
  }

  /** Logits of the range's tokens for one hidden state (`embd` floats). */
  logits(hidden: Float32Array): Float32Array {
    const { embd, normEps } = this.#config
    const w = this.#output
    if (w.rows === 0) return new Float32Array(0)
    rmsNorm(hidden, 0, embd, this.#norm, normEps, this.#x.f32(), 0)
    let input = this.#x
    if (this.#rounded) {
      roundActivations(w.type, this.#x.f32(), embd, embd, this.#rounded.f32())
      input = this.#rounded
    }
    this.#kernels.matvec(w.type, w.buf, w.rows, w.cols, input, this.#out)
    const logits = this.#out.f32().slice(0, w.rows)
    if (this.#config.finalSoftcap > 0) softcap(logits, 0, logits.length, this.#config.finalSoftcap)
    return logits
  }

  dispose(): void {
    if (this.#disposed) return
    this.#disposed = true
    this.#kernels.free(this.#x)
    if (this.#rounded) this.#kernels.free(this.#rounded)
    this.#kernels.free(this.#out)
  }
}
