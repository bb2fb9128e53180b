import { randomBytes } from 'node:crypto'
import type { ServerResponse } from 'node:http'
import { type NodeEnv, RESPONSE_ALREADY_SENT, SseWriter } from '@meshnet/http'
import { Hono } from 'hono'
import { z } from 'zod'
import {
  chatMessages,
  checkBlocks,
  checkToolChoice,
  contentSchema,
  extraInputs,
  required,
  type ToolPlan,
  toolChoiceSchema,
  toolPlan,
  toolsSchema,
  toolUseBlock,
} from './anthropic-tools.ts'
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
  isRecord,
  MAX_MESSAGES,
  MAX_MODEL_NAME,
  MAX_STOP_LENGTH,
  MAX_STOPS,
  parseBody,
  readBody,
  refused,
  startGeneration,
} from './other-apis-generate.ts'
import { type ParsedToolCall, parseToolCalls } from './tools/parse.ts'
import { ToolCallStreamParser } from './tools/stream-parse.ts'

// ---------------------------------------------------------------------------------------------
// Request schema. Unknown fields are refused as Anthropic refuses them ("Extra inputs are not
// permitted"); fields this server cannot honour are refused unless they ask for nothing.

const messageSchema = z
  .strictObject(
    {
      role: z.enum(['user', 'assistant', 'system'], { error: "Input should be 'user' or 'assistant'" }),
      content: contentSchema,
    },
    { error: extraInputs },
  )
  .superRefine((message, ctx) => checkBlocks(message.content, ['content'], ctx, message.role))

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
      tools: toolsSchema,
      tool_choice: toolChoiceSchema,
      // Not supported: refused unless they ask for nothing.
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
  .superRefine((request, ctx) => {
    checkBlocks(request.system, ['system'], ctx, 'system')
    checkToolChoice(request, ctx)
  })

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
    const template = templateOf(model)
    const plan = toolPlan(request, template)
    const generation = await startGeneration(backend, {
      model,
      prompt: chatPrompt(template, model, chatMessages(request), plan.tools),
      promptField: 'messages',
      maxTokens: request.max_tokens,
      // Anthropic's defaults: temperature 1 over the whole vocabulary (no top-p, no top-k).
      sampling: {
        temperature: request.temperature ?? 1,
        topP: request.top_p ?? 1,
        topK: request.top_k ?? 0,
      },
      stops: request.stop_sequences ?? [],
      ...(plan.grammar === undefined ? {} : { grammar: plan.grammar }),
      signal: abortOnClose(c.env.outgoing),
    })
    const head = {
      id: `msg_${randomBytes(12).toString('hex')}`,
      type: 'message',
      role: 'assistant',
      model: model.id,
    }
    if (request.stream === true) await stream(c.env.outgoing, generation, head, plan)
    else await whole(c.env.outgoing, generation, head, plan)
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

/** Why the message ended: `tool_use` when the model called tools. */
function stopOf(end: GenerationEnd, calls: number) {
  if (calls > 0) return { stop_reason: 'tool_use', stop_sequence: null }
  return { stop_reason: STOP_REASONS[end.reason], stop_sequence: end.stopSequence ?? null }
}

/** The calls to answer with: only the first with `oneCall`. */
function callsOf(calls: ParsedToolCall[], plan: ToolPlan): ParsedToolCall[] {
  return plan.oneCall ? calls.slice(0, 1) : calls
}

/**
 * One message: its text block (left out when the model only called tools), then a `tool_use` block
 * per call.
 */
async function whole(res: ServerResponse, { texts }: Generation, head: Head, plan: ToolPlan): Promise<void> {
  try {
    let text = ''
    let step = await texts.next()
    for (; !step.done; step = await texts.next()) text += step.value
    const parsed =
      plan.family === undefined ? { content: text, toolCalls: [] } : parseToolCalls(plan.family, text)
    const calls = callsOf(parsed.toolCalls, plan)
    const content = parsed.content ?? ''
    sendJson(res, 200, {
      ...head,
      content: [
        ...(content !== '' || calls.length === 0 ? [{ type: 'text', text: content }] : []),
        ...calls.map(toolUseBlock),
      ],
      ...stopOf(step.value, calls.length),
      usage: usage(step.value.promptTokens, step.value.completionTokens),
    })
  } finally {
    await texts.return(undefined as never)
  }
}

/**
 * Anthropic's events, in order: message_start, a text block with its deltas, message_delta,
 * message_stop. With tools, the text goes through a parser that holds back what may start a call,
 * so the text block opens with the first text (ping comes first), and each call follows as a
 * `tool_use` block whose input is one `input_json_delta`.
 */
async function stream(
  res: ServerResponse,
  { promptTokens, texts }: Generation,
  head: Head,
  plan: ToolPlan,
): Promise<void> {
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
    /** The index of the next block; whether the text block is open. */
    let index = 0
    let textOpen = false
    const openText = async () => {
      textOpen = true
      await event({ type: 'content_block_start', index, content_block: { type: 'text', text: '' } })
    }
    const sendText = async (text: string) => {
      if (text === '') return
      if (!textOpen) await openText()
      await event({ type: 'content_block_delta', index, delta: { type: 'text_delta', text } })
    }
    const parser = plan.family === undefined ? undefined : new ToolCallStreamParser(plan.family)
    if (parser === undefined) await openText()
    await event({ type: 'ping' })
    for (; !step.done; step = await texts.next()) {
      await sendText(parser === undefined ? step.value : parser.push(step.value).content)
    }
    const rest = parser?.end() ?? { content: '', toolCalls: [] }
    await sendText(rest.content)
    const calls = callsOf(rest.toolCalls, plan)
    if (!textOpen && calls.length === 0) await openText()
    if (textOpen) await event({ type: 'content_block_stop', index: index++ })
    for (const call of calls) {
      const { input, ...block } = toolUseBlock(call)
      await event({ type: 'content_block_start', index, content_block: { ...block, input: {} } })
      await event({
        type: 'content_block_delta',
        index,
        delta: { type: 'input_json_delta', partial_json: JSON.stringify(input) },
      })
      await event({ type: 'content_block_stop', index: index++ })
    }
    await event({
      type: 'message_delta',
      delta: stopOf(step.value, calls.length),
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
