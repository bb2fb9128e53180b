import { parseWith } from '@meshnet/core'
import { z } from 'zod'
import {
  MAX_TOP_LOGPROBS,
  samplingOptionsSchema,
  type TokenConstraint,
  type TokenLogprobs,
} from './sampling.ts'

/** Turns text into token ids and back, the way llama.cpp does for the model's vocabulary. */
export interface Tokenizer {
  readonly vocabSize: number
  readonly bos: number | undefined
  readonly eos: number | undefined
  /** The model asks for BOS in front of a prompt (`tokenizer.ggml.add_bos_token`). */
  readonly addBos: boolean
  /**
   * `addSpecial` prepends BOS (and appends EOS) when the model asks for them; `parseSpecial` turns
   * the text of control tokens (`<s>`) into those tokens. Both default to false.
   */
  tokenize(text: string, options?: { addSpecial?: boolean; parseSpecial?: boolean }): number[]
  /**
   * Text of `tokens`. `context` is the tokens that came before (so the first token keeps its leading
   * space, as a continuation); `renderSpecial` prints control tokens as their text.
   */
  detokenize(
    tokens: readonly number[],
    options?: { context?: readonly number[]; renderSpecial?: boolean },
  ): string
  /** True for tokens that end generation (EOS, EOT, ...). */
  isEog(token: number): boolean
  /**
   * What token `id` adds to a generated text: its UTF-8 bytes with its leading space (a byte token:
   * that byte, which may be part of a character), and whether it is a control token (`<|im_end|>`,
   * `<tool_call>` in some vocabularies), whose `bytes` are then its text as templates write it.
   */
  piece(id: number): TokenPiece
}

/** A token's bytes as generated text; see `Tokenizer.piece`. */
export interface TokenPiece {
  bytes: Uint8Array
  control: boolean
}

/** Options of `generate` and `stream`. Sampling options are those of `createSampler`. */
export const generateOptionsSchema = samplingOptionsSchema.extend({
  /** Stop after this many new tokens. */
  maxTokens: z.number().int().min(1).max(1_048_576).default(128),
  /** Stop at an end-of-generation token (not included in the output). Default true. */
  stopOnEog: z.boolean().default(true),
  /**
   * Report each token's log-probability (`GeneratedToken.logprobs`) with this many of the likeliest
   * alternatives (0..20). Absent: none.
   */
  logprobs: z.number().int().min(0).max(MAX_TOP_LOGPROBS).optional(),
})

export type GenerateOptions = z.input<typeof generateOptionsSchema> & {
  /** Stops generation; the result so far is returned with `stopReason: 'abort'`. */
  signal?: AbortSignal
  /** Called with every generated token, as `stream` yields it. */
  onToken?: (token: GeneratedToken) => void
  /** Only tokens it allows are generated (structured output, forced tool calls). */
  constraint?: TokenConstraint
}

/** One generated token and the text it completes (may be '' while a UTF-8 character is partial). */
export interface GeneratedToken {
  id: number
  text: string
  /**
   * The last piece of a generation that ended inside a UTF-8 character: text held back so far, no
   * new token (`id` repeats the last token's).
   */
  textOnly?: true
  /** With the `logprobs` option: the token's log-probability and the likeliest alternatives. */
  logprobs?: TokenLogprobs
}

export type StopReason = 'maxTokens' | 'eog' | 'abort' | 'contextFull'

/** Wall-clock figures of one generation, in milliseconds. */
export interface GenerateTimings {
  promptTokens: number
  /** Prompt evaluation up to the first sampled token. */
  promptMs: number
  generatedTokens: number
  /** From the first sampled token to the last one. */
  generateMs: number
  /** Generation speed after the first token: `(generatedTokens - 1) / generateMs`, per second. */
  tokensPerSecond: number
}

export interface GenerateResult {
  /** The generated token ids (the prompt not included). */
  tokens: number[]
  text: string
  stopReason: StopReason
  timings: GenerateTimings
}

/**
 * A model ready to generate on this machine. The Meshnet engine and the llama.cpp engine both
 * implement it, so callers pick one with `--engine meshnet|llama-cpp`.
 */
export interface InferenceEngine {
  readonly engine: 'meshnet' | 'llama-cpp'
  readonly tokenizer: Tokenizer
  /** Tokens the context (KV cache) holds: prompt plus generated tokens must fit. */
  readonly contextSize: number
  /**
   * Generates from a prompt (text, tokenized with BOS when the model asks for it, or token ids used
   * as they are). Yields tokens as they are sampled; the generator's return value is the result.
   */
  stream(
    prompt: string | readonly number[],
    options?: GenerateOptions,
  ): AsyncGenerator<GeneratedToken, GenerateResult>
  /** `stream` run to the end. */
  generate(prompt: string | readonly number[], options?: GenerateOptions): Promise<GenerateResult>
  /**
   * Teacher forcing: evaluates `tokens` from position 0 and returns the logits after each of them
   * (`tokens.length` rows of `vocabSize` floats).
   */
  evaluateLogits(tokens: readonly number[], options?: EvaluateLogitsOptions): Promise<Float32Array[]>
  /**
   * Embeddings: each input (token ids, used as they are: tokenize with `addSpecial` for BOS) from
   * position 0; its final hidden states (after the output norm, before the projection to logits)
   * pooled as the model's GGUF says (`<arch>.pooling_type`; mean when it says none) and
   * L2-normalized. One vector of `embd` floats per input, in order.
   */
  embed(inputs: ReadonlyArray<readonly number[]>, options?: EmbedOptions): Promise<Float32Array[]>
  dispose(): Promise<void>
}

export interface EmbedOptions {
  signal?: AbortSignal
}

export interface EvaluateLogitsOptions {
  /**
   * Tokens from this index on are evaluated one at a time, as generation evaluates them; those
   * before it in one batch, as a prompt. Default: all in one batch. (llama.cpp's batched and
   * one-token matmuls round differently for some weight types.)
   */
  decodeFrom?: number
  signal?: AbortSignal
}

/** Parses generate options; InvalidArgumentError names the bad one. */
export function parseGenerateOptions(options: GenerateOptions = {}): z.output<typeof generateOptionsSchema> {
  const { signal: _signal, onToken: _onToken, constraint: _constraint, ...rest } = options
  const parsed = parseWith(generateOptionsSchema, rest, 'generate option')
  return parsed
}
