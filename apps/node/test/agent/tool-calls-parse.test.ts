import { describe, expect, it } from 'vitest'
import type { ToolFamily } from '../../src/agent/tools/families.ts'
import { type ParsedToolCalls, parseToolCalls } from '../../src/agent/tools/parse.ts'
import { ToolCallStreamParser } from '../../src/agent/tools/stream-parse.ts'

const paris = { name: 'get_weather', arguments: '{"city":"Paris"}' }
const lyon = { name: 'get_weather', arguments: '{"city":"Lyon","unit":"c"}' }
const time = { name: 'get_time', arguments: '{}' }

interface Case {
  about: string
  family: ToolFamily
  text: string
  expected: ParsedToolCalls
}

const calls = (...toolCalls: ParsedToolCalls['toolCalls']) => ({ content: null, toolCalls })
const text = (content: string) => ({ content, toolCalls: [] })

const CASES: Case[] = [
  // Llama 3.x
  {
    about: 'a call',
    family: 'llama3',
    text: '{"name": "get_weather", "parameters": {"city": "Paris"}}',
    expected: calls(paris),
  },
  {
    about: 'a call after <|python_tag|>, with "arguments"',
    family: 'llama3',
    text: '<|python_tag|>{"name": "get_weather", "arguments": {"city": "Paris"}}',
    expected: calls(paris),
  },
  {
    about: 'a call with "type" first and no parameters',
    family: 'llama3',
    text: '\n{"type": "function", "name": "get_time"}',
    expected: calls(time),
  },
  {
    about: 'calls apart by ; and newlines, after text',
    family: 'llama3',
    text: 'Let me check. {"name":"get_weather","parameters":{"city":"Paris"}};\n{"name": "get_weather", "parameters": {"city": "Lyon", "unit": "c"}}',
    expected: { content: 'Let me check. ', toolCalls: [paris, lyon] },
  },
  {
    about: 'a call right after a stray {',
    family: 'llama3',
    text: '{ {"name": "get_time"}',
    expected: { content: '{ ', toolCalls: [time] },
  },
  {
    about: 'a call in a JSON fence',
    family: 'llama3',
    text: '```json\n{"name": "get_time", "parameters": {}}\n```',
    expected: calls(time),
  },
  {
    about: 'JSON that is not a call',
    family: 'llama3',
    text: 'The answer is {"city": "Paris"}.',
    expected: text('The answer is {"city": "Paris"}.'),
  },
  {
    about: 'a JSON answer with a "name"',
    family: 'llama3',
    text: '{"name": "Ada", "born": 1815}',
    expected: text('{"name": "Ada", "born": 1815}'),
  },
  {
    about: 'a cut-off call',
    family: 'llama3',
    text: '{"name": "get_weather", "parameters": {"city": "Par',
    expected: text('{"name": "get_weather", "parameters": {"city": "Par'),
  },
  {
    about: 'arguments that are not an object',
    family: 'llama3',
    text: '{"name": "get_weather", "parameters": ["Paris"]}',
    expected: text('{"name": "get_weather", "parameters": ["Paris"]}'),
  },
  {
    about: 'a builtin tool call in Python syntax',
    family: 'llama3',
    text: '<|python_tag|>brave_search.call(query="weather")',
    expected: text('<|python_tag|>brave_search.call(query="weather")'),
  },
  // Qwen / Hermes
  {
    about: 'a call',
    family: 'qwen',
    text: '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>',
    expected: calls(paris),
  },
  {
    about: 'parallel calls after thinking, and text after them',
    family: 'qwen',
    text:
      '<think>\nTwo cities.\n</think>\n\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>\n' +
      '<tool_call>\n{"name": "get_weather", "arguments": "{\\"city\\": \\"Lyon\\", \\"unit\\": \\"c\\"}"}\n</tool_call>\nDone.',
    expected: { content: '<think>\nTwo cities.\n</think>\n\n\nDone.', toolCalls: [paris, lyon] },
  },
  {
    about: 'a call right after a stray <',
    family: 'qwen',
    text: 'a <<tool_call>{"name": "get_time", "arguments": {}}</tool_call>',
    expected: { content: 'a <', toolCalls: [time] },
  },
  {
    about: 'a last call without its closing tag',
    family: 'qwen',
    text: '<tool_call>\n{"name": "get_time", "arguments": {}}\n',
    expected: calls(time),
  },
  {
    about: 'a mention of <tool_call> before the real call',
    family: 'qwen',
    text: 'I will use <tool_call> now.\n<tool_call>\n{"name": "get_time", "arguments": {}}\n</tool_call>',
    expected: { content: 'I will use <tool_call> now.\n', toolCalls: [time] },
  },
  {
    about: 'a block with broken JSON',
    family: 'qwen',
    text: '<tool_call>\n{"name": "get_weather", "arguments": {"city": }\n</tool_call>',
    expected: text('<tool_call>\n{"name": "get_weather", "arguments": {"city": }\n</tool_call>'),
  },
  {
    about: 'a block without a name',
    family: 'qwen',
    text: 'x <tool_call>{"arguments": {}}</tool_call>',
    expected: text('x <tool_call>{"arguments": {}}</tool_call>'),
  },
  // Mistral
  {
    about: 'Nemo calls',
    family: 'mistral',
    text: '[TOOL_CALLS][{"name": "get_weather", "arguments": {"city": "Paris"}, "id": "abcDEF123"}, {"name": "get_time", "arguments": {}}]',
    expected: calls(paris, time),
  },
  {
    about: 'Nemo calls without their [TOOL_CALLS] token',
    family: 'mistral',
    text: ' [{"name": "get_weather", "arguments": {"city": "Paris"}}]',
    expected: calls(paris),
  },
  {
    about: 'a JSON array later in the text, without the token',
    family: 'mistral',
    text: 'Here: [{"name": "get_weather", "arguments": {"city": "Paris"}}]',
    expected: text('Here: [{"name": "get_weather", "arguments": {"city": "Paris"}}]'),
  },
  {
    about: 'Small 3.2 calls',
    family: 'mistral',
    text: 'Sure.[TOOL_CALLS]get_weather[ARGS]{"city": "Paris"}[TOOL_CALLS]get_time[CALL_ID]abc123XYZ[ARGS]{}',
    expected: { content: 'Sure.', toolCalls: [paris, time] },
  },
  {
    about: 'a call list with one bad item',
    family: 'mistral',
    text: '[TOOL_CALLS][{"name": "get_weather", "arguments": {"city": "Paris"}}, {"arguments": {}}]',
    expected: text(
      '[TOOL_CALLS][{"name": "get_weather", "arguments": {"city": "Paris"}}, {"arguments": {}}]',
    ),
  },
  // Generic
  {
    about: 'calls',
    family: 'generic',
    text: '{"tool_calls": [{"name": "get_weather", "arguments": {"city": "Paris"}}, {"name": "get_time", "arguments": {}}]}',
    expected: calls(paris, time),
  },
  {
    about: 'calls in a fence, after text, in OpenAI shape',
    family: 'generic',
    text: 'Checking.\n```json\n{"tool_calls": [{"function": {"name": "get_time", "arguments": "{}"}}]}\n```\n',
    expected: { content: 'Checking.\n\n', toolCalls: [time] },
  },
  {
    about: 'an empty call list',
    family: 'generic',
    text: '{"tool_calls": []}',
    expected: text('{"tool_calls": []}'),
  },
  {
    about: 'plain text with braces',
    family: 'generic',
    text: 'Use {"tool_calls" wisely} and ```code```.',
    expected: text('Use {"tool_calls" wisely} and ```code```.'),
  },
  {
    about: 'whitespace only',
    family: 'generic',
    text: '\n  ',
    expected: text('\n  '),
  },
  {
    about: 'nothing',
    family: 'qwen',
    text: '',
    expected: text(''),
  },
]

describe('parseToolCalls', () => {
  it.each(CASES)('$family: $about', ({ family, text, expected }) => {
    expect(parseToolCalls(family, text)).toEqual(expected)
  })
})

/** Feeds `pieces` to a stream parser: the content it let through, joined, and its calls. */
function stream(family: ToolFamily, pieces: readonly string[]) {
  const parser = new ToolCallStreamParser(family)
  let content = ''
  const toolCalls: ParsedToolCalls['toolCalls'] = []
  for (const out of [...pieces.map((p) => parser.push(p)), parser.end()]) {
    content += out.content
    toolCalls.push(...out.toolCalls)
  }
  return { content, toolCalls }
}

describe('ToolCallStreamParser', () => {
  it.each(CASES)(
    '$family: finds what parseToolCalls finds in $about, however the text is split',
    ({ family, text, expected }) => {
      const whole = { content: expected.content ?? '', toolCalls: expected.toolCalls }
      expect(stream(family, [text])).toEqual(whole)
      expect(stream(family, Array.from(text))).toEqual(whole)
      for (let i = 0; i <= text.length; i++) {
        expect(stream(family, [text.slice(0, i), text.slice(i)])).toEqual(whole)
      }
    },
  )

  it('passes text on at once, holding back only what may start a call', () => {
    const parser = new ToolCallStreamParser('qwen')
    expect(parser.push('Let me look')).toEqual({ content: 'Let me look', toolCalls: [] })
    expect(parser.push(' that up. <tool')).toEqual({ content: ' that up. ', toolCalls: [] })
    expect(parser.push('box> is a tag.')).toEqual({ content: '<toolbox> is a tag.', toolCalls: [] })
    expect(parser.push('\n<tool_call>\n{"name": "get_time",')).toEqual({ content: '\n', toolCalls: [] })
    expect(parser.inToolCall).toBe(true)
    expect(parser.push(' "arguments": {}}\n</tool_call>')).toEqual({ content: '', toolCalls: [] })
    expect(parser.end()).toEqual({ content: '', toolCalls: [time] })
  })

  it('holds leading whitespace until content follows', () => {
    const parser = new ToolCallStreamParser('llama3')
    expect(parser.push('\n\n')).toEqual({ content: '', toolCalls: [] })
    expect(parser.push('{')).toEqual({ content: '', toolCalls: [] })
    expect(parser.push('}')).toEqual({ content: '\n\n{}', toolCalls: [] })
    expect(parser.end()).toEqual({ content: '', toolCalls: [] })
  })

  it('passes text on with a generic JSON that is not a call', () => {
    const parser = new ToolCallStreamParser('generic')
    expect(parser.push('{"answer": 42}')).toEqual({ content: '{"answer": 42}', toolCalls: [] })
  })
})
