import { randomBytes } from 'node:crypto'
import type { ServerResponse } from 'node:http'
import { type NodeEnv, RESPONSE_ALREADY_SENT, SseWriter } from '@meshnet/http'
import { Hono } from 'hono'
import { z } from 'zod'
import type { ChatMessage } from './chat-template.ts'
import { ApiError, findModel, sendJson } from './openai-schemas.ts'
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
  isEmpty,
  isRecord,
  MAX_BLOCKS,
  MAX_MESSAGES,
  MAX_MODEL_NAME,
  MAX_STOP_LENGTH,
  MAX_STOPS,
  MAX_TEXT,
  parseBody,
  readBody,
  refused,
  startGeneration,
} from './other-apis-generate.ts'

// ---------------------------------------------------------------------------------------------
// Request schema. Unknown fields are refused as Anthropic refuses them ("Extra inputs are not
// permitted"); fields this server cannot honour are refused unless they ask for nothing.

const required =
  (type: string) =>
  (issue: { input?: unknown }): string =>
    issue.input === undefined ? 'Field required' : `Input should be a valid ${type}`

const extraInputs: z.core.$ZodErrorMap = (issue) =>
  issue.code === 'unrecognized_keys'
    ? `${issue.keys.join(', ')}: Extra inputs are not permitted`
    : issue.code === 'invalid_type'
      ? 'Input should be an object'
      : undefined

/** A content block: its type is checked with the message (only text), so the error can name it. */
const blockSchema = z.looseObject({ type: z.string({ error: required('string') }) }, { error: extraInputs })

const contentSchema = z.union(
  [
    z.string().max(MAX_TEXT, `must be at most ${MAX_TEXT} characters`),
    z.array(blockSchema).max(MAX_BLOCKS, `must have at most ${MAX_BLOCKS} content blocks`),
  ],
  { error: required('string or a list of content blocks') },
)

type Content = z.output<typeof contentSchema>

const TEXT_BLOCK_FIELDS = new Set(['type', 'text', 'cache_control', 'citations'])

/** Only text blocks: `{"type":"text","text"}`, with `cache_control` (no effect) and no citations. */
function checkBlocks(content: Content | undefined, path: PropertyKey[], ctx: z.RefinementCtx): void {
  if (!Array.isArray(content)) return
  content.forEach((block, i) => {
    const at = [...path, i]
    if (block.type !== 'text') {
      const what =
        block.type === 'tool_use' || block.type === 'tool_result' ? ' (tools are not supported yet)' : ''
      ctx.addIssue({
        code: 'custom',
        path: [...at, 'type'],
        message: `only 'text' content blocks are supported by this server, not '${block.type}'${what}`,
      })
    } else if (typeof block.text !== 'string') {
      ctx.addIssue({
        code: 'custom',
        path: [...at, 'text'],
        message: required('string')({ input: block.text }),
      })
    } else if (!isEmpty(block.citations)) {
      ctx.addIssue({
        code: 'custom',
        path: [...at, 'citations'],
        message: 'citations are not supported by this server',
      })
    } else {
      const extra = Object.keys(block).find((key) => !TEXT_BLOCK_FIELDS.has(key))
      if (extra !== undefined) {
        ctx.addIssue({ code: 'custom', path: [...at, extra], message: 'Extra inputs are not permitted' })
      }
    }
  })
}

const messageSchema = z
  .strictObject(
    {
      role: z.enum(['user', 'assistant', 'system'], { error: "Input should be 'user' or 'assistant'" }),
      content: contentSchema,
    },
    { error: extraInputs },
  )
  .superRefine((message, ctx) => checkBlocks(message.content, ['content'], ctx))

const toolsRefused = 'tools are not supported by this server yet; send the request without tools'

const messagesSchema = z
  .strictObject(
    {
      model: z
        .string({ error: required('string') })
        .min(1, 'String should have at least 1 character')
        .max(MAX_MODEL_NAME, `String should have at most ${MAX_MODEL_NAME} characters`),
      max_tokens: z.int({ error: required('integer') }).min(1, 'Input should be greater than or equal to 1'),
      messages: z
        .array(messageSchema, { error: required('list') })
        .min(1, 'List should have at least 1 item')
        .max(MAX_MESSAGES, `List should have at most ${MAX_MESSAGES} items`),
      system: contentSchema.optional(),
      stop_sequences: z
        .array(
          z
            .string({ error: required('string') })
            .min(1, 'String should have at least 1 character')
            .max(MAX_STOP_LENGTH, `String should have at most ${MAX_STOP_LENGTH} characters`),
          { error: required('list') },
        )
        .max(MAX_STOPS, `List should have at most ${MAX_STOPS} items`)
        .optional(),
      stream: z.boolean({ error: required('boolean') }).optional(),
      temperature: z
        .number({ error: required('number') })
        .min(0, 'Input should be greater than or equal to 0')
        .max(1, 'Input should be less than or equal to 1')
        .optional(),
      top_p: z
        .number({ error: required('number') })
        .gt(0, 'Input should be greater than 0')
        .max(1, 'Input should be less than or equal to 1')
        .optional(),
      top_k: z
        .int({ error: required('integer') })
        .min(0, 'Input should be greater than or equal to 0')
        .optional(),
      // No effect on the answer: accepted.
      metadata: z
        .strictObject(
          {
            user_id: z
              .string({ error: required('string') })
              .max(256)
              .nullish(),
          },
          { error: extraInputs },
        )
        .optional(),
      service_tier: z
        .enum(['auto', 'standard_only'], { error: "Input should be 'auto' or 'standard_only'" })
        .optional(),
      cache_control: z.looseObject({ type: z.string() }, { error: extraInputs }).nullish(),
      // Not supported: refused unless they ask for nothing.
      tools: refused(toolsRefused),
      tool_choice: z
        .unknown()
        .refine(
          (value) =>
            value === undefined || (isRecord(value) && (value.type === 'none' || value.type === 'auto')),
          {
            error: toolsRefused,
          },
        )
        .optional(),
      thinking: z
        .unknown()
        .refine((value) => value === undefined || (isRecord(value) && value.type === 'disabled'), {
          error: 'extended thinking is not supported by the models this server runs; leave thinking out',
        })
        .optional(),
      output_config: refused('output_config (structured outputs, effort) is not supported by this server'),
      output_format: refused('structured outputs are not supported by this server'),
      container: refused('containers are not supported by this server'),
      mcp_servers: refused('MCP servers are not supported by this server'),
      context_management: refused('context management is not supported by this server'),
    },
    { error: extraInputs },
  )
  .superRefine((request, ctx) => checkBlocks(request.system, ['system'], ctx))

type MessagesRequest = z.output<typeof messagesSchema>

// ---------------------------------------------------------------------------------------------
// Routes

/**
 * The Anthropic Messages API over the agent's backend: `POST /v1/messages`, answered as one message
 * or streamed as Anthropic's server-sent events. Errors are `{"type":"error","error":{"type",
 * "message"}}`. See docs/other-apis.md.
 */
export function anthropicApi({ backend, logger }: OtherApiServices): Hono<NodeEnv> {
  const templateOf = chatTemplates(logger)
  const app = new Hono<NodeEnv>({ strict: false })
  app.post('/v1/messages', async (c) => {
    const request = parseBody(messagesSchema, await readBody(c.env.incoming))
    const model = findModel(backend.models(), request.model)
    const generation = await startGeneration(backend, {
      model,
      prompt: chatPrompt(templateOf(model), model, chatMessages(request)),
      promptField: 'messages',
      maxTokens: request.max_tokens,
      sampling: {
        ...(request.temperature === undefined ? {} : { temperature: request.temperature }),
        ...(request.top_p === undefined ? {} : { topP: request.top_p }),
        ...(request.top_k === undefined ? {} : { topK: request.top_k }),
      },
      stops: request.stop_sequences ?? [],
      signal: abortOnClose(c.env.outgoing),
    })
    const head = {
      id: `msg_${randomBytes(12).toString('hex')}`,
      type: 'message',
      role: 'assistant',
      model: model.id,
    }
    if (request.stream === true) await stream(c.env.outgoing, generation, head)
    else await whole(c.env.outgoing, generation, head)
    logger.debug({ model: model.id, stream: request.stream === true }, 'Anthropic message served')
    return RESPONSE_ALREADY_SENT
  })
  app.all('/v1/messages', (c) => {
    throw new ApiError(405, `${c.req.method} is not allowed on /v1/messages; use POST`, {
      headers: { allow: 'POST' },
    })
  })
  app.all('/v1/messages/*', (c) => {
    throw new ApiError(404, `${c.req.path} is not supported by this server; only POST /v1/messages is`)
  })
  app.onError(errorHandler(logger, anthropicErrors))
  return app
}

/**
 * The conversation for the chat template: `system` first, then the messages, their text blocks joined
 * with a newline; consecutive user or assistant messages are one turn, as Anthropic combines them.
 */
function chatMessages(request: MessagesRequest): ChatMessage[] {
  const messages: ChatMessage[] =
    request.system === undefined ? [] : [{ role: 'system', content: textOf(request.system) }]
  for (const { role, content } of request.messages) {
    const previous = messages.at(-1)
    if (role !== 'system' && previous?.role === role) previous.content += `\n${textOf(content)}`
    else messages.push({ role, content: textOf(content) })
  }
  return messages
}

function textOf(content: Content): string {
  return typeof content === 'string' ? content : content.map((block) => String(block.text)).join('\n')
}

// ---------------------------------------------------------------------------------------------
// Answers

interface Head {
  id: string
  type: string
  role: string
  model: string
}

const STOP_REASONS: Record<EndReason, string> = {
  end: 'end_turn',
  stopSequence: 'stop_sequence',
  maxTokens: 'max_tokens',
  contextFull: 'model_context_window_exceeded',
}

function usage(inputTokens: number, outputTokens: number) {
  return {
    input_tokens: inputTokens,
    output_tokens: outputTokens,
    cache_creation_input_tokens: 0,
    cache_read_input_tokens: 0,
  }
}

function stopOf(end: GenerationEnd) {
  return { stop_reason: STOP_REASONS[end.reason], stop_sequence: end.stopSequence ?? null }
}

async function whole(res: ServerResponse, { texts }: Generation, head: Head): Promise<void> {
  try {
    let text = ''
    let step = await texts.next()
    for (; !step.done; step = await texts.next()) text += step.value
    sendJson(res, 200, {
      ...head,
      content: [{ type: 'text', text }],
      ...stopOf(step.value),
      usage: usage(step.value.promptTokens, step.value.completionTokens),
    })
  } finally {
    await texts.return(undefined as never)
  }
}

/** Anthropic's events, in order: message_start, one text block with its deltas, message_delta, message_stop. */
async function stream(res: ServerResponse, { promptTokens, texts }: Generation, head: Head): Promise<void> {
  try {
    // Wait for the first text before answering, so a backend that fails at once gets a real status.
    let step = await texts.next()
    const sse = new SseWriter(res)
    const event = (data: { type: string; [field: string]: unknown }) => sse.send(data, { event: data.type })
    await event({
      type: 'message_start',
      message: {
        ...head,
        content: [],
        stop_reason: null,
        stop_sequence: null,
        usage: usage(promptTokens, 0),
      },
    })
    await event({ type: 'content_block_start', index: 0, content_block: { type: 'text', text: '' } })
    await event({ type: 'ping' })
    for (; !step.done; step = await texts.next()) {
      if (step.value === '') continue
      await event({ type: 'content_block_delta', index: 0, delta: { type: 'text_delta', text: step.value } })
    }
    await event({ type: 'content_block_stop', index: 0 })
    await event({
      type: 'message_delta',
      delta: stopOf(step.value),
      usage: { input_tokens: step.value.promptTokens, output_tokens: step.value.completionTokens },
    })
    await event({ type: 'message_stop' })
    sse.end()
  } finally {
    await texts.return(undefined as never)
  }
}

// ---------------------------------------------------------------------------------------------
// Errors

/** Anthropic's error type for an HTTP status. */
function errorType(status: number): string {
  switch (status) {
    case 400:
    case 405:
      return 'invalid_request_error'
    case 401:
      return 'authentication_error'
    case 403:
      return 'permission_error'
    case 404:
      return 'not_found_error'
    case 413:
      return 'request_too_large'
    case 429:
      return 'rate_limit_error'
    case 503:
      return 'overloaded_error'
  }
  return status >= 500 ? 'api_error' : 'invalid_request_error'
}

/** Anthropic's error shape; after a stream has started, one last `error` event. */
const anthropicErrors: ErrorShape = {
  api: 'Anthropic',
  body: (error) => ({ type: 'error', error: { type: errorType(error.status), message: error.message } }),
  streamEnd: (json) => `event: error\ndata: ${json}\n\n`,
}
