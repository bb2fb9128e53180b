import type { LlamaConfig } from './config.ts'
import type { Matrix } from './weights.ts'

/** Token ids (shard must embed) or `n * embd` hidden-state floats. */
export type ShardInput = { tokens: readonly number[] } | { hidden: Float32Array }

/** Sums one partial result across the shards of a tensor-parallel group; every shard gets the sum. */
export type AllReduce = (
  partial: Float32Array,
  step: { layer: number; kind: 'attention' | 'ffn' },
) => Float32Array | Promise<Float32Array>

/**
 * What a shard with the head returns: the logits of the last position (default), of every position,
 * or none (`'none'`: the hidden states after the last layer, before the output norm, as a shard
 * without a head returns them; what an embedding pools, see `outputNorm`).
 */
export type LogitsWanted = 'last' | 'all' | 'none'

export interface ForwardOptions {
  /** With a head: logits of the last position only (default), of every position, or none. */
  logits?: LogitsWanted
  /** Required when the shard is column-sliced. */
  allReduce?: AllReduce
  signal?: AbortSignal
}

export type ShardOutput =
  | { kind: 'hidden'; n: number; hidden: Float32Array }
  | { kind: 'logits'; n: number; rows: number; logits: Float32Array }

/**
 * A part of a llama model: a layer range and a column slice, with their KV cache. See
 * `loadShard`. Calls must not overlap (the shard has one set of scratch buffers).
 */
export interface LlamaShard {
  readonly config: Readonly<LlamaConfig>
  readonly layers: readonly [number, number]
  /**
   * The column slice: query heads, the KV heads they read (computed and cached here; with GQA a KV
   * head may be in more than one shard) and FFN columns.
   */
  readonly columns: Readonly<{
    heads: readonly [number, number]
    kvHeads: readonly [number, number]
    ffn: readonly [number, number]
  }>
  /** The column slice is not the whole model: attention and FFN outputs are partial sums. */
  readonly partial: boolean
  readonly embeds: boolean
  readonly hasHead: boolean
  readonly contextSize: number
  readonly kvCacheType: 'f16' | 'f32'
  /** Bytes of weights in kernel memory. */
  readonly weightBytes: number
  /** Positions held by the KV cache of every layer of the shard. */
  readonly length: number
  /**
   * Runs `input` (n positions starting at `pos`) through the shard. `pos` may rewind to any
   * position up to `length` (later positions are forgotten). Returns the hidden state after the
   * last layer, or logits when the shard has the head.
   */
  forward(input: ShardInput, pos: number, options?: ForwardOptions): Promise<ShardOutput>
  /** Embedding rows of `tokens` (`tokens.length * embd` floats). */
  embed(tokens: readonly number[]): Float32Array
  /** This shard's part of attention for one layer: a (partial) `attn_output`, `n * embd` floats. */
  attention(layer: number, hidden: Float32Array, n: number, pos: number): Float32Array
  /** This shard's part of the FFN for one layer: a (partial) `ffn_down`, `n * embd` floats. */
  ffn(layer: number, hidden: Float32Array, n: number): Float32Array
  /** Output norm and projection of `n` hidden states (`n * vocab` floats). */
  logits(hidden: Float32Array, n: number): Float32Array
  /**
   * The output norm of `n` hidden states (`n * embd` floats): the model's final hidden states, what
   * the projection to logits reads and an embedding pools. Needs the head.
   */
  outputNorm(hidden: Float32Array, n: number): Float32Array
  /** Forgets positions from `length` on. */
  truncate(length: number): void
  dispose(): Promise<void>
}

/** One layer's weights (internal); the optional ones as the architecture has them. */
export interface LayerWeights {
  attnNorm: Float32Array
  wq: Matrix
  wk: Matrix
  wv: Matrix
  /** The shard's rows of the Q/K/V biases (Qwen 2). */
  bq?: Float32Array | undefined
  bk?: Float32Array | undefined
  bv?: Float32Array | undefined
  /** Per-head Q and K norms, `headDim` floats (Qwen 3, Gemma 3). */
  qNorm?: Float32Array | undefined
  kNorm?: Float32Array | undefined
  wo: Matrix
  /** Norm of the attention output before the residual add (Gemma). */
  attnPostNorm?: Float32Array | undefined
  ffnNorm: Float32Array
  gate: Matrix
  up: Matrix
  down: Matrix
  /** Norm of the FFN output before the residual add (Gemma). */
  ffnPostNorm?: Float32Array | undefined
}

export interface ShardPlan {
  layers: [number, number]
  heads: [number, number]
  kvHeads: [number, number]
  ffn: [number, number]
  partial: boolean
  embed: boolean
  head: boolean
  contextSize: number
}

/** The ranges a shard covers, checked against the model. */
export interface ShardRanges {
  /** Absent: every layer. */
  layers?: readonly [number, number] | undefined
  heads?: readonly [number, number] | undefined
  ffn?: readonly [number, number] | undefined
  embed: boolean
  head: boolean
}
