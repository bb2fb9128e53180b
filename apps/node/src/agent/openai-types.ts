import { type Logger, MeshError, type MeshErrorOptions } from '@meshnet/core'
import type { GrammarSpec } from '@meshnet/grammar'
import type { NodeEnv } from '@meshnet/http'
import type { Hono } from 'hono'
import type { ChatTemplate } from './chat-template.ts'

/** Largest request body the OpenAI-compatible API reads (413 above it). */
export const MAX_OPENAI_BODY = 1024 * 1024
/** Most stop sequences one request may give (OpenAI's limit). */
export const MAX_STOP_SEQUENCES = 4
/** `max_tokens` of `/v1/completions` when the request gives none (OpenAI's default). */
export const DEFAULT_COMPLETION_MAX_TOKENS = 16
/** Most choices (`n`) one request may ask for: each is a generation of its own. */
export const MAX_CHOICES = 8
/** Most alternatives per token (`top_logprobs`, and `logprobs` of `/v1/completions`): OpenAI's chat cap. */
export const MAX_TOP_LOGPROBS = 20

/** A model the API lists and serves. */
export interface CompletionModel {
  id: string
  /** Unix seconds. */
  created: number
  ownedBy: string
  /** Tokens of context: prompt plus completion must fit. */
  contextLength: number
  /** The GGUF's `tokenizer.chat_template` (Jinja); absent: the plain fallback template. */
  chatTemplate?: string
  /** Text of the BOS token, for templates (`{{ bos_token }}`). */
  bosToken?: string
  /** Text of the EOS token, for templates (`{{ eos_token }}`). */
  eosToken?: string
  /**
   * The tokenizer puts BOS in front of every prompt (`tokenizer.ggml.add_bos_token`; default true),
   * so a leading `bos_token` that a chat template writes is dropped from the prompt text.
   */
  addBosToken?: boolean
}

/** One generation the API asks of the backend. */
export interface CompletionRequest {
  model: string
  /**
   * The prompt text. Text of the model's control tokens in it (`<s>`, `<|im_start|>`, as chat
   * templates write them) should be tokenized as those tokens, as llama.cpp's server does.
   */
  prompt: string
  /** At least 1; the API already capped it to the context left after the prompt. */
  maxTokens: number
  temperature?: number
  topP?: number
  /** Non-OpenAI extension (`top_k`, as llama.cpp's server and vLLM take it). */
  topK?: number
  seed?: number
  /** OpenAI's `presence_penalty` (-2..2). */
  presencePenalty?: number
  /** OpenAI's `frequency_penalty` (-2..2). */
  frequencyPenalty?: number
  /** Report each token's log-probability with this many alternatives (0..20). Absent: none. */
  logprobs?: number
  /** What the output must be (structured output, a forced tool call): the sampler keeps to it. */
  grammar?: GrammarSpec
  signal: AbortSignal
}

/** A token as the API reports it in log-probabilities. */
export interface TokenLogprob {
  /** The token's text, with its leading space (a token that is part of a character: U+FFFD). */
  token: string
  /** Its UTF-8 bytes. */
  bytes: number[]
  /** Natural log of its probability: the log-softmax at temperature 1 of the logits after the penalties. */
  logprob: number
}

/** A generated token's log-probability and the likeliest alternatives, best first. */
export interface CompletionLogprobs extends TokenLogprob {
  top: TokenLogprob[]
}

/** One generated token, as a backend streams it. */
export interface CompletionToken {
  id: number
  text: string
  /** With `logprobs` (none on a text-only piece that ends a generation inside a character). */
  logprobs?: CompletionLogprobs
}

/** How a generation ended. */
export interface CompletionOutcome {
  promptTokens: number
  completionTokens: number
  stopReason: 'maxTokens' | 'eog' | 'abort' | 'contextFull'
  /**
   * Who ran it and how fast: sent as a `meshnet` field of the response (non-streaming) or of the
   * last chunk (streaming), which OpenAI clients ignore and the chat page shows.
   */
  meshnet?: MeshnetFigures
}

/** The non-OpenAI `meshnet` field of a finished completion. */
export interface MeshnetFigures {
  jobId: string
  mode: string
  members: string[]
  tokensPerSecond: number
  timeToFirstTokenMs: number
}

/** What the API runs completions on (the agent's job runner; in tests, an engine). */
export interface CompletionBackend {
  models(): CompletionModel[]
  /** Number of tokens the model's tokenizer makes of `text` (with BOS as generation would add it). */
  countTokens(model: string, text: string): Promise<number>
  /** Streams the generated tokens' text; returns the counts when done. Must stop promptly when signal aborts. */
  generate(request: CompletionRequest): AsyncGenerator<CompletionToken, CompletionOutcome, undefined>
}

/**
 * The backend cannot serve right now (no ring, no member holding the model, shutting down). The API
 * answers 503, which OpenAI clients retry.
 */
export class BackendUnavailableError extends MeshError {
  override name = 'BackendUnavailableError' as const
  constructor(message: string, options?: MeshErrorOptions) {
    super('ERR_BACKEND_UNAVAILABLE', message, options)
  }
}

export interface OpenAiApiOptions {
  backend: CompletionBackend
  /** Address to bind; default 127.0.0.1 (this machine only). */
  host?: string
  /** 0 picks a free port. */
  port: number
  /** When set, every request needs `Authorization: Bearer <apiKey>`. */
  apiKey?: string
  /**
   * More routes on the same server (the dashboard, `/metrics`, `/health`), tried before the API's
   * own; they check their own authorization.
   */
  routes?: Hono<NodeEnv>
  /**
   * More API routes (other clients' APIs: Ollama, Anthropic), behind the API key like the OpenAI
   * routes, tried before them.
   */
  apiRoutes?: Hono<NodeEnv>[]
  /**
   * Web origins (`https://app.example.com`) whose pages may call the API from a browser (CORS);
   * `*` allows any. None by default: browsers then refuse other sites' pages the answers.
   */
  corsOrigins?: string[]
  /** A second port serving the same routes (`--dashboard-port`). */
  alsoPort?: number
  logger: Logger
}

export interface OpenAiApi {
  readonly port: number
  /** The second port's number, when one was asked for. */
  readonly alsoPort: number | undefined
  readonly host: string
  /** Stops listening, aborts running generations and waits for them to end. */
  close(): Promise<void>
}

export interface ServerState {
  backend: CompletionBackend
  logger: Logger
  /** The API key (compared in constant time by bearerMatches), if one is set. */
  apiKey: string | undefined
  /** Parsed chat templates by source. */
  templates: Map<string, ChatTemplate>
  running: Set<Promise<void>>
  closing: boolean
}
