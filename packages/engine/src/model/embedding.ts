import { InvalidArgumentError } from '@meshnet/core'
import type { GGUFReader } from '@meshnet/gguf'

/**
 * How an embedding makes one vector of an input's final hidden states (after the output norm):
 * their mean, the first position's (`cls`), or the last position's.
 */
export type EmbeddingPooling = 'mean' | 'cls' | 'last'

export const EMBEDDING_POOLINGS: readonly EmbeddingPooling[] = ['mean', 'cls', 'last']

/** llama.cpp's `llama_pooling_type` values of `<arch>.pooling_type`. */
const GGUF_POOLING: Record<number, EmbeddingPooling> = { 1: 'mean', 2: 'cls', 3: 'last' }

/**
 * The pooling a GGUF asks for (`<arch>.pooling_type`, as llama.cpp reads it), or `mean` when it
 * says none (a generative model: `declared` is then false). `pooling` is undefined when the model
 * declares a pooling that makes no embedding (`rank`: a reranker's score).
 */
export function readEmbeddingPooling(file: GGUFReader): {
  pooling: EmbeddingPooling | undefined
  declared: boolean
} {
  const arch = file.getString('general.architecture')
  const value = arch === undefined ? undefined : file.getNumber(`${arch}.pooling_type`)
  if (value === undefined || value === 0 || value === -1) return { pooling: 'mean', declared: false }
  return { pooling: GGUF_POOLING[value], declared: true }
}

/**
 * Pools the final hidden states of one input, position by position, into its embedding: the sum
 * (in f64, in position order) for `mean`, the first row for `cls`, the last for `last`. Adding the
 * same rows in steps of any size gives the same bits, so a ring whose last member pools its steps
 * gets the vector the whole model gets.
 */
export class EmbeddingPooler {
  readonly pooling: EmbeddingPooling
  readonly embd: number
  readonly #acc: Float64Array
  #positions = 0

  constructor(pooling: EmbeddingPooling, embd: number) {
    if (!EMBEDDING_POOLINGS.includes(pooling)) {
      throw new InvalidArgumentError(`unknown pooling ${JSON.stringify(pooling)}; use mean, cls or last`)
    }
    if (!Number.isInteger(embd) || embd < 1) {
      throw new InvalidArgumentError(`an embedding needs a positive width, got ${embd}`)
    }
    this.pooling = pooling
    this.embd = embd
    this.#acc = new Float64Array(embd)
  }

  /** Positions pooled so far. */
  get positions(): number {
    return this.#positions
  }

  /** Pools the next `n` positions (`n * embd` floats after the output norm). */
  add(normed: Float32Array, n: number): void {
    const { embd } = this
    if (!Number.isInteger(n) || n < 0 || normed.length < n * embd) {
      throw new InvalidArgumentError(`${n} positions need ${n * embd} floats, got ${normed.length}`)
    }
    if (n === 0) return
    const acc = this.#acc
    if (this.pooling === 'mean') {
      for (let i = 0; i < n; i++) {
        const row = i * embd
        for (let j = 0; j < embd; j++) acc[j] = acc[j]! + normed[row + j]!
      }
    } else if (this.pooling === 'last') {
      acc.set(normed.subarray((n - 1) * embd, n * embd))
    } else if (this.#positions === 0) {
      acc.set(normed.subarray(0, embd))
    }
    this.#positions += n
  }

  /** Starts a new input. */
  reset(): void {
    this.#acc.fill(0)
    this.#positions = 0
  }

  /** The pooled vector, L2-normalized (unit length), `embd` floats. */
  vector(): Float32Array {
    if (this.#positions === 0) throw new InvalidArgumentError('an embedding needs at least one position')
    if (this.pooling !== 'mean') return l2Normalize(this.#acc)
    const mean = new Float64Array(this.embd)
    for (let j = 0; j < this.embd; j++) mean[j] = this.#acc[j]! / this.#positions
    return l2Normalize(mean)
  }
}

/** `values / ‖values‖₂` (norm in f64), as f32; a zero vector stays zero. */
export function l2Normalize(values: ArrayLike<number>): Float32Array {
  let sum = 0
  for (let i = 0; i < values.length; i++) sum += values[i]! * values[i]!
  const norm = Math.sqrt(sum)
  const out = new Float32Array(values.length)
  if (norm === 0) return out
  for (let i = 0; i < values.length; i++) out[i] = values[i]! / norm
  return out
}
