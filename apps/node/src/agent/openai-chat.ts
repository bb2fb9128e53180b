import { randomBytes } from 'node:crypto'
import type { ServerResponse } from 'node:http'
import { compileGrammar, type GrammarSpec } from '@meshnet/grammar'
import type { z } from 'zod'
import type { ChatMessage } from './chat-template.ts'
import {
  type ChoiceResult,
  chatLogprob,
  chatTemplate,
  type FinishReason,
  respond,
  type TokenEntry,
} from './openai-generate.ts'
import { ApiError, type chatSchema, findModel } from './openai-schemas.ts'
import type { ServerState } from './openai-types.ts'
import { checkTools, type ToolDefinition } from './tools/check.ts'
import { type ToolFamily, toolFamily } from './tools/families.ts'
import { forcedToolGrammar } from './tools/force.ts'
import { type ParsedToolCall, parseToolCalls } from './tools/parse.ts'
import { ToolCallStreamParser } from './tools/stream-parse.ts'

type ChatParams = z.output<typeof chatSchema>

/**
 * `/v1/chat/completions`: the messages rendered with the model's chat template (with the request's
 * tools when it has them), generated under the grammar of `response_format` or of a forced tool call,
 * and the text parsed into content and tool calls the way the model's family writes them.
 */
export async function chat(
  params: ChatParams,
  res: ServerResponse,
  state: ServerState,
  controller: AbortController,
): Promise<void> {
  const model = findModel(state.backend.models(), params.model)
  const template = chatTemplate(state, model)
  const choice = params.tool_choice ?? 'auto'
  const tools: ToolDefinition[] = choice === 'none' ? [] : (params.tools ?? [])
  const toolProblem = checkTools(params.tools ?? [], params.tool_choice ?? undefined)
  if (toolProblem !== undefined) {
    throw new ApiError(400, toolProblem.message, { param: toolProblem.param, code: 'invalid_value' })
  }
  const family = tools.length > 0 ? toolFamily(template.source) : undefined
  const prompt = template.render({
    messages: params.messages.map(chatMessage),
    addGenerationPrompt: true,
    ...(tools.length > 0 ? { tools } : {}),
    ...(model.bosToken === undefined ? {} : { bosToken: model.bosToken }),
    ...(model.eosToken === undefined ? {} : { eosToken: model.eosToken }),
    ...(model.addBosToken === undefined ? {} : { addBosToken: model.addBosToken }),
  })
  const forced =
    family === undefined || choice === 'auto' || choice === 'none'
      ? undefined
      : forcedToolGrammar(family, tools, choice === 'required' ? 'required' : { name: choice.function.name })
  // Every tool's parameters are checked, called or not, as OpenAI checks them.
  if (family !== undefined) checkGrammar(forced ?? forcedToolGrammar(family, tools, 'required'), 'tools')
  const grammar = forced ?? responseGrammar(params.response_format)
  if (grammar !== undefined && forced === undefined) checkGrammar(grammar, 'response_format')

  const id = `chatcmpl-${randomBytes(12).toString('base64url')}`
  const created = Math.floor(Date.now() / 1000)
  const head = { id, object: 'chat.completion.chunk', created, model: model.id }
  const logprobsOf = (entries: TokenEntry[] | undefined) =>
    entries === undefined ? null : { content: entries.map(chatLogprob), refusal: null }
  const delta = (
    index: number,
    content: Record<string, unknown>,
    entries: TokenEntry[] | undefined,
    finish: FinishReason | null,
  ) => ({
    ...head,
    choices: [{ index, delta: content, logprobs: logprobsOf(entries), finish_reason: finish }],
  })

  // Streaming with tools: each choice's text goes through a parser that holds back what may be the
  // start of a tool call, and emits each call whole once it has ended.
  const parsers = new Map<number, { parser: ToolCallStreamParser; calls: number }>()
  const parserOf = (index: number) => {
    let entry = parsers.get(index)
    if (entry === undefined) {
      entry = { parser: new ToolCallStreamParser(family!), calls: 0 }
      parsers.set(index, entry)
    }
    return entry
  }
  /** The chunks of what a parser let through: content deltas, then tool-call deltas. */
  const parsed = (
    index: number,
    entry: { calls: number },
    out: { content: string; toolCalls: ParsedToolCall[] },
    entries: TokenEntry[] | undefined,
  ) => {
    const chunks: unknown[] = []
    if (out.content !== '' || (entries !== undefined && entries.length > 0)) {
      chunks.push(delta(index, { content: out.content }, entries, null))
    }
    for (const call of out.toolCalls) {
      chunks.push(
        delta(index, { tool_calls: [{ index: entry.calls++, ...toolCallObject(call) }] }, undefined, null),
      )
    }
    return chunks
  }

  await respond(
    {
      model,
      prompt,
      promptParam: 'messages',
      params,
      defaultMaxTokens: undefined,
      logprobs: params.logprobs === true ? (params.top_logprobs ?? 0) : undefined,
      ...(grammar === undefined ? {} : { grammar }),
    },
    res,
    state,
    controller,
    {
      full: (choices, usage) => ({
        ...head,
        object: 'chat.completion',
        choices: choices.map((c, index) => fullChoice(index, c, family, logprobsOf(c.logprobs))),
        usage,
      }),
      first: (index) => delta(index, { role: 'assistant', content: '' }, undefined, null),
      chunk: (index, text, entries) => {
        if (family === undefined) return [delta(index, { content: text }, entries, null)]
        const entry = parserOf(index)
        return parsed(index, entry, entry.parser.push(text), entries)
      },
      last: (index, finish) => {
        if (family === undefined) return [delta(index, {}, undefined, finish)]
        const entry = parserOf(index)
        const chunks = parsed(index, entry, entry.parser.end(), undefined)
        chunks.push(delta(index, {}, undefined, entry.calls > 0 ? 'tool_calls' : finish))
        return chunks
      },
      usage: (usage) => ({ ...head, choices: [], usage }),
    },
  )
}

/** A non-streaming choice: its text as content, or parsed into content and tool calls. */
function fullChoice(index: number, c: ChoiceResult, family: ToolFamily | undefined, logprobs: unknown) {
  const { content, toolCalls } =
    family === undefined ? { content: c.text, toolCalls: [] } : parseToolCalls(family, c.text)
  return {
    index,
    message: {
      role: 'assistant',
      content,
      refusal: null,
      ...(toolCalls.length === 0 ? {} : { tool_calls: toolCalls.map(toolCallObject) }),
    },
    logprobs,
    finish_reason: toolCalls.length > 0 ? 'tool_calls' : c.finish,
  }
}

/** A tool call as OpenAI answers it, with an id of its own. */
function toolCallObject(call: ParsedToolCall) {
  return {
    id: `call_${randomBytes(12).toString('base64url')}`,
    type: 'function' as const,
    function: { name: call.name, arguments: call.arguments },
  }
}

/** A request message as the chat template sees it: text content, tool calls with object arguments. */
function chatMessage(m: ChatParams['messages'][number]): ChatMessage {
  const content =
    typeof m.content === 'string'
      ? m.content
      : (m.content ?? []).map((part) => (typeof part.text === 'string' ? part.text : '')).join('\n')
  return {
    role: m.role === 'developer' ? 'system' : m.role,
    content,
    ...(m.name === undefined ? {} : { name: m.name }),
    ...(m.tool_calls == null || m.tool_calls.length === 0 ? {} : { tool_calls: m.tool_calls }),
    ...(m.tool_call_id == null ? {} : { tool_call_id: m.tool_call_id }),
  }
}

/** The grammar of `response_format`: any JSON object, or JSON valid for the schema; none for text. */
export function responseGrammar(format: ChatParams['response_format']): GrammarSpec | undefined {
  if (format == null || format.type === 'text') return undefined
  if (format.type === 'json_object') return { parts: [{ type: 'json' }] }
  const { schema } = format.json_schema
  return { parts: [{ type: 'json', ...(schema === undefined ? {} : { schema }) }] }
}

/** 400 naming the keyword when a schema has one the grammar cannot keep to. */
function checkGrammar(grammar: GrammarSpec, param: string): void {
  try {
    compileGrammar(grammar)
  } catch (err) {
    if ((err as Error).name !== 'GrammarSchemaError') throw err
    throw new ApiError(400, `Invalid value for '${param}': ${(err as Error).message}`, {
      param,
      code: 'invalid_schema',
    })
  }
}
