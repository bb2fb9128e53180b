import type { ChatMessage, ChatToolCall } from '../chat-template.ts'
import type { ToolDefinition } from './check.ts'
import { mistralToolCallId, type ToolFamily } from './families.ts'

/** A tool call as a Jinja template gets it: `arguments` an object when it was JSON of one. */
export interface TemplateToolCall {
  id: string
  type: 'function'
  function: { name: string; arguments: unknown }
}

/** A message as a Jinja template gets it. */
export interface TemplateMessage {
  role: string
  content: string
  name?: string
  tool_calls?: TemplateToolCall[]
  tool_call_id?: string
}

/** A tool as a Jinja template gets it (Hugging Face's shape, without OpenAI's `strict`). */
export interface TemplateTool {
  type: 'function'
  function: { name: string; description: string; parameters: { [key: string]: unknown } }
}

/** What a template can render, found by rendering probes (ChatTemplate asks only when it matters). */
export interface TemplateCaps {
  /** A leading system message reaches the prompt (Gemma's template raises instead). */
  systemRole(): boolean
  /** An assistant message with two tool calls renders (Llama 3.x's template raises instead). */
  parallelToolCalls(): boolean
}

/** The arguments schema of a tool; none given: no arguments. */
export function toolParameters(tool: ToolDefinition): { [key: string]: unknown } {
  return tool.function.parameters ?? { type: 'object', properties: {} }
}

export function templateTools(tools: readonly ToolDefinition[]): TemplateTool[] {
  return tools.map((tool) => ({
    type: 'function',
    function: {
      name: tool.function.name,
      // Hermes' template concatenates the description: it must be a string.
      description: tool.function.description ?? '',
      parameters: toolParameters(tool),
    },
  }))
}

/**
 * The system prompt of the generic format: the tools as JSON, and how to call them (the reply that
 * parseToolCalls('generic', …) reads, and forcedToolGrammar('generic', …) enforces).
 */
export function genericToolsPrompt(tools: readonly ToolDefinition[]): string {
  const described = tools.map((tool) => ({
    name: tool.function.name,
    ...(tool.function.description === undefined ? {} : { description: tool.function.description }),
    parameters: toolParameters(tool),
  }))
  return (
    'You can call the following tools. Each has a name, a description and a JSON Schema of its arguments:\n' +
    `${JSON.stringify(described, null, 2)}\n\n` +
    'To call one or more tools, reply with this JSON object only, and nothing before or after it:\n' +
    '{"tool_calls": [{"name": "<tool name>", "arguments": {<arguments as the tool\'s schema says>}}]}\n' +
    'Otherwise, reply to the user with plain text.'
  )
}

/** The text an assistant message with `calls` stands for in the generic format. */
function genericCallsText(calls: readonly TemplateToolCall[]): string {
  return JSON.stringify({
    tool_calls: calls.map((call) => ({ name: call.function.name, arguments: call.function.arguments })),
  })
}

/** OpenAI's JSON text of arguments as an object; text that is not JSON stays text. */
function templateArguments(args: ChatToolCall['function']['arguments']): unknown {
  if (typeof args !== 'string') return args
  try {
    return JSON.parse(args)
  } catch {
    return args
  }
}

function normalize(message: ChatMessage): TemplateMessage {
  const out: TemplateMessage = { role: message.role, content: message.content ?? '' }
  if (message.name !== undefined) out.name = message.name
  if (message.tool_call_id !== undefined) out.tool_call_id = message.tool_call_id
  // An empty list would still send Llama's template down its tool-call branch (`'tool_calls' in message`).
  if (message.tool_calls !== undefined && message.tool_calls.length > 0) {
    out.tool_calls = message.tool_calls.map((call) => ({
      id: call.id,
      type: 'function',
      function: { name: call.function.name, arguments: templateArguments(call.function.arguments) },
    }))
  }
  return out
}

/**
 * For a template without tool syntax: each assistant tool call becomes the JSON the generic format
 * has the model write, each tool result a user turn `Tool result (name, id):` with its content, run
 * together with the user turns next to it (templates like Gemma's insist that roles alternate).
 */
function foldToolMessages(messages: readonly TemplateMessage[]): TemplateMessage[] {
  const names = new Map<string, string>()
  const out: TemplateMessage[] = []
  const folded = new Set<TemplateMessage>()
  for (const message of messages) {
    let next: TemplateMessage = message
    if (message.tool_calls !== undefined) {
      for (const call of message.tool_calls) names.set(call.id, call.function.name)
      const calls = genericCallsText(message.tool_calls)
      next = { role: 'assistant', content: message.content === '' ? calls : `${message.content}\n${calls}` }
    } else if (message.role === 'tool') {
      const id = message.tool_call_id
      const name = message.name ?? (id === undefined ? undefined : names.get(id))
      const about = [name, id].filter((s) => s !== undefined).join(', ')
      next = { role: 'user', content: `Tool result${about === '' ? '' : ` (${about})`}:\n${message.content}` }
      folded.add(next)
    }
    const last = out.at(-1)
    if (
      last !== undefined &&
      last.role === 'user' &&
      next.role === 'user' &&
      (folded.has(last) || folded.has(next))
    ) {
      const merged = { role: 'user', content: `${last.content}\n\n${next.content}` }
      folded.add(merged)
      out[out.length - 1] = merged
    } else {
      out.push(next)
    }
  }
  return out
}

/**
 * For a template that renders one tool call per assistant message (Llama 3.x): each call its own
 * assistant message, followed by its result when the results come right after.
 */
function splitParallelCalls(messages: readonly TemplateMessage[]): TemplateMessage[] {
  const out: TemplateMessage[] = []
  for (let i = 0; i < messages.length; i++) {
    const message = messages[i]!
    const calls = message.tool_calls
    if (calls === undefined || calls.length < 2) {
      out.push(message)
      continue
    }
    let end = i + 1
    while (end < messages.length && messages[end]!.role === 'tool') end++
    const results = messages.slice(i + 1, end)
    calls.forEach((call, n) => {
      out.push({ ...message, content: n === 0 ? message.content : '', tool_calls: [call] })
      const at = results.findIndex((r) => r.tool_call_id === call.id)
      if (at !== -1) out.push(...results.splice(at, 1))
    })
    out.push(...results)
    i = end - 1
  }
  return out
}

/** Mistral's templates refuse ids that are not 9 alphanumeric characters. */
function mistralIds(messages: readonly TemplateMessage[]): TemplateMessage[] {
  return messages.map((message) => {
    const out = { ...message }
    if (out.tool_call_id !== undefined) out.tool_call_id = mistralToolCallId(out.tool_call_id)
    if (out.tool_calls !== undefined) {
      out.tool_calls = out.tool_calls.map((call) => ({ ...call, id: mistralToolCallId(call.id) }))
    }
    return out
  })
}

/** A leading system message merged into the turn after it, for templates without a system role. */
function mergeSystemMessage(messages: TemplateMessage[]): TemplateMessage[] {
  const [first, second, ...rest] = messages
  if (first?.role !== 'system') return messages
  if (second === undefined) return [{ ...first, role: 'user' }]
  return [{ ...second, content: `${first.content}\n\n${second.content}` }, ...rest]
}

/**
 * The messages (and tools) a template is rendered with, for `family`: tool calls' arguments as
 * objects and no null content; for `generic`, the tools in a system message (the first one, or a new
 * one first) and the tool messages folded into text; for the others, the tools as the template's
 * `tools`, Mistral ids made acceptable, and parallel calls split when the template takes one at a time.
 * A leading system message goes into the next turn when the template has no system role.
 */
export function templateInput(
  messages: readonly ChatMessage[],
  family: ToolFamily,
  tools: readonly ToolDefinition[] | undefined,
  caps: TemplateCaps,
): { messages: TemplateMessage[]; tools: TemplateTool[] | undefined } {
  let out = messages.map(normalize)
  let templated: TemplateTool[] | undefined
  if (family === 'generic') {
    if (out.some((m) => m.role === 'tool' || m.tool_calls !== undefined)) out = foldToolMessages(out)
    if (tools !== undefined && tools.length > 0) {
      const prompt = genericToolsPrompt(tools)
      const first = out[0]
      out =
        first?.role === 'system'
          ? [
              { ...first, content: first.content === '' ? prompt : `${first.content}\n\n${prompt}` },
              ...out.slice(1),
            ]
          : [{ role: 'system', content: prompt }, ...out]
    }
  } else {
    if (tools !== undefined && tools.length > 0) templated = templateTools(tools)
    if (family === 'mistral') out = mistralIds(out)
    if (out.some((m) => (m.tool_calls?.length ?? 0) > 1) && !caps.parallelToolCalls()) {
      out = splitParallelCalls(out)
    }
  }
  if (out[0]?.role === 'system' && !caps.systemRole()) out = mergeSystemMessage(out)
  return { messages: out, tools: templated }
}
