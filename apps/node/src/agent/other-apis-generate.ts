import type { IncomingMessage, ServerResponse } from 'node:http'
import { InvalidArgumentError, type Logger, type ParseErrorFactory, parseWith } from '@meshnet/core'
import { compileGrammar, type GrammarSpec } from '@meshnet/grammar'
import { type NodeEnv, RESPONSE_ALREADY_SENT, readJsonBody } from '@meshnet/http'
import type { ErrorHandler } from 'hono'
import { z } from 'zod'
import { type ChatMessage, type ChatTemplate, parseChatTemplate } from './chat-template.ts'
import { generateText } from './openai-generate.ts'
import { ApiError, apiBodyErrors, apiError, sendJson } from './openai-schemas.ts'
import {
  type CompletionBackend,
  type CompletionModel,
  type CompletionOutcome,
  type CompletionRequest,
  MAX_OPENAI_BODY,
} from './openai-types.ts'
import type { ToolDefinition } from './tools/check.ts'

// What the Ollama and Anthropic APIs share: the capped body, one zod check, the chat prompt (with
// an assistant prefill), and one generation on the backend that says why it ended and how long it took.

/** Most stop sequences one request may give. */
export const MAX_STOPS = 16
/** Longest stop sequence, in characters. */
export const MAX_STOP_LENGTH = 256
/** Most messages in one chat. */
export const MAX_MESSAGES = 4096
/** Most text blocks in one message or system prompt. */
export const MAX_BLOCKS = 256
/** Longest model name. */
export const MAX_MODEL_NAME = 256
/** Longest text field (the body is capped at the same size). */
export const MAX_TEXT = MAX_OPENAI_BODY

// ---------------------------------------------------------------------------------------------
// Request bodies

const bodyErrors = apiBodyErrors(MAX_OPENAI_BODY)

/** The JSON object of a request body (at most 1 MiB); 400 for anything else, 413 above the cap. */
export async function readBody(req: IncomingMessage): Promise<Record<string, unknown>> {
  const value = await readJsonBody(req, { maxBytes: MAX_OPENAI_BODY, errors: bodyErrors })
  if (!isRecord(value)) {
    throw new ApiError(400, 'the request body must be a JSON object', { code: 'invalid_request_body' })
  }
  return value
}

/** InvalidArgumentError naming the first problem as `path: message` (the APIs answer it with 400). */
const invalidRequest: ParseErrorFactory = (message, options) => {
  const [first] = (options.details?.issues ?? []) as { path: string; message: string }[]
  if (first === undefined) return new InvalidArgumentError(message, options)
  return new InvalidArgumentError(
    first.path === '' ? first.message : `${first.path}: ${first.message}`,
    options,
  )
}

/** A request body checked by `schema`; InvalidArgumentError (400) naming the first problem. */
export function parseBody<S extends z.ZodType>(schema: S, body: unknown): z.output<S> {
  return parseWith(schema, body, 'request body', invalidRequest)
}

export function isRecord(value: unknown): value is Record<string, unknown> {
  return typeof value === 'object' && value !== null && !Array.isArray(value)
}

/** Nothing at all: absent, null, false, 0, '', [] or {}. */
export function isEmpty(value: unknown): boolean {
  if (value === undefined || value === null || value === false || value === 0 || value === '') return true
  if (Array.isArray(value)) return value.length === 0
  return isRecord(value) && Object.keys(value).length === 0
}

/** A field this server cannot honour: accepted only when it asks for nothing (see isEmpty). */
export const refused = (reason: string) => z.unknown().refine(isEmpty, { error: reason }).optional()

/** A number accepted only at the value that changes nothing. */
export const only = (value: number, reason: string) =>
  z
    .number({ error: 'must be a number' })
    .refine((n) => n === value, { error: `only ${value} is supported: ${reason}` })
    .optional()

// ---------------------------------------------------------------------------------------------
// Errors

/** How an API writes an error: its JSON body, and the last words of a stream already under way. */
export interface ErrorShape {
  /** For the log: `Ollama`, `Anthropic`. */
  api: string
  body(error: ApiError): unknown
  /** The text that ends a stream with `json` (the body, as JSON). */
  streamEnd(json: string): string
}

/**
 * The `onError` of an API: what failed becomes an ApiError (a backend's MeshError by its name, as on
 * the OpenAI API; anything else a 500 that names no internals), answered in the API's shape.
 */
export function errorHandler(logger: Logger, shape: ErrorShape): ErrorHandler<NodeEnv> {
  return (err, c) => {
    const error = apiError(err, logger)
    const res = c.env.outgoing
    if (!res.headersSent) sendJson(res, error.status, shape.body(error), error.headers)
    else if (!res.writableEnded && !res.destroyed) res.end(shape.streamEnd(JSON.stringify(shape.body(error))))
    logger.debug(
      { method: c.req.method, path: c.req.path, status: error.status, err: error.message },
      `${shape.api} API request refused`,
    )
    return RESPONSE_ALREADY_SENT
  }
}

// ---------------------------------------------------------------------------------------------
// Chat prompts

/** The parsed chat template of each model, parsed once; 500 when a model's template does not parse. */
export function chatTemplates(logger: Logger): (model: CompletionModel) => ChatTemplate {
  const parsed = new Map<string, ChatTemplate>()
  return (model) => {
    const key = model.chatTemplate ?? ''
    let template = parsed.get(key)
    if (template === undefined) {
      try {
        template = parseChatTemplate(model.chatTemplate)
      } catch (err) {
        logger.error({ model: model.id, err }, 'chat template does not parse')
        throw new ApiError(500, (err as Error).message, { code: 'invalid_chat_template' })
      }
      parsed.set(key, template)
    }
    return template
  }
}

/**
 * The prompt for a chat, rendered by the model's template as `/v1/chat/completions` renders it, with
 * the tools the model may call. When the last message is the assistant's text, the answer continues
 * it (a prefill, as Anthropic and Ollama do): the messages before it are rendered with the generation
 * prompt, then its text follows.
 */
export function chatPrompt(
  template: ChatTemplate,
  model: CompletionModel,
  messages: readonly ChatMessage[],
  tools: readonly ToolDefinition[] = [],
): string {
  const render = (list: readonly ChatMessage[]) =>
    template.render({
      messages: list,
      addGenerationPrompt: true,
      ...(tools.length > 0 ? { tools } : {}),
      ...(model.bosToken === undefined ? {} : { bosToken: model.bosToken }),
      ...(model.eosToken === undefined ? {} : { eosToken: model.eosToken }),
      ...(model.addBosToken === undefined ? {} : { addBosToken: model.addBosToken }),
    })
  const last = messages.at(-1)
  if (last?.role !== 'assistant' || (last.tool_calls?.length ?? 0) > 0) return render(messages)
  return render(messages.slice(0, -1)) + (last.content ?? '')
}

/** The grammar of a JSON answer: any JSON object, or JSON valid for `schema`. */
export function jsonGrammar(schema?: Record<string, unknown>): GrammarSpec {
  return { parts: [{ type: 'json', ...(schema === undefined ? {} : { schema }) }] }
}

/**
 * 400 `<field>: <what>` when `grammar` has a JSON Schema keyword generation cannot keep to (the
 * message names the keyword and where it is).
 */
export function checkGrammar(grammar: GrammarSpec, field: string): void {
  try {
    compileGrammar(grammar)
  } catch (err) {
    if ((err as Error).name !== 'GrammarSchemaError') throw err
    throw new ApiError(400, `${field}: ${(err as Error).message}`, { param: field, code: 'invalid_schema' })
  }
}

// ---------------------------------------------------------------------------------------------
// Generations

export interface Sampling {
  temperature?: number
  topP?: number
  topK?: number
  seed?: number
  /** OpenAI's presence penalty over the tokens generated so far (-2..2). */
  presencePenalty?: number
  /** OpenAI's frequency penalty over the tokens generated so far (-2..2). */
  frequencyPenalty?: number
}

export interface GenerationRequest {
  model: CompletionModel
  prompt: string
  /** The request field the prompt came from, for the error when it does not fit. */
  promptField: string
  /** Tokens to generate at most; undefined: until the context is full. */
  maxTokens: number | undefined
  /** A context smaller than the model's to fit in (Ollama's `num_ctx`). */
  contextLength?: number
  sampling: Sampling
  stops: readonly string[]
  /** What the answer must be (structured output, a forced tool call): the sampler keeps to it. */
  grammar?: GrammarSpec
  signal: AbortSignal
}

/**
 * Why a generation ended: the model's end of generation, a stop sequence, the `maxTokens` asked for,
 * or the end of the context (also when `maxTokens` asked for more than the context had left).
 */
export type EndReason = 'end' | 'stopSequence' | 'maxTokens' | 'contextFull'

export interface GenerationEnd {
  reason: EndReason
  /** The stop sequence that ended it. */
  stopSequence?: string
  promptTokens: number
  /** Every token generated, with those of a stop sequence that was cut off. */
  completionTokens: number
  /** Nanoseconds from the start of the generation to its first token. */
  promptNanos: number
  /** Nanoseconds from the first token to the end. */
  generateNanos: number
}

export interface Generation {
  /** What the tokenizer makes of the prompt (with BOS), known before the first token. */
  promptTokens: number
  /** The text, cut before the first stop sequence; returns how it ended. */
  texts: AsyncGenerator<string, GenerationEnd, undefined>
}

/**
 * Counts the prompt's tokens (400 when it leaves no room in the context) and starts the generation on
 * the backend, as the OpenAI API runs it (`generateText`: stop sequences cut and abort it, `signal`
 * aborts it). Call `texts.return()` when done with it early.
 */
export async function startGeneration(
  backend: CompletionBackend,
  request: GenerationRequest,
): Promise<Generation> {
  const { model } = request
  const context = Math.min(model.contextLength, request.contextLength ?? model.contextLength)
  const promptTokens = await backend.countTokens(model.id, request.prompt)
  if (promptTokens >= context) {
    throw new ApiError(
      400,
      `the ${request.promptField} take ${promptTokens} tokens of the ${context}-token context, which leaves ` +
        'no room for an answer; shorten them',
      { param: request.promptField, code: 'context_length_exceeded' },
    )
  }
  const room = context - promptTokens
  const maxTokens = Math.min(request.maxTokens ?? room, room)
  const fillsContext = request.maxTokens === undefined || request.maxTokens > room
  return { promptTokens, texts: texts(backend, request, maxTokens, fillsContext) }
}

async function* texts(
  backend: CompletionBackend,
  request: GenerationRequest,
  maxTokens: number,
  fillsContext: boolean,
): AsyncGenerator<string, GenerationEnd, undefined> {
  const watch = watched(backend)
  const started = process.hrtime.bigint()
  const pieces = generateText(
    watch.backend,
    {
      model: request.model.id,
      prompt: request.prompt,
      maxTokens,
      ...request.sampling,
      ...(request.grammar === undefined ? {} : { grammar: request.grammar }),
      signal: request.signal,
    },
    request.stops,
  )
  let emitted = 0
  try {
    for (let step = await pieces.next(); ; step = await pieces.next()) {
      if (step.done) {
        const ended = process.hrtime.bigint()
        const first = watch.seen.firstToken ?? ended
        // The text stopped at a stop sequence where the one that ended it starts in the raw text.
        const stopSequence =
          step.value.finish === 'stop'
            ? request.stops.find((stop) => watch.seen.text.startsWith(stop, emitted))
            : undefined
        const full = fillsContext || watch.seen.outcome?.stopReason === 'contextFull'
        return {
          reason:
            stopSequence !== undefined
              ? 'stopSequence'
              : step.value.finish === 'stop'
                ? 'end'
                : full
                  ? 'contextFull'
                  : 'maxTokens',
          ...(stopSequence === undefined ? {} : { stopSequence }),
          promptTokens: step.value.usage.prompt_tokens,
          completionTokens: step.value.usage.completion_tokens,
          promptNanos: Number(first - started),
          generateNanos: Number(ended - first),
        }
      }
      emitted += step.value.length
      yield step.value
    }
  } finally {
    await pieces.return(undefined as never)
  }
}

/** The backend, with the raw text of the tokens, when the first came, and the outcome recorded. */
function watched(backend: CompletionBackend) {
  const seen: { text: string; firstToken?: bigint; outcome?: CompletionOutcome } = { text: '' }
  async function* generate(request: CompletionRequest) {
    const tokens = backend.generate(request)
    let finished = false
    try {
      for (;;) {
        const step = await tokens.next()
        if (step.done) {
          finished = true
          seen.outcome = step.value
          return step.value
        }
        seen.firstToken ??= process.hrtime.bigint()
        seen.text += step.value.text
        yield step.value
      }
    } finally {
      if (!finished) await tokens.return(undefined as never)
    }
  }
  const wrapped: CompletionBackend = {
    models: () => backend.models(),
    countTokens: (model, text) => backend.countTokens(model, text),
    generate,
  }
  return { seen, backend: wrapped }
}

/** A signal that aborts when the client goes away before the response is finished. */
export function abortOnClose(res: ServerResponse): AbortSignal {
  const controller = new AbortController()
  res.on('close', () => {
    if (!res.writableFinished) controller.abort()
  })
  return controller.signal
}
