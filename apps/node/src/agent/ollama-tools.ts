import type { GrammarSpec } from '@meshnet/grammar'
import { z } from 'zod'
import type { ChatMessage, ChatToolCall } from './chat-template.ts'
import { ApiError, MAX_TOOLS } from './openai-schemas.ts'
import { checkGrammar, isRecord, jsonGrammar, MAX_MODEL_NAME } from './other-apis-generate.ts'
import { checkTools, type ToolDefinition } from './tools/check.ts'
import { type ToolFamily, toolCallId } from './tools/families.ts'
import type { ParsedToolCall } from './tools/parse.ts'

// Tools and structured output on the Ollama API: Ollama's shapes of tools, of the calls an assistant
// message carries and of `format`, turned into what the chat template and the grammar take.

const jsonSchemaObject = z.record(z.string(), z.unknown(), { error: 'must be a JSON Schema object' })

/** A tool, in the OpenAI shape Ollama takes. */
export const toolSchema = z.strictObject({
  type: z.literal('function', { error: "must be 'function'" }),
  function: z.strictObject({
    name: z.string('must be a string').max(MAX_MODEL_NAME),
    description: z.string('must be a string').max(8192).optional(),
    parameters: jsonSchemaObject.optional(),
  }),
})

export const toolsSchema = z
  .array(toolSchema, { error: 'must be an array of tools' })
  .max(MAX_TOOLS, `must have at most ${MAX_TOOLS} tools`)
  .optional()

/**
 * A call in an assistant message, as an Ollama answer gave it (`id` and `function.index` as recent
 * Ollama versions add them; `arguments` an object).
 */
const toolCallSchema = z.strictObject({
  id: z.string('must be a string').max(256).optional(),
  type: z.literal('function', { error: "must be 'function'" }).optional(),
  function: z.strictObject({
    index: z.int('must be a whole number').optional(),
    name: z.string('must be a string').min(1, 'must not be empty').max(MAX_MODEL_NAME),
    arguments: z.record(z.string(), z.unknown(), { error: 'must be an object' }).optional(),
  }),
})

export const toolCallsSchema = z
  .array(toolCallSchema, { error: 'must be an array of tool calls' })
  .max(MAX_TOOLS, `must have at most ${MAX_TOOLS} tool calls`)
  .optional()

/** `format`: `'json'` (any JSON object) or a JSON Schema; `''` or null: plain text. */
export const formatSchema = z
  .union([z.literal('json'), z.literal(''), z.null(), jsonSchemaObject], {
    error: "must be 'json' or a JSON Schema object",
  })
  .optional()

/** The grammar of `format`, checked (400 naming a keyword it cannot keep to); none for plain text. */
export function formatGrammar(format: z.output<typeof formatSchema>): GrammarSpec | undefined {
  if (format === undefined || format === null || format === '') return undefined
  const grammar = jsonGrammar(format === 'json' ? undefined : format)
  checkGrammar(grammar, 'format')
  return grammar
}

/** The request's tools as the template takes them; 400 for a bad name, a name given twice or bad parameters. */
export function toolDefinitions(tools: z.output<typeof toolsSchema>): ToolDefinition[] {
  const definitions: ToolDefinition[] = (tools ?? []).map((tool) => ({
    type: 'function',
    function: {
      name: tool.function.name,
      ...(tool.function.description === undefined ? {} : { description: tool.function.description }),
      ...(tool.function.parameters === undefined ? {} : { parameters: tool.function.parameters }),
    },
  }))
  const problem = checkTools(definitions, undefined)
  if (problem !== undefined) throw new ApiError(400, problem.message, { param: problem.param })
  return definitions
}

interface OllamaMessage {
  role: ChatMessage['role']
  content?: string | undefined
  tool_name?: string | undefined
  tool_call_id?: string | undefined
  tool_calls?: z.output<typeof toolCallSchema>[] | undefined
}

/**
 * The messages for the chat template. Ollama's calls carry no id (recent versions add one), nor do
 * its tool messages say which call they answer: a call without an id gets `call_<message>_<call>`,
 * and a tool message without `tool_call_id` answers the first call of the assistant message before
 * it that is not answered yet and has its `tool_name` (any, without one), as templates that render
 * ids (Mistral's) need them paired.
 */
export function chatMessages(messages: readonly OllamaMessage[]): ChatMessage[] {
  let unanswered: ChatToolCall[] = []
  return messages.map((message, m) => {
    const out: ChatMessage = { role: message.role, content: message.content ?? '' }
    if (message.tool_name !== undefined) out.name = message.tool_name
    if (message.tool_calls !== undefined && message.tool_calls.length > 0) {
      const calls = message.tool_calls.map(
        (call, c): ChatToolCall => ({
          id: call.id ?? `call_${m}_${c}`,
          type: 'function',
          function: { name: call.function.name, arguments: call.function.arguments ?? {} },
        }),
      )
      out.tool_calls = calls
      unanswered = [...calls]
    } else if (message.role === 'tool') {
      const id = message.tool_call_id
      const at =
        id !== undefined
          ? unanswered.findIndex((call) => call.id === id)
          : unanswered.findIndex(
              (call) => message.tool_name === undefined || call.function.name === message.tool_name,
            )
      const answered = at === -1 ? undefined : unanswered.splice(at, 1)[0]
      const callId = id ?? answered?.id
      if (callId !== undefined) out.tool_call_id = callId
    }
    return out
  })
}

/** A call the model made, as Ollama answers it: arguments as an object. */
export function toolCallOf(family: ToolFamily, call: ParsedToolCall, index: number) {
  const parsed: unknown = JSON.parse(call.arguments)
  return {
    id: toolCallId(family),
    function: { index, name: call.name, arguments: isRecord(parsed) ? parsed : {} },
  }
}
