import { InvalidArgumentError } from '@meshnet/core'
import type { GGUFReader } from '@meshnet/gguf'
import { InvalidShardError } from '../errors.ts'
import type { Kernels } from '../kernels/api.ts'
import type { LlamaConfig } from './config.ts'
import { resolveSpec } from './shard.ts'
import type { ForwardOptions, LlamaShard, ShardInput, ShardOutput } from './shard-types.ts'
import { estimateWeightBytes, type ShardSpec, type ShardWeights, type VocabHead } from './shard-weights.ts'

/**
 * Kernels over a fresh kernel memory of at most `maxMemoryBytes` (a wasm32 memory holds at most
 * 4 GiB). A member holds more than that by giving each weight segment kernels of its own.
 */
export type KernelFactory = (maxMemoryBytes: number) => Promise<Kernels>

/**
 * Weight bytes one segment takes at most by default: 3 GiB of a kernel memory's 4 GiB, leaving the
 * rest for the KV caches and scratch of the sessions that run it (an 8B model's 32 layers of f16 KV
 * cache take 512 MiB at 4096 positions).
 */
export const DEFAULT_SEGMENT_BYTES = 3 * 2 ** 30

/**
 * Splits a shard into segments of consecutive layers whose weights each take at most `maxBytes`:
 * the embedding goes with the first, the output head (and a tensor-parallel vocabulary range) with
 * the last, or in a segment of its own when it does not fit beside the last layers. Each segment
 * loads into its own kernel memory (`ShardWeights.load` with kernels of its own), and
 * `chainSessions` runs them one after the other. A shard that fits is one segment, the spec itself.
 */
export function planSegments(
  file: GGUFReader,
  config: LlamaConfig,
  spec: ShardSpec,
  maxBytes: number,
): ShardSpec[] {
  if (!(maxBytes > 0)) throw new InvalidArgumentError(`segment size must be positive, got ${maxBytes}`)
  const plan = resolveSpec(config, spec)
  const [l0, l1] = plan.layers
  const columns = { heads: plan.heads, ffn: plan.ffn }
  const cost = (part: ShardSpec) => estimateWeightBytes(file, config, resolveSpec(config, part), part.vocab)
  if (cost(spec) <= maxBytes) return [spec]
  /** Layers [a, b), with the embedding, and with the head and vocabulary range when `last`. */
  const part = (a: number, b: number, embed: boolean, last: boolean): ShardSpec => ({
    layers: [a, b],
    ...columns,
    embed,
    head: last && spec.head,
    ...(last && spec.vocab !== undefined ? { vocab: spec.vocab } : {}),
  })
  const segments: ShardSpec[] = []
  let start = l0
  let used = spec.embed ? cost(part(l0, l0, true, false)) : 0
  /** The embedding still has to go into the segment that starts at `start`. */
  let embed = spec.embed
  for (let l = l0; l < l1; l++) {
    const layer = cost(part(l, l + 1, false, false))
    if (layer > maxBytes) {
      throw new InvalidShardError(
        `layer ${l} alone takes ${mib(layer)}, more than one kernel memory segment holds (${mib(maxBytes)})`,
        { hint: 'split the model by columns (tensor parallel) as well, or use a more quantized model' },
      )
    }
    if (used + layer > maxBytes && l > start) {
      segments.push(part(start, l, embed, false))
      start = l
      used = 0
      embed = false
    } else if (used + layer > maxBytes) {
      // The embedding alone fills the segment: it gets one of its own.
      segments.push(part(l0, l0, true, false))
      used = 0
      embed = false
    }
    used += layer
  }
  // A tensor-parallel vocabulary range (a share of the head) is left out: it stays with the layers.
  const headBytes = spec.head ? cost(part(l1, l1, false, true)) : 0
  if (spec.head && used + headBytes > maxBytes && (start < l1 || embed)) {
    // The output head goes into a segment of its own (a tensor-parallel vocabulary range stays).
    segments.push(part(start, l1, embed, false))
    segments.push(part(l1, l1, false, true))
  } else {
    segments.push(part(start, l1, embed, true))
  }
  return segments
}

/**
 * One session over several weight segments of consecutive layers (each in its own kernel memory,
 * see `planSegments`), run as one shard: the hidden state passes from each segment to the next.
 * With a single segment it is that segment's own session.
 */
export function chainSessions(
  segments: readonly ShardWeights[],
  options: { contextSize: number; kvCacheType: 'f16' | 'f32'; maxBatch: number },
): { shard: LlamaShard; head: VocabHead | undefined } {
  if (segments.length === 0) throw new InvalidArgumentError('a shard needs at least one weight segment')
  const sessions: Array<{ shard: LlamaShard; head: VocabHead | undefined }> = []
  try {
    for (const weights of segments) sessions.push(weights.createSession(options))
  } catch (err) {
    for (const s of sessions) {
      void s.shard.dispose()
      s.head?.dispose()
    }
    throw err
  }
  if (sessions.length === 1) return sessions[0]!
  return { shard: new ChainedShard(sessions.map((s) => s.shard)), head: sessions.at(-1)!.head }
}

/** Shards of consecutive layer ranges (the same columns) run as one. */
export class ChainedShard implements LlamaShard {
  readonly config: Readonly<LlamaConfig>
  readonly layers: readonly [number, number]
  readonly columns: LlamaShard['columns']
  readonly partial: boolean
  readonly embeds: boolean
  readonly hasHead: boolean
  readonly contextSize: number
  readonly kvCacheType: 'f16' | 'f32'
  readonly weightBytes: number
  readonly #parts: readonly LlamaShard[]

  constructor(parts: readonly LlamaShard[]) {
    const first = parts[0]!
    const last = parts.at(-1)!
    for (let i = 1; i < parts.length; i++) {
      if (parts[i]!.layers[0] !== parts[i - 1]!.layers[1]) {
        throw new InvalidShardError(
          `segments [${parts[i - 1]!.layers.join(', ')}) and [${parts[i]!.layers.join(', ')}) do not follow each other`,
        )
      }
    }
    this.#parts = parts
    this.config = first.config
    this.layers = [first.layers[0], last.layers[1]]
    this.columns = first.columns
    this.partial = first.partial
    this.embeds = first.embeds
    this.hasHead = last.hasHead
    this.contextSize = Math.min(...parts.map((p) => p.contextSize))
    this.kvCacheType = first.kvCacheType
    this.weightBytes = parts.reduce((sum, p) => sum + p.weightBytes, 0)
  }

  get length(): number {
    return Math.min(...this.#parts.map((p) => p.length))
  }

  /** The sessions of the segments, first to last. */
  get segments(): readonly LlamaShard[] {
    return this.#parts
  }

  async forward(input: ShardInput, pos: number, options: ForwardOptions = {}): Promise<ShardOutput> {
    let next: ShardInput = input
    let out: ShardOutput | undefined
    for (const part of this.#parts) {
      out = await part.forward(next, pos, options)
      if (out.kind === 'hidden') next = { hidden: out.hidden }
    }
    return out!
  }

  embed(tokens: readonly number[]): Float32Array {
    return this.#parts[0]!.embed(tokens)
  }

  attention(layer: number, hidden: Float32Array, n: number, pos: number): Float32Array {
    return this.#owner(layer).attention(layer, hidden, n, pos)
  }

  ffn(layer: number, hidden: Float32Array, n: number): Float32Array {
    return this.#owner(layer).ffn(layer, hidden, n)
  }

  logits(hidden: Float32Array, n: number): Float32Array {
    return this.#parts.at(-1)!.logits(hidden, n)
  }

  outputNorm(hidden: Float32Array, n: number): Float32Array {
    return this.#parts.at(-1)!.outputNorm(hidden, n)
  }

  truncate(length: number): void {
    for (const part of this.#parts) part.truncate(length)
  }

  async dispose(): Promise<void> {
    await Promise.all(this.#parts.map((p) => p.dispose()))
  }

  #owner(layer: number): LlamaShard {
    const part = this.#parts.find((p) => layer >= p.layers[0] && layer < p.layers[1])
    if (part === undefined) {
      throw new InvalidArgumentError(`layer ${layer} is outside this shard's [${this.layers.join(', ')})`)
    }
    return part
  }
}

function mib(bytes: number): string {
  return `${(bytes / 2 ** 20).toFixed(0)} MiB`
}
