import { createHash, randomBytes, timingSafeEqual } from 'node:crypto'
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http'
import type { AddressInfo } from 'node:net'
import { setImmediate as nextTurn } from 'node:timers/promises'
import { isMeshError, type Logger, MeshError, type MeshErrorOptions } from '@meshnet/core'
import { z } from 'zod'
import { type ChatMessage, type ChatTemplate, parseChatTemplate } from './chat-template.ts'

/** Largest request body the OpenAI-compatible API reads (413 above it). */
export const MAX_OPENAI_BODY = 1024 * 1024
/** Most stop sequences one request may give (OpenAI's limit). */
export const MAX_STOP_SEQUENCES = 4
/** `max_tokens` of `/v1/completions` when the request gives none (OpenAI's default). */
export const DEFAULT_COMPLETION_MAX_TOKENS = 16

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
  signal: AbortSignal
}

/** How a generation ended. */
export interface CompletionOutcome {
  promptTokens: number
  completionTokens: number
  stopReason: 'maxTokens' | 'eog' | 'abort' | 'contextFull'
}

/** What the API runs completions on (the agent's job runner; in tests, an engine). */
export interface CompletionBackend {
  models(): CompletionModel[]
  /** Number of tokens the model's tokenizer makes of `text` (with BOS as generation would add it). */
  countTokens(model: string, text: string): Promise<number>
  /** Streams the generated tokens' text; returns the counts when done. Must stop promptly when signal aborts. */
  generate(
    request: CompletionRequest,
  ): AsyncGenerator<{ id: number; text: string }, CompletionOutcome, undefined>
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
  logger: Logger
}

export interface OpenAiApi {
  readonly port: number
  readonly host: string
  /** Stops listening, aborts running generations and waits for them to end. */
  close(): Promise<void>
}

/**
 * Serves the OpenAI-compatible HTTP API over `backend`: `GET /v1/models`, `POST /v1/completions` and
 * `POST /v1/chat/completions`, streaming as server-sent events. See docs/openai-api.md.
 */
export async function startOpenAiApi(options: OpenAiApiOptions): Promise<OpenAiApi> {
  const host = options.host ?? '127.0.0.1'
  const { logger } = options
  if (options.apiKey === undefined && !isLoopback(host)) {
    logger.warn({ host }, 'the OpenAI-compatible API listens beyond this machine without an API key')
  }
  const state: ServerState = {
    backend: options.backend,
    logger,
    keyDigest: options.apiKey === undefined ? undefined : digest(options.apiKey),
    templates: new Map(),
    running: new Set(),
    closing: false,
  }
  const server = createServer((req, res) => {
    const done = handle(req, res, state).catch((err: unknown) => {
      logger.error({ err }, 'OpenAI API request failed')
      res.destroy()
    })
    state.running.add(done)
    void done.finally(() => state.running.delete(done))
  })
  server.on('clientError', (_err, socket) => socket.destroy())
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject)
    server.listen(options.port, host, () => {
      server.removeListener('error', reject)
      resolve()
    })
  })
  const port = (server.address() as AddressInfo).port
  logger.debug({ host, port }, 'OpenAI-compatible API listening')
  return {
    port,
    host,
    async close() {
      state.closing = true
      await closeServer(server)
      await Promise.allSettled([...state.running])
    },
  }
}

interface ServerState {
  backend: CompletionBackend
  logger: Logger
  /** SHA-256 of the API key; compared in constant time. */
  keyDigest: Buffer | undefined
  /** Parsed chat templates by source. */
  templates: Map<string, ChatTemplate>
  running: Set<Promise<void>>
  closing: boolean
}

function closeServer(server: Server): Promise<void> {
  return new Promise((resolve) => {
    server.close(() => resolve())
    server.closeAllConnections()
  })
}

function isLoopback(host: string): boolean {
  return host === 'localhost' || host === '::1' || host.startsWith('127.')
}

const digest = (text: string) => createHash('sha256').update(text).digest()

// ---------------------------------------------------------------------------------------------
// Errors, in OpenAI's shape: {"error": {"message", "type", "param", "code"}}

class ApiError extends Error {
  readonly status: number
  readonly type: string
  readonly param: string | null
  readonly code: string | null
  readonly headers: Record<string, string>
  constructor(
    status: number,
    message: string,
    fields: {
      type?: string
      param?: string | null
      code?: string | null
      headers?: Record<string, string>
    } = {},
  ) {
    super(message)
    this.status = status
    this.type = fields.type ?? (status >= 500 ? 'server_error' : 'invalid_request_error')
    this.param = fields.param ?? null
    this.code = fields.code ?? null
    this.headers = fields.headers ?? {}
  }

  toJSON() {
    return { error: { message: this.message, type: this.type, param: this.param, code: this.code } }
  }
}

/** Maps whatever a backend or template threw to the API error a client sees. */
function apiError(err: unknown, logger: Logger): ApiError {
  if (err instanceof ApiError) return err
  const name = (err as Error | undefined)?.name
  if (isMeshError(err)) {
    switch (name) {
      case 'ChatTemplateRenderError':
        return new ApiError(400, err.message, { param: 'messages', code: 'chat_template_rejected' })
      case 'InvalidArgumentError':
        return new ApiError(400, err.message, { code: 'invalid_value' })
      case 'ContextOverflowError':
        return new ApiError(400, err.message, { code: 'context_length_exceeded' })
      case 'BackendUnavailableError':
      // The agent's job runner refusing a job: no model, no pool, no plan that fits, a rate limit.
      case 'JobRefusedError':
        return new ApiError(503, err.message, { code: 'backend_unavailable' })
    }
    logger.error({ err }, 'OpenAI API request failed')
    return new ApiError(500, err.message, { code: err.code })
  }
  logger.error({ err }, 'OpenAI API request failed')
  return new ApiError(500, 'the server had an error while processing the request; see the agent log', {
    code: 'internal_error',
  })
}

// ---------------------------------------------------------------------------------------------
// Request schemas. Unknown top-level arguments are rejected (as OpenAI does); parameters this server
// cannot honour are accepted only at their no-op value, so a request never silently means less.

const unsupported = (allowed: (value: unknown) => boolean = (value) => value === null) =>
  z
    .unknown()
    .refine((value) => value === undefined || allowed(value), { error: 'is not supported by this server' })
    .optional()

const zeroOnly = z
  .number()
  .refine((value) => value === 0, { error: 'is not supported by this server (only 0 is accepted)' })
  .nullish()

const stopSchema = z.union(
  [
    z.string().min(1, 'must not be empty'),
    z
      .array(z.string().min(1, 'must not be empty'))
      .max(MAX_STOP_SEQUENCES, `must have at most ${MAX_STOP_SEQUENCES} stop sequences`),
  ],
  { error: `must be a string or an array of at most ${MAX_STOP_SEQUENCES} non-empty strings` },
)

const commonFields = {
  model: z.string({ error: 'must be a string' }).min(1, 'must not be empty'),
  stream: z.boolean().nullish(),
  stream_options: z
    .strictObject({ include_usage: z.boolean().optional(), include_obfuscation: z.boolean().optional() })
    .nullish(),
  max_tokens: z.int('must be a whole number').min(1, 'must be at least 1').nullish(),
  max_completion_tokens: z.int('must be a whole number').min(1, 'must be at least 1').nullish(),
  temperature: z.number().min(0, 'must be at least 0').max(2, 'must be at most 2').nullish(),
  top_p: z.number().gt(0, 'must be greater than 0').max(1, 'must be at most 1').nullish(),
  top_k: z.int('must be a whole number').min(0, 'must be at least 0').nullish(),
  seed: z
    .int('must be a whole number')
    .min(0, 'must be at least 0')
    .max(0xffff_ffff, 'must be at most 4294967295 (a uint32)')
    .nullish(),
  n: z
    .number()
    .refine((n) => n === 1, {
      error:
        'only 1 is supported: this server returns one choice per request; send separate requests instead',
    })
    .nullish(),
  stop: stopSchema.nullish(),
  presence_penalty: zeroOnly,
  frequency_penalty: zeroOnly,
  logit_bias: unsupported((value) => value === null || (isRecord(value) && Object.keys(value).length === 0)),
  user: z.string().nullish(),
}

type CommonParams = z.output<z.ZodObject<typeof commonFields>>

const streamOptionsNeedStream = (params: CommonParams, ctx: z.RefinementCtx) => {
  if (params.stream_options != null && params.stream !== true) {
    ctx.addIssue({
      code: 'custom',
      path: ['stream_options'],
      message: "is only allowed when 'stream' is true",
    })
  }
}

const completionSchema = z
  .strictObject({
    ...commonFields,
    prompt: z.union([z.string(), z.array(z.string()).length(1)], {
      error: 'must be a string; token arrays and several prompts in one request are not supported',
    }),
    suffix: unsupported(),
    echo: unsupported((value) => value === false || value === null),
    best_of: z
      .number()
      .refine((n) => n === 1, { error: 'only 1 is supported' })
      .nullish(),
    logprobs: unsupported(),
  })
  .superRefine(streamOptionsNeedStream)

const MESSAGE_ROLES = ['system', 'developer', 'user', 'assistant', 'tool'] as const

const messageSchema = z
  .looseObject({
    role: z.enum(MESSAGE_ROLES, { error: `must be one of ${MESSAGE_ROLES.map((r) => `'${r}'`).join(', ')}` }),
    content: z
      .union([z.string(), z.array(z.looseObject({ type: z.string(), text: z.unknown().optional() }))], {
        error: 'must be a string or an array of text parts',
      })
      .nullish(),
    name: z.string().optional(),
  })
  .superRefine((message, ctx) => {
    if (message.content == null && message.role !== 'assistant') {
      ctx.addIssue({
        code: 'custom',
        path: ['content'],
        message: `is required in a '${message.role}' message`,
      })
    }
    if (!Array.isArray(message.content)) return
    message.content.forEach((part, i) => {
      if (part.type !== 'text') {
        ctx.addIssue({
          code: 'custom',
          path: ['content', i, 'type'],
          message: `only 'text' content parts are supported, not '${part.type}'`,
        })
      } else if (typeof part.text !== 'string') {
        ctx.addIssue({ code: 'custom', path: ['content', i, 'text'], message: 'must be a string' })
      }
    })
  })

const chatSchema = z
  .strictObject({
    ...commonFields,
    messages: z.array(messageSchema).min(1, 'must contain at least one message'),
    logprobs: unsupported((value) => value === false || value === null),
    top_logprobs: unsupported(),
    tools: unsupported((value) => value === null || (Array.isArray(value) && value.length === 0)),
    tool_choice: unsupported((value) => value === null || value === 'none'),
    parallel_tool_calls: z.boolean().nullish(),
    functions: unsupported((value) => value === null || (Array.isArray(value) && value.length === 0)),
    function_call: unsupported((value) => value === null || value === 'none'),
    response_format: unsupported((value) => value === null || (isRecord(value) && value.type === 'text')),
  })
  .superRefine(streamOptionsNeedStream)

function isRecord(value: unknown): value is Record<string, unknown> {
  return typeof value === 'object' && value !== null && !Array.isArray(value)
}

/** `['messages', 0, 'content']` → `messages[0].content`, as OpenAI names params. */
function paramName(path: readonly PropertyKey[]): string {
  let name = ''
  for (const key of path) {
    if (typeof key === 'number') name += `[${key}]`
    else name += name === '' ? String(key) : `.${String(key)}`
  }
  return name
}

function valueAt(body: unknown, path: readonly PropertyKey[]): unknown {
  let value = body
  for (const key of path) {
    if (typeof value !== 'object' || value === null) return undefined
    value = (value as Record<PropertyKey, unknown>)[key]
  }
  return value
}

function parseRequest<S extends z.ZodType>(schema: S, body: unknown): z.output<S> {
  if (!isRecord(body)) {
    throw new ApiError(400, 'the request body must be a JSON object', { code: 'invalid_request_body' })
  }
  const parsed = schema.safeParse(body)
  if (parsed.success) return parsed.data
  const issue = parsed.error.issues[0]!
  if (issue.code === 'unrecognized_keys') {
    const param = paramName([...issue.path, issue.keys[0]!])
    throw new ApiError(400, `Unrecognized request argument supplied: ${param}`, {
      param,
      code: 'unknown_parameter',
    })
  }
  const param = paramName(issue.path)
  if (valueAt(body, issue.path) === undefined) {
    throw new ApiError(400, `Missing required parameter: '${param}'.`, {
      param,
      code: 'missing_required_parameter',
    })
  }
  throw new ApiError(400, `Invalid value for '${param}': ${issue.message}`, { param, code: 'invalid_value' })
}

// ---------------------------------------------------------------------------------------------
// Requests

async function handle(req: IncomingMessage, res: ServerResponse, state: ServerState): Promise<void> {
  const controller = new AbortController()
  // The client went away before the response ended: stop the generation.
  res.on('close', () => {
    if (!res.writableFinished) controller.abort()
  })
  const method = req.method ?? 'GET'
  const path = (req.url ?? '/').split('?')[0]!.replace(/\/+$/, '')
  try {
    if (state.closing) throw new ApiError(503, 'the agent is shutting down', { code: 'shutting_down' })
    authorize(req, state.keyDigest)
    const modelPath = /^\/v1\/models\/(.+)$/.exec(path)
    if (path === '/v1/models' || modelPath !== null) {
      if (method !== 'GET') throw methodNotAllowed(method, path, 'GET')
      const models = state.backend.models()
      if (modelPath === null) {
        sendJson(res, 200, { object: 'list', data: models.map(modelObject) })
        return
      }
      sendJson(res, 200, modelObject(findModel(models, decodePathSegment(modelPath[1]!))))
      return
    }
    if (path === '/v1/completions' || path === '/v1/chat/completions') {
      if (method !== 'POST') throw methodNotAllowed(method, path, 'POST')
      const body = await readJsonBody(req)
      if (path === '/v1/completions')
        await complete(parseRequest(completionSchema, body), res, state, controller)
      else await chat(parseRequest(chatSchema, body), res, state, controller)
      return
    }
    throw new ApiError(404, `Invalid URL (${method} ${path || '/'})`, { code: 'unknown_url' })
  } catch (err) {
    const error = apiError(err, state.logger)
    if (!res.headersSent) {
      sendJson(res, error.status, error.toJSON(), error.headers)
    } else if (!res.writableEnded && !res.destroyed) {
      // Mid-stream: one last event with the error, and no [DONE].
      res.end(`data: ${JSON.stringify(error.toJSON())}\n\n`)
    }
    state.logger.debug(
      { method, path, status: error.status, err: error.message },
      'OpenAI API request refused',
    )
  }
}

function decodePathSegment(segment: string): string {
  try {
    return decodeURIComponent(segment)
  } catch {
    return segment
  }
}

function authorize(req: IncomingMessage, keyDigest: Buffer | undefined): void {
  if (keyDigest === undefined) return
  const header = req.headers.authorization
  const headers = { 'www-authenticate': 'Bearer' }
  if (header === undefined || header === '') {
    throw new ApiError(401, "You didn't provide an API key. Send it as 'Authorization: Bearer <key>'.", {
      code: 'invalid_api_key',
      headers,
    })
  }
  const match = /^Bearer\s+(\S+)\s*$/i.exec(header)
  if (match === null || !timingSafeEqual(digest(match[1]!), keyDigest)) {
    throw new ApiError(401, 'Incorrect API key provided.', { code: 'invalid_api_key', headers })
  }
}

function methodNotAllowed(method: string, path: string, allowed: string): ApiError {
  return new ApiError(405, `${method} is not allowed on ${path}; use ${allowed}`, {
    code: 'method_not_allowed',
    headers: { allow: allowed },
  })
}

async function readJsonBody(req: IncomingMessage): Promise<unknown> {
  const tooLarge = () =>
    new ApiError(413, `the request body is larger than ${MAX_OPENAI_BODY} bytes`, {
      code: 'request_too_large',
      headers: { connection: 'close' },
    })
  const declared = Number(req.headers['content-length'] ?? 0)
  if (declared > MAX_OPENAI_BODY) throw tooLarge()
  const chunks: Buffer[] = []
  let size = 0
  try {
    for await (const chunk of req) {
      size += (chunk as Buffer).length
      if (size > MAX_OPENAI_BODY) throw tooLarge()
      chunks.push(chunk as Buffer)
    }
  } catch (err) {
    if (err instanceof ApiError) throw err
    throw new ApiError(400, 'the request body was cut short', { code: 'invalid_request_body' })
  }
  try {
    return JSON.parse(Buffer.concat(chunks).toString('utf8'))
  } catch {
    throw new ApiError(400, 'the request body is not valid JSON', { code: 'invalid_json' })
  }
}

function sendJson(res: ServerResponse, status: number, body: unknown, headers: Record<string, string> = {}) {
  if (res.destroyed) return
  res.writeHead(status, { 'content-type': 'application/json', ...headers })
  res.end(JSON.stringify(body))
}

function modelObject(model: CompletionModel) {
  return { id: model.id, object: 'model', created: model.created, owned_by: model.ownedBy }
}

function findModel(models: readonly CompletionModel[], id: string): CompletionModel {
  const model = models.find((m) => m.id === id)
  if (model !== undefined) return model
  const served = models.length === 0 ? 'none yet' : models.map((m) => m.id).join(', ')
  throw new ApiError(404, `The model '${id}' does not exist on this agent (it serves: ${served})`, {
    param: 'model',
    code: 'model_not_found',
  })
}

// ---------------------------------------------------------------------------------------------
// Completions

type FinishReason = 'stop' | 'length'

interface Usage {
  prompt_tokens: number
  completion_tokens: number
  total_tokens: number
}

/** What a completion and a chat completion share once their prompt is text. */
interface Generation {
  model: CompletionModel
  prompt: string
  /** `prompt` or `messages`, for errors about the prompt's length. */
  promptParam: string
  params: CommonParams
  /** max_tokens when the request gives none; undefined: the rest of the context. */
  defaultMaxTokens: number | undefined
}

async function complete(
  params: z.output<typeof completionSchema>,
  res: ServerResponse,
  state: ServerState,
  controller: AbortController,
): Promise<void> {
  const model = findModel(state.backend.models(), params.model)
  const prompt = typeof params.prompt === 'string' ? params.prompt : params.prompt[0]!
  const id = `cmpl-${randomBytes(12).toString('base64url')}`
  const created = Math.floor(Date.now() / 1000)
  const head = { id, object: 'text_completion', created, model: model.id }
  const choice = (text: string, finish: FinishReason | null) => ({
    text,
    index: 0,
    logprobs: null,
    finish_reason: finish,
  })
  await respond(
    { model, prompt, promptParam: 'prompt', params, defaultMaxTokens: DEFAULT_COMPLETION_MAX_TOKENS },
    res,
    state,
    controller,
    {
      full: (text, finish, usage) => ({ ...head, choices: [choice(text, finish)], usage }),
      chunk: (text) => ({ ...head, choices: [choice(text, null)] }),
      last: (finish) => ({ ...head, choices: [choice('', finish)] }),
      usage: (usage) => ({ ...head, choices: [], usage }),
    },
  )
}

async function chat(
  params: z.output<typeof chatSchema>,
  res: ServerResponse,
  state: ServerState,
  controller: AbortController,
): Promise<void> {
  const model = findModel(state.backend.models(), params.model)
  const messages: ChatMessage[] = params.messages.map((m) => {
    const content =
      typeof m.content === 'string'
        ? m.content
        : (m.content ?? []).map((part) => (typeof part.text === 'string' ? part.text : '')).join('\n')
    return {
      role: m.role === 'developer' ? 'system' : m.role,
      content,
      ...(m.name === undefined ? {} : { name: m.name }),
    }
  })
  const prompt = chatTemplate(state, model).render({
    messages,
    addGenerationPrompt: true,
    ...(model.bosToken === undefined ? {} : { bosToken: model.bosToken }),
    ...(model.eosToken === undefined ? {} : { eosToken: model.eosToken }),
    ...(model.addBosToken === undefined ? {} : { addBosToken: model.addBosToken }),
  })
  const id = `chatcmpl-${randomBytes(12).toString('base64url')}`
  const created = Math.floor(Date.now() / 1000)
  const head = { id, object: 'chat.completion.chunk', created, model: model.id }
  const delta = (content: Record<string, string>, finish: FinishReason | null) => ({
    index: 0,
    delta: content,
    logprobs: null,
    finish_reason: finish,
  })
  await respond(
    { model, prompt, promptParam: 'messages', params, defaultMaxTokens: undefined },
    res,
    state,
    controller,
    {
      full: (text, finish, usage) => ({
        ...head,
        object: 'chat.completion',
        choices: [
          {
            index: 0,
            message: { role: 'assistant', content: text, refusal: null },
            logprobs: null,
            finish_reason: finish,
          },
        ],
        usage,
      }),
      first: () => ({ ...head, choices: [delta({ role: 'assistant', content: '' }, null)] }),
      chunk: (text) => ({ ...head, choices: [delta({ content: text }, null)] }),
      last: (finish) => ({ ...head, choices: [delta({}, finish)] }),
      usage: (usage) => ({ ...head, choices: [], usage }),
    },
  )
}

function chatTemplate(state: ServerState, model: CompletionModel): ChatTemplate {
  const key = model.chatTemplate ?? ''
  let template = state.templates.get(key)
  if (template === undefined) {
    try {
      template = parseChatTemplate(model.chatTemplate)
    } catch (err) {
      state.logger.error({ model: model.id, err }, 'chat template does not parse')
      throw new ApiError(500, (err as Error).message, { code: 'invalid_chat_template' })
    }
    state.templates.set(key, template)
  }
  return template
}

/** The response bodies of one endpoint. */
interface Shapes {
  full(text: string, finish: FinishReason, usage: Usage): unknown
  /** Streaming: the chunk before the first text (chat: the assistant role). */
  first?(): unknown
  chunk(text: string): unknown
  last(finish: FinishReason): unknown
  usage(usage: Usage): unknown
}

async function respond(
  generation: Generation,
  res: ServerResponse,
  state: ServerState,
  controller: AbortController,
  shapes: Shapes,
): Promise<void> {
  const { model, params } = generation
  const promptTokens = await state.backend.countTokens(model.id, generation.prompt)
  if (promptTokens >= model.contextLength) {
    throw new ApiError(
      400,
      `This model's maximum context length is ${model.contextLength} tokens, but the ${generation.promptParam} ` +
        `take ${promptTokens}, which leaves no room for a completion; shorten them`,
      { param: generation.promptParam, code: 'context_length_exceeded' },
    )
  }
  const room = model.contextLength - promptTokens
  const asked = params.max_completion_tokens ?? params.max_tokens ?? generation.defaultMaxTokens ?? room
  const stops = params.stop == null ? [] : typeof params.stop === 'string' ? [params.stop] : params.stop
  const texts = generateText(
    state.backend,
    {
      model: model.id,
      prompt: generation.prompt,
      maxTokens: Math.min(asked, room),
      ...(params.temperature == null ? {} : { temperature: params.temperature }),
      ...(params.top_p == null ? {} : { topP: params.top_p }),
      ...(params.top_k == null ? {} : { topK: params.top_k }),
      ...(params.seed == null ? {} : { seed: params.seed }),
      signal: controller.signal,
    },
    stops,
  )
  const finished = (outcome: { finish: FinishReason; usage: Usage }) =>
    state.logger.debug(
      { model: model.id, stream: params.stream === true, finish: outcome.finish, ...outcome.usage },
      'OpenAI API request served',
    )
  try {
    // Wait for the first text before answering, so a backend that fails at once gets a real status.
    let step = await texts.next()
    if (params.stream !== true) {
      let text = ''
      while (!step.done) {
        text += step.value
        step = await texts.next()
      }
      sendJson(res, 200, shapes.full(text, step.value.finish, step.value.usage))
      finished(step.value)
      return
    }
    const includeUsage = params.stream_options?.include_usage === true
    // With include_usage, every chunk carries `usage: null` but the last one (as OpenAI sends them).
    const event = (body: unknown) =>
      `data: ${JSON.stringify(includeUsage ? { ...(body as object), usage: null } : body)}\n\n`
    res.writeHead(200, {
      'content-type': 'text/event-stream; charset=utf-8',
      'cache-control': 'no-cache',
      'x-accel-buffering': 'no',
    })
    if (shapes.first) await send(res, event(shapes.first()))
    while (!step.done) {
      if (step.value !== '') await send(res, event(shapes.chunk(step.value)))
      step = await texts.next()
    }
    let tail = event(shapes.last(step.value.finish))
    if (includeUsage) tail += `data: ${JSON.stringify(shapes.usage(step.value.usage))}\n\n`
    if (!res.destroyed) res.end(`${tail}data: [DONE]\n\n`)
    finished(step.value)
  } finally {
    await texts.return(undefined as never)
  }
}

/** Writes to the response, waiting while the client reads slowly; returns at once when it is gone. */
async function send(res: ServerResponse, data: string): Promise<void> {
  if (res.destroyed || res.write(data)) return
  await new Promise<void>((resolve) => {
    const done = () => {
      res.removeListener('drain', done)
      res.removeListener('close', done)
      resolve()
    }
    res.on('drain', done)
    res.on('close', done)
  })
}

/**
 * Runs the backend and yields the completion's text, cut before the first stop sequence: text that
 * could be the start of a stop sequence is held back until it is known not to be one. When a stop
 * sequence appears the generation is aborted. Client disconnects abort it through `request.signal`.
 */
async function* generateText(
  backend: CompletionBackend,
  request: CompletionRequest,
  stops: readonly string[],
): AsyncGenerator<string, { finish: FinishReason; usage: Usage }, undefined> {
  const own = new AbortController()
  const abort = () => own.abort()
  request.signal.addEventListener('abort', abort, { once: true })
  const tokens = backend.generate({ ...request, signal: own.signal })
  let finished = false
  try {
    let held = ''
    let stopped = false
    for (;;) {
      const step = await tokens.next()
      if (step.done) {
        finished = true
        const outcome = step.value
        if (outcome.stopReason === 'abort' && !stopped) {
          throw new BackendUnavailableError('the generation was aborted before it finished')
        }
        if (!stopped && held !== '') yield held
        const usage = {
          prompt_tokens: outcome.promptTokens,
          completion_tokens: outcome.completionTokens,
          total_tokens: outcome.promptTokens + outcome.completionTokens,
        }
        return { finish: stopped || outcome.stopReason === 'eog' ? 'stop' : 'length', usage }
      }
      // An engine in this process may compute token after token in microtasks alone; a turn of the
      // event loop per token lets the response flush and a disconnect be seen (and abort it).
      await nextTurn()
      if (stopped) continue
      const text = held + step.value.text
      const cut = firstStop(text, stops)
      if (cut !== undefined) {
        stopped = true
        own.abort()
        if (cut > 0) yield text.slice(0, cut)
        continue
      }
      const keep = heldBack(text, stops)
      held = text.slice(text.length - keep)
      if (keep < text.length) yield text.slice(0, text.length - keep)
    }
  } finally {
    request.signal.removeEventListener('abort', abort)
    if (!finished) {
      own.abort()
      await tokens.return(undefined as never)
    }
  }
}

/** Index where the earliest stop sequence in `text` starts. */
function firstStop(text: string, stops: readonly string[]): number | undefined {
  let first: number | undefined
  for (const stop of stops) {
    const at = text.indexOf(stop)
    if (at >= 0 && (first === undefined || at < first)) first = at
  }
  return first
}

/** Length of the longest end of `text` that is the beginning of a stop sequence. */
function heldBack(text: string, stops: readonly string[]): number {
  let longest = 0
  for (const stop of stops) {
    for (let n = Math.min(stop.length - 1, text.length); n > longest; n--) {
      if (text.endsWith(stop.slice(0, n))) {
        longest = n
        break
      }
    }
  }
  return longest
}
