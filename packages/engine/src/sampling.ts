import { MeshError, parseWith } from '@meshnet/core'
import { z } from 'zod'

/** OpenAI's range of `presence_penalty` and `frequency_penalty`. */
export const MAX_PENALTY = 2
/** Most alternatives a token's log-probabilities list (OpenAI's `top_logprobs` cap). */
export const MAX_TOP_LOGPROBS = 20

/**
 * How the next token is chosen from a row of logits. `temperature: 0` (the default) is greedy
 * argmax. With a temperature, the chain is llama.cpp's (as node-llama-cpp builds it): penalties,
 * top-k, then top-p, then temperature, then a draw from a Mersenne Twister seeded with `seed` — so
 * the same seed over the same logits picks the same tokens as llama.cpp.
 */
export const samplingOptionsSchema = z.strictObject({
  /** 0 = greedy. */
  temperature: z.number().min(0).max(100).default(0),
  /** Keep the k most likely tokens; 0 = all of them. */
  topK: z.number().int().min(0).default(40),
  /** Keep the smallest set of tokens whose probability reaches p; 1 = off. */
  topP: z.number().gt(0).max(1).default(0.95),
  /** Seed of the random draw (uint32); a random one when absent. */
  seed: z.number().int().min(0).max(0xffff_ffff).optional(),
  /**
   * OpenAI's `presence_penalty`: subtracted from the logit of every token generated so far (once,
   * however often it came), before any other step of the chain. Negative values favour them.
   */
  presencePenalty: z.number().min(-MAX_PENALTY).max(MAX_PENALTY).default(0),
  /** OpenAI's `frequency_penalty`: subtracted from a token's logit once for every time it was generated so far. */
  frequencyPenalty: z.number().min(-MAX_PENALTY).max(MAX_PENALTY).default(0),
})

export type SamplingOptions = z.input<typeof samplingOptionsSchema>
export type ResolvedSamplingOptions = z.output<typeof samplingOptionsSchema>

/**
 * Log-probabilities of a sampled token: the log-softmax at temperature 1 of the row after the
 * penalties (what OpenAI reports), not of the distribution that temperature, top-k and top-p drew
 * from.
 */
export interface TokenLogprobs {
  logprob: number
  /** The likeliest tokens of the row, best first (ties: lower id first); as many as asked. */
  top: Array<{ id: number; logprob: number }>
}

export interface LogprobsOptions {
  /** Alternatives to list in `top` (0..20). */
  top: number
  /**
   * The log-sum-exp of the whole row of logits, before penalties, when `logits` holds only some of
   * them (candidates, -Infinity elsewhere). A penalized token that is not among them is counted in
   * it unpenalized. Absent: `logits` is the whole row.
   */
  logSumExp?: number
}

/**
 * Which tokens may come next (structured output, forced tool calls): `@meshnet/grammar` makes them
 * from a JSON Schema. The sampler draws as it would without one and, when the drawn token is not
 * allowed, draws again from the allowed tokens alone; it calls `accept` with every chosen token.
 */
export interface TokenConstraint {
  /** Whether `id` may be the next token. */
  allows(id: number): boolean
  /** Every token that may be the next one: 1 at their ids, 0 elsewhere (vocabulary-sized). */
  allowedMask(): Uint8Array
  /**
   * The ids `allowedMask` marks, when there are at most `most` of them (found without walking the
   * whole vocabulary); undefined when there are more. Optional: an engine that can fetch the logits
   * of a few tokens asks for those of the allowed ones.
   */
  allowedIds?(most: number): number[] | undefined
  /** `id` was chosen (it must be allowed). */
  accept(id: number): void
}

/** Chooses tokens from logits; keeps its random state and the tokens it chose between calls. */
export interface Sampler {
  readonly options: Readonly<ResolvedSamplingOptions> & { seed: number }
  /** The chosen token id for one row of `vocab` logits; it counts as generated for the penalties. */
  sample(logits: Float32Array): number
  /** `sample`, with the log-probabilities of the chosen token and of the row's likeliest ones. */
  sampleWithLogprobs(logits: Float32Array, options: LogprobsOptions): { id: number; logprobs: TokenLogprobs }
}

/** std::mt19937 (32-bit Mersenne Twister), bit-exact with the C++ standard library. */
export class Mt19937 {
  readonly #state = new Uint32Array(624)
  #index = 624

  constructor(seed: number) {
    const mt = this.#state
    mt[0] = seed >>> 0
    for (let i = 1; i < 624; i++) {
      const prev = mt[i - 1]!
      mt[i] = (Math.imul(1812433253, prev ^ (prev >>> 30)) + i) >>> 0
    }
  }

  /** The next 32-bit output. */
  next(): number {
    const mt = this.#state
    if (this.#index >= 624) {
      for (let i = 0; i < 624; i++) {
        const y = (mt[i]! & 0x8000_0000) | (mt[(i + 1) % 624]! & 0x7fff_ffff)
        mt[i] = mt[(i + 397) % 624]! ^ (y >>> 1) ^ (y & 1 ? 0x9908_b0df : 0)
      }
      this.#index = 0
    }
    let y = mt[this.#index++]!
    y ^= y >>> 11
    y ^= (y << 7) & 0x9d2c_5680
    y ^= (y << 15) & 0xefc6_0000
    y ^= y >>> 18
    return y >>> 0
  }

  /** A double in [0, 1), as libstdc++'s `uniform_real_distribution<double>` draws it (two outputs). */
  nextDouble(): number {
    const lo = this.next()
    const hi = this.next()
    const r = (lo + hi * 2 ** 32) / 2 ** 64
    return r >= 1 ? 1 - 2 ** -53 : r
  }
}

const f = Math.fround

/** Index of the largest value; the first one on ties (llama.cpp's greedy sampler). */
export function argmax(logits: Float32Array): number {
  let best = 0
  let bestValue = logits[0] ?? Number.NEGATIVE_INFINITY
  for (let i = 1; i < logits.length; i++) {
    const v = logits[i]!
    if (v > bestValue) {
      best = i
      bestValue = v
    }
  }
  return best
}

/** A random uint32 seed (crypto-grade, so that unseeded generations differ). */
export function randomSeed(): number {
  return crypto.getRandomValues(new Uint32Array(1))[0]!
}

/** Creates a sampler. Options are checked here (InvalidArgumentError names the bad one). */
export function createSampler(options: SamplingOptions = {}, extra: SamplerExtras = {}): Sampler {
  const parsed = parseWith(samplingOptionsSchema, options, 'sampling option')
  const seed = parsed.seed ?? randomSeed()
  const resolved = { ...parsed, seed }
  const penalties = new Penalties(resolved.presencePenalty, resolved.frequencyPenalty)
  const rng = new Mt19937(seed)
  const draw = (row: Float32Array) =>
    resolved.temperature <= 0 ? argmax(row) : sampleWithTemperature(row, resolved, rng)
  const { constraint } = extra
  const choose =
    constraint === undefined
      ? draw
      : (row: Float32Array) => {
          // Draw as without a constraint; a refused token: draw again from the allowed ones alone.
          // (Both draws from one distribution: the result is a draw from it restricted to them.)
          let id = draw(row)
          if (!constraint.allows(id)) id = draw(allowedOnly(row, constraint.allowedMask()))
          constraint.accept(id)
          return id
        }
  return {
    options: resolved,
    sample(logits) {
      const id = choose(penalties.apply(logits))
      penalties.count(id)
      return id
    },
    sampleWithLogprobs(logits, { top, logSumExp: rawLogSumExp }) {
      const row = penalties.apply(logits)
      const id = choose(row)
      const lse = rawLogSumExp === undefined ? logSumExp(row) : penalties.correct(rawLogSumExp, logits, row)
      penalties.count(id)
      return { id, logprobs: logprobsOf(row, id, top, lse) }
    },
  }
}

/** What a sampler takes besides its options. */
export interface SamplerExtras {
  /** Only tokens it allows are chosen (structured output); it sees every chosen token. */
  constraint?: TokenConstraint
}

/** The constraint allows no token that the row gives a chance (a grammar or vocabulary gap). */
export class ConstraintDeadEndError extends MeshError {
  override name = 'ConstraintDeadEndError' as const
  constructor(allowed: number) {
    super(
      'ERR_CONSTRAINT_DEAD_END',
      allowed === 0
        ? 'the output grammar allows no token of this vocabulary here'
        : `the output grammar allows ${allowed} tokens here, but the model gives none of them a chance`,
      { hint: 'simplify the response schema, or report the schema and model as a bug' },
    )
  }
}

/** `row` with every token the mask refuses at -Infinity. */
function allowedOnly(row: Float32Array, mask: Uint8Array): Float32Array {
  const out = new Float32Array(row.length).fill(Number.NEGATIVE_INFINITY)
  let allowed = 0
  let finite = 0
  for (let i = 0; i < row.length; i++) {
    if (mask[i] !== 1) continue
    allowed++
    out[i] = row[i]!
    if (out[i]! > Number.NEGATIVE_INFINITY) finite++
  }
  if (finite === 0) throw new ConstraintDeadEndError(allowed)
  return out
}

/**
 * OpenAI's presence and frequency penalties over the tokens generated so far, in llama.cpp's float
 * arithmetic (`llama_sampler_penalties` with a repeat penalty of 1), so that both engines apply
 * them to the same bits: `logit - (count * frequency + (count > 0) * presence)`.
 */
class Penalties {
  readonly #presence: number
  readonly #frequency: number
  readonly #counts = new Map<number, number>()
  readonly active: boolean

  constructor(presence: number, frequency: number) {
    this.#presence = f(presence)
    this.#frequency = f(frequency)
    this.active = presence !== 0 || frequency !== 0
  }

  count(id: number): void {
    if (this.active) this.#counts.set(id, (this.#counts.get(id) ?? 0) + 1)
  }

  /** `logits` with the penalties applied (a copy when any applies). */
  apply(logits: Float32Array): Float32Array {
    if (!this.active || this.#counts.size === 0) return logits
    const row = logits.slice()
    for (const [id, n] of this.#counts) {
      if (id < row.length) row[id] = penalized(row[id]!, n, this.#presence, this.#frequency)
    }
    return row
  }

  /**
   * The log-sum-exp of the penalized whole row, from that of the raw whole row: the penalized
   * tokens among the candidates (finite in `raw`) swap their raw weight for their penalized one.
   */
  correct(rawLogSumExp: number, raw: Float32Array, row: Float32Array): number {
    if (raw === row) return rawLogSumExp
    let sum = 1
    for (const id of this.#counts.keys()) {
      const before = raw[id]
      if (before === undefined || !Number.isFinite(before)) continue
      sum += Math.exp(row[id]! - rawLogSumExp) - Math.exp(before - rawLogSumExp)
    }
    // Rounding can only make it non-positive when the penalized tokens held all the mass.
    return sum > 0 ? rawLogSumExp + Math.log(sum) : logSumExp(row)
  }
}

/** One penalized logit, in float32 as llama.cpp computes it. */
export function penalized(logit: number, count: number, presence: number, frequency: number): number {
  if (count <= 0) return logit
  return f(logit - f(f(count * f(frequency)) + f(presence)))
}

/** log(Σ exp(logits)), in float64 (-Infinity entries add nothing). */
export function logSumExp(logits: Float32Array): number {
  let max = Number.NEGATIVE_INFINITY
  for (let i = 0; i < logits.length; i++) if (logits[i]! > max) max = logits[i]!
  if (max === Number.NEGATIVE_INFINITY) return max
  let sum = 0
  for (let i = 0; i < logits.length; i++) sum += Math.exp(logits[i]! - max)
  return max + Math.log(sum)
}

/** The log-probabilities of `id` and of the `top` likeliest tokens of `row`, given its log-sum-exp. */
function logprobsOf(row: Float32Array, id: number, top: number, lse: number): TokenLogprobs {
  const best = top > 0 ? topIndices(row, Math.min(top, row.length)) : new Uint32Array(0)
  return {
    logprob: row[id]! - lse,
    top: Array.from(best, (t) => ({ id: t, logprob: row[t]! - lse })).filter((t) =>
      Number.isFinite(t.logprob),
    ),
  }
}

function sampleWithTemperature(logits: Float32Array, options: ResolvedSamplingOptions, rng: Mt19937): number {
  const vocab = logits.length
  // top-k (k = 0 means the whole vocabulary) leaves the candidates sorted by logit, descending.
  const k = options.topK <= 0 ? vocab : Math.min(options.topK, vocab)
  let ids = topIndices(logits, k)
  let size = ids.length
  // top-p over the softmax at temperature 1, accumulated in float as llama.cpp does.
  if (options.topP < 1) {
    const max = logits[ids[0]!]!
    const probs = new Float32Array(size)
    let sum = 0
    for (let i = 0; i < size; i++) {
      probs[i] = Math.exp(f(logits[ids[i]!]! - max))
      sum = f(sum + probs[i]!)
    }
    let cum = 0
    for (let i = 0; i < size; i++) {
      cum = f(cum + f(probs[i]! / sum))
      if (cum >= f(options.topP)) {
        size = i + 1
        break
      }
    }
    ids = ids.subarray(0, size)
  }
  // temperature, then the draw.
  const temp = f(options.temperature)
  const scaled = new Float32Array(size)
  for (let i = 0; i < size; i++) scaled[i] = logits[ids[i]!]! / temp
  const rnd = rng.nextDouble()
  if (size === 1) return ids[0]!
  const max = scaled[0]!
  const p = new Float32Array(size)
  let total = 0
  for (let i = 0; i < size; i++) {
    p[i] = Math.exp(f(scaled[i]! - max))
    total += p[i]!
  }
  const target = total * rnd
  let run = 0
  for (let i = 0; i < size; i++) {
    run += p[i]!
    if (run >= target) return ids[i]!
  }
  return ids[size - 1]!
}

/** The `k` indices of the largest logits, sorted by logit descending (ties by lower id first). */
function topIndices(logits: Float32Array, k: number): Uint32Array {
  const byLogit = (a: number, b: number) => logits[b]! - logits[a]! || a - b
  if (k >= logits.length) {
    const all = new Uint32Array(logits.length)
    for (let i = 0; i < all.length; i++) all[i] = i
    return all.sort(byLogit)
  }
  // The best k so far in a heap whose root is the worst of them (lowest logit, then highest id).
  // Ids come in increasing order, so one tied with the root never displaces it: the same k a full
  // sort keeps, in one pass instead of sorting the whole vocabulary for every token.
  const heap = new Uint32Array(k)
  const worse = (a: number, b: number) => logits[a]! < logits[b]! || (logits[a] === logits[b] && a > b)
  let size = 0
  for (let id = 0; id < logits.length; id++) {
    let at: number
    if (size < k) {
      at = size++
      while (at > 0) {
        const parent = (at - 1) >> 1
        if (!worse(id, heap[parent]!)) break
        heap[at] = heap[parent]!
        at = parent
      }
    } else {
      if (!(logits[id]! > logits[heap[0]!]!)) continue
      at = 0
      for (;;) {
        let child = 2 * at + 1
        if (child >= k) break
        if (child + 1 < k && worse(heap[child + 1]!, heap[child]!)) child++
        if (!worse(heap[child]!, id)) break
        heap[at] = heap[child]!
        at = child
      }
    }
    heap[at] = id
  }
  return heap.sort(byLogit)
}
