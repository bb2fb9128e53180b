import type { ServerResponse } from 'node:http'
import type { Logger } from '@meshnet/core'
import { type NodeEnv, RESPONSE_ALREADY_SENT, readJsonBody } from '@meshnet/http'
import { MAX_JOB_PROMPT_CHARS } from '@meshnet/protocols'
import { MAX_EMBED_INPUTS } from '@meshnet/shards'
import { type Context, Hono } from 'hono'
import { z } from 'zod'
import { ApiError, apiBodyErrors, apiError, findModel, parseRequest, sendJson } from './openai-schemas.ts'
import { BackendUnavailableError, type CompletionBackend, type CompletionModel } from './openai-types.ts'
import type { OtherApiServices } from './other-apis.ts'

/** Largest embeddings request body read (413 above it): up to 2048 inputs of some 2 KiB each. */
export const MAX_EMBEDDINGS_BODY = 4 * 1024 * 1024
/** Most inputs one request takes (OpenAI's limit). */
export const MAX_EMBEDDINGS_INPUTS = MAX_EMBED_INPUTS
/** Longest input text, in characters (a job's prompt cap). */
export const MAX_EMBEDDINGS_INPUT_CHARS = MAX_JOB_PROMPT_CHARS

/** What the embeddings routes run on (the agent's job runner; in tests, a fake). */
export interface EmbeddingBackend {
  /** Width of the model's embeddings (its hidden size); throws when it is not served. */
  embeddingWidth(model: string): number
  /**
   * One L2-normalized vector per input, in order, and the tokens of all inputs. Inputs longer than
   * the model takes are cut when `truncate` is set, else refused (ContextOverflowError).
   */
  embed(request: {
    model: string
    inputs: readonly string[]
    truncate: boolean
    signal: AbortSignal
  }): Promise<{ vectors: Float32Array[]; promptTokens: number }>
}

/** The API's backend, when it also makes embeddings (the agent's does). */
export function embeddingBackendOf(backend: CompletionBackend): EmbeddingBackend | undefined {
  const candidate = backend as CompletionBackend & Partial<EmbeddingBackend>
  return typeof candidate.embed === 'function' && typeof candidate.embeddingWidth === 'function'
    ? (candidate as CompletionBackend & EmbeddingBackend)
    : undefined
}

// ---------------------------------------------------------------------------------------------
// Request schemas

const isTokenArray = (value: unknown) =>
  Array.isArray(value) && value.length > 0 && value.every((v) => typeof v === 'number' || Array.isArray(v))

/**
 * `input`: a string or an array of strings, as string[]. Token arrays are refused (token ids are a
 * tokenizer's own; this server takes text).
 */
const inputSchema = z.unknown().transform((value, ctx): string[] => {
  const issue = (message: string, path: PropertyKey[] = []) => {
    ctx.addIssue({ code: 'custom', message, path })
    return z.NEVER
  }
  const text = (v: unknown, path: PropertyKey[]) => {
    if (typeof v !== 'string') return issue('must be a string', path)
    if (v.length === 0) return issue('must not be empty', path)
    if (v.length > MAX_EMBEDDINGS_INPUT_CHARS) {
      return issue(`must be at most ${MAX_EMBEDDINGS_INPUT_CHARS} characters`, path)
    }
    return v
  }
  if (typeof value === 'string') return [text(value, [])]
  if (!Array.isArray(value)) return issue('must be a string or an array of strings')
  if (isTokenArray(value)) {
    return issue(
      'token arrays are not supported by this server; send the text (a string or an array of strings)',
    )
  }
  if (value.length === 0) return issue('must not be empty')
  if (value.length > MAX_EMBEDDINGS_INPUTS) {
    return issue(`must have at most ${MAX_EMBEDDINGS_INPUTS} inputs; send several requests`)
  }
  return value.map((v, i) => text(v, [i]))
})

const dimensionsSchema = z.int('must be a whole number').min(1, 'must be at least 1')

const openAiSchema = z.strictObject({
  model: z.string({ error: 'must be a string' }).min(1, 'must not be empty').max(256, 'is too long'),
  input: inputSchema,
  encoding_format: z.enum(['float', 'base64'], { error: "must be 'float' or 'base64'" }).nullish(),
  /** Only the model's own width: these vectors cannot be shortened. */
  dimensions: dimensionsSchema.nullish(),
  user: z.string().max(256).nullish(),
})

const ollamaSchema = z.strictObject({
  model: z.string({ error: 'must be a string' }).min(1, 'must not be empty').max(256, 'is too long'),
  input: inputSchema,
  /** Cut inputs that are too long (Ollama's default) instead of refusing them. */
  truncate: z.boolean('must be a boolean').optional(),
  dimensions: dimensionsSchema.optional(),
  // How long Ollama keeps a model loaded: the agent always holds its model.
  keep_alive: z.union([z.string().max(64), z.number()], { error: 'must be a duration' }).optional(),
  options: z
    .record(z.string(), z.unknown())
    .refine((o) => Object.keys(o).length === 0, {
      error: 'model options are not supported for embeddings by this server',
    })
    .optional(),
})

// ---------------------------------------------------------------------------------------------
// Routes

/**
 * `POST /v1/embeddings` (OpenAI) and `POST /api/embed` (Ollama) on the agent's backend: each
 * input's final hidden states pooled and L2-normalized (see docs/openai-api.md, "Embeddings"),
 * with each API's own error shape.
 */
export function embeddingsApi({ backend, logger }: OtherApiServices): Hono<NodeEnv> {
  const app = new Hono<NodeEnv>({ strict: false })
  app.route('/', openAiEmbeddings(backend, logger))
  app.route('/', ollamaEmbed(backend, logger))
  return app
}

function openAiEmbeddings(backend: CompletionBackend, logger: Logger): Hono<NodeEnv> {
  const app = new Hono<NodeEnv>({ strict: false })
  app.post('/v1/embeddings', async (c) => {
    const request = parseRequest(openAiSchema, await body(c.env.incoming))
    const embeddings = served(backend)
    const model = findModel(backend.models(), request.model)
    checkDimensions(request.dimensions, embeddings.embeddingWidth(model.id))
    const { vectors, promptTokens } = await embeddings.embed({
      model: model.id,
      inputs: request.input,
      truncate: false,
      signal: abortOnClose(c.env.outgoing),
    })
    const base64 = request.encoding_format === 'base64'
    sendJson(c.env.outgoing, 200, {
      object: 'list',
      data: vectors.map((v, index) => ({
        object: 'embedding',
        index,
        embedding: base64 ? Buffer.from(v.buffer, v.byteOffset, v.byteLength).toString('base64') : [...v],
      })),
      model: model.id,
      usage: { prompt_tokens: promptTokens, total_tokens: promptTokens },
    })
    logger.debug({ model: model.id, inputs: vectors.length, base64 }, 'OpenAI embeddings served')
    return RESPONSE_ALREADY_SENT
  })
  app.all('/v1/embeddings', (c) => {
    throw new ApiError(405, `${c.req.method} is not allowed on /v1/embeddings; use POST`, {
      code: 'method_not_allowed',
      headers: { allow: 'POST' },
    })
  })
  app.onError((err, c) => {
    const error = embeddingError(err, logger)
    if (!c.env.outgoing.headersSent) sendJson(c.env.outgoing, error.status, error.toJSON(), error.headers)
    logger.debug({ status: error.status, err: error.message }, 'OpenAI embeddings request refused')
    return RESPONSE_ALREADY_SENT
  })
  return app
}

function ollamaEmbed(backend: CompletionBackend, logger: Logger): Hono<NodeEnv> {
  const app = new Hono<NodeEnv>({ strict: false })
  app.post('/api/embed', async (c) => {
    const started = process.hrtime.bigint()
    const request = parseRequest(ollamaSchema, await body(c.env.incoming))
    const embeddings = served(backend)
    const model = ollamaModel(backend.models(), request.model)
    checkDimensions(request.dimensions, embeddings.embeddingWidth(model.id))
    const { vectors, promptTokens } = await embeddings.embed({
      model: model.id,
      inputs: request.input,
      truncate: request.truncate ?? true,
      signal: abortOnClose(c.env.outgoing),
    })
    sendJson(c.env.outgoing, 200, {
      model: request.model,
      embeddings: vectors.map((v) => [...v]),
      total_duration: Number(process.hrtime.bigint() - started),
      load_duration: 0,
      prompt_eval_count: promptTokens,
    })
    logger.debug({ model: model.id, inputs: vectors.length }, 'Ollama embed served')
    return RESPONSE_ALREADY_SENT
  })
  app.all('/api/embed', (c) => {
    throw new ApiError(405, `${c.req.method} is not allowed on /api/embed; use POST`, {
      headers: { allow: 'POST' },
    })
  })
  app.onError((err, c) => {
    const error = embeddingError(err, logger)
    if (!c.env.outgoing.headersSent) {
      sendJson(c.env.outgoing, error.status, { error: error.message }, error.headers)
    }
    logger.debug({ status: error.status, err: error.message }, 'Ollama embed request refused')
    return RESPONSE_ALREADY_SENT
  })
  return app
}

/** The backend's embeddings; 503 when it makes none. */
function served(backend: CompletionBackend): EmbeddingBackend {
  const embeddings = embeddingBackendOf(backend)
  if (embeddings === undefined) {
    throw new BackendUnavailableError('this server makes no embeddings')
  }
  return embeddings
}

/** `dimensions` is only accepted at the model's own width. */
function checkDimensions(dimensions: number | null | undefined, width: number): void {
  if (dimensions == null || dimensions === width) return
  throw new ApiError(
    400,
    `Invalid value for 'dimensions': this model's embeddings have ${width} dimensions and cannot be shortened; omit it or send ${width}`,
    { param: 'dimensions', code: 'invalid_value' },
  )
}

/** The model named `name` or `name:latest` (Ollama's default tag); 404 in Ollama's words otherwise. */
function ollamaModel(models: readonly CompletionModel[], name: string): CompletionModel {
  const model = models.find((m) => m.id === name || `${m.id}:latest` === name)
  if (model !== undefined) return model
  const list = models.length === 0 ? 'none yet' : models.map((m) => m.id).join(', ')
  throw new ApiError(404, `model '${name}' not found: this agent serves ${list}`, { code: 'model_not_found' })
}

/** What a client sees of a failure: a model that makes no embeddings is the request's fault. */
function embeddingError(err: unknown, logger: Logger): ApiError {
  if ((err as Error | undefined)?.name === 'UnsupportedModelError') {
    return new ApiError(400, (err as Error).message, { param: 'model', code: 'model_not_supported' })
  }
  return apiError(err, logger)
}

/** Aborts the embedding when the client goes away before the answer. */
function abortOnClose(res: ServerResponse): AbortSignal {
  const controller = new AbortController()
  res.on('close', () => {
    if (!res.writableFinished) controller.abort()
  })
  return controller.signal
}

const bodyErrors = apiBodyErrors(MAX_EMBEDDINGS_BODY)

async function body(req: Context<NodeEnv>['env']['incoming']): Promise<unknown> {
  const value = await readJsonBody(req, { maxBytes: MAX_EMBEDDINGS_BODY, errors: bodyErrors })
  if (value === undefined) throw bodyErrors.badJson(new Error('empty body'))
  return value
}
