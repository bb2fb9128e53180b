import type { GrammarSpec, JsonSchema } from '@meshnet/grammar'
import { describe, expect, it } from 'vitest'
import { checkTools, type ToolDefinition } from '../../src/agent/tools/check.ts'
import type { ToolFamily } from '../../src/agent/tools/families.ts'
import { forcedToolGrammar } from '../../src/agent/tools/force.ts'
import { parseToolCalls } from '../../src/agent/tools/parse.ts'

const WEATHER: ToolDefinition = {
  type: 'function',
  function: {
    name: 'get_weather',
    description: 'Tells the current weather in a city',
    parameters: {
      type: 'object',
      properties: { city: { type: 'string' }, unit: { enum: ['c', 'f'] } },
      required: ['city'],
    },
  },
}
const TIME: ToolDefinition = { type: 'function', function: { name: 'get_time' } }
const TOOLS = [WEATHER, TIME]

/**
 * Whether `value` is valid for `schema`, for the keywords the forced grammars use (and the tools'
 * schemas above): enough to show that a sample text is one the grammar allows.
 */
function valid(schema: JsonSchema, value: unknown): boolean {
  if (Array.isArray(schema.anyOf)) return (schema.anyOf as JsonSchema[]).some((s) => valid(s, value))
  if ('const' in schema && JSON.stringify(schema.const) !== JSON.stringify(value)) return false
  if (Array.isArray(schema.enum) && !schema.enum.includes(value)) return false
  if (schema.type === 'string' && typeof value !== 'string') return false
  if (schema.type === 'array') {
    if (!Array.isArray(value)) return false
    if (typeof schema.minItems === 'number' && value.length < schema.minItems) return false
    if (typeof schema.maxItems === 'number' && value.length > schema.maxItems) return false
    return value.every((item) => valid(schema.items as JsonSchema, item))
  }
  if (schema.type === 'object') {
    if (typeof value !== 'object' || value === null || Array.isArray(value)) return false
    const properties = (schema.properties ?? {}) as Record<string, JsonSchema>
    const record = value as Record<string, unknown>
    if (!((schema.required ?? []) as string[]).every((key) => key in record)) return false
    return Object.entries(record).every(([key, v]) =>
      key in properties ? valid(properties[key]!, v) : schema.additionalProperties !== false,
    )
  }
  return true
}

/** The text a grammar allows with `value` for its one JSON part; throws when `value` does not fit. */
function sample(grammar: GrammarSpec, value: unknown): string {
  return grammar.parts
    .map((part) => {
      if (part.type === 'literal') return part.text
      if (!valid(part.schema ?? { type: 'object' }, value))
        throw new Error(`${JSON.stringify(value)} does not fit`)
      return JSON.stringify(value)
    })
    .join('')
}

/** One call as `family` writes it, as the value of the grammar's JSON part. */
function callValue(family: ToolFamily, name: string, args: object): unknown {
  const call = { name, [family === 'llama3' ? 'parameters' : 'arguments']: args }
  if (family === 'mistral') return [call]
  if (family === 'generic') return { tool_calls: [call] }
  return call
}

const FAMILIES: ToolFamily[] = ['llama3', 'qwen', 'mistral', 'generic']

describe('forcedToolGrammar', () => {
  it.each(FAMILIES)('forces a call of the named tool as %s writes it, which parses back', (family) => {
    const grammar = forcedToolGrammar(family, TOOLS, { name: 'get_weather' })
    const text = sample(grammar, callValue(family, 'get_weather', { city: 'Paris', unit: 'c' }))
    expect(parseToolCalls(family, text)).toEqual({
      content: null,
      toolCalls: [{ name: 'get_weather', arguments: '{"city":"Paris","unit":"c"}' }],
    })
    expect(() => sample(grammar, callValue(family, 'get_time', {}))).toThrow('does not fit')
    expect(() => sample(grammar, callValue(family, 'get_weather', { town: 'Paris' }))).toThrow('does not fit')
  })

  it.each(FAMILIES)('forces a call of any tool for "required" (%s)', (family) => {
    const grammar = forcedToolGrammar(family, TOOLS, 'required')
    for (const [name, args] of [
      ['get_weather', { city: 'Lyon' }],
      ['get_time', {}],
    ] as const) {
      expect(parseToolCalls(family, sample(grammar, callValue(family, name, args))).toolCalls).toEqual([
        { name, arguments: JSON.stringify(args) },
      ])
    }
    expect(() => sample(grammar, callValue(family, 'get_date', {}))).toThrow('does not fit')
  })

  it('writes the family text around the JSON', () => {
    expect(forcedToolGrammar('qwen', [TIME], 'required').parts).toEqual([
      { type: 'literal', text: '<tool_call>\n' },
      {
        type: 'json',
        schema: {
          type: 'object',
          properties: { name: { const: 'get_time' }, arguments: { type: 'object', properties: {} } },
          required: ['name', 'arguments'],
          additionalProperties: false,
        },
      },
      { type: 'literal', text: '\n</tool_call>' },
    ])
    const mistral = forcedToolGrammar('mistral', [TIME], 'required').parts
    expect(mistral[0]).toEqual({ type: 'literal', text: '[TOOL_CALLS]' })
    expect(mistral[1]).toMatchObject({ type: 'json', schema: { type: 'array', minItems: 1, maxItems: 1 } })
    expect(forcedToolGrammar('llama3', [TIME], 'required').parts).toMatchObject([
      { type: 'json', schema: { required: ['name', 'parameters'] } },
    ])
  })

  it('refuses a name that is not among the tools', () => {
    expect(() => forcedToolGrammar('qwen', TOOLS, { name: 'foo' })).toThrow(
      'tool_choice names "foo", which is not among the tools',
    )
  })
})

describe('checkTools', () => {
  it('accepts tools and each tool_choice', () => {
    for (const choice of [undefined, 'none', 'auto', 'required'] as const)
      expect(checkTools(TOOLS, choice)).toBeUndefined()
    expect(checkTools(TOOLS, { type: 'function', function: { name: 'get_time' } })).toBeUndefined()
    expect(checkTools(undefined, 'auto')).toBeUndefined()
    expect(checkTools([], 'none')).toBeUndefined()
  })

  it('names a tool_choice that is not among the tools', () => {
    expect(checkTools(TOOLS, { type: 'function', function: { name: 'foo' } })).toEqual({
      message: 'tool_choice names "foo", which is not among the tools (get_weather, get_time)',
      param: 'tool_choice',
    })
  })

  it('refuses a tool_choice that needs tools without any', () => {
    expect(checkTools([], 'required')?.message).toBe(
      'tool_choice "required" needs tools: give tools, or leave tool_choice out',
    )
    expect(checkTools(undefined, { type: 'function', function: { name: 'x' } })?.param).toBe('tool_choice')
  })

  it('refuses invalid and duplicate names, and parameters that are not an object schema', () => {
    expect(checkTools([{ type: 'function', function: { name: 'get weather' } }], 'auto')).toEqual({
      message:
        'tools[0].function.name "get weather" is not a valid tool name: use 1 to 64 letters, digits, underscores and dashes',
      param: 'tools[0].function.name',
    })
    expect(checkTools([{ type: 'function', function: { name: 'x'.repeat(65) } }], 'auto')?.param).toBe(
      'tools[0].function.name',
    )
    expect(checkTools([TIME, TIME], 'auto')?.message).toBe(
      'tools[1].function.name "get_time" is given twice: tool names must be unique',
    )
    expect(
      checkTools([{ type: 'function', function: { name: 'f', parameters: { type: 'string' } } }], 'auto')
        ?.param,
    ).toBe('tools[0].function.parameters')
    expect(checkTools([{ type: 'retrieval', function: { name: 'f' } } as never], 'auto')?.param).toBe(
      'tools[0].type',
    )
  })
})
