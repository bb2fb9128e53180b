import type { ServerResponse } from 'node:http'
import { isMeshError, type Logger } from '@meshnet/core'
import type { BodyErrors } from '@meshnet/http'
import { z } from 'zod'
import { type CompletionModel, MAX_CHOICES, MAX_STOP_SEQUENCES, MAX_TOP_LOGPROBS } from './openai-types.ts'

// ---------------------------------------------------------------------------------------------
// Errors, in OpenAI's shape: {"error": {"message", "type", "param", "code"}}

export class ApiError extends Error {
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

/** How a request body that cannot be read is answered: 413 above `maxBytes`, 400 when not JSON or cut. */
export function apiBodyErrors(maxBytes: number): BodyErrors {
  return {
    tooLarge: () =>
      new ApiError(413, `the request body is larger than ${maxBytes} bytes`, {
        code: 'request_too_large',
        headers: { connection: 'close' },
      }),
    badJson: () => new ApiError(400, 'the request body is not valid JSON', { code: 'invalid_json' }),
    cut: () => new ApiError(400, 'the request body was cut short', { code: 'invalid_request_body' }),
  }
}

/** Maps whatever a backend or template threw to the API error a client sees. */
export function apiError(err: unknown, logger: Logger): ApiError {
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
      case 'GrammarSchemaError':
        return new ApiError(400, err.message, { code: 'invalid_schema' })
      case 'JobRefusedError':
        // A schema the serving node's grammar cannot keep to.
        if (err.code === 'ERR_GRAMMAR') return new ApiError(400, err.message, { code: 'invalid_schema' })
        return new ApiError(503, err.message, { code: 'backend_unavailable' })
      // The agent's job runner refusing a job: no model, no pool, no plan that fits, a rate limit.
      case 'BackendUnavailableError':
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

const penalty = z.number().min(-2, 'must be at least -2').max(2, 'must be at most 2').nullish()

const topLogprobs = z
  .int('must be a whole number')
  .min(0, 'must be at least 0')
  .max(MAX_TOP_LOGPROBS, `must be at most ${MAX_TOP_LOGPROBS}`)
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
    .int('must be a whole number')
    .min(1, 'must be at least 1')
    .max(MAX_CHOICES, `must be at most ${MAX_CHOICES} (each choice is a generation of its own)`)
    .nullish(),
  stop: stopSchema.nullish(),
  presence_penalty: penalty,
  frequency_penalty: penalty,
  logit_bias: unsupported((value) => value === null || (isRecord(value) && Object.keys(value).length === 0)),
  user: z.string().nullish(),
}

export type CommonParams = z.output<z.ZodObject<typeof commonFields>>

const streamOptionsNeedStream = (params: CommonParams, ctx: z.RefinementCtx) => {
  if (params.stream_options != null && params.stream !== true) {
    ctx.addIssue({
      code: 'custom',
      path: ['stream_options'],
      message: "is only allowed when 'stream' is true",
    })
  }
}

export const completionSchema = z
  .strictObject({
    ...commonFields,
    prompt: z.union([z.string(), z.array(z.string()).length(1)], {
      error: 'must be a string; token arrays and several prompts in one request are not supported',
    }),
    suffix: unsupported(),
    echo: unsupported((value) => value === false || value === null),
    best_of: z
      .number()
      .refine((n) => n === 1, { error: "only 1 is supported; ask for several choices with 'n'" })
      .nullish(),
    /** The legacy shape: this many alternatives per token (OpenAI takes at most 5, this server 20). */
    logprobs: topLogprobs,
  })
  .superRefine(streamOptionsNeedStream)

/** Longest `arguments` of one tool call (JSON text). */
const MAX_TOOL_ARGUMENTS = 256 * 1024
/** A function or schema name, as OpenAI allows them. */
const NAME = /^[a-zA-Z0-9_-]{1,64}$/
const nameSchema = z.string().regex(NAME, 'must be 1 to 64 letters, digits, underscores or dashes')
/** Most tools one request may declare. */
export const MAX_TOOLS = 128

/** A JSON Schema object (its keywords are checked when it is compiled into a grammar). */
const jsonSchemaObject = z.record(z.string(), z.unknown(), { error: 'must be a JSON Schema object' })

export const toolSchema = z.strictObject({
  type: z.literal('function', { error: "must be 'function'" }),
  function: z.strictObject({
    name: nameSchema,
    description: z.string().max(8192).optional(),
    parameters: jsonSchemaObject.optional(),
    strict: z.boolean().nullish(),
  }),
})

export const toolChoiceSchema = z.union(
  [
    z.enum(['none', 'auto', 'required']),
    z.strictObject({ type: z.literal('function'), function: z.strictObject({ name: nameSchema }) }),
  ],
  { error: "must be 'none', 'auto', 'required' or {type: 'function', function: {name}}" },
)

const responseFormatSchema = z.discriminatedUnion(
  'type',
  [
    z.strictObject({ type: z.literal('text') }),
    z.strictObject({ type: z.literal('json_object') }),
    z.strictObject({
      type: z.literal('json_schema'),
      json_schema: z.strictObject({
        name: nameSchema,
        description: z.string().max(8192).optional(),
        schema: jsonSchemaObject.optional(),
        strict: z.boolean().nullish(),
      }),
    }),
  ],
  { error: "must have a type of 'text', 'json_object' or 'json_schema'" },
)

const toolCallSchema = z.strictObject({
  id: z.string().min(1).max(256),
  type: z.literal('function'),
  function: z.strictObject({ name: nameSchema, arguments: z.string().max(MAX_TOOL_ARGUMENTS) }),
})

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
    /** An assistant's calls of tools, as an earlier response gave them. */
    tool_calls: z.array(toolCallSchema).max(MAX_TOOLS).nullish(),
    /** A tool message: the call it answers. */
    tool_call_id: z.string().min(1).max(256).nullish(),
  })
  .superRefine((message, ctx) => {
    if (message.tool_calls != null && message.role !== 'assistant') {
      ctx.addIssue({
        code: 'custom',
        path: ['tool_calls'],
        message: "is only allowed in an 'assistant' message",
      })
    }
    if (message.role === 'tool' && message.tool_call_id == null) {
      ctx.addIssue({ code: 'custom', path: ['tool_call_id'], message: "is required in a 'tool' message" })
    }
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

export const chatSchema = z
  .strictObject({
    ...commonFields,
    messages: z.array(messageSchema).min(1, 'must contain at least one message'),
    logprobs: z.boolean().nullish(),
    top_logprobs: topLogprobs,
    tools: z.array(toolSchema).max(MAX_TOOLS, `must have at most ${MAX_TOOLS} tools`).nullish(),
    tool_choice: toolChoiceSchema.nullish(),
    parallel_tool_calls: z.boolean().nullish(),
    functions: unsupported((value) => value === null || (Array.isArray(value) && value.length === 0)),
    function_call: unsupported((value) => value === null || value === 'none'),
    response_format: responseFormatSchema.nullish(),
  })
  .superRefine(streamOptionsNeedStream)
  .superRefine((params, ctx) => {
    if (params.top_logprobs != null && params.logprobs !== true) {
      ctx.addIssue({ code: 'custom', path: ['top_logprobs'], message: "needs 'logprobs' to be true" })
    }
  })

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

export function parseRequest<S extends z.ZodType>(schema: S, body: unknown): z.output<S> {
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

export function sendJson(
  res: ServerResponse,
  status: number,
  body: unknown,
  headers: Record<string, string> = {},
) {
  if (res.destroyed) return
  res.writeHead(status, { 'content-type': 'application/json', ...headers })
  res.end(JSON.stringify(body))
}

export function modelObject(model: CompletionModel) {
  return { id: model.id, object: 'model', created: model.created, owned_by: model.ownedBy }
}

export function findModel(models: readonly CompletionModel[], id: string): CompletionModel {
  const model = models.find((m) => m.id === id)
  if (model !== undefined) return model
  const served = models.length === 0 ? 'none yet' : models.map((m) => m.id).join(', ')
  throw new ApiError(404, `The model '${id}' does not exist on this agent (it serves: ${served})`, {
    param: 'model',
    code: 'model_not_found',
  })
}
