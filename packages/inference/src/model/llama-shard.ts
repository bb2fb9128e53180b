import { dequantizeRow, fp32ToFp16, rowByteLength } from '@meshnet/gguf'
import { InvalidArgumentError } from '@meshnet/identity'
import { ContextOverflowError, EngineDisposedError, InvalidShardError } from '../errors.ts'
import type { KernelBuffer, Kernels } from '../kernels/index.ts'
import { roundActivations } from './activations.ts'
import type { LlamaConfig } from './config.ts'
import { addInto, applyRope, attendF16, attendF32, rmsNorm, ropeCache, swiglu } from './ops.ts'
import type { ForwardOptions, Layer, LlamaShard, ShardInput, ShardOutput, ShardPlan } from './shard.ts'
import type { Matrix } from './weights.ts'

const f = Math.fround

export interface LlamaShardParts {
  config: LlamaConfig
  plan: ShardPlan
  kernels: Kernels
  layers: Layer[]
  embedding: Matrix | undefined
  head: { norm: Float32Array; output: Matrix } | undefined
  freqFactors: Float32Array | undefined
  weightBytes: number
  buffers: KernelBuffer[]
  maxBatch: number
  kvCacheType: 'f16' | 'f32'
}

/** Scratch buffers in kernel memory, sized for `maxBatch` positions. */
interface Scratch {
  x: KernelBuffer
  q: KernelBuffer
  k: KernelBuffer
  v: KernelBuffer
  out: KernelBuffer
  gate: KernelBuffer
  up: KernelBuffer
  logits: KernelBuffer | undefined
}

export class LlamaShardImpl implements LlamaShard {
  readonly config: Readonly<LlamaConfig>
  readonly layers: readonly [number, number]
  readonly columns: Readonly<{
    heads: readonly [number, number]
    kvHeads: readonly [number, number]
    ffn: readonly [number, number]
  }>
  readonly partial: boolean
  readonly embeds: boolean
  readonly hasHead: boolean
  readonly contextSize: number
  readonly kvCacheType: 'f16' | 'f32'
  readonly weightBytes: number
  readonly #kernels: Kernels
  readonly #layers: Layer[]
  readonly #embedding: Matrix | undefined
  readonly #head: { norm: Float32Array; output: Matrix } | undefined
  readonly #freqFactors: Float32Array | undefined
  readonly #buffers: KernelBuffer[]
  readonly #scratch: Scratch
  readonly #maxBatch: number
  readonly #rope: Float32Array
  /** Matmul inputs before they are rounded into kernel memory. */
  readonly #xn: Float32Array
  /** Length of the shard when it has no layers (embedding/head only). */
  #length = 0
  #disposed = false
  #busy = false

  constructor(parts: LlamaShardParts) {
    const { config, plan } = parts
    this.config = config
    this.layers = plan.layers
    this.columns = { heads: plan.heads, kvHeads: plan.kvHeads, ffn: plan.ffn }
    this.partial = plan.partial
    this.embeds = plan.embed
    this.hasHead = plan.head
    this.contextSize = plan.contextSize
    this.kvCacheType = parts.kvCacheType
    this.weightBytes = parts.weightBytes
    this.#kernels = parts.kernels
    this.#layers = parts.layers
    this.#embedding = parts.embedding
    this.#head = parts.head
    this.#freqFactors = parts.freqFactors
    this.#maxBatch = parts.maxBatch
    this.#buffers = [...parts.buffers]
    this.#rope = new Float32Array(config.headDim)
    const n = parts.maxBatch
    const d = config.headDim
    const alloc = (floats: number) => {
      const buf = this.#kernels.alloc(Math.max(4, floats * 4))
      this.#buffers.push(buf)
      return buf
    }
    const q = (plan.heads[1] - plan.heads[0]) * d
    const kv = (plan.kvHeads[1] - plan.kvHeads[0]) * d
    const ff = plan.ffn[1] - plan.ffn[0]
    this.#xn = new Float32Array(n * Math.max(config.embd, ff, q))
    const scratchStart = this.#buffers.length
    try {
      this.#scratch = {
        x: alloc(n * Math.max(config.embd, ff, q)),
        q: alloc(n * q),
        k: alloc(n * kv),
        v: alloc(n * kv),
        out: alloc(n * config.embd),
        gate: alloc(n * ff),
        up: alloc(n * ff),
        logits: plan.head ? alloc(n * config.vocab) : undefined,
      }
    } catch (err) {
      // The caller frees the weights; the scratch allocated so far is ours to free.
      for (const buf of this.#buffers.splice(scratchStart)) this.#kernels.free(buf)
      throw err
    }
  }

  get length(): number {
    if (this.#layers.length === 0) return this.#length
    return Math.min(...this.#layers.map((l) => l.length))
  }

  truncate(length: number): void {
    for (const layer of this.#layers) layer.length = Math.min(layer.length, length)
    this.#length = Math.min(this.#length, length)
  }

  async forward(input: ShardInput, pos: number, options: ForwardOptions = {}): Promise<ShardOutput> {
    this.#assertOpen()
    if (this.#busy) throw new InvalidArgumentError('forward() was called while another forward() was running')
    this.#busy = true
    try {
      return await this.#forward(input, pos, options)
    } finally {
      this.#busy = false
    }
  }

  async #forward(input: ShardInput, pos: number, options: ForwardOptions): Promise<ShardOutput> {
    const { embd } = this.config
    let hidden: Float32Array
    let n: number
    if ('tokens' in input) {
      n = input.tokens.length
      hidden = this.embed(input.tokens)
    } else {
      if (input.hidden.length === 0 || input.hidden.length % embd !== 0) {
        throw new InvalidArgumentError(
          `hidden state of ${input.hidden.length} floats is not a whole number of ${embd}-float positions`,
        )
      }
      n = input.hidden.length / embd
      hidden = input.hidden.slice()
    }
    if (n === 0) throw new InvalidArgumentError('forward() needs at least one position')
    this.#checkPositions(pos, n)
    if (this.partial && this.#layers.length > 0 && options.allReduce === undefined) {
      throw new InvalidShardError(
        'this shard computes a column slice, so forward() needs an allReduce that sums the partial results of the shards',
      )
    }
    this.truncate(pos)
    const wantAll = options.logits === 'all'
    const logitRows: Float32Array[] = []
    for (let start = 0; start < n; start += this.#maxBatch) {
      const count = Math.min(this.#maxBatch, n - start)
      const x = hidden.subarray(start * embd, (start + count) * embd)
      for (let l = this.layers[0]; l < this.layers[1]; l++) {
        options.signal?.throwIfAborted()
        let sum = this.attention(l, x, count, pos + start)
        if (this.partial) sum = await options.allReduce!(sum, { layer: l, kind: 'attention' })
        addInto(x, sum, count * embd)
        sum = this.ffn(l, x, count)
        if (this.partial) sum = await options.allReduce!(sum, { layer: l, kind: 'ffn' })
        addInto(x, sum, count * embd)
      }
      if (this.hasHead && wantAll) logitRows.push(this.logits(x, count))
    }
    this.#length = pos + n
    if (!this.hasHead) return { kind: 'hidden', n, hidden }
    if (!wantAll) {
      return { kind: 'logits', n, rows: 1, logits: this.logits(hidden.subarray((n - 1) * embd), 1) }
    }
    const { vocab } = this.config
    const logits = new Float32Array(n * vocab)
    let offset = 0
    for (const rows of logitRows) {
      logits.set(rows, offset)
      offset += rows.length
    }
    return { kind: 'logits', n, rows: n, logits }
  }

  embed(tokens: readonly number[]): Float32Array {
    this.#assertOpen()
    const table = this.#embedding
    if (table === undefined) {
      throw new InvalidShardError(
        `this shard (layers [${this.layers[0]}, ${this.layers[1]})) has no embedding table; give it hidden states, or load it with embed: true`,
      )
    }
    const { embd, vocab } = this.config
    const out = new Float32Array(tokens.length * embd)
    const rowBytes = rowByteLength(table.type, embd)
    const bytes = table.buf.bytes()
    tokens.forEach((token, i) => {
      if (!Number.isInteger(token) || token < 0 || token >= vocab) {
        throw new InvalidArgumentError(`token id ${token} is outside the vocabulary (0..${vocab - 1})`)
      }
      const row = bytes.subarray(token * rowBytes, (token + 1) * rowBytes)
      dequantizeRow(table.type, row, embd, out.subarray(i * embd, (i + 1) * embd))
    })
    return out
  }

  attention(layer: number, hidden: Float32Array, n: number, pos: number): Float32Array {
    const L = this.#layer(layer)
    const { embd, headDim: d, normEps } = this.config
    this.#checkBatch(hidden, n)
    if (pos > L.length) {
      throw new InvalidArgumentError(
        `layer ${layer} holds ${L.length} positions; cannot write at position ${pos}`,
      )
    }
    this.#checkPositions(pos, n)
    const s = this.#scratch
    const nq = this.columns.heads[1] - this.columns.heads[0]
    const nkv = this.columns.kvHeads[1] - this.columns.kvHeads[0]
    const qRows = nq * d
    const kvRows = nkv * d
    if (qRows === 0) {
      L.length = pos + n
      return new Float32Array(n * embd)
    }
    const xn = this.#xn
    for (let i = 0; i < n; i++) rmsNorm(hidden, i * embd, embd, L.attnNorm, normEps, xn, i * embd)
    this.#matmul(L.wq, xn, n, s.q)
    this.#matmul(L.wk, xn, n, s.k)
    this.#matmul(L.wv, xn, n, s.v)
    const q = s.q.f32()
    const k = s.k.f32()
    const v = s.v.f32()
    const f16 = this.kvCacheType === 'f16'
    const { ropeType, ropeBase, ropeFreqScale } = this.config
    for (let i = 0; i < n; i++) {
      ropeCache(pos + i, d, ropeBase, ropeFreqScale, this.#freqFactors, this.#rope)
      applyRope(q, i * qRows, nq, d, this.#rope, ropeType)
      applyRope(k, i * kvRows, nkv, d, this.#rope, ropeType)
      const at = (pos + i) * kvRows
      if (f16) {
        const kc = L.k as Uint16Array
        const vc = L.v as Uint16Array
        for (let j = 0; j < kvRows; j++) {
          kc[at + j] = fp32ToFp16(k[i * kvRows + j]!)
          vc[at + j] = fp32ToFp16(v[i * kvRows + j]!)
        }
      } else {
        ;(L.k as Float32Array).set(k.subarray(i * kvRows, (i + 1) * kvRows), at)
        ;(L.v as Float32Array).set(v.subarray(i * kvRows, (i + 1) * kvRows), at)
      }
    }
    L.length = pos + n
    const scale = f(this.config.attentionScale)
    const group = this.config.heads / this.config.kvHeads
    const attn = this.#xn
    const qh = new Float32Array(d)
    const scores = new Float64Array(pos + n)
    const acc = new Float64Array(d)
    for (let i = 0; i < n; i++) {
      const ctx = pos + i + 1
      for (let h = 0; h < nq; h++) {
        const kvOff = (Math.floor((this.columns.heads[0] + h) / group) - this.columns.kvHeads[0]) * d
        const qOff = i * qRows + h * d
        if (f16) {
          attendF16(
            q,
            qOff,
            L.k as Uint16Array,
            L.v as Uint16Array,
            kvOff,
            kvRows,
            ctx,
            d,
            scale,
            scores,
            qh,
            acc,
            attn,
            qOff,
          )
        } else {
          attendF32(
            q,
            qOff,
            L.k as Float32Array,
            L.v as Float32Array,
            kvOff,
            kvRows,
            ctx,
            d,
            scale,
            scores,
            acc,
            attn,
            qOff,
          )
        }
      }
    }
    this.#matmul(L.wo, attn, n, s.out)
    return s.out.f32().slice(0, n * embd)
  }

  ffn(layer: number, hidden: Float32Array, n: number): Float32Array {
    const L = this.#layer(layer)
    const { embd, normEps } = this.config
    this.#checkBatch(hidden, n)
    const s = this.#scratch
    const width = this.columns.ffn[1] - this.columns.ffn[0]
    if (width === 0) return new Float32Array(n * embd)
    const xn = this.#xn
    for (let i = 0; i < n; i++) rmsNorm(hidden, i * embd, embd, L.ffnNorm, normEps, xn, i * embd)
    this.#matmul(L.gate, xn, n, s.gate)
    this.#matmul(L.up, xn, n, s.up)
    const gate = s.gate.f32()
    swiglu(gate, s.up.f32(), n * width)
    xn.set(gate.subarray(0, n * width))
    this.#matmul(L.down, xn, n, s.out)
    return s.out.f32().slice(0, n * embd)
  }

  logits(hidden: Float32Array, n: number): Float32Array {
    this.#assertOpen()
    const head = this.#head
    if (head === undefined) {
      throw new InvalidShardError(
        `this shard (layers [${this.layers[0]}, ${this.layers[1]})) has no output head; load it with head: true`,
      )
    }
    const { embd, vocab, normEps } = this.config
    const s = this.#scratch
    const out = new Float32Array(n * vocab)
    for (let start = 0; start < n; start += this.#maxBatch) {
      const count = Math.min(this.#maxBatch, n - start)
      const xn = this.#xn
      for (let i = 0; i < count; i++)
        rmsNorm(hidden, (start + i) * embd, embd, head.norm, normEps, xn, i * embd)
      this.#matmul(head.output, xn, count, s.logits!)
      out.set(s.logits!.f32().subarray(0, count * vocab), start * vocab)
    }
    return out
  }

  async dispose(): Promise<void> {
    if (this.#disposed) return
    this.#disposed = true
    for (const buf of this.#buffers) this.#kernels.free(buf)
    this.#buffers.length = 0
    for (const layer of this.#layers) {
      layer.k = new Uint16Array(0)
      layer.v = new Uint16Array(0)
    }
  }

  /** `out = W · x` for `n` inputs taken from `x` (JS), rounded as ggml rounds them for W's type. */
  #matmul(w: Matrix, x: Float32Array, n: number, out: KernelBuffer): void {
    if (w.rows === 0) return
    const input = this.#scratch.x
    roundActivations(w.type, x, n * w.cols, w.cols, input.f32())
    if (n === 1) this.#kernels.matvec(w.type, w.buf, w.rows, w.cols, input, out)
    else this.#kernels.matmul(w.type, w.buf, w.rows, w.cols, input, n, out)
  }

  #layer(layer: number): Layer {
    this.#assertOpen()
    const L = this.#layers[layer - this.layers[0]]
    if (L === undefined || layer < this.layers[0]) {
      throw new InvalidShardError(
        `layer ${layer} is not in this shard's range [${this.layers[0]}, ${this.layers[1]})`,
      )
    }
    return L
  }

  #checkBatch(hidden: Float32Array, n: number): void {
    if (!Number.isInteger(n) || n < 1 || n > this.#maxBatch) {
      throw new InvalidArgumentError(`a batch of ${n} positions is outside 1..${this.#maxBatch} (maxBatch)`)
    }
    if (hidden.length < n * this.config.embd) {
      throw new InvalidArgumentError(`hidden state of ${hidden.length} floats is shorter than ${n} positions`)
    }
  }

  #checkPositions(pos: number, n: number): void {
    if (!Number.isInteger(pos) || pos < 0 || pos > this.length) {
      throw new InvalidArgumentError(
        `position ${pos} is not in 0..${this.length} (the KV cache holds ${this.length} positions)`,
      )
    }
    if (pos + n > this.contextSize) {
      throw new ContextOverflowError(
        `positions ${pos}..${pos + n - 1} do not fit in the context of ${this.contextSize} positions`,
        { hint: 'shorten the prompt or load the model with a larger contextSize' },
      )
    }
  }

  #assertOpen(): void {
    if (this.#disposed) throw new EngineDisposedError('the shard was disposed')
  }
}
