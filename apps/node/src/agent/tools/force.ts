import type { GrammarSpec, JsonSchema } from '@meshnet/grammar'
import type { ToolDefinition } from './check.ts'
import type { ToolFamily } from './families.ts'
import { toolParameters } from './prompt.ts'

/** What `tool_choice` forces: some call (`required`), or a call of the named tool. */
export type ForcedToolChoice = 'required' | { name: string }

/** The key a family writes a call's arguments under. */
function argumentsKey(family: ToolFamily): 'parameters' | 'arguments' {
  return family === 'llama3' ? 'parameters' : 'arguments'
}

/** One call of `tool` as JSON: `{"name": <its name>, "<arguments key>": <its parameters>}`. */
function callSchema(family: ToolFamily, tool: ToolDefinition): JsonSchema {
  const key = argumentsKey(family)
  return {
    type: 'object',
    properties: { name: { const: tool.function.name }, [key]: toolParameters(tool) },
    required: ['name', key],
    additionalProperties: false,
  }
}

/**
 * The grammar of exactly one tool call as `family` writes it, for `tool_choice` `required` (a call of
 * any of `tools`) or `{name}` (a call of that tool): `llama3` `{"name": …, "parameters": {…}}`;
 * `qwen` `<tool_call>\n{"name": …, "arguments": {…}}\n</tool_call>`; `mistral` `[TOOL_CALLS]` and a
 * one-call array; `generic` `{"tool_calls": [one call]}`. parseToolCalls reads the text back as that
 * call. Throws when `choice` names no tool of `tools` (checkTools reports that to the client first).
 */
export function forcedToolGrammar(
  family: ToolFamily,
  tools: readonly ToolDefinition[],
  choice: ForcedToolChoice,
): GrammarSpec {
  const chosen = choice === 'required' ? tools : tools.filter((t) => t.function.name === choice.name)
  if (chosen.length === 0) {
    throw new Error(
      choice === 'required'
        ? 'tool_choice "required" needs at least one tool'
        : `tool_choice names "${choice.name}", which is not among the tools`,
    )
  }
  const schemas = chosen.map((tool) => callSchema(family, tool))
  const call: JsonSchema = schemas.length === 1 ? schemas[0]! : { anyOf: schemas }
  const oneCall: JsonSchema = { type: 'array', items: call, minItems: 1, maxItems: 1 }
  switch (family) {
    case 'llama3':
      return { parts: [{ type: 'json', schema: call }] }
    case 'qwen':
      return {
        parts: [
          { type: 'literal', text: '<tool_call>\n' },
          { type: 'json', schema: call },
          { type: 'literal', text: '\n</tool_call>' },
        ],
      }
    case 'mistral':
      return {
        parts: [
          { type: 'literal', text: '[TOOL_CALLS]' },
          { type: 'json', schema: oneCall },
        ],
      }
    case 'generic':
      return {
        parts: [
          {
            type: 'json',
            schema: {
              type: 'object',
              properties: { tool_calls: oneCall },
              required: ['tool_calls'],
              additionalProperties: false,
            },
          },
        ],
      }
  }
}
