import { SpmTokenizer, type Tokenizer, type TokenLogprobs } from '@meshnet/engine'
import type { CompletionLogprobs, TokenLogprob } from './openai-types.ts'

const encoder = new TextEncoder()
/** Not fatal: a token that is part of a UTF-8 character shows as U+FFFD, its bytes stay exact. */
const decoder = new TextDecoder()

/** Pieces already made, per tokenizer (a vocabulary's pieces do not change). */
const pieces = new WeakMap<Tokenizer, Map<number, { token: string; bytes: number[] }>>()

/**
 * A token's text and UTF-8 bytes as the API reports them: what it adds to the completion's text,
 * with its leading space (control tokens add nothing). SentencePiece vocabularies give every token's
 * exact bytes; with llama.cpp's tokenizer (other vocabularies) a token that is part of a character
 * has the bytes of U+FFFD.
 */
export function tokenPiece(tokenizer: Tokenizer, id: number): { token: string; bytes: number[] } {
  let known = pieces.get(tokenizer)
  if (known === undefined) {
    known = new Map()
    pieces.set(tokenizer, known)
  }
  let piece = known.get(id)
  if (piece === undefined) {
    const bytes =
      tokenizer instanceof SpmTokenizer
        ? tokenizer.tokenBytes(id)
        : // After itself as context, the token keeps the leading space a text's first token loses.
          encoder.encode(tokenizer.detokenize([id], { context: [id] }))
    piece = { token: decoder.decode(bytes), bytes: [...bytes] }
    known.set(id, piece)
  }
  return piece
}

/** The API's log-probabilities of a generated token: ids made text, -Infinity made OpenAI's -9999. */
export function describeLogprobs(
  tokenizer: Tokenizer,
  id: number,
  logprobs: TokenLogprobs,
): CompletionLogprobs {
  const entry = (token: number, logprob: number): TokenLogprob => ({
    ...tokenPiece(tokenizer, token),
    logprob: Number.isFinite(logprob) ? logprob : -9999,
  })
  return { ...entry(id, logprobs.logprob), top: logprobs.top.map((t) => entry(t.id, t.logprob)) }
}
