import { parseWith } from '@meshnet/core'
import { z } from 'zod'
import { initialState, type State, step, stepAll } from './automaton.ts'
import { TokenNotAllowedError } from './errors.ts'
import { type Grammar, grammarRoot } from './grammar.ts'
import { type ConstraintVocabulary, type TokenIndex, tokenIndex } from './vocabulary.ts'

export const tokenConstraintOptionsSchema = z.strictObject({
  /**
   * The generation's token budget (the sampler's `maxTokens`). Near its end only tokens that still
   * let the text complete are allowed, so the output parses even when the budget runs out; one
   * token is kept for the end-of-generation token. Absent: no budget.
   */
  maxTokens: z.number().int().min(1).optional(),
})

export type TokenConstraintOptions = z.input<typeof tokenConstraintOptionsSchema>

/**
 * Which tokens may come next: what `@meshnet/engine`'s sampler consults (its `TokenConstraint`,
 * declared here structurally so that this package needs no engine).
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

/** A TokenConstraint for one generation under a grammar. */
export interface GrammarConstraint extends TokenConstraint {
  allowedIds(most: number): number[] | undefined
  /** Every part is written: an end-of-generation token may come (or has come). */
  readonly complete: boolean
  /** The text accepted so far (control tokens as their text). */
  readonly text: string
  /** Tokens accepted so far. */
  readonly accepted: number
}

/**
 * The constraint for one generation: which tokens of `vocabulary` may come next under `grammar`.
 * End-of-generation tokens are allowed once the grammar is complete (and only they once nothing
 * else may follow). With `maxTokens`, a token is allowed only if the text can still be completed in
 * the tokens left, one byte per token at worst, which keeps every output parseable.
 */
export function createTokenConstraint(
  grammar: Grammar,
  vocabulary: ConstraintVocabulary,
  options: TokenConstraintOptions = {},
): GrammarConstraint {
  const { maxTokens } = parseWith(tokenConstraintOptionsSchema, options, 'token constraint option')
  return new GrammarTokenConstraint(
    initialState(grammarRoot(grammar)),
    tokenIndex(vocabulary),
    maxTokens ?? Number.POSITIVE_INFINITY,
  )
}

const decoder = new TextDecoder()

class GrammarTokenConstraint implements GrammarConstraint {
  readonly #index: TokenIndex
  readonly #maxTokens: number
  /** Undefined once an end-of-generation token was accepted. */
  #state: State | undefined
  #accepted = 0
  #mask: Uint8Array | undefined
  #bytes = new Uint8Array(256)
  #length = 0

  constructor(state: State, index: TokenIndex, maxTokens: number) {
    this.#state = state
    this.#index = index
    this.#maxTokens = maxTokens
  }

  get complete(): boolean {
    return this.#state?.done ?? true
  }

  get text(): string {
    return decoder.decode(this.#bytes.subarray(0, this.#length))
  }

  get accepted(): number {
    return this.#accepted
  }

  /** The most bytes the completion may still need after the next token (one kept for EOG). */
  #limit(): number {
    return this.#maxTokens - this.#accepted - 2
  }

  /** The state after token `id`, undefined when it cannot come next (EOG aside). */
  #after(state: State, id: number): State | undefined {
    const bytes = this.#index.pieces[id]
    if (bytes === undefined || bytes.length === 0 || this.#index.eog[id] === 1) return undefined
    return stepAll(state, bytes, this.#index.control[id] === 1)
  }

  allows(id: number): boolean {
    const state = this.#state
    if (state === undefined || !Number.isInteger(id) || id < 0 || id >= this.#index.size) return false
    if (this.#index.eog[id] === 1) return state.done
    const next = this.#after(state, id)
    if (next === undefined) return false
    if (next.min <= this.#limit()) return true
    // Over the budget: allowed only if no token fits it (then the closest ones are).
    return this.allowedMask()[id] === 1
  }

  allowedMask(): Uint8Array {
    if (this.#mask !== undefined) return this.#mask
    const index = this.#index
    const mask = new Uint8Array(index.size)
    const state = this.#state
    if (state !== undefined) {
      const limit = this.#limit()
      const { marked } = this.#walk(state, limit, mask)!
      if (state.done) for (const id of index.eogIds) mask[id] = 1
      else if (marked === 0) {
        // No token lets the text complete in time (a vocabulary without some byte, or a budget
        // smaller than the grammar): allow the tokens that get closest.
        const best = this.#walk(state, Number.POSITIVE_INFINITY, undefined)!.best
        if (best < Number.POSITIVE_INFINITY) this.#walk(state, best, mask)
      }
    }
    this.#mask = mask
    return mask
  }

  allowedIds(most: number): number[] | undefined {
    const state = this.#state
    if (state === undefined) return []
    if (this.#mask === undefined) {
      const ids: number[] = []
      const limit = this.#limit()
      const walked = this.#walk(state, limit, undefined, { most, ids })
      if (walked === undefined) return undefined
      if (walked.marked > 0 || state.done) {
        if (state.done) ids.push(...this.#index.eogIds)
        return ids.length <= most ? ids : undefined
      }
    }
    // The full mask (known already, or the budget's fallback): its ids, when few.
    const mask = this.allowedMask()
    const ids: number[] = []
    for (let id = 0; id < mask.length; id++) {
      if (mask[id] !== 1) continue
      if (ids.length === most) return undefined
      ids.push(id)
    }
    return ids
  }

  /**
   * Marks in `mask` (and lists in `cap.ids`) the tokens that may come next and leave at most
   * `limit` bytes to complete; returns how many, and the fewest bytes left after any token that may
   * come next. With `cap`, gives up (undefined) as soon as more than `cap.most` are found.
   */
  #walk(
    state: State,
    limit: number,
    mask: Uint8Array | undefined,
    cap?: { most: number; ids: number[] },
  ): { marked: number; best: number } | undefined {
    const { first, next, byte, height, idStart, idCount, ids } = this.#index
    let marked = 0
    let best = Number.POSITIVE_INFINITY
    const mark = (id: number): boolean => {
      if (mask !== undefined) mask[id] = 1
      marked++
      if (cap === undefined) return true
      cap.ids.push(id)
      return marked <= cap.most
    }
    const visit = (node: number, s: State): boolean => {
      for (let c = first[node]!; c !== -1; c = next[c]!) {
        const t = step(s, byte[c]!)
        if (t === undefined) continue
        const min = t.min
        // Each further byte shortens the completion by one at most.
        if (min - height[c]! > limit) continue
        const n = idCount[c]!
        if (n > 0) {
          if (min < best) best = min
          if (min <= limit && (mask !== undefined || cap !== undefined)) {
            for (let k = idStart[c]!; k < idStart[c]! + n; k++) if (!mark(ids[k]!)) return false
          }
        }
        if (first[c] !== -1 && !visit(c, t)) return false
      }
      return true
    }
    if (!visit(0, state)) return undefined
    for (const id of this.#index.controlIds) {
      const t = this.#after(state, id)
      if (t === undefined) continue
      if (t.min < best) best = t.min
      if (t.min <= limit && (mask !== undefined || cap !== undefined) && !mark(id)) return undefined
    }
    return { marked, best }
  }

  accept(id: number): void {
    const state = this.#state
    if (!this.allows(id)) {
      const piece = this.#index.pieces[id]
      const what =
        piece === undefined ? `token ${id}` : `token ${id} (${JSON.stringify(decoder.decode(piece))})`
      const where =
        state === undefined
          ? 'after the end-of-generation token'
          : `after ${JSON.stringify(this.text.slice(-60))}${this.complete ? ' (complete)' : ''}`
      throw new TokenNotAllowedError(`${what} is not allowed by the grammar ${where}`, {
        hint: 'draw the token from allowedMask() when allows() is false',
        details: { id, accepted: this.#accepted },
      })
    }
    this.#accepted++
    this.#mask = undefined
    if (this.#index.eog[id] === 1) {
      this.#state = undefined
      return
    }
    const bytes = this.#index.pieces[id]!
    this.#state = this.#after(state!, id)
    if (this.#length + bytes.length > this.#bytes.length) {
      const grown = new Uint8Array(Math.max(this.#bytes.length * 2, this.#length + bytes.length))
      grown.set(this.#bytes.subarray(0, this.#length))
      this.#bytes = grown
    }
    this.#bytes.set(bytes, this.#length)
    this.#length += bytes.length
  }
}
