import { createHash, randomInt } from 'node:crypto'

/**
 * How a model writes a tool call, recognised from its chat template as llama.cpp recognises it:
 *
 * - `llama3`: Meta Llama 3.1 / 3.2 / 3.3 — one JSON object per call,
 *   `{"name": "get_weather", "parameters": {"city": "Paris"}}`, sometimes after `<|python_tag|>`.
 * - `qwen`: the Hermes convention of NousResearch Hermes 2 Pro / 3, Qwen 2.5 and Qwen 3 — each call
 *   as `<tool_call>\n{"name": …, "arguments": {…}}\n</tool_call>`.
 * - `mistral`: Mistral Nemo's `[TOOL_CALLS][{"name": …, "arguments": {…}}]` (tool call ids are 9
 *   alphanumeric characters); the `[TOOL_CALLS]name[ARGS]{…}` form of Mistral Small 3.2 is parsed too.
 * - `generic`: every other template. The tools are described in a system message and the model is
 *   told to answer `{"tool_calls": [{"name": …, "arguments": {…}}]}` to call them (llama.cpp's
 *   generic format). Gemma 2 and 3 use it because their templates have no tool syntax at all (and
 *   Gemma 2's has no system role: the instructions go into the first user turn); Phi-3.5-mini's
 *   template has none either; nor has FALLBACK_CHAT_TEMPLATE. Templates with a tool syntax this module does not parse
 *   (Gemma 4's `<|tool_call>call:…`, Qwen3-Coder's `<function=…>`, Command R, Functionary…) use it too.
 */
export type ToolFamily = 'llama3' | 'qwen' | 'mistral' | 'generic'

/** `general.architecture` values whose models are served with the generic format whatever the template says. */
const GENERIC_ARCHITECTURES = /^(gemma|phi)/

/**
 * The tool-call family of a chat template (`tokenizer.chat_template`; absent: the fallback
 * template, `generic`). `architecture` is the GGUF's `general.architecture`: Gemma and Phi models
 * always get `generic` (see ToolFamily).
 */
export function toolFamily(source: string | undefined, architecture?: string): ToolFamily {
  if (source === undefined || !/\btools\b/.test(source)) return 'generic'
  if (architecture !== undefined && GENERIC_ARCHITECTURES.test(architecture)) return 'generic'
  // Qwen3-Coder and Qwen 3.5 write `<tool_call><function=name><parameter=…>`: not JSON.
  if (source.includes('<tool_call>') && !source.includes('<function=')) return 'qwen'
  if (
    source.includes('<|start_header_id|>') &&
    (source.includes('<|start_header_id|>ipython<|end_header_id|>') || source.includes('<|python_tag|>'))
  ) {
    return 'llama3'
  }
  if (source.includes('[TOOL_CALLS]')) return 'mistral'
  return 'generic'
}

/**
 * Texts of the special tokens a family's tool calls contain. The model's tokenizer usually marks them
 * as control tokens, which detokenize to nothing by default: generation must render them as text
 * (`renderSpecial` for these tokens) or the parser never sees the call start.
 */
export function toolCallTokens(family: ToolFamily): readonly string[] {
  switch (family) {
    case 'llama3':
      return ['<|python_tag|>']
    case 'qwen':
      return ['<tool_call>', '</tool_call>']
    case 'mistral':
      return ['[TOOL_CALLS]', '[CALL_ID]', '[ARGS]']
    case 'generic':
      return []
  }
}

const ALPHANUMERIC = 'abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789'

function randomAlphanumeric(length: number): string {
  let out = ''
  for (let i = 0; i < length; i++) out += ALPHANUMERIC[randomInt(ALPHANUMERIC.length)]
  return out
}

/**
 * A fresh id for a tool call the model made: 9 alphanumeric characters for `mistral` (its template
 * refuses any other id when the call comes back in the history), `call_` and 24 more for the others.
 */
export function toolCallId(family: ToolFamily): string {
  return family === 'mistral' ? randomAlphanumeric(9) : `call_${randomAlphanumeric(24)}`
}

/**
 * The id a Mistral template gets for a tool call id from the history: itself when it is 9
 * alphanumeric characters, else 9 characters derived from it (the same for the call and its result).
 */
export function mistralToolCallId(id: string): string {
  if (/^[a-zA-Z0-9]{9}$/.test(id)) return id
  const digest = createHash('sha256').update(id).digest()
  let out = ''
  for (let i = 0; i < 9; i++) out += ALPHANUMERIC[digest[i]! % ALPHANUMERIC.length]
  return out
}
