import type { ToolFamily } from './families.ts'

/** One tool call read from a model's text. */
export interface ParsedToolCall {
  name: string
  /** The arguments object as compact JSON text (what OpenAI's `function.arguments` carries). */
  arguments: string
}

/** A model's reply split into its text and its tool calls. */
export interface ParsedToolCalls {
  /** The text that is not a tool call; null when there are tool calls and nothing else but whitespace. */
  content: string | null
  toolCalls: ParsedToolCall[]
}

// ---------------------------------------------------------------------------------------------
// Where a call starts: small patterns matched against a text that may still grow, so that a
// stream knows whether the text it holds is a call's start, surely not one, or perhaps one.

const WS = Symbol('whitespace')
type Pattern = ReadonlyArray<string | typeof WS | { opt: Pattern } | { alt: readonly Pattern[] }>
type Match = 'yes' | 'no' | 'maybe'

const FENCE: Pattern = [{ opt: ['```', { opt: ['json'] }, WS] }]

const START: Record<ToolFamily, Pattern> = {
  llama3: [
    {
      alt: [
        ['<|python_tag|>'],
        [...FENCE, '{', WS, { opt: ['"type"', WS, ':', WS, '"function"', WS, ',', WS] }, '"name"', WS, ':'],
      ],
    },
  ],
  qwen: ['<tool_call>'],
  mistral: ['[TOOL_CALLS]'],
  generic: [...FENCE, '{', WS, '"tool_calls"', WS, ':'],
}

/** Mistral Nemo's calls without their `[TOOL_CALLS]` token (not rendered): only first in the reply. */
const MISTRAL_BARE: Pattern = ['[', WS, '{', WS, '"name"', WS, ':']

const FIRST_CHARS: Record<ToolFamily, string> = {
  llama3: '<`{',
  qwen: '<',
  mistral: '[',
  generic: '`{',
}

function either(a: Match, b: Match): Match {
  return a === 'yes' || b === 'yes' ? 'yes' : a === 'maybe' || b === 'maybe' ? 'maybe' : 'no'
}

function match(pattern: Pattern, text: string, pos: number): Match {
  const [head, ...rest] = pattern
  if (head === undefined) return 'yes'
  if (head === WS) {
    let p = pos
    while (p < text.length && /\s/.test(text[p]!)) p++
    return match(rest, text, p)
  }
  if (typeof head === 'string') {
    if (text.length - pos < head.length) return head.startsWith(text.slice(pos)) ? 'maybe' : 'no'
    return text.startsWith(head, pos) ? match(rest, text, pos + head.length) : 'no'
  }
  if ('opt' in head) return either(match([...head.opt, ...rest], text, pos), match(rest, text, pos))
  return head.alt.reduce<Match>((m, branch) => either(m, match([...branch, ...rest], text, pos)), 'no')
}

/**
 * The first position from `from` where a tool call of `family` starts ('yes'), or may start once
 * more text comes ('maybe'; with `final`, the text is complete and a maybe is a no). `blankBefore`:
 * the reply has nothing but whitespace before `text`.
 */
export function nextCallStart(
  family: ToolFamily,
  text: string,
  from: number,
  blankBefore: boolean,
  final: boolean,
): { at: number; sure: boolean } | undefined {
  const first = FIRST_CHARS[family]
  for (let at = from; at < text.length; at++) {
    if (!first.includes(text[at]!)) continue
    let m = match(START[family], text, at)
    if (family === 'mistral' && m !== 'yes' && blankBefore && text.slice(0, at).trim() === '') {
      m = either(m, match(MISTRAL_BARE, text, at))
    }
    if (m === 'yes') return { at, sure: true }
    if (m === 'maybe' && !final) return { at, sure: false }
  }
  return undefined
}

// ---------------------------------------------------------------------------------------------
// Reading the calls once a start is found.

function skipWs(text: string, pos: number): number {
  while (pos < text.length && /\s/.test(text[pos]!)) pos++
  return pos
}

/** The JSON object or array that starts at `pos`, and where it ends. */
function readJson(text: string, pos: number): { value: unknown; end: number } | undefined {
  const open = text[pos]
  if (open !== '{' && open !== '[') return undefined
  let depth = 0
  let inString = false
  for (let i = pos; i < text.length; i++) {
    const c = text[i]
    if (inString) {
      if (c === '\\') i++
      else if (c === '"') inString = false
    } else if (c === '"') {
      inString = true
    } else if (c === '{' || c === '[') {
      depth++
    } else if (c === '}' || c === ']') {
      depth--
      if (depth === 0) {
        try {
          return { value: JSON.parse(text.slice(pos, i + 1)), end: i + 1 }
        } catch {
          return undefined
        }
      }
    }
  }
  return undefined
}

function isObject(value: unknown): value is { [key: string]: unknown } {
  return typeof value === 'object' && value !== null && !Array.isArray(value)
}

/** Arguments as compact JSON of an object: an object, JSON text of one, or absent (no arguments). */
function argumentsText(args: unknown): string | undefined {
  if (args === undefined) return '{}'
  let value = args
  if (typeof value === 'string') {
    try {
      value = JSON.parse(value)
    } catch {
      return undefined
    }
  }
  return isObject(value) ? JSON.stringify(value) : undefined
}

/** The keys a call object may have: `{"name": "Ada", "age": 36}` is an answer, not a call. */
const CALL_KEYS = new Set(['name', 'arguments', 'parameters', 'type', 'id', 'function'])

/** `{"name", "arguments" | "parameters"}` (also inside OpenAI's `{"function": …}`) as a call. */
function toCall(value: unknown): ParsedToolCall | undefined {
  if (!isObject(value)) return undefined
  const call = isObject(value.function) ? value.function : value
  if (typeof call.name !== 'string' || call.name === '') return undefined
  if (!Object.keys(value).every((key) => CALL_KEYS.has(key))) return undefined
  const args = argumentsText(call.arguments ?? call.parameters)
  return args === undefined ? undefined : { name: call.name, arguments: args }
}

function toCalls(value: unknown): ParsedToolCall[] | undefined {
  if (!Array.isArray(value) || value.length === 0) return undefined
  const calls = value.map(toCall)
  return calls.every((c) => c !== undefined) ? calls : undefined
}

/** An optional Markdown fence around a JSON call: its opening at `pos`, or `pos` itself. */
function skipFence(text: string, pos: number): { pos: number; fenced: boolean } {
  if (!text.startsWith('```', pos)) return { pos, fenced: false }
  let p = pos + 3
  if (text.startsWith('json', p)) p += 4
  return { pos: skipWs(text, p), fenced: true }
}

function closeFence(text: string, pos: number, fenced: boolean): number {
  if (!fenced) return pos
  const p = skipWs(text, pos)
  return text.startsWith('```', p) ? p + 3 : pos
}

type Calls = { calls: ParsedToolCall[]; end: number }

/** Llama 3.x: JSON objects, each maybe after `<|python_tag|>`, apart by whitespace or `;`. */
function llama3Calls(text: string): Calls | undefined {
  const calls: ParsedToolCall[] = []
  let end = 0
  let cursor = 0
  for (;;) {
    let p = skipWs(text, cursor)
    if (text.startsWith('<|python_tag|>', p)) p = skipWs(text, p + '<|python_tag|>'.length)
    const fence = skipFence(text, p)
    const json = readJson(text, fence.pos)
    const call = json === undefined ? undefined : toCall(json.value)
    if (json === undefined || call === undefined) break
    calls.push(call)
    end = closeFence(text, json.end, fence.fenced)
    cursor = skipWs(text, end)
    if (text[cursor] === ';') cursor++
  }
  return calls.length === 0 ? undefined : { calls, end }
}

/** Hermes / Qwen: `<tool_call>{json}</tool_call>` blocks (the last one may lack its closing tag). */
function qwenCalls(text: string): Calls | undefined {
  const calls: ParsedToolCall[] = []
  let end = 0
  for (;;) {
    let p = skipWs(text, end)
    if (!text.startsWith('<tool_call>', p)) break
    const fence = skipFence(text, skipWs(text, p + '<tool_call>'.length))
    const json = readJson(text, fence.pos)
    const call = json === undefined ? undefined : toCall(json.value)
    if (json === undefined || call === undefined) break
    p = skipWs(text, closeFence(text, json.end, fence.fenced))
    if (text.startsWith('</tool_call>', p)) p += '</tool_call>'.length
    else if (p < text.length) break
    calls.push(call)
    end = p
  }
  return calls.length === 0 ? undefined : { calls, end }
}

const MISTRAL_ARGS_CALL = /^([a-zA-Z0-9_.-]+)(?:\[CALL_ID\][a-zA-Z0-9]*)?\[ARGS\]/

/** Mistral: `[TOOL_CALLS][{…}, …]` (Nemo; the first may lack the token), `[TOOL_CALLS]name[ARGS]{…}` (Small 3.2). */
function mistralCalls(text: string): Calls | undefined {
  const calls: ParsedToolCall[] = []
  let end = 0
  for (;;) {
    let p = skipWs(text, end)
    const marked = text.startsWith('[TOOL_CALLS]', p)
    if (marked) p = skipWs(text, p + '[TOOL_CALLS]'.length)
    else if (calls.length > 0 || p !== 0) break
    if (text[p] === '[') {
      const json = readJson(text, p)
      const found = json === undefined ? undefined : toCalls(json.value)
      if (json === undefined || found === undefined) break
      calls.push(...found)
      end = json.end
      continue
    }
    const head = marked ? MISTRAL_ARGS_CALL.exec(text.slice(p)) : null
    if (head === null) break
    const json = readJson(text, p + head[0].length)
    const args = json === undefined ? undefined : argumentsText(json.value)
    if (json === undefined || args === undefined) break
    calls.push({ name: head[1]!, arguments: args })
    end = json.end
  }
  return calls.length === 0 ? undefined : { calls, end }
}

/** The generic format: one `{"tool_calls": [{"name", "arguments"}, …]}` object, maybe in a fence. */
function genericCalls(text: string): Calls | undefined {
  const fence = skipFence(text, 0)
  const json = readJson(text, fence.pos)
  if (json === undefined || !isObject(json.value)) return undefined
  const calls = toCalls(json.value.tool_calls)
  return calls === undefined ? undefined : { calls, end: closeFence(text, json.end, fence.fenced) }
}

const CALLS: Record<ToolFamily, (text: string) => Calls | undefined> = {
  llama3: llama3Calls,
  qwen: qwenCalls,
  mistral: mistralCalls,
  generic: genericCalls,
}

/**
 * The calls in `tail`, a complete text that starts where a call surely starts: the first start in
 * it whose calls parse, and the text around them; undefined when none does. `blankBefore`: nothing
 * but whitespace came before `tail`.
 */
export function callsFrom(
  family: ToolFamily,
  tail: string,
  blankBefore: boolean,
): { content: string; toolCalls: ParsedToolCall[] } | undefined {
  let at: number | undefined = 0
  while (at !== undefined) {
    const found = CALLS[family](tail.slice(at))
    if (found !== undefined) {
      return { content: tail.slice(0, at) + tail.slice(at + found.end), toolCalls: found.calls }
    }
    at = nextCallStart(family, tail, at + 1, blankBefore, true)?.at
  }
  return undefined
}

/**
 * The tool calls in a model's finished reply, as `family` writes them (see ToolFamily), and the
 * rest of the reply as content. Leading text, several calls, and a fence around JSON are accepted;
 * text that is not a well-formed call stays content. Never throws.
 */
export function parseToolCalls(family: ToolFamily, text: string): ParsedToolCalls {
  const start = nextCallStart(family, text, 0, true, true)
  if (start === undefined) return { content: text, toolCalls: [] }
  const before = text.slice(0, start.at)
  const found = callsFrom(family, text.slice(start.at), before.trim() === '')
  if (found === undefined) return { content: text, toolCalls: [] }
  const content = before + found.content
  return { content: content.trim() === '' ? null : content, toolCalls: found.toolCalls }
}
