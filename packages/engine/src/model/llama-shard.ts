import { InvalidArgumentError } from '@meshnet/core'
import { dequantizeRow, rowByteLength } from '@meshnet/gguf'
import { ContextOverflowError, EngineDisposedError, InvalidShardError } from '../errors.ts'
import type { KernelBuffer, Kernels } from '../kernels/api.ts'
import { KernelUnavailableError } from '../kernels/errors.ts'
import { roundActivations } from './activations.ts'
import { type AttentionContext, attend } from './attention.ts'
import type { LlamaConfig } from './config.ts'
import { addInto, applyRope, geglu, rmsNorm, ropeCache, softcap, swiglu } from './ops.ts'
import {
  allocateScratch,
  f,
  HalfArrayCtor,
  type HeadViews,
  type LayerState,
  type LlamaShardParts,
  reserveV,
  type Scratch,
  sessionLayout,
  storeKV,
  V_FIRST_CAPACITY,
} from './shard-layout.ts'
import type { ForwardOptions, LlamaShard, LogitsWanted, ShardInput, ShardOutput } from './shard-types.ts'
import type { Matrix } from './weights.ts'

/** cos/sin of `count` positions from `from`, `headDim` floats each. */
interface RopeTable {
  from: number
  count: number
  values: Float32Array
}

/** One session's rows in a batched pass: rows `[at, at + n)` are its positions `[pos, pos + n)`. */
interface BatchRows {
  shard: LlamaShardImpl
  at: number
  n: number
  pos: number
}

/** Adds a bias of `bias.length` floats to each of `n` rows. */
function addBias(x: Float32Array, bias: Float32Array, n: number): void {
  const w = bias.length
  for (let i = 0; i < n; i++) for (let j = 0; j < w; j++) x[i * w + j] = x[i * w + j]! + bias[j]!
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
  /**
   * The WebAssembly kernels round activations to the weight type's `vec_dot_type` themselves,
   * exactly as ggml does; other kernels get them rounded here first.
   */
  readonly #kernelsRound: boolean
  readonly #layers: LayerState[]
  readonly #embedding: Matrix | undefined
  readonly #head: { norm: Float32Array; output: Matrix } | undefined
  readonly #freqFactors: Float32Array | undefined
  readonly #buffers: KernelBuffer[]
  readonly #scratch: Scratch
  readonly #heads: HeadViews[]
  readonly #attention: AttentionContext
  readonly #maxBatch: number
  /** Prompt positions per attention chunk, so that a chunk's scores fit the scores buffer. */
  readonly #chunk: number
  /** e^-gate values of `ffn`. */
  readonly #expScratch: Float32Array
  /** cos/sin of the positions the last forward pass used, for global and sliding-window layers. */
  readonly #rope: { global: RopeTable; local: RopeTable }
  /**
   * What sessions over the same weights have in common (the layer list of their `ShardWeights`):
   * only such sessions run their steps in one batch (`forwardMany`).
   */
  readonly #shared: object
  readonly #parts: LlamaShardParts
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
    if (parts.kvCacheType === 'f16' && HalfArrayCtor === undefined) {
      throw new KernelUnavailableError(
        'this JavaScript runtime has no Float16Array, which the F16 KV cache is written through',
        { hint: "run Node.js 24 or newer, or load the shard with kvCacheType: 'f32'" },
      )
    }
    this.#kernels = parts.kernels
    this.#kernelsRound = parts.kernels.name === 'wasm-simd'
    this.#embedding = parts.embedding
    this.#head = parts.head
    this.#freqFactors = parts.freqFactors
    this.#maxBatch = parts.maxBatch
    this.#shared = parts.layers
    this.#parts = parts
    this.#buffers = [...parts.buffers]
    const n = parts.maxBatch
    const d = config.headDim
    const table = (): RopeTable => ({ from: -1, count: 0, values: new Float32Array(n * d) })
    this.#rope = { global: table(), local: table() }
    this.#expScratch = new Float32Array(n * (plan.ffn[1] - plan.ffn[0]))
    const nkv = plan.kvHeads[1] - plan.kvHeads[0]
    const group = config.heads / config.kvHeads
    const context = plan.contextSize
    const layout = sessionLayout(config, plan, parts.maxBatch, parts.kvCacheType, this.#kernelsRound)
    this.#chunk = layout.chunk
    const es = parts.kvCacheType === 'f16' ? 2 : 4
    const owned = this.#buffers.length
    const alloc = (bytes: number) => {
      const buf = this.#kernels.alloc(bytes)
      this.#buffers.push(buf)
      return buf
    }
    try {
      this.#scratch = allocateScratch(alloc, layout.scratch, plan.head, this.#kernelsRound)
      const view = (buf: KernelBuffer, at: number) => this.#kernels.view(buf, at, buf.byteLength - at)
      this.#layers = parts.layers.map((w) => {
        const k = alloc(layout.kvBytesPerLayer / 2)
        const v = alloc(layout.kvBytesPerLayer / 2)
        const heads = Array.from({ length: nkv }, (_, h) => h)
        const layer: LayerState = {
          w,
          k,
          v,
          vCapacity: 0,
          // Keys head by head ([KV head][position][dim]): a head's keys are one contiguous run.
          kHead: heads.map((h) => view(k, h * context * d * es)),
          vHead: [],
          length: 0,
        }
        reserveV(
          this.#kernels,
          layer,
          this.kvCacheType,
          this.config.headDim,
          this.columns.kvHeads[1] - this.columns.kvHeads[0],
          Math.min(context, V_FIRST_CAPACITY),
        )
        return layer
      })
      this.#heads = []
      for (let h = 0; h < nkv; h++) {
        const kvHead = plan.kvHeads[0] + h
        const first = Math.max(plan.heads[0], kvHead * group) - plan.heads[0]
        const count = Math.min(plan.heads[1], (kvHead + 1) * group) - plan.heads[0] - first
        const s = this.#scratch
        this.#heads.push({
          first,
          count,
          q: this.#kernels.view(s.q, first * d * 4, count * d * 4),
          attn: this.#kernels.view(s.attn, first * d * 4, count * d * 4),
        })
      }
      this.#attention = {
        kernels: this.#kernels,
        kernelsRound: this.#kernelsRound,
        scratch: this.#scratch,
        heads: this.#heads,
        chunk: this.#chunk,
        headDim: d,
        queryHeads: plan.heads[1] - plan.heads[0],
        f16: parts.kvCacheType === 'f16',
        scale: f(config.attentionScale),
        softcap: config.attnSoftcap,
      }
    } catch (err) {
      // The caller frees the weights; the scratch and KV cache allocated so far are ours to free.
      for (const buf of this.#buffers.splice(owned)) this.#kernels.free(buf)
      throw err
    }
  }

  get length(): number {
    if (this.#layers.length === 0) return this.#length
    let length = this.contextSize
    for (const layer of this.#layers) length = Math.min(length, layer.length)
    return length
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
    const headOut = this.hasHead && options.logits !== 'none'
    const logitRows: Float32Array[] = []
    for (let start = 0; start < n; start += this.#maxBatch) {
      const count = Math.min(this.#maxBatch, n - start)
      const x = hidden.subarray(start * embd, (start + count) * embd)
      for (let l = this.layers[0]; l < this.layers[1]; l++) {
        options.signal?.throwIfAborted()
        let sum = this.attention(l, x, count, pos + start)
        if (this.partial) sum = await options.allReduce!(sum, { layer: l, kind: 'attention' })
        this.#residual(this.#layer(l).w.attnPostNorm, x, sum, count)
        sum = this.ffn(l, x, count)
        if (this.partial) sum = await options.allReduce!(sum, { layer: l, kind: 'ffn' })
        this.#residual(this.#layer(l).w.ffnPostNorm, x, sum, count)
      }
      if (this.hasHead && wantAll) logitRows.push(this.logits(x, count))
    }
    this.#length = pos + n
    if (!headOut) return { kind: 'hidden', n, hidden }
    if (!wantAll) {
      return { kind: 'logits', n, rows: 1, logits: this.logits(hidden.subarray((n - 1) * embd), 1) }
    }
    if (logitRows.length === 1) return { kind: 'logits', n, rows: n, logits: logitRows[0]! }
    const { vocab } = this.config
    const logits = new Float32Array(n * vocab)
    let offset = 0
    for (const rows of logitRows) {
      logits.set(rows, offset)
      offset += rows.length
    }
    return { kind: 'logits', n, rows: n, logits }
  }

  /**
   * Another session over this shard's weights, with a KV cache and scratch of its own (a sequence
   * of its own); its steps can share a pass with this one's (`forwardMany`). Dispose it before this
   * shard when this shard owns the weights.
   */
  session(): LlamaShardImpl {
    this.#assertOpen()
    return new LlamaShardImpl({ ...this.#parts, buffers: [] })
  }

  /** Positions one batched pass takes at most (`maxBatch`). */
  get maxBatch(): number {
    return this.#maxBatch
  }

  /** Whether `other` runs over the same weights, so that their steps can share a batched pass. */
  sharesWeightsWith(other: LlamaShard): boolean {
    return other instanceof LlamaShardImpl && other.#shared === this.#shared && !this.partial
  }

  /**
   * Runs the steps of several sessions over the same weights (`sharesWeightsWith`) as one pass:
   * every matrix product takes the rows of all of them at once (one read of the weights for all),
   * while RoPE, the KV cache and attention stay each session's own. A session's rows get exactly
   * the values they get from `forward` alone with the same positions (the kernels are
   * batch-invariant, and the per-row steps are the same calls), so batching never changes tokens.
   * The rows together fit the first shard's `maxBatch`; each step `n ≤` its own `maxBatch`.
   */
  static async forwardMany(
    steps: ReadonlyArray<{ shard: LlamaShardImpl; input: ShardInput; pos: number; logits?: LogitsWanted }>,
    signal?: AbortSignal,
  ): Promise<ShardOutput[]> {
    const lead = steps[0]!.shard
    const shards = new Set(steps.map((s) => s.shard))
    if (shards.size !== steps.length) throw new InvalidArgumentError('a batch holds one step per session')
    for (const shard of shards) {
      shard.#assertOpen()
      if (!lead.sharesWeightsWith(shard)) {
        throw new InvalidArgumentError(
          'a batch holds sessions over the same weights only (sharesWeightsWith)',
        )
      }
      if (shard.#busy)
        throw new InvalidArgumentError('forward() was called while another forward() was running')
    }
    for (const shard of shards) shard.#busy = true
    try {
      return await LlamaShardImpl.#forwardMany(lead, steps, signal)
    } finally {
      for (const shard of shards) shard.#busy = false
    }
  }

  static async #forwardMany(
    lead: LlamaShardImpl,
    steps: ReadonlyArray<{ shard: LlamaShardImpl; input: ShardInput; pos: number; logits?: LogitsWanted }>,
    signal: AbortSignal | undefined,
  ): Promise<ShardOutput[]> {
    const { embd } = lead.config
    const items: BatchRows[] = []
    const inputs: Float32Array[] = []
    let rows = 0
    for (const step of steps) {
      const hidden = step.shard.#input(step.input)
      const n = hidden.length / embd
      step.shard.#checkPositions(step.pos, n)
      items.push({ shard: step.shard, at: rows, n, pos: step.pos })
      inputs.push(hidden)
      rows += n
    }
    if (rows > lead.#maxBatch) {
      throw new InvalidArgumentError(
        `a batch of ${rows} positions is outside 1..${lead.#maxBatch} (maxBatch)`,
      )
    }
    const x = new Float32Array(rows * embd)
    for (const [i, item] of items.entries()) {
      x.set(inputs[i]!, item.at * embd)
      item.shard.truncate(item.pos)
    }
    for (let l = lead.layers[0]; l < lead.layers[1]; l++) {
      signal?.throwIfAborted()
      const w = lead.#layer(l).w
      let sum = lead.#attentionMany(l, x, rows, items)
      lead.#residual(w.attnPostNorm, x, sum, rows)
      sum = lead.ffn(l, x, rows)
      lead.#residual(w.ffnPostNorm, x, sum, rows)
    }
    for (const item of items) item.shard.#length = item.pos + item.n
    const slice = (item: BatchRows) => x.slice(item.at * embd, (item.at + item.n) * embd)
    if (!lead.hasHead) return items.map((item) => ({ kind: 'hidden', n: item.n, hidden: slice(item) }))
    // The logits of every session's last position (or of all its positions, or none) in one product.
    const picks = steps.map((step, i) => {
      const item = items[i]!
      if (step.logits === 'none') return { from: item.at, count: 0 }
      return step.logits === 'all'
        ? { from: item.at, count: item.n }
        : { from: item.at + item.n - 1, count: 1 }
    })
    const count = picks.reduce((sum, p) => sum + p.count, 0)
    const gathered = new Float32Array(count * embd)
    let offset = 0
    for (const p of picks) {
      gathered.set(x.subarray(p.from * embd, (p.from + p.count) * embd), offset * embd)
      offset += p.count
    }
    const logits = count > 0 ? lead.logits(gathered, count) : new Float32Array(0)
    const { vocab } = lead.config
    offset = 0
    return picks.map((p, i) => {
      if (steps[i]!.logits === 'none') return { kind: 'hidden', n: items[i]!.n, hidden: slice(items[i]!) }
      const out: ShardOutput = {
        kind: 'logits',
        n: items[i]!.n,
        rows: p.count,
        logits: logits.slice(offset * vocab, (offset + p.count) * vocab),
      }
      offset += p.count
      return out
    })
  }

  /** The hidden state of an input: its tokens embedded, or its floats (checked). */
  #input(input: ShardInput): Float32Array {
    const { embd } = this.config
    if ('tokens' in input) {
      if (input.tokens.length === 0) throw new InvalidArgumentError('forward() needs at least one position')
      return this.embed(input.tokens)
    }
    if (input.hidden.length === 0 || input.hidden.length % embd !== 0) {
      throw new InvalidArgumentError(
        `hidden state of ${input.hidden.length} floats is not a whole number of ${embd}-float positions`,
      )
    }
    return input.hidden
  }

  /**
   * `attention` for the rows of several sessions: the projections over all rows at once (this
   * shard's scratch), then each session's RoPE, KV cache and attention in its own scratch, as
   * `attention` does them for that session alone.
   */
  #attentionMany(
    layer: number,
    hidden: Float32Array,
    rows: number,
    items: readonly BatchRows[],
  ): Float32Array {
    const L0 = this.#layer(layer)
    const { embd, headDim: d, normEps } = this.config
    this.#checkBatch(hidden, rows)
    for (const item of items) {
      const L = item.shard.#layer(layer)
      if (item.pos > L.length) {
        throw new InvalidArgumentError(
          `layer ${layer} holds ${L.length} positions; cannot write at position ${item.pos}`,
        )
      }
    }
    const s = this.#scratch
    const nq = this.columns.heads[1] - this.columns.heads[0]
    const nkv = this.columns.kvHeads[1] - this.columns.kvHeads[0]
    const qRows = nq * d
    const kvRows = nkv * d
    if (qRows === 0) {
      for (const item of items) item.shard.#layer(layer).length = item.pos + item.n
      return new Float32Array(rows * embd)
    }
    const xn = s.x.f32()
    for (let i = 0; i < rows; i++) rmsNorm(hidden, i * embd, embd, L0.w.attnNorm, normEps, xn, i * embd)
    this.#matmul(L0.w.wq, s.x, rows, s.q)
    this.#matmul(L0.w.wk, s.x, rows, s.k)
    this.#matmul(L0.w.wv, s.x, rows, s.v)
    const q = s.q.f32()
    const k = s.k.f32()
    const v = s.v.f32()
    if (L0.w.bq) {
      addBias(q, L0.w.bq, rows)
      addBias(k, L0.w.bk!, rows)
      addBias(v, L0.w.bv!, rows)
    }
    if (L0.w.qNorm) {
      for (let h = 0; h < rows * nq; h++) rmsNorm(q, h * d, d, L0.w.qNorm, normEps, q, h * d)
      for (let h = 0; h < rows * nkv; h++) rmsNorm(k, h * d, d, L0.w.kNorm!, normEps, k, h * d)
    }
    const local = this.config.swaLayers[layer] === true
    const ropeType = this.config.ropeType
    for (const item of items) {
      const rope = item.shard.#ropeTable(item.pos, item.n, local)
      for (let i = 0; i < item.n; i++) {
        const at = (item.pos + i - rope.from) * d
        applyRope(q, (item.at + i) * qRows, nq, d, rope.values, ropeType, at)
        applyRope(k, (item.at + i) * kvRows, nkv, d, rope.values, ropeType, at)
      }
    }
    const queryScale = this.config.queryScale
    if (queryScale !== 1) {
      const scale = f(queryScale)
      for (let i = 0; i < rows * qRows; i++) q[i] = q[i]! * scale
    }
    const attn = s.attn.f32()
    for (const item of items) {
      const shard = item.shard
      const L = shard.#layer(layer)
      storeKV(this.#kernels, L, this.kvCacheType, {
        headDim: d,
        kvHeads: nkv,
        contextSize: shard.contextSize,
        k: k.subarray(item.at * kvRows, (item.at + item.n) * kvRows),
        v: v.subarray(item.at * kvRows, (item.at + item.n) * kvRows),
        n: item.n,
        pos: item.pos,
      })
      L.length = item.pos + item.n
      if (shard === this) {
        // The first session's rows are the first rows of this scratch, where its attention reads them.
        attend(this.#attention, L, item.n, item.pos, local ? this.config.slidingWindow : 0)
        continue
      }
      const own = shard.#scratch
      own.q.f32().set(q.subarray(item.at * qRows, (item.at + item.n) * qRows))
      attend(shard.#attention, L, item.n, item.pos, local ? this.config.slidingWindow : 0)
      attn.set(own.attn.f32().subarray(0, item.n * qRows), item.at * qRows)
    }
    this.#matmul(L0.w.wo, s.attn, rows, s.out)
    return s.out.f32().slice(0, rows * embd)
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
    if (this.config.embedScale !== 1) {
      const scale = f(this.config.embedScale)
      for (let i = 0; i < out.length; i++) out[i] = out[i]! * scale
    }
    return out
  }

  attention(layer: number, hidden: Float32Array, n: number, pos: number): Float32Array {
    this.#checkBatch(hidden, n)
    this.#checkPositions(pos, n)
    // This session alone is a batch of one: the same calls, so batching cannot change its values.
    return this.#attentionMany(layer, hidden, n, [{ shard: this, at: 0, n, pos }])
  }

  ffn(layer: number, hidden: Float32Array, n: number): Float32Array {
    const L = this.#layer(layer)
    const { embd, normEps } = this.config
    this.#checkBatch(hidden, n)
    const s = this.#scratch
    const width = this.columns.ffn[1] - this.columns.ffn[0]
    if (width === 0) return new Float32Array(n * embd)
    const xn = s.x.f32()
    for (let i = 0; i < n; i++) rmsNorm(hidden, i * embd, embd, L.w.ffnNorm, normEps, xn, i * embd)
    this.#matmul(L.w.gate, s.x, n, s.gate)
    this.#matmul(L.w.up, s.x, n, s.up)
    if (this.config.activation === 'gelu') geglu(s.gate.f32(), s.up.f32(), n * width)
    else swiglu(s.gate.f32(), s.up.f32(), n * width, this.#expScratch)
    this.#matmul(L.w.down, s.gate, n, s.out)
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
    const out = n > this.#maxBatch ? new Float32Array(n * vocab) : undefined
    for (let start = 0; start < n; start += this.#maxBatch) {
      const count = Math.min(this.#maxBatch, n - start)
      const xn = s.x.f32()
      for (let i = 0; i < count; i++)
        rmsNorm(hidden, (start + i) * embd, embd, head.norm, normEps, xn, i * embd)
      const logits = this.#logitsScratch(count)
      this.#matmul(head.output, s.x, count, logits)
      if (this.config.finalSoftcap > 0) softcap(logits.f32(), 0, count * vocab, this.config.finalSoftcap)
      if (out === undefined) return logits.f32().slice(0, n * vocab)
      out.set(logits.f32().subarray(0, count * vocab), start * vocab)
    }
    return out!
  }

  outputNorm(hidden: Float32Array, n: number): Float32Array {
    this.#assertOpen()
    const head = this.#head
    if (head === undefined) {
      throw new InvalidShardError(
        `this shard (layers [${this.layers[0]}, ${this.layers[1]})) has no output norm; load it with head: true`,
      )
    }
    const { embd, normEps } = this.config
    if (hidden.length < n * embd) {
      throw new InvalidArgumentError(`${n} hidden states need ${n * embd} floats, got ${hidden.length}`)
    }
    const out = new Float32Array(n * embd)
    for (let i = 0; i < n; i++) rmsNorm(hidden, i * embd, embd, head.norm, normEps, out, i * embd)
    return out
  }

  async dispose(): Promise<void> {
    if (this.#disposed) return
    this.#disposed = true
    for (const buf of this.#buffers) this.#kernels.free(buf)
    this.#buffers.length = 0
  }

  /**
   * cos/sin for positions `[pos, pos + n)`, computed once per position range (every layer uses
   * it); sliding-window layers have their own base and scale (Gemma).
   */
  #ropeTable(pos: number, n: number, local: boolean): RopeTable {
    const table = local ? this.#rope.local : this.#rope.global
    if (pos < table.from || pos + n > table.from + table.count) {
      const d = this.config.headDim
      const base = local ? this.config.ropeBaseSwa : this.config.ropeBase
      const scale = local ? this.config.ropeFreqScaleSwa : this.config.ropeFreqScale
      for (let i = 0; i < n; i++) {
        ropeCache(pos + i, d, base, scale, this.#freqFactors, table.values, i * d)
      }
      table.from = pos
      table.count = n
    }
    return table
  }

  /** `x += sum`, or `x += norm(sum)` with the architecture's post-attention or post-FFN norm. */
  #residual(norm: Float32Array | undefined, x: Float32Array, sum: Float32Array, n: number): void {
    const { embd, normEps } = this.config
    if (norm) for (let i = 0; i < n; i++) rmsNorm(sum, i * embd, embd, norm, normEps, sum, i * embd)
    addInto(x, sum, n * embd)
  }

  /**
   * The logits output for `rows` positions: one row's worth until a caller asks for the logits of
   * more (`logits: 'all'`), so that a shard that only decodes does not hold `maxBatch · vocab` floats.
   */
  #logitsScratch(rows: number): KernelBuffer {
    const s = this.#scratch
    const bytes = rows * this.config.vocab * 4
    if (s.logits!.byteLength < bytes) {
      const grown = this.#kernels.alloc(this.#maxBatch * this.config.vocab * 4)
      this.#buffers.splice(this.#buffers.indexOf(s.logits!), 1, grown)
      this.#kernels.free(s.logits!)
      s.logits = grown
    }
    return s.logits!
  }

  /** `out = W · x` for `n` inputs in `x`, which the kernels (or this) round as ggml rounds them for W's type. */
  #matmul(w: Matrix, x: KernelBuffer, n: number, out: KernelBuffer): void {
    if (w.rows === 0) return
    let input = x
    if (!this.#kernelsRound) {
      input = this.#scratch.rounded!
      roundActivations(w.type, x.f32(), n * w.cols, w.cols, input.f32())
    }
    if (n === 1) this.#kernels.matvec(w.type, w.buf, w.rows, w.cols, input, out)
    else this.#kernels.matmul(w.type, w.buf, w.rows, w.cols, input, n, out)
  }

  #layer(layer: number): LayerState {
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
