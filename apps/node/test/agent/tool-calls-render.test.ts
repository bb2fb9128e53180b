import { readFileSync } from 'node:fs'
import { describe, expect, it } from 'vitest'
import { type ChatMessage, FALLBACK_CHAT_TEMPLATE, parseChatTemplate } from '../../src/agent/chat-template.ts'
import type { ToolDefinition } from '../../src/agent/tools/check.ts'
import { mistralToolCallId, toolCallId, toolFamily } from '../../src/agent/tools/families.ts'

// Chat templates as the models publish them (copied from llama.cpp's models/templates).
const fixture = (name: string) =>
  readFileSync(new URL(`../fixtures/chat-templates/${name}.jinja`, import.meta.url), 'utf8')

const TEMPLATES = {
  'Llama 3.1': fixture('meta-llama-Llama-3.1-8B-Instruct'),
  'Llama 3.2': fixture('meta-llama-Llama-3.2-3B-Instruct'),
  'Llama 3.3': fixture('meta-llama-Llama-3.3-70B-Instruct'),
  'Qwen 2.5': fixture('Qwen-Qwen2.5-7B-Instruct'),
  'Qwen 3': fixture('Qwen-Qwen3-0.6B'),
  'Hermes 3': fixture('NousResearch-Hermes-3-Llama-3.1-8B-tool_use'),
  'Mistral Nemo': fixture('mistralai-Mistral-Nemo-Instruct-2407'),
  'Mistral Small 3.2': fixture('Mistral-Small-3.2-24B-Instruct-2506'),
  'Gemma 2': fixture('google-gemma-2-2b-it'),
  'Gemma 4': fixture('google-gemma-4-31B-it'),
  'Phi-3.5': fixture('microsoft-Phi-3.5-mini-instruct'),
  fallback: FALLBACK_CHAT_TEMPLATE,
} as const
type TemplateName = keyof typeof TEMPLATES

const FAMILIES: Record<TemplateName, string> = {
  'Llama 3.1': 'llama3',
  'Llama 3.2': 'llama3',
  'Llama 3.3': 'llama3',
  'Qwen 2.5': 'qwen',
  'Qwen 3': 'qwen',
  'Hermes 3': 'qwen',
  'Mistral Nemo': 'mistral',
  'Mistral Small 3.2': 'mistral',
  'Gemma 2': 'generic',
  'Gemma 4': 'generic',
  'Phi-3.5': 'generic',
  fallback: 'generic',
}

const WEATHER: ToolDefinition = {
  type: 'function',
  function: {
    name: 'get_weather',
    description: 'Tells the current weather in a city',
    parameters: {
      type: 'object',
      properties: { city: { type: 'string', description: 'Name of the city' } },
      required: ['city'],
    },
    strict: true,
  },
}
const TIME: ToolDefinition = {
  type: 'function',
  function: { name: 'get_time', description: 'Tells the time in a city' },
}

const ROUND_TRIP: ChatMessage[] = [
  { role: 'system', content: 'Answer in one sentence.' },
  { role: 'user', content: 'What is the weather in Paris?' },
  {
    role: 'assistant',
    content: null,
    tool_calls: [
      {
        id: 'call_1a2b3c4d5e',
        type: 'function',
        function: { name: 'get_weather', arguments: '{"city":"Paris"}' },
      },
    ],
  },
  { role: 'tool', tool_call_id: 'call_1a2b3c4d5e', content: '{"temperature_c": 21}' },
]

const names = Object.keys(TEMPLATES) as TemplateName[]

describe('toolFamily', () => {
  it.each(names)('knows how %s writes tool calls', (name) => {
    expect(toolFamily(TEMPLATES[name])).toBe(FAMILIES[name])
    expect(parseChatTemplate(TEMPLATES[name]).toolFamily).toBe(FAMILIES[name])
  })

  it('gives generic without a template, and for Gemma and Phi architectures', () => {
    expect(toolFamily(undefined)).toBe('generic')
    expect(parseChatTemplate(undefined).toolFamily).toBe('generic')
    expect(toolFamily(TEMPLATES['Qwen 2.5'], 'gemma3')).toBe('generic')
    expect(toolFamily(TEMPLATES['Qwen 2.5'], 'qwen2')).toBe('qwen')
  })
})

describe('tool call ids', () => {
  it('makes 9 alphanumeric characters for Mistral and call_ ids for the others', () => {
    expect(toolCallId('mistral')).toMatch(/^[a-zA-Z0-9]{9}$/)
    expect(toolCallId('qwen')).toMatch(/^call_[a-zA-Z0-9]{24}$/)
  })

  it('maps an id from the history to a stable Mistral id', () => {
    expect(mistralToolCallId('abcDEF123')).toBe('abcDEF123')
    expect(mistralToolCallId('call_1a2b3c4d5e')).toMatch(/^[a-zA-Z0-9]{9}$/)
    expect(mistralToolCallId('call_1a2b3c4d5e')).toBe(mistralToolCallId('call_1a2b3c4d5e'))
    expect(mistralToolCallId('call_1a2b3c4d5e')).not.toBe(mistralToolCallId('call_1a2b3c4d5f'))
  })
})

describe('rendering with tools', () => {
  it.each(names)('puts the tools into the prompt of %s', (name) => {
    const prompt = parseChatTemplate(TEMPLATES[name]).render({
      messages: [{ role: 'user', content: 'What is the weather in Paris?' }],
      tools: [WEATHER, TIME],
      bosToken: '<s>',
      eosToken: '</s>',
    })
    for (const text of [
      'get_weather',
      'Tells the current weather in a city',
      'get_time',
      'Name of the city',
    ]) {
      expect(prompt).toContain(text)
    }
    expect(prompt).not.toContain('strict')
  })

  it.each(names)('renders a round trip of %s: call, result, and the next turn', (name) => {
    const prompt = parseChatTemplate(TEMPLATES[name]).render({
      messages: ROUND_TRIP,
      tools: [WEATHER],
      bosToken: '<s>',
      eosToken: '</s>',
    })
    expect(prompt).toContain('What is the weather in Paris?')
    expect(prompt).toMatch(/"city": ?"Paris"/)
    expect(prompt).toContain('temperature_c')
  })

  it('renders the calls and results as Llama 3.1 writes them', () => {
    const prompt = parseChatTemplate(TEMPLATES['Llama 3.1']).render({
      messages: ROUND_TRIP,
      tools: [WEATHER],
    })
    expect(prompt).toContain(
      '<|start_header_id|>assistant<|end_header_id|>\n\n{"name": "get_weather", "parameters": {"city": "Paris"}}<|eot_id|>' +
        '<|start_header_id|>ipython<|end_header_id|>\n\n',
    )
    expect(prompt.endsWith('<|start_header_id|>assistant<|end_header_id|>\n\n')).toBe(true)
  })

  it('gives Llama 3.x parallel calls one assistant turn each, each followed by its result', () => {
    const prompt = parseChatTemplate(TEMPLATES['Llama 3.2']).render({
      messages: [
        { role: 'user', content: 'Weather and time in Paris?' },
        {
          role: 'assistant',
          content: '',
          tool_calls: [
            { id: 'a', type: 'function', function: { name: 'get_weather', arguments: '{"city":"Paris"}' } },
            { id: 'b', type: 'function', function: { name: 'get_time', arguments: '{}' } },
          ],
        },
        { role: 'tool', tool_call_id: 'b', content: 'noon' },
        { role: 'tool', tool_call_id: 'a', content: 'sunny' },
      ],
      tools: [WEATHER, TIME],
    })
    const order = ['"get_weather"', 'sunny', '"get_time"', 'noon'].map((s) => prompt.lastIndexOf(s))
    expect(order).toEqual([...order].sort((a, b) => a - b))
    expect(prompt).toContain('{"name": "get_time", "parameters": {}}')
  })

  it('renders the calls and results as Qwen 2.5 writes them', () => {
    const prompt = parseChatTemplate(TEMPLATES['Qwen 2.5']).render({ messages: ROUND_TRIP, tools: [WEATHER] })
    expect(prompt).toContain(
      '<|im_start|>assistant\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call><|im_end|>\n' +
        '<|im_start|>user\n<tool_response>\n{"temperature_c": 21}\n</tool_response><|im_end|>\n<|im_start|>assistant\n',
    )
  })

  it('renders an assistant turn with null content for Qwen 3', () => {
    const prompt = parseChatTemplate(TEMPLATES['Qwen 3']).render({ messages: ROUND_TRIP, tools: [WEATHER] })
    expect(prompt).toContain(
      '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>',
    )
  })

  it('gives Mistral templates 9-character ids, the same for the call and its result', () => {
    const id = mistralToolCallId('call_1a2b3c4d5e')
    const nemo = parseChatTemplate(TEMPLATES['Mistral Nemo']).render({
      messages: ROUND_TRIP,
      tools: [WEATHER],
    })
    expect(nemo).toContain(
      `[TOOL_CALLS][{"name": "get_weather", "arguments": {"city": "Paris"}, "id": "${id}"}]`,
    )
    expect(nemo).toContain(`"call_id": "${id}"}[/TOOL_RESULTS]`)
    const small = parseChatTemplate(TEMPLATES['Mistral Small 3.2']).render({
      messages: ROUND_TRIP,
      tools: [WEATHER],
    })
    expect(small).toContain(`[TOOL_CALLS]get_weather[CALL_ID]${id}[ARGS]{"city": "Paris"}`)
  })

  it('describes the tools in the system message of the fallback template, and folds calls and results into text', () => {
    const prompt = parseChatTemplate(undefined).render({ messages: ROUND_TRIP, tools: [WEATHER] })
    expect(prompt.startsWith('System: Answer in one sentence.\n\nYou can call the following tools.')).toBe(
      true,
    )
    expect(prompt).toContain('{"tool_calls": [{"name": "<tool name>", "arguments": {')
    expect(prompt).toContain(
      '\n\nUser: What is the weather in Paris?\n\n' +
        'Assistant: {"tool_calls":[{"name":"get_weather","arguments":{"city":"Paris"}}]}\n\n' +
        'User: Tool result (get_weather, call_1a2b3c4d5e):\n{"temperature_c": 21}\n\nAssistant:',
    )
  })

  it('adds a system message first when there is none', () => {
    const prompt = parseChatTemplate(undefined).render({
      messages: [{ role: 'user', content: 'Hi' }],
      tools: [WEATHER],
    })
    expect(prompt.startsWith('System: You can call the following tools.')).toBe(true)
    expect(prompt.endsWith('\n\nUser: Hi\n\nAssistant:')).toBe(true)
  })

  it('puts the system message into the first user turn of Gemma 2, whose roles alternate', () => {
    const template = parseChatTemplate(TEMPLATES['Gemma 2'])
    expect(
      template.render({
        messages: [
          { role: 'system', content: 'Be brief.' },
          { role: 'user', content: 'Hi' },
        ],
      }),
    ).toBe('<start_of_turn>user\nBe brief.\n\nHi<end_of_turn>\n<start_of_turn>model\n')
    const prompt = template.render({
      messages: [
        ...ROUND_TRIP,
        { role: 'tool', tool_call_id: 'call_x', name: 'get_time', content: 'noon' },
        { role: 'user', content: 'Thanks. And tomorrow?' },
      ],
      tools: [WEATHER, TIME],
    })
    expect(prompt.match(/<start_of_turn>/g)).toHaveLength(4)
    expect(prompt).toContain(
      'Tool result (get_weather, call_1a2b3c4d5e):\n{"temperature_c": 21}\n\nTool result (get_time, call_x):\nnoon\n\nThanks. And tomorrow?',
    )
  })

  it('folds tool messages for generic templates even without tools in the request', () => {
    const prompt = parseChatTemplate(TEMPLATES['Phi-3.5']).render({ messages: ROUND_TRIP })
    expect(prompt).toContain(
      '<|assistant|>\n{"tool_calls":[{"name":"get_weather","arguments":{"city":"Paris"}}]}<|end|>',
    )
    expect(prompt).not.toContain('You can call the following tools')
  })

  it('keeps rendering a chat without tools as before', () => {
    const messages: ChatMessage[] = [
      { role: 'system', content: 'Be brief.' },
      { role: 'user', content: 'Hi' },
    ]
    expect(parseChatTemplate(TEMPLATES['Qwen 2.5']).render({ messages })).toBe(
      '<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n',
    )
  })
})
