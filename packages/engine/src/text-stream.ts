import type { Tokenizer } from './types.ts'

const REPLACEMENT = '\uFFFD'
/** A UTF-8 character spans at most 4 byte tokens. */
const MAX_PENDING = 4
const CONTEXT = 8

/**
 * Turns a stream of token ids into text pieces, holding back tokens while they end in a partial
 * UTF-8 character (byte-fallback tokens), so every piece is whole text.
 */
export class TextStreamer {
  readonly #tokenizer: Tokenizer
  readonly #committed: number[]
  #pending: number[] = []
  #text = ''

  constructor(tokenizer: Tokenizer, context: readonly number[]) {
    this.#tokenizer = tokenizer
    this.#committed = context.slice(-CONTEXT)
  }

  /** All text emitted so far. */
  get text(): string {
    return this.#text
  }

  /** Adds one token; returns the text it completes ('' while a character is still partial). */
  push(token: number): string {
    this.#pending.push(token)
    const piece = this.#decode()
    if (piece.endsWith(REPLACEMENT) && this.#pending.length < MAX_PENDING) return ''
    return this.#commit(piece)
  }

  /** Emits whatever is held back (a partial character becomes U+FFFD). */
  flush(): string {
    return this.#pending.length === 0 ? '' : this.#commit(this.#decode())
  }

  #decode(): string {
    return this.#tokenizer.detokenize(this.#pending, { context: this.#committed })
  }

  #commit(piece: string): string {
    this.#committed.push(...this.#pending)
    this.#committed.splice(0, Math.max(0, this.#committed.length - CONTEXT))
    this.#pending = []
    this.#text += piece
    return piece
  }
}
