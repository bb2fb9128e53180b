import type { ServerResponse } from 'node:http'
import type { GrammarSpec } from '@meshnet/grammar'
import { type NodeEnv, RESPONSE_ALREADY_SENT, writeStreamed } from '@meshnet/http'
import { type Context, Hono } from 'hono'
import { z } from 'zod'
import {
  chatMessages,
  formatGrammar,
  formatSchema,
  toolCallOf,
  toolCallsSchema,
  toolDefinitions,
  toolsSchema,
} from './ollama-tools.ts'
import { ApiError, sendJson } from './openai-schemas.ts'
import type { CompletionModel } from './openai-types.ts'
import type { OtherApiServices } from './other-apis.ts'
import {
  abortOnClose,
  chatPrompt,
  chatTemplates,
  type EndReason,
  type ErrorShape,
  errorHandler,
  type Generation,
  type GenerationEnd,
  MAX_MESSAGES,
  MAX_MODEL_NAME,
  MAX_STOP_LENGTH,
  MAX_STOPS,
  MAX_TEXT,
  only,
  parseBody,
  readBody,
  refused,
  type Sampling,
  startGeneration,
} from './other-apis-generate.ts'
import type { ToolFamily } from './tools/families.ts'
import { type ParsedToolCall, parseToolCalls } from './tools/parse.ts'
import { ToolCallStreamParser } from './tools/stream-parse.ts'

/**
 * The Ollama API version these endpoints follow, as `GET /api/version` reports it (clients compare
 * it to decide what they may ask).
 */
export const OLLAMA_API_VERSION = '0.12.0'

// ---------------------------------------------------------------------------------------------
// Request schemas. Unknown fields and options are refused rather than ignored, and fields this
// server cannot honour are accepted only when they ask for nothing, so a request never silently
// means less than it says.

/** `options`, as Ollama's Modelfile parameters. */
const optionsSchema = z.strictObject(
  {
    temperature: z
      .number({ error: 'must be a number' })
      .min(0, 'must be at least 0')
      .max(2, 'must be at most 2')
      .optional(),
    top_p: z
      .number({ error: 'must be a number' })
      .gt(0, 'must be greater than 0')
      .max(1, 'must be at most 1')
      .optional(),
    top_k: z.int('must be a whole number').min(0, 'must be at least 0').optional(),
    seed: z
      .int('must be a whole number')
      .min(-1, 'must be at least -1 (-1: no seed)')
      .max(0xffff_ffff, 'must be at most 4294967295')
      .optional(),
    num_predict: z.int('must be a whole number').min(-2, 'must be at least -2').optional(),
    stop: z
      .array(
        z
          .string()
          .min(1, 'must not be empty')
          .max(MAX_STOP_LENGTH, `must be at most ${MAX_STOP_LENGTH} characters`),
        {
          error: 'must be an array of strings',
        },
      )
      .max(MAX_STOPS, `must have at most ${MAX_STOPS} stop sequences`)
      .optional(),
    num_ctx: z.int('must be a whole number').min(1, 'must be at least 1').optional(),
    // How the model runs, not what it answers: accepted, no effect.
    num_keep: z.int('must be a whole number').optional(),
    num_batch: z.int('must be a whole number').optional(),
    num_gpu: z.int('must be a whole number').optional(),
    main_gpu: z.int('must be a whole number').optional(),
    num_thread: z.int('must be a whole number').optional(),
    numa: z.boolean('must be a boolean').optional(),
    low_vram: z.boolean('must be a boolean').optional(),
    f16_kv: z.boolean('must be a boolean').optional(),
    use_mmap: z.boolean('must be a boolean').optional(),
    use_mlock: z.boolean('must be a boolean').optional(),
    // Samplers this server does not have: only the value that turns them off.
    repeat_penalty: only(1, 'this server has no repetition penalty'),
    presence_penalty: z
      .number({ error: 'must be a number' })
      .min(-2, 'must be at least -2')
      .max(2, 'must be at most 2')
      .optional(),
    frequency_penalty: z
      .number({ error: 'must be a number' })
      .min(-2, 'must be at least -2')
      .max(2, 'must be at most 2')
      .optional(),
    min_p: only(0, 'this server has no min-p sampling'),
    typical_p: only(1, 'this server has no typical sampling'),
    tfs_z: only(1, 'this server has no tail-free sampling'),
    mirostat: only(0, 'this server has no Mirostat sampling'),
    // Settings of those samplers, which then change nothing.
    repeat_last_n: z.int('must be a whole number').optional(),
    penalize_newline: z.boolean('must be a boolean').optional(),
    mirostat_tau: z.number('must be a number').optional(),
    mirostat_eta: z.number('must be a number').optional(),
    logits_all: refused('is not supported'),
    vocab_only: refused('is not supported'),
    embedding_only: refused('is not supported'),
  },
  {
    error: (issue) =>
      issue.code === 'unrecognized_keys'
        ? `unknown option ${issue.keys.map((k) => `"${k}"`).join(', ')}: this server does not know it, so it would ignore it; remove it`
        : issue.code === 'invalid_type'
          ? 'must be an object'
          : undefined,
  },
)

type Options = z.output<typeof optionsSchema>

const unknownFields: z.core.$ZodErrorMap = (issue) =>
  issue.code === 'unrecognized_keys'
    ? `unknown field ${issue.keys.map((k) => `"${k}"`).join(', ')}: this server does not know it, so it would ignore it; remove it`
    : issue.code === 'invalid_type'
      ? 'must be an object'
      : undefined

/** The fields of /api/chat and /api/generate alike. */
const commonFields = {
  model: z
    .string({ error: (issue) => (issue.input === undefined ? 'is required' : 'must be a string') })
    .min(1, 'must not be empty')
    .max(MAX_MODEL_NAME, `must be at most ${MAX_MODEL_NAME} characters`),
  stream: z.boolean('must be a boolean').optional(),
  options: optionsSchema.optional(),
  keep_alive: z
    .union([z.string().max(64), z.number()], { error: 'must be a duration or a number of seconds' })
    .optional(),
  format: formatSchema,
  think: refused('thinking is not supported by the models this server runs; leave think out or false'),
  logprobs: refused('logprobs are not supported by this server'),
  top_logprobs: refused('logprobs are not supported by this server'),
}

const messageSchema = z
  .strictObject(
    {
      role: z.enum(['system', 'user', 'assistant', 'tool'], {
        error: "must be 'system', 'user', 'assistant' or 'tool'",
      }),
      content: z.string('must be a string').max(MAX_TEXT).optional(),
      images: refused('images are not supported: the served model reads text only'),
      tool_calls: toolCallsSchema,
      thinking: refused('thinking is not supported by the models this server runs'),
      tool_name: z.string('must be a string').max(MAX_MODEL_NAME).optional(),
      tool_call_id: z.string('must be a string').max(256).optional(),
    },
    { error: unknownFields },
  )
  .superRefine((message, ctx) => {
    if (message.tool_calls !== undefined && message.tool_calls.length > 0 && message.role !== 'assistant') {
      ctx.addIssue({
        code: 'custom',
        path: ['tool_calls'],
        message: "are only allowed in an 'assistant' message",
      })
    }
  })

const chatSchema = z.strictObject(
  {
    ...commonFields,
    messages: z
      .array(messageSchema, { error: 'must be an array of messages' })
      .max(MAX_MESSAGES, `must have at most ${MAX_MESSAGES} messages`)
      .optional(),
    tools: toolsSchema,
  },
  { error: unknownFields },
)

const generateSchema = z
  .strictObject(
    {
      ...commonFields,
      prompt: z.string('must be a string').max(MAX_TEXT).optional(),
      system: z.string('must be a string').max(MAX_TEXT).optional(),
      raw: z.boolean('must be a boolean').optional(),
      suffix: refused('suffix (fill in the middle) is not supported by this server'),
      images: refused('images are not supported: the served model reads text only'),
      template: refused(
        "template is not supported: prompts are rendered with the model's own chat template; use raw to send a prompt as it is",
      ),
      context: refused(
        'context (the token ids of an earlier answer) is not supported; send the conversation to /api/chat instead',
      ),
      width: refused('image generation is not supported'),
      height: refused('image generation is not supported'),
      steps: refused('image generation is not supported'),
    },
    { error: unknownFields },
  )
  .superRefine((request, ctx) => {
    if (request.raw === true && request.system !== undefined && request.system !== '') {
      ctx.addIssue({
        code: 'custom',
        path: ['system'],
        message: 'is not used with raw: true (no template is applied); put it in the prompt',
      })
    }
  })

const showSchema = z
  .looseObject({
    model: z.string('must be a string').max(MAX_MODEL_NAME).optional(),
    name: z.string('must be a string').max(MAX_MODEL_NAME).optional(),
  })
  .refine((request) => (request.model ?? request.name) !== undefined, { error: 'model is required' })

// ---------------------------------------------------------------------------------------------
// Routes

/**
 * The Ollama API over the agent's backend: `GET /api/tags` and `/api/version`,
 * `POST /api/show`, `/api/chat` and `/api/generate`, streamed as NDJSON by default. Errors are
 * `{"error": "..."}`. See docs/other-apis.md.
 */
export function ollamaApi({ backend, logger }: OtherApiServices): Hono<NodeEnv> {
  const templateOf = chatTemplates(logger)
  const app = new Hono<NodeEnv>({ strict: false })
  app.get('/api/version', (c) => send(c, { version: OLLAMA_API_VERSION }))
  app.get('/api/tags', (c) => send(c, { models: backend.models().map(tagOf) }))
  app.post('/api/show', async (c) => {
    const request = parseBody(showSchema, await readBody(c.env.incoming))
    return send(c, showOf(findModel(backend.models(), (request.model ?? request.name)!)))
  })
  app.post('/api/chat', async (c) => {
    const started = process.hrtime.bigint()
    const request = parseBody(chatSchema, await readBody(c.env.incoming))
    const model = findModel(backend.models(), request.model)
    const head = () => ({ model: request.model, created_at: new Date().toISOString() })
    if (request.messages === undefined || request.messages.length === 0) {
      const message = { role: 'assistant', content: '' }
      return send(c, { ...head(), message, done: true, done_reason: loadReason(request) })
    }
    const tools = toolDefinitions(request.tools)
    const grammar = formatGrammar(request.format)
    const template = templateOf(model)
    // Ollama lets the model choose: the calls it writes are parsed as its template's family writes them.
    const family = tools.length > 0 ? template.toolFamily : undefined
    const message = (content: string, calls: readonly ParsedToolCall[]) => ({
      role: 'assistant',
      content,
      ...(calls.length === 0 ? {} : { tool_calls: calls.map((call, i) => toolCallOf(family!, call, i)) }),
    })
    const prompt = chatPrompt(template, model, chatMessages(request.messages), tools)
    await answer(c.env.outgoing, await generation(c, model, prompt, 'messages', request.options, grammar), {
      stream: request.stream !== false,
      started,
      ...(family === undefined ? {} : { family }),
      piece: (text, calls = []) => ({ ...head(), message: message(text, calls), done: false }),
      last: (text, end, calls = []) => ({ ...head(), message: message(text, calls), done: true, ...end }),
    })
    logger.debug({ model: model.id, stream: request.stream !== false }, 'Ollama chat served')
    return RESPONSE_ALREADY_SENT
  })
  app.post('/api/generate', async (c) => {
    const started = process.hrtime.bigint()
    const request = parseBody(generateSchema, await readBody(c.env.incoming))
    const model = findModel(backend.models(), request.model)
    const head = () => ({ model: request.model, created_at: new Date().toISOString() })
    if (request.prompt === undefined || request.prompt === '') {
      return send(c, { ...head(), response: '', done: true, done_reason: loadReason(request) })
    }
    const prompt =
      request.raw === true
        ? request.prompt
        : chatPrompt(templateOf(model), model, [
            ...(request.system ? [{ role: 'system' as const, content: request.system }] : []),
            { role: 'user', content: request.prompt },
          ])
    const grammar = formatGrammar(request.format)
    await answer(c.env.outgoing, await generation(c, model, prompt, 'prompt', request.options, grammar), {
      stream: request.stream !== false,
      started,
      piece: (text) => ({ ...head(), response: text, done: false }),
      last: (text, end) => ({ ...head(), response: text, done: true, ...end }),
    })
    logger.debug({ model: model.id, stream: request.stream !== false }, 'Ollama generate served')
    return RESPONSE_ALREADY_SENT
  })
  refuseOthers(app)
  app.onError(errorHandler(logger, ollamaErrors))

  function generation(
    c: Context<NodeEnv>,
    model: CompletionModel,
    prompt: string,
    promptField: string,
    options: Options = {},
    grammar?: GrammarSpec,
  ): Promise<Generation> {
    return startGeneration(backend, {
      model,
      prompt,
      promptField,
      maxTokens:
        options.num_predict !== undefined && options.num_predict > 0 ? options.num_predict : undefined,
      ...(options.num_ctx === undefined ? {} : { contextLength: options.num_ctx }),
      sampling: sampling(options),
      stops: options.stop ?? [],
      ...(grammar === undefined ? {} : { grammar }),
      signal: abortOnClose(c.env.outgoing),
    })
  }
  return app
}

/** Wrong methods on the routes above, and Ollama's model management, which `mesh` does itself. */
function refuseOthers(app: Hono<NodeEnv>): void {
  for (const [path, allowed] of [
    ['/api/version', 'GET'],
    ['/api/tags', 'GET'],
    ['/api/show', 'POST'],
    ['/api/chat', 'POST'],
    ['/api/generate', 'POST'],
  ] as const) {
    app.all(path, (c) => {
      throw new ApiError(405, `${c.req.method} is not allowed on ${path}; use ${allowed}`, {
        headers: { allow: allowed },
      })
    })
  }
  for (const path of ['/api/pull', '/api/push', '/api/create', '/api/copy', '/api/delete', '/api/blobs/*']) {
    app.all(path, (c) => {
      throw new ApiError(
        501,
        `${c.req.path} is not supported: this agent serves the model it was started with ` +
          '(mesh start --model); models are added with mesh model-add and mesh model-pull',
      )
    })
  }
}

/** Ollama's sampling defaults (its Modelfile parameters), for options a request leaves out. */
export const OLLAMA_DEFAULTS = { temperature: 0.8, topP: 0.9, topK: 40 } as const

/** Backend sampling from Ollama options, Ollama's defaults where absent (seed -1 is Ollama's "no seed"). */
function sampling(options: Options): Sampling {
  return {
    temperature: options.temperature ?? OLLAMA_DEFAULTS.temperature,
    topP: options.top_p ?? OLLAMA_DEFAULTS.topP,
    topK: options.top_k ?? OLLAMA_DEFAULTS.topK,
    ...(options.seed === undefined || options.seed === -1 ? {} : { seed: options.seed }),
    ...(options.presence_penalty === undefined ? {} : { presencePenalty: options.presence_penalty }),
    ...(options.frequency_penalty === undefined ? {} : { frequencyPenalty: options.frequency_penalty }),
  }
}

/** A request without a prompt loads the model in Ollama (`keep_alive: 0` unloads it); here it is loaded. */
function loadReason(request: { keep_alive?: string | number | undefined }): 'load' | 'unload' {
  return request.keep_alive === 0 || request.keep_alive === '0' ? 'unload' : 'load'
}

// ---------------------------------------------------------------------------------------------
// Answers

interface Shapes {
  stream: boolean
  /** process.hrtime.bigint() when the request arrived. */
  started: bigint
  /** With tools: how the model writes its calls, which are parsed out of the text. */
  family?: ToolFamily
  piece(text: string, calls?: readonly ParsedToolCall[]): object
  last(text: string, end: object, calls?: readonly ParsedToolCall[]): object
}

/**
 * One JSON answer, or NDJSON lines ending with a `done: true` line that carries the figures. With
 * tools, the calls the model wrote are taken out of the text: streamed, text that may start a call is
 * held back, and the calls come whole in one line before the last, as Ollama sends them.
 */
async function answer(res: ServerResponse, generation: Generation, shapes: Shapes): Promise<void> {
  const { texts } = generation
  const { family } = shapes
  try {
    // Wait for the first text before answering, so a backend that fails at once gets a real status.
    let step = await texts.next()
    if (!shapes.stream) {
      let text = ''
      for (; !step.done; step = await texts.next()) text += step.value
      const end = figures(step.value, shapes.started)
      if (family === undefined) sendJson(res, 200, shapes.last(text, end))
      else {
        const { content, toolCalls } = parseToolCalls(family, text)
        sendJson(res, 200, shapes.last(content ?? '', end, toolCalls))
      }
      return
    }
    res.writeHead(200, { 'content-type': 'application/x-ndjson' })
    res.flushHeaders()
    const parser = family === undefined ? undefined : new ToolCallStreamParser(family)
    for (; !step.done; step = await texts.next()) {
      const text = parser === undefined ? step.value : parser.push(step.value).content
      if (text !== '') await writeLine(res, shapes.piece(text))
    }
    const rest = parser?.end()
    if (rest !== undefined && (rest.content !== '' || rest.toolCalls.length > 0)) {
      await writeLine(res, shapes.piece(rest.content, rest.toolCalls))
    }
    if (!res.destroyed) res.end(`${JSON.stringify(shapes.last('', figures(step.value, shapes.started)))}\n`)
  } finally {
    await texts.return(undefined as never)
  }
}

const DONE_REASONS: Record<EndReason, string> = {
  end: 'stop',
  stopSequence: 'stop',
  maxTokens: 'length',
  contextFull: 'length',
}

/** The last line's figures, in nanoseconds as Ollama gives them. */
function figures(end: GenerationEnd, started: bigint) {
  return {
    done_reason: DONE_REASONS[end.reason],
    total_duration: Number(process.hrtime.bigint() - started),
    load_duration: 0,
    prompt_eval_count: end.promptTokens,
    prompt_eval_duration: end.promptNanos,
    eval_count: end.completionTokens,
    eval_duration: end.generateNanos,
  }
}

/** One NDJSON line; waits while the client reads slowly, returns at once when it is gone. */
function writeLine(res: ServerResponse, value: object): Promise<void> {
  return writeStreamed(res, `${JSON.stringify(value)}\n`)
}

function send(c: Context<NodeEnv>, body: unknown): Response {
  sendJson(c.env.outgoing, 200, body)
  return RESPONSE_ALREADY_SENT
}

/** Ollama's error shape, `{"error": "..."}`; mid-stream, one last line of it. */
const ollamaErrors: ErrorShape = {
  api: 'Ollama',
  body: (error) => ({ error: error.message }),
  streamEnd: (json) => `${json}\n`,
}

// ---------------------------------------------------------------------------------------------
// Models

/** The model named `name` or `name:latest` (Ollama's default tag); 404 otherwise. */
function findModel(models: readonly CompletionModel[], name: string): CompletionModel {
  const model = models.find((m) => m.id === name || `${m.id}:latest` === name)
  if (model !== undefined) return model
  const served = models.length === 0 ? 'none yet' : models.map((m) => m.id).join(', ')
  throw new ApiError(
    404,
    `model '${name}' not found: this agent serves ${served} (mesh start --model chooses it)`,
    {
      code: 'model_not_found',
    },
  )
}

/** What this server knows of a model in Ollama's `details` (the GGUF's facts are not at hand). */
const details = {
  parent_model: '',
  format: 'gguf',
  family: '',
  families: [],
  parameter_size: '',
  quantization_level: '',
}

function tagOf(model: CompletionModel) {
  return {
    name: model.id,
    model: model.id,
    modified_at: new Date(model.created * 1000).toISOString(),
    size: 0,
    digest: '',
    details,
  }
}

function showOf(model: CompletionModel) {
  return {
    license: '',
    modelfile: '',
    parameters: `num_ctx ${model.contextLength}`,
    // The model's Jinja chat template (Ollama's are Go templates), or the plain fallback when it has none.
    template: model.chatTemplate ?? '',
    system: '',
    details,
    model_info: {},
    // Every model takes tools: a template without tool syntax gets them described in a system message.
    capabilities: ['completion', 'tools'],
    modified_at: new Date(model.created * 1000).toISOString(),
  }
}
