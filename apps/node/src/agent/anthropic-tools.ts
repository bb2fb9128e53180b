import { randomBytes } from 'node:crypto'
import type { GrammarSpec } from '@meshnet/grammar'
import { z } from 'zod'
import type { ChatMessage, ChatTemplate, ChatToolCall } from './chat-template.ts'
import { ApiError, MAX_TOOLS } from './openai-schemas.ts'
import { checkGrammar, isEmpty, isRecord, MAX_BLOCKS, MAX_TEXT } from './other-apis-generate.ts'
import { TOOL_NAME, type ToolDefinition } from './tools/check.ts'
import type { ToolFamily } from './tools/families.ts'
import { forcedToolGrammar } from './tools/force.ts'
import type { ParsedToolCall } from './tools/parse.ts'

// The content of Anthropic messages (text, tool_use and tool_result blocks) and Anthropic's tools,
// turned into the chat template's messages and tools and the grammar of a forced call.

export const required =
  (type: string) =>
  (issue: { input?: unknown }): string =>
    issue.input === undefined ? 'Field required' : `Input should be a valid ${type}`

export const extraInputs: z.core.$ZodErrorMap = (issue) =>
  issue.code === 'unrecognized_keys'
    ? `${issue.keys.join(', ')}: Extra inputs are not permitted`
    : issue.code === 'invalid_type'
      ? 'Input should be an object'
      : undefined

const cacheControl = z.looseObject({ type: z.string() }, { error: extraInputs }).nullish()

// ---------------------------------------------------------------------------------------------
// Content blocks

/** A content block: its type is checked with the message (checkBlocks), so the error can name it. */
const blockSchema = z.looseObject({ type: z.string({ error: required('string') }) }, { error: extraInputs })

export const contentSchema = z.union(
  [
    z.string().max(MAX_TEXT, `must be at most ${MAX_TEXT} characters`),
    z.array(blockSchema).max(MAX_BLOCKS, `must have at most ${MAX_BLOCKS} content blocks`),
  ],
  { error: required('string or a list of content blocks') },
)

export type Content = z.output<typeof contentSchema>

/** What Anthropic accepts as a tool_use id. */
const TOOL_USE_ID = /^[a-zA-Z0-9_-]{1,256}$/

const toolUseSchema = z.strictObject(
  {
    type: z.literal('tool_use'),
    id: z
      .string({ error: required('string') })
      .regex(TOOL_USE_ID, `String should match pattern '${TOOL_USE_ID.source}'`),
    name: z.string({ error: required('string') }).min(1, 'String should have at least 1 character'),
    input: z.record(z.string(), z.unknown(), { error: required('dictionary') }),
    cache_control: cacheControl,
  },
  { error: extraInputs },
)

const textBlockSchema = z.strictObject(
  { type: z.literal('text'), text: z.string({ error: required('string') }), cache_control: cacheControl },
  { error: extraInputs },
)

const toolResultSchema = z.strictObject(
  {
    type: z.literal('tool_result'),
    tool_use_id: z
      .string({ error: required('string') })
      .regex(TOOL_USE_ID, `String should match pattern '${TOOL_USE_ID.source}'`),
    content: z
      .union(
        [
          z.string().max(MAX_TEXT, `must be at most ${MAX_TEXT} characters`),
          z.array(textBlockSchema).max(MAX_BLOCKS, `must have at most ${MAX_BLOCKS} content blocks`),
        ],
        { error: 'Input should be a valid string or a list of text blocks (only text is supported here)' },
      )
      .optional(),
    is_error: z.boolean({ error: required('boolean') }).optional(),
    cache_control: cacheControl,
  },
  { error: extraInputs },
)

const TEXT_BLOCK_FIELDS = new Set(['type', 'text', 'cache_control', 'citations'])
const BLOCK_ROLES: Record<string, 'assistant' | 'user'> = { tool_use: 'assistant', tool_result: 'user' }

/**
 * Text blocks `{"type":"text","text"}` (with `cache_control`, no effect, and no citations) anywhere;
 * `tool_use` blocks in assistant messages and `tool_result` blocks in user messages.
 */
export function checkBlocks(
  content: Content | undefined,
  path: PropertyKey[],
  ctx: z.RefinementCtx,
  role: 'system' | 'user' | 'assistant',
): void {
  if (!Array.isArray(content)) return
  content.forEach((block, i) => {
    const at = [...path, i]
    const tools = role !== 'system' && block.type in BLOCK_ROLES
    if (block.type !== 'text' && !tools) {
      const supported = role === 'system' ? "'text'" : "'text', 'tool_use' and 'tool_result'"
      ctx.addIssue({
        code: 'custom',
        path: [...at, 'type'],
        message: `only ${supported} content blocks are supported by this server, not '${block.type}'`,
      })
    } else if (tools) {
      if (BLOCK_ROLES[block.type] !== role) {
        ctx.addIssue({
          code: 'custom',
          path: [...at, 'type'],
          message: `'${block.type}' blocks are only allowed in ${BLOCK_ROLES[block.type]} messages`,
        })
        return
      }
      const parsed = (block.type === 'tool_use' ? toolUseSchema : toolResultSchema).safeParse(block)
      for (const issue of parsed.error?.issues ?? []) {
        ctx.addIssue({ code: 'custom', path: [...at, ...issue.path], message: issue.message })
      }
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

/** The text blocks of `content` (or the string), joined with a newline. */
export function textOf(content: Content): string {
  if (typeof content === 'string') return content
  return content
    .filter((block) => block.type === 'text')
    .map((block) => String(block.text))
    .join('\n')
}

interface Turn {
  role: 'system' | 'user' | 'assistant'
  /** The index of its first message, for errors. */
  index: number
  blocks: Array<{ type: string; [key: string]: unknown }>
}

/**
 * The conversation for the chat template: `system` first, then the messages. Consecutive user or
 * assistant messages are one turn, as Anthropic combines them; text blocks are joined with a
 * newline. An assistant's `tool_use` blocks are its tool calls (`input` the arguments); each
 * `tool_result` block a `tool` message answering its call, in order with the user's text around it.
 * 400, as Anthropic answers, for a `tool_use` whose result is not in the next message and a
 * `tool_result` that answers no `tool_use` of the message before.
 */
export function chatMessages(request: {
  system?: Content | undefined
  messages: ReadonlyArray<{ role: Turn['role']; content: Content }>
}): ChatMessage[] {
  const turns: Turn[] = []
  request.messages.forEach(({ role, content }, index) => {
    const blocks = typeof content === 'string' ? [{ type: 'text', text: content }] : content
    const previous = turns.at(-1)
    if (role !== 'system' && previous?.role === role) previous.blocks.push(...blocks)
    else turns.push({ role, index, blocks: [...blocks] })
  })
  const messages: ChatMessage[] =
    request.system === undefined ? [] : [{ role: 'system', content: textOf(request.system) }]
  let calls: ChatToolCall[] = []
  turns.forEach((turn, t) => {
    const texts = turn.blocks.filter((block) => block.type === 'text').map((block) => String(block.text))
    if (turn.role !== 'user') {
      calls = []
      for (const block of turn.blocks) {
        if (block.type !== 'tool_use') continue
        const use = toolUseSchema.parse(block)
        calls.push({ id: use.id, type: 'function', function: { name: use.name, arguments: use.input } })
      }
      messages.push({
        role: turn.role,
        content: texts.join('\n'),
        ...(calls.length === 0 ? {} : { tool_calls: calls }),
      })
      const next = turns[t + 1]
      const answered = new Set(next?.blocks.map((block) => block.tool_use_id))
      const unanswered = calls.filter((call) => !answered.has(call.id)).map((call) => call.id)
      if (next !== undefined && unanswered.length > 0) {
        throw new ApiError(
          400,
          `messages.${turn.index}: \`tool_use\` ids were found without \`tool_result\` blocks immediately after: ` +
            `${unanswered.join(', ')}. Each \`tool_use\` block must have a corresponding \`tool_result\` block in the next message.`,
        )
      }
      return
    }
    // An empty user message is still a turn.
    if (turn.blocks.length === 0) messages.push({ role: 'user', content: '' })
    /** The user message of the text blocks since the last tool_result. */
    let text: ChatMessage | undefined
    for (const block of turn.blocks) {
      if (block.type === 'text') {
        if (text !== undefined) text.content += `\n${String(block.text)}`
        else {
          text = { role: 'user', content: String(block.text) }
          messages.push(text)
        }
      } else if (block.type === 'tool_result') {
        text = undefined
        const result = toolResultSchema.parse(block)
        if (!calls.some((call) => call.id === result.tool_use_id)) {
          throw new ApiError(
            400,
            `messages.${turn.index}: unexpected \`tool_use_id\` found in \`tool_result\` blocks: ${result.tool_use_id}. ` +
              'Each `tool_result` block must have a corresponding `tool_use` block in the previous message.',
          )
        }
        const content = result.content === undefined ? '' : textOf(result.content)
        messages.push({
          role: 'tool',
          content: result.is_error === true ? `Error: ${content}` : content,
          tool_call_id: result.tool_use_id,
        })
      }
    }
    calls = []
  })
  return messages
}

// ---------------------------------------------------------------------------------------------
// Tools

/** A client tool: name, description and the JSON Schema of its input (an object). */
const toolSchema = z.strictObject(
  {
    type: z
      .literal('custom', {
        error: (issue) =>
          `only custom tools (name, description, input_schema) are supported by this server, not '${String(issue.input)}'`,
      })
      .optional(),
    name: z
      .string({ error: required('string') })
      .regex(TOOL_NAME, `String should match pattern '${TOOL_NAME.source}'`),
    description: z
      .string({ error: required('string') })
      .max(MAX_TEXT)
      .optional(),
    input_schema: z.looseObject(
      { type: z.literal('object', { error: "Input should be 'object'" }) },
      { error: required('dictionary') },
    ),
    cache_control: cacheControl,
  },
  { error: extraInputs },
)

export const toolsSchema = z
  .array(toolSchema, { error: required('list') })
  .max(MAX_TOOLS, `List should have at most ${MAX_TOOLS} items`)
  .optional()

const parallel = { disable_parallel_tool_use: z.boolean({ error: required('boolean') }).optional() }

export const toolChoiceSchema = z
  .discriminatedUnion(
    'type',
    [
      z.strictObject({ type: z.literal('auto'), ...parallel }, { error: extraInputs }),
      z.strictObject({ type: z.literal('any'), ...parallel }, { error: extraInputs }),
      z.strictObject(
        { type: z.literal('tool'), name: z.string({ error: required('string') }), ...parallel },
        { error: extraInputs },
      ),
      z.strictObject({ type: z.literal('none') }, { error: extraInputs }),
    ],
    { error: "Input tag should be 'auto', 'any', 'tool' or 'none'" },
  )
  .optional()

type Tools = z.output<typeof toolsSchema>
type ToolChoice = z.output<typeof toolChoiceSchema>

/** Tool names given twice, and a `tool_choice` that needs tools or names one not among them. */
export function checkToolChoice(request: { tools?: Tools; tool_choice?: ToolChoice }, ctx: z.RefinementCtx) {
  const names = (request.tools ?? []).map((tool) => tool.name)
  const twice = names.find((name, i) => names.indexOf(name) !== i)
  if (twice !== undefined) {
    ctx.addIssue({
      code: 'custom',
      path: ['tools'],
      message: `Tool names must be unique: '${twice}' is given twice`,
    })
  }
  const choice = request.tool_choice
  if (choice === undefined || choice.type === 'auto' || choice.type === 'none') return
  if (names.length === 0) {
    ctx.addIssue({
      code: 'custom',
      path: ['tool_choice'],
      message: `tool_choice of type '${choice.type}' needs tools: give tools, or leave tool_choice out`,
    })
  } else if (choice.type === 'tool' && !names.includes(choice.name)) {
    ctx.addIssue({
      code: 'custom',
      path: ['tool_choice', 'name'],
      message: `'${choice.name}' is not among the tools (${names.join(', ')})`,
    })
  }
}

/** How a request's tools shape its generation. */
export interface ToolPlan {
  /** The tools the template gets (none with `tool_choice` none). */
  tools: ToolDefinition[]
  /** How the model writes its calls, which are parsed out of the text; undefined without tools. */
  family?: ToolFamily
  /** The grammar of a forced call (`any`, `tool`). */
  grammar?: GrammarSpec
  /** At most one call: `disable_parallel_tool_use`, or a forced call. */
  oneCall: boolean
}

/**
 * The tools for the template (400 naming `tools.<i>.input_schema` when a schema has a keyword that a
 * call's grammar cannot keep to), and for `tool_choice` `any` and `tool` the grammar of one call.
 */
export function toolPlan(
  request: { tools?: Tools; tool_choice?: ToolChoice },
  template: ChatTemplate,
): ToolPlan {
  const declared: ToolDefinition[] = (request.tools ?? []).map((tool, i) => {
    const parameters: Record<string, unknown> = tool.input_schema
    checkGrammar(
      { parts: [{ type: 'json', schema: parameters, name: `tool ${tool.name}` }] },
      `tools.${i}.input_schema`,
    )
    return {
      type: 'function',
      function: {
        name: tool.name,
        ...(tool.description === undefined ? {} : { description: tool.description }),
        parameters,
      },
    }
  })
  const choice = request.tool_choice ?? { type: 'auto' }
  if (choice.type === 'none' || declared.length === 0) return { tools: [], oneCall: false }
  const family = template.toolFamily
  const grammar =
    choice.type === 'any'
      ? forcedToolGrammar(family, declared, 'required')
      : choice.type === 'tool'
        ? forcedToolGrammar(family, declared, { name: choice.name })
        : undefined
  if (grammar !== undefined) checkGrammar(grammar, 'tools')
  return {
    tools: declared,
    family,
    ...(grammar === undefined ? {} : { grammar }),
    oneCall: grammar !== undefined || choice.disable_parallel_tool_use === true,
  }
}

/** A call the model made, as a `tool_use` block: its input the parsed arguments. */
export function toolUseBlock(call: ParsedToolCall) {
  const input: unknown = JSON.parse(call.arguments)
  return {
    type: 'tool_use' as const,
    id: `toolu_${randomBytes(18).toString('base64url')}`,
    name: call.name,
    input: isRecord(input) ? input : {},
  }
}
