import { mkdtemp, readFile, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import Anthropic from '@anthropic-ai/sdk'
import { silentLogger } from '@meshnet/core'
import { generateModel } from '@meshnet/gguf'
import { Ollama } from 'ollama'
import OpenAI from 'openai'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { startOpenAiApi } from '../../src/agent/openai-api.ts'
import {
  BackendUnavailableError,
  type CompletionBackend,
  type CompletionRequest,
  MAX_OPENAI_BODY,
  type OpenAiApi,
} from '../../src/agent/openai-types.ts'
import { otherApis } from '../../src/agent/other-apis.ts'
import { type EngineBackend, engineBackend } from '../openai-backend.ts'
import { ANTHROPIC_TOOLS, INPUTS, OPENAI_TOOLS, PERSON, validFor } from '../tool-fixtures.ts'

// The Ollama and Anthropic APIs beside the OpenAI one, on a real engine, through their official
// clients: the same greedy text as the OpenAI API for the same conversation, the same counts as the
// tokenizer, and each API's own error shapes for what it refuses.

// ChatML, as Qwen's GGUFs carry it (its markers are plain text in the test vocabulary), refusing
// tool messages as some templates do (it has no tool syntax: tool messages are folded into text).
const CHAT_TEMPLATE =
  '{% for message in messages %}' +
  "{% if message['role'] == 'tool' %}{{ raise_exception('tool messages are not supported') }}{% endif %}" +
  "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}{% endfor %}" +
  "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"

/** CHAT_TEMPLATE's prompt for a user's message, after a system message when given. */
const chatml = (user: string, system?: string) =>
  `${system === undefined ? '' : `<|im_start|>system\n${system}<|im_end|>\n`}<|im_start|>user\n${user}<|im_end|>\n<|im_start|>assistant\n`

const API_KEY = 'sk-meshnet-other-apis'

let dir: string
let backend: EngineBackend
let api: OpenAiApi
let keyed: OpenAiApi
let host: string
let ollama: Ollama
let anthropic: Anthropic
let openai: OpenAI

const serve = (b: CompletionBackend, apiKey?: string) =>
  startOpenAiApi({
    backend: b,
    port: 0,
    ...(apiKey === undefined ? {} : { apiKey }),
    apiRoutes: otherApis({ backend: b, logger: silentLogger() }),
    logger: silentLogger(),
  })

beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'meshnet-other-apis-'))
  const plain = join(dir, 'tiny.gguf')
  const wide = join(dir, 'wide.gguf')
  const shape = {
    layers: 2,
    embd: 256,
    heads: 4,
    kvHeads: 2,
    ff: 512,
    vocab: 1000,
    type: 'Q8_0',
    seed: 11,
  } as const
  await generateModel({ out: plain, ...shape, context: 512 })
  // Prompts with tools take a thousand tokens of the test vocabulary (about one per character).
  await generateModel({ out: wide, ...shape, context: 4096 })
  // 'tiny-chat' with CHAT_TEMPLATE and 'tiny-qwen' with Qwen 2.5's own template (tool calls as
  // `<tool_call>` blocks), as a GGUF's tokenizer.chat_template gives them; 'tiny-wide' without one.
  const qwen = await readFile(
    join(import.meta.dirname, '..', 'fixtures', 'chat-templates', 'Qwen-Qwen2.5-7B-Instruct.jinja'),
    'utf8',
  )
  const templates: Record<string, string> = { 'tiny-chat': CHAT_TEMPLATE, 'tiny-qwen': qwen }
  const engines = await engineBackend([
    { id: 'tiny', modelPath: plain },
    { id: 'tiny-chat', modelPath: plain },
    { id: 'tiny-qwen', modelPath: wide },
    { id: 'tiny-wide', modelPath: wide },
  ])
  backend = {
    ...engines,
    models: () =>
      engines
        .models()
        .map((m) => (templates[m.id] === undefined ? m : { ...m, chatTemplate: templates[m.id] })),
  }
  api = await serve(backend)
  keyed = await serve(backend, API_KEY)
  host = `http://127.0.0.1:${api.port}`
  ollama = new Ollama({ host })
  anthropic = new Anthropic({ baseURL: host, apiKey: 'unused', maxRetries: 0 })
  openai = new OpenAI({ baseURL: `${host}/v1`, apiKey: 'unused', maxRetries: 0 })
})

afterAll(async () => {
  await api?.close()
  await keyed?.close()
  await backend?.dispose()
  await rm(dir, { recursive: true, force: true })
})

type Role = 'system' | 'user' | 'assistant'
type Turn = { role: Role; content: string }

/** The OpenAI chat endpoint's answer to the same conversation (greedy unless told). */
async function openaiChat(model: string, messages: Turn[], maxTokens: number, extra: object = {}) {
  const completion = await openai.chat.completions.create({
    model,
    messages,
    max_tokens: maxTokens,
    temperature: 0,
    ...extra,
  })
  return { text: completion.choices[0]!.message.content!, usage: completion.usage! }
}

/** The OpenAI completions endpoint's answer to a prompt as it is. */
async function openaiComplete(model: string, prompt: string, maxTokens: number) {
  const completion = await openai.completions.create({ model, prompt, max_tokens: maxTokens, temperature: 0 })
  return { text: completion.choices[0]!.text, usage: completion.usage! }
}

/** What the model's tokenizer makes of a prompt (with BOS and control tokens), as the backend counts. */
const tokens = (model: string, prompt: string) =>
  backend.engine(model).tokenizer.tokenize(prompt, { addSpecial: true, parseSpecial: true }).length

/** Sampling parameters the Anthropic client's types no longer list, sent as the API takes them. */
const sampling = (params: { temperature?: number; top_p?: number; top_k?: number }) =>
  params as Record<string, number>

const post = (path: string, body: unknown, headers: Record<string, string> = {}) =>
  fetch(`${host}${path}`, {
    method: 'POST',
    headers: { 'content-type': 'application/json', ...headers },
    body: typeof body === 'string' ? body : JSON.stringify(body),
  })

const CHAT: Turn[] = [
  { role: 'system', content: 'Be brief.' },
  { role: 'user', content: 'Hello world' },
]

const ASK_WEATHER = 'What is the weather in Paris for the next two days?'

describe('the Ollama API', () => {
  it('lists the served models and its version, and shows a model', async () => {
    const { models } = await ollama.list()
    expect(models.map((m) => m.name)).toEqual(['tiny', 'tiny-chat', 'tiny-qwen', 'tiny-wide'])
    expect(models[0]).toMatchObject({ model: 'tiny', details: { format: 'gguf' } })
    expect(Date.parse(String(models[0]!.modified_at))).toBeGreaterThan(Date.parse('2020-01-01'))
    expect((await ollama.version()).version).toMatch(/^\d+\.\d+\.\d+$/)
    const shown = await ollama.show({ model: 'tiny-chat' })
    expect(shown).toMatchObject({
      template: CHAT_TEMPLATE,
      parameters: 'num_ctx 512',
      capabilities: ['completion', 'tools'],
    })
    expect((await ollama.show({ model: 'tiny:latest' })).template).toBe('')
  })

  it("chats with the OpenAI API's greedy text and the tokenizer's counts, streamed or not", async () => {
    const expected = await openaiChat('tiny-chat', CHAT, 24)
    const prompt = chatml('Hello world', 'Be brief.')
    expect(expected.usage.prompt_tokens).toBe(tokens('tiny-chat', prompt))
    const options = { temperature: 0, num_predict: 24 }
    const answer = await ollama.chat({ model: 'tiny-chat', messages: CHAT, options, stream: false })
    expect(answer).toMatchObject({
      model: 'tiny-chat',
      message: { role: 'assistant', content: expected.text },
      done: true,
      done_reason: 'length',
      prompt_eval_count: expected.usage.prompt_tokens,
      eval_count: 24,
    })
    expect(answer.total_duration).toBeGreaterThanOrEqual(answer.prompt_eval_duration + answer.eval_duration)
    expect(answer.eval_duration).toBeGreaterThan(0)

    const pieces: string[] = []
    let last: Awaited<ReturnType<typeof ollama.chat>> | undefined
    for await (const part of await ollama.chat({
      model: 'tiny-chat',
      messages: CHAT,
      options,
      stream: true,
    })) {
      expect(part.model).toBe('tiny-chat')
      if (part.done) last = part
      else pieces.push(part.message.content)
    }
    expect(pieces.length).toBeGreaterThan(5)
    expect(pieces.join('')).toBe(expected.text)
    expect(last).toMatchObject({ message: { content: '' }, done_reason: 'length', eval_count: 24 })
    expect(last!.prompt_eval_count).toBe(expected.usage.prompt_tokens)
  })

  it('streams by default as NDJSON lines, the last one done with its figures in nanoseconds', async () => {
    const response = await post('/api/chat', { model: 'tiny', messages: CHAT, options: { num_predict: 8 } })
    expect(response.status).toBe(200)
    expect(response.headers.get('content-type')).toBe('application/x-ndjson')
    const text = await response.text()
    expect(text.endsWith('\n')).toBe(true)
    const lines = text
      .slice(0, -1)
      .split('\n')
      .map((line) => JSON.parse(line) as Record<string, unknown>)
    expect(lines.slice(0, -1).every((l) => l.done === false && typeof l.created_at === 'string')).toBe(true)
    const last = lines.at(-1)!
    expect(last).toMatchObject({ model: 'tiny', done: true, done_reason: 'length', eval_count: 8 })
    for (const field of ['total_duration', 'load_duration', 'prompt_eval_duration', 'eval_duration']) {
      expect(Number.isInteger(last[field]), field).toBe(true)
    }
    // A millisecond is a million nanoseconds: eight tokens take more than a microsecond.
    expect(last.total_duration as number).toBeGreaterThan(1000)
  })

  it('generates through the chat template, or raw, as the OpenAI endpoints do', async () => {
    const chat = await openaiChat('tiny-chat', CHAT, 16)
    const templated = await ollama.generate({
      model: 'tiny-chat',
      system: 'Be brief.',
      prompt: 'Hello world',
      options: { temperature: 0, num_predict: 16 },
    })
    expect(templated).toMatchObject({
      response: chat.text,
      done: true,
      prompt_eval_count: chat.usage.prompt_tokens,
    })

    const completion = await openaiComplete('tiny', 'Hello world', 20)
    const raw = await ollama.generate({
      model: 'tiny',
      prompt: 'Hello world',
      raw: true,
      options: { temperature: 0, num_predict: 20 },
    })
    expect(raw).toMatchObject({ response: completion.text, done_reason: 'length', eval_count: 20 })
    expect(raw.prompt_eval_count).toBe(completion.usage.prompt_tokens)
    let streamed = ''
    for await (const part of await ollama.generate({
      model: 'tiny',
      prompt: 'Hello world',
      raw: true,
      stream: true,
      options: { temperature: 0, num_predict: 20 },
    })) {
      streamed += part.response
    }
    expect(streamed).toBe(completion.text)
  })

  it('cuts at a stop sequence, continues a last assistant message, and samples as the OpenAI API does', async () => {
    const full = await openaiChat('tiny', [{ role: 'user', content: 'Hello world' }], 30)
    const stop = full.text.slice(10, 13)
    const cut = await ollama.chat({
      model: 'tiny',
      messages: [{ role: 'user', content: 'Hello world' }],
      options: { temperature: 0, num_predict: 30, stop: ['never-appears', stop] },
    })
    expect(cut.message.content).toBe(full.text.slice(0, full.text.indexOf(stop)))
    expect(cut.done_reason).toBe('stop')

    // A last assistant message is continued: the prompt ends with its text, not a new turn.
    const prefill = await openaiComplete('tiny-chat', `${chatml('Hello world')}Sure,`, 12)
    const continued = await ollama.chat({
      model: 'tiny-chat',
      messages: [
        { role: 'user', content: 'Hello world' },
        { role: 'assistant', content: 'Sure,' },
      ],
      options: { temperature: 0, num_predict: 12 },
    })
    expect(continued.message.content).toBe(prefill.text)

    const sampled = { temperature: 0.9, top_p: 0.9, top_k: 20, seed: 7 }
    const reference = await openaiChat('tiny', [{ role: 'user', content: 'The river' }], 20, sampled)
    const ask = () =>
      ollama.chat({
        model: 'tiny',
        messages: [{ role: 'user', content: 'The river' }],
        options: { ...sampled, num_predict: 20 },
      })
    expect((await ask()).message.content).toBe(reference.text)
    expect((await ask()).message.content).toBe(reference.text)
    expect(reference.text).not.toBe(
      (await openaiChat('tiny', [{ role: 'user', content: 'The river' }], 20)).text,
    )
  })

  it("samples with Ollama's defaults (temperature 0.8, top_p 0.9, top_k 40) where options leave them out", async () => {
    const messages = [{ role: 'user' as const, content: 'The river' }]
    const defaults = { temperature: 0.8, top_p: 0.9, top_k: 40, seed: 5 }
    const reference = await openaiChat('tiny', messages, 20, defaults)
    const answer = await ollama.chat({ model: 'tiny', messages, options: { seed: 5, num_predict: 20 } })
    expect(backend.requests.at(-1)).toMatchObject({ temperature: 0.8, topP: 0.9, topK: 40, seed: 5 })
    expect(answer.message.content).toBe(reference.text)
    expect(reference.text).not.toBe((await openaiChat('tiny', messages, 20)).text)
  })

  it('applies presence and frequency penalties as the OpenAI API does', async () => {
    const messages = [{ role: 'user' as const, content: 'The river' }]
    const penalties = { temperature: 0, presence_penalty: -2, frequency_penalty: -1 }
    const reference = await openaiChat('tiny', messages, 20, penalties)
    const answer = await ollama.chat({ model: 'tiny', messages, options: { ...penalties, num_predict: 20 } })
    expect(backend.requests.at(-1)).toMatchObject({ presencePenalty: -2, frequencyPenalty: -1 })
    expect(answer.message.content).toBe(reference.text)
    // They change the answer (negative penalties favour what was already written).
    expect(reference.text).not.toBe((await openaiChat('tiny', messages, 20, { temperature: 0 })).text)
  })

  it('feeds tool calls and results back through the template, answering as the OpenAI API does', async () => {
    const args = { city: 'Paris', unit: 'celsius', days: 2 }
    const result = '{"temperature": 21, "sky": "clear"}'
    const options = { temperature: 0, num_predict: 24 }
    const reference = await openai.chat.completions.create({
      model: 'tiny-qwen',
      messages: [
        { role: 'user', content: ASK_WEATHER },
        {
          role: 'assistant',
          content: null,
          tool_calls: [
            {
              id: 'call_1',
              type: 'function',
              function: { name: 'get_weather', arguments: JSON.stringify(args) },
            },
          ],
        },
        { role: 'tool', tool_call_id: 'call_1', content: result },
      ],
      tools: OPENAI_TOOLS,
      max_tokens: 24,
      temperature: 0,
    })
    const expected = reference.choices[0]!.message
    expect(expected.tool_calls).toBeUndefined()
    const request = {
      model: 'tiny-qwen',
      messages: [
        { role: 'user', content: ASK_WEATHER },
        {
          role: 'assistant',
          content: '',
          tool_calls: [{ function: { name: 'get_weather', arguments: args } }],
        },
        { role: 'tool', content: result, tool_name: 'get_weather' },
      ],
      tools: OPENAI_TOOLS,
      options,
    }
    const answer = await ollama.chat({ ...request, stream: false })
    expect(answer).toMatchObject({
      message: { role: 'assistant', content: expected.content },
      prompt_eval_count: reference.usage!.prompt_tokens,
      done_reason: 'length',
    })
    expect(answer.message.tool_calls).toBeUndefined()
    // Qwen's template renders the call and the result in its own syntax.
    expect(backend.requests.at(-1)!.prompt).toContain(
      '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris", "unit": "celsius", "days": 2}}\n</tool_call>',
    )
    expect(backend.requests.at(-1)!.prompt).toContain(`<tool_response>\n${result}\n</tool_response>`)
    let streamed = ''
    for await (const part of await ollama.chat({ ...request, stream: true })) streamed += part.message.content
    expect(streamed).toBe(expected.content)
  })

  it('folds tool calls and results into the text of a template without tool syntax', async () => {
    const answer = await ollama.chat({
      model: 'tiny-chat',
      messages: [
        { role: 'user', content: ASK_WEATHER },
        {
          role: 'assistant',
          content: '',
          tool_calls: [{ function: { name: 'get_weather', arguments: { city: 'Paris' } } }],
        },
        { role: 'tool', content: '21 degrees and clear', tool_name: 'get_weather' },
      ],
      options: { num_predict: 2 },
    })
    expect(answer.eval_count).toBe(2)
    const { prompt } = backend.requests.at(-1)!
    expect(prompt).toContain(
      '<|im_start|>assistant\n{"tool_calls":[{"name":"get_weather","arguments":{"city":"Paris"}}]}',
    )
    expect(prompt).toContain(
      '<|im_start|>user\nTool result (get_weather, call_1_0):\n21 degrees and clear<|im_end|>',
    )
  })

  it('answers JSON valid for a format schema, or any JSON object for "json", as the OpenAI API does', async () => {
    const messages = [{ role: 'user' as const, content: 'Describe a user' }]
    for (const model of ['tiny', 'tiny-qwen']) {
      const reference = await openaiChat(model, messages, 80, {
        response_format: { type: 'json_schema', json_schema: { name: 'person', schema: PERSON } },
      })
      const options = { temperature: 0, num_predict: 80 }
      const answer = await ollama.chat({ model, messages, format: PERSON, options })
      expect(answer.message.content, model).toBe(reference.text)
      expect(validFor(PERSON, JSON.parse(answer.message.content)), answer.message.content).toBe(true)
      let streamed = ''
      for await (const part of await ollama.chat({
        model,
        messages,
        format: PERSON,
        options,
        stream: true,
      })) {
        streamed += part.message.content
      }
      expect(streamed).toBe(reference.text)

      const generated = await ollama.generate({ model, prompt: 'Describe a user', format: PERSON, options })
      expect(generated.response).toBe(reference.text)
      let generatedStreamed = ''
      for await (const part of await ollama.generate({
        model,
        prompt: 'Describe a user',
        format: PERSON,
        options,
        stream: true,
      })) {
        generatedStreamed += part.response
      }
      expect(generatedStreamed).toBe(reference.text)
    }
    // "json": any JSON object, sampled at Ollama's defaults.
    const json = await ollama.chat({
      model: 'tiny',
      messages,
      format: 'json',
      options: { seed: 3, num_predict: 40 },
    })
    const value: unknown = JSON.parse(json.message.content)
    expect(typeof value === 'object' && value !== null && !Array.isArray(value)).toBe(true)
  })

  it('fits in a smaller num_ctx, and answers a request without messages as a load', async () => {
    const messages = [{ role: 'user', content: 'Hello world' }]
    const small = await ollama.chat({ model: 'tiny', messages, options: { num_ctx: 40 } })
    expect(small.done_reason).toBe('length')
    expect(small.prompt_eval_count + small.eval_count).toBe(40)
    const tooSmall = await ollama
      .chat({ model: 'tiny', messages, options: { num_ctx: 4 } })
      .catch((e: unknown) => e)
    expect(tooSmall).toMatchObject({ status_code: 400, error: expect.stringMatching(/4-token context/) })

    const loaded = await ollama.chat({ model: 'tiny:latest', messages: [] })
    expect(loaded).toMatchObject({
      model: 'tiny:latest',
      done: true,
      done_reason: 'load',
      message: { content: '' },
    })
    expect(await ollama.generate({ model: 'tiny', prompt: '', keep_alive: 0 })).toMatchObject({
      response: '',
      done_reason: 'unload',
    })
  })

  const bad: [string, Record<string, unknown>, RegExp][] = [
    ['/api/chat', { model: 7 }, /^model: must be a string$/],
    ['/api/chat', { model: undefined }, /^model: is required$/],
    ['/api/chat', { messages: 'Hi' }, /^messages: must be an array/],
    ['/api/chat', { messages: [{ role: 'robot', content: 'x' }] }, /^messages\.0\.role: must be/],
    [
      '/api/chat',
      {
        messages: [{ role: 'user', content: 'x', tool_calls: [{ function: { name: 'f', arguments: {} } }] }],
      },
      /^messages\.0\.tool_calls: are only allowed in an 'assistant' message$/,
    ],
    [
      '/api/chat',
      { messages: [{ role: 'assistant', tool_calls: [{ function: { name: 'f', arguments: '{}' } }] }] },
      /^messages\.0\.tool_calls\.0\.function\.arguments: must be an object$/,
    ],
    [
      '/api/chat',
      { messages: [{ role: 'user', content: 'x', images: ['aGk='] }] },
      /images are not supported/,
    ],
    [
      '/api/chat',
      { messages: Array.from({ length: 5000 }, () => ({ role: 'user' })) },
      /at most 4096 messages/,
    ],
    [
      '/api/chat',
      { tools: [{ type: 'function', function: { name: 'get weather' } }] },
      /tools\[0\]\.function\.name "get weather" is not a valid tool name/,
    ],
    ['/api/chat', { tools: [{ type: 'retrieval' }] }, /^tools\.0\.type: must be 'function'$/],
    ['/api/chat', { format: 'yaml' }, /^format: must be 'json' or a JSON Schema object$/],
    [
      '/api/chat',
      { format: { type: 'object', properties: { code: { type: 'string', pattern: '^[A-Z]+$' } } } },
      /^format: response schema at \/properties\/code: "pattern" is not supported/,
    ],
    ['/api/chat', { think: true }, /^think: thinking is not supported/],
    ['/api/chat', { foo: 1 }, /^unknown field "foo": this server does not know it/],
    ['/api/chat', { options: { repeat_penalty: 1.1 } }, /^options\.repeat_penalty: only 1 is supported/],
    ['/api/chat', { options: { mirostat: 2 } }, /^options\.mirostat: only 0 is supported/],
    ['/api/chat', { options: { num_predict: '8' } }, /^options\.num_predict: must be a whole number/],
    ['/api/chat', { options: { temperature: 3 } }, /^options\.temperature: must be at most 2/],
    ['/api/chat', { options: { stop: Array.from({ length: 17 }, (_, i) => `s${i}`) } }, /at most 16 stop/],
    ['/api/chat', { options: { frobnicate: true } }, /^options: unknown option "frobnicate"/],
    ['/api/chat', { options: 'fast' }, /^options: must be an object/],
    ['/api/generate', { prompt: 'Hi', template: '{{ .Prompt }}' }, /^template: template is not supported/],
    ['/api/generate', { prompt: 'Hi', raw: true, system: 'Be brief.' }, /^system: is not used with raw/],
    ['/api/generate', { prompt: 'Hi', context: [1, 2, 3] }, /^context: context/],
    ['/api/generate', { prompt: 'Hi', suffix: 'end' }, /^suffix: suffix/],
    ['/api/generate', { prompt: ['Hi'] }, /^prompt: must be a string/],
    [
      '/api/generate',
      { prompt: 'Hi', format: { type: 'string', format: 'email' } },
      /^format: .*"format" is not supported/,
    ],
  ]

  it.each(
    bad.map(([path, change, message]) => [path, Object.keys(change).join(', '), change, message] as const),
  )('%s answers 400 in Ollama’s shape to a bad %s', async (path, _field, change, message) => {
    const body = { model: 'tiny', messages: [{ role: 'user', content: 'Hi' }], stream: false, ...change }
    if (path === '/api/generate') delete (body as { messages?: unknown }).messages
    const response = await post(path, body)
    expect(response.status).toBe(400)
    const error = (await response.json()) as { error: string }
    expect(Object.keys(error)).toEqual(['error'])
    expect(error.error).toMatch(message)
  })

  it('refuses bodies that are not JSON objects, too large or deeply nested, and keeps serving', async () => {
    const deep = `{"model":"tiny","foo":${'['.repeat(100_000)}${']'.repeat(100_000)}}`
    for (const [body, status, message] of [
      ['{"model": "tiny",', 400, /not valid JSON/],
      ['[1, 2]', 400, /must be a JSON object/],
      ['', 400, /must be a JSON object/],
      [deep, 400, /unknown field "foo"/],
      [JSON.stringify({ model: 'tiny', prompt: 'x'.repeat(MAX_OPENAI_BODY) }), 413, /larger than/],
    ] as const) {
      const response = await post('/api/generate', body)
      expect(response.status, body.slice(0, 40)).toBe(status)
      expect(((await response.json()) as { error: string }).error).toMatch(message)
    }
    const notFound = await ollama.chat({ model: 'llama3', messages: CHAT }).catch((e: unknown) => e)
    expect(notFound).toMatchObject({ name: 'ResponseError', status_code: 404 })
    expect((notFound as Error).message).toMatch(
      /model 'llama3' not found: this agent serves tiny, tiny-chat, tiny-qwen, tiny-wide/,
    )
    const method = await fetch(`${host}/api/chat`)
    expect(method.status).toBe(405)
    expect(method.headers.get('allow')).toBe('POST')
    const pull = await post('/api/pull', { model: 'llama3' })
    expect(pull.status).toBe(501)
    expect(((await pull.json()) as { error: string }).error).toMatch(/mesh start --model/)
    expect(
      (await ollama.generate({ model: 'tiny', prompt: 'Hi', raw: true, options: { num_predict: 2 } }))
        .eval_count,
    ).toBe(2)
  })
})

describe('the Anthropic Messages API', () => {
  it("answers with the OpenAI API's greedy text and the tokenizer's counts", async () => {
    const expected = await openaiChat('tiny-chat', CHAT, 24)
    const message = await anthropic.messages.create({
      model: 'tiny-chat',
      system: 'Be brief.',
      messages: [{ role: 'user', content: 'Hello world' }],
      max_tokens: 24,
      ...sampling({ temperature: 0 }),
    })
    expect(message).toMatchObject({
      type: 'message',
      role: 'assistant',
      model: 'tiny-chat',
      content: [{ type: 'text', text: expected.text }],
      stop_reason: 'max_tokens',
      stop_sequence: null,
      usage: { input_tokens: expected.usage.prompt_tokens, output_tokens: 24 },
    })
    expect(message.id).toMatch(/^msg_/)

    // System and content as text blocks: joined with a newline, as the OpenAI API joins parts.
    const parts = await openai.chat.completions.create({
      model: 'tiny-chat',
      messages: [
        { role: 'system', content: 'Be brief.' },
        {
          role: 'user',
          content: [
            { type: 'text', text: 'Hello' },
            { type: 'text', text: 'world' },
          ],
        },
      ],
      max_tokens: 16,
      temperature: 0,
    })
    const blocks = await anthropic.messages.create({
      model: 'tiny-chat',
      system: [{ type: 'text', text: 'Be brief.', cache_control: { type: 'ephemeral' } }],
      messages: [
        {
          role: 'user',
          content: [
            { type: 'text', text: 'Hello' },
            { type: 'text', text: 'world' },
          ],
        },
      ],
      max_tokens: 16,
      metadata: { user_id: 'someone' },
      ...sampling({ temperature: 0 }),
    })
    expect(blocks.content).toEqual([{ type: 'text', text: parts.choices[0]!.message.content }])
    expect(blocks.usage.input_tokens).toBe(parts.usage!.prompt_tokens)

    // Consecutive user messages are one turn, as Anthropic combines them.
    const combined = await anthropic.messages.create({
      model: 'tiny-chat',
      system: 'Be brief.',
      messages: [
        { role: 'user', content: 'Hello' },
        { role: 'user', content: [{ type: 'text', text: 'world' }] },
      ],
      max_tokens: 16,
      ...sampling({ temperature: 0 }),
    })
    expect(combined.content).toEqual(blocks.content)
    expect(combined.usage).toEqual(blocks.usage)
  })

  it('streams deltas that concatenate to the message, with messages.stream and stream: true', async () => {
    const params = {
      model: 'tiny',
      messages: [{ role: 'user' as const, content: 'Hello world' }],
      max_tokens: 20,
      ...sampling({ temperature: 0 }),
    }
    const whole = await anthropic.messages.create(params)
    const deltas: string[] = []
    const stream = anthropic.messages.stream(params).on('text', (text) => deltas.push(text))
    const final = await stream.finalMessage()
    expect(deltas.length).toBeGreaterThan(5)
    expect(deltas.join('')).toBe((whole.content[0] as Anthropic.TextBlock).text)
    expect(final.content.map(clean)).toEqual(whole.content.map(clean))
    expect(final).toMatchObject({ stop_reason: 'max_tokens', usage: whole.usage })

    const types: string[] = []
    let text = ''
    for await (const event of await anthropic.messages.create({ ...params, stream: true })) {
      types.push(event.type)
      if (event.type === 'content_block_delta' && event.delta.type === 'text_delta') text += event.delta.text
    }
    expect(text).toBe(deltas.join(''))
    expect(types[0]).toBe('message_start')
    expect(types.slice(-3)).toEqual(['content_block_stop', 'message_delta', 'message_stop'])
  })

  it('sends each event as an event line and its data, in Anthropic’s order, ping included', async () => {
    const response = await post('/v1/messages', {
      model: 'tiny',
      messages: [{ role: 'user', content: 'Hello world' }],
      max_tokens: 6,
      stream: true,
    })
    expect(response.status).toBe(200)
    expect(response.headers.get('content-type')).toMatch(/^text\/event-stream/)
    const events = (await response.text())
      .trimEnd()
      .split('\n\n')
      .map((event) => {
        const [name, data] = event.split('\n')
        expect(name).toMatch(/^event: /)
        expect(data).toMatch(/^data: /)
        const body = JSON.parse(data!.slice('data: '.length)) as { type: string; [key: string]: unknown }
        expect(body.type).toBe(name!.slice('event: '.length))
        return body
      })
    const names = events.map((e) => e.type)
    expect(names.slice(0, 3)).toEqual(['message_start', 'content_block_start', 'ping'])
    expect(new Set(names.slice(3, -3))).toEqual(new Set(['content_block_delta']))
    expect(names.slice(-3)).toEqual(['content_block_stop', 'message_delta', 'message_stop'])
    const input = tokens('tiny', 'User: Hello world\n\nAssistant:')
    expect(events[0]).toMatchObject({
      message: {
        type: 'message',
        role: 'assistant',
        content: [],
        stop_reason: null,
        usage: { input_tokens: input },
      },
    })
    expect(events.at(-2)).toMatchObject({
      delta: { stop_reason: 'max_tokens', stop_sequence: null },
      usage: { output_tokens: 6 },
    })
  })

  it('stops at a stop sequence and names it, continues a prefill, and says when the context ran out', async () => {
    const full = await openaiChat('tiny', [{ role: 'user', content: 'Hello world' }], 30)
    const stop = full.text.slice(10, 13)
    const cut = await anthropic.messages.create({
      model: 'tiny',
      messages: [{ role: 'user', content: 'Hello world' }],
      max_tokens: 30,
      stop_sequences: ['never-appears', stop],
      ...sampling({ temperature: 0 }),
    })
    expect(cut).toMatchObject({
      content: [{ text: full.text.slice(0, full.text.indexOf(stop)) }],
      stop_reason: 'stop_sequence',
      stop_sequence: stop,
    })
    const streamed = await anthropic.messages
      .stream({
        model: 'tiny',
        messages: [{ role: 'user', content: 'Hello world' }],
        max_tokens: 30,
        stop_sequences: [stop],
        ...sampling({ temperature: 0 }),
      })
      .finalMessage()
    expect(streamed).toMatchObject({
      content: cut.content.map(clean),
      stop_reason: 'stop_sequence',
      stop_sequence: stop,
    })

    const prefill = await openaiComplete('tiny-chat', `${chatml('Hello world')}Sure,`, 12)
    const continued = await anthropic.messages.create({
      model: 'tiny-chat',
      messages: [
        { role: 'user', content: 'Hello world' },
        { role: 'assistant', content: 'Sure,' },
      ],
      max_tokens: 12,
      ...sampling({ temperature: 0 }),
    })
    expect(continued.content).toEqual([{ type: 'text', text: prefill.text }])

    // max_tokens beyond the context (512) is capped to what the prompt leaves.
    const long = await anthropic.messages.create({
      model: 'tiny',
      messages: [{ role: 'user', content: 'Hello world' }],
      max_tokens: 4096,
      ...sampling({ temperature: 0 }),
    })
    expect(long.stop_reason).toBe('model_context_window_exceeded')
    expect(long.usage.input_tokens + long.usage.output_tokens).toBe(512)
  }, 60_000)

  it('passes temperature, top_p and top_k to the backend as the OpenAI API does', async () => {
    const asked: CompletionRequest[] = []
    const recording: CompletionBackend = {
      models: () => backend.models(),
      countTokens: (model, text) => backend.countTokens(model, text),
      generate: (request) => {
        asked.push(request)
        return backend.generate(request)
      },
    }
    const server = await serve(recording)
    try {
      const client = new Anthropic({ baseURL: `http://127.0.0.1:${server.port}`, apiKey: 'x', maxRetries: 0 })
      const message = await client.messages.create({
        model: 'tiny',
        messages: [{ role: 'user', content: 'The river' }],
        max_tokens: 20,
        ...sampling({ temperature: 0.9, top_p: 0.9, top_k: 20 }),
      })
      expect(message.usage.output_tokens).toBe(20)
      // The Messages API has no seed: the agent's default applies.
      expect(asked).toEqual([
        expect.objectContaining({ model: 'tiny', maxTokens: 20, temperature: 0.9, topP: 0.9, topK: 20 }),
      ])
      expect(asked[0]!.seed).toBeUndefined()
    } finally {
      await server.close()
    }
  })

  it("samples with Anthropic's defaults (temperature 1, top_p 1, top_k 0) where the request leaves them out", async () => {
    await anthropic.messages.create({
      model: 'tiny',
      messages: [{ role: 'user', content: 'Hi' }],
      max_tokens: 2,
    })
    expect(backend.requests.at(-1)).toMatchObject({ temperature: 1, topP: 1, topK: 0 })
    expect(backend.requests.at(-1)!.seed).toBeUndefined()
  })

  it.each([
    ['any', { type: 'any' }, 'required'],
    ['tool', { type: 'tool', name: 'get_weather' }, { type: 'function', function: { name: 'get_weather' } }],
  ] as const)(
    'forces a call with tool_choice %s: a tool_use block valid for its input_schema, the OpenAI API’s call, streamed or not',
    async (_, choice, openaiChoice) => {
      // Qwen's `<tool_call>` blocks, and the generic JSON of a template without tool syntax.
      for (const model of ['tiny-qwen', 'tiny-wide']) {
        const messages = [{ role: 'user' as const, content: ASK_WEATHER }]
        const params = {
          model,
          messages,
          max_tokens: 120,
          tools: ANTHROPIC_TOOLS,
          tool_choice: choice,
          ...sampling({ temperature: 0 }),
        }
        const message = await anthropic.messages.create(params)
        expect(message.stop_reason, model).toBe('tool_use')
        expect(message.content).toHaveLength(1)
        const use = message.content[0] as Anthropic.ToolUseBlock
        expect(use).toMatchObject({ type: 'tool_use', id: expect.stringMatching(/^toolu_[\w-]+$/) })
        if (choice.type === 'tool') expect(use.name).toBe('get_weather')
        expect(validFor(INPUTS[use.name]!, use.input), JSON.stringify(use.input)).toBe(true)

        const streamed = await anthropic.messages.stream(params).finalMessage()
        expect(streamed.stop_reason).toBe('tool_use')
        expect(streamed.content).toEqual([
          { type: 'tool_use', id: expect.any(String), name: use.name, input: use.input },
        ])

        const reference = await openai.chat.completions.create({
          model,
          messages,
          tools: OPENAI_TOOLS,
          tool_choice: openaiChoice,
          max_tokens: 120,
          temperature: 0,
        })
        const call = reference.choices[0]!.message
          .tool_calls![0] as OpenAI.ChatCompletionMessageFunctionToolCall
        expect({ name: use.name, input: use.input }).toEqual({
          name: call.function.name,
          input: JSON.parse(call.function.arguments),
        })
        expect(message.usage.input_tokens).toBe(reference.usage!.prompt_tokens)
      }
    },
  )

  it('feeds tool_result blocks back: the OpenAI API’s answer to the same conversation', async () => {
    const result = '{"temperature": 21, "sky": "clear"}'
    for (const model of ['tiny-qwen', 'tiny-wide']) {
      const question = { role: 'user' as const, content: ASK_WEATHER }
      const forced = await anthropic.messages.create({
        model,
        messages: [question],
        max_tokens: 120,
        tools: ANTHROPIC_TOOLS,
        tool_choice: { type: 'tool', name: 'get_weather' },
        ...sampling({ temperature: 0 }),
      })
      const use = forced.content[0] as Anthropic.ToolUseBlock
      for (const choice of ['auto', 'none'] as const) {
        const params = {
          model,
          messages: [
            question,
            { role: 'assistant' as const, content: forced.content },
            {
              role: 'user' as const,
              content: [
                {
                  type: 'tool_result' as const,
                  tool_use_id: use.id,
                  content: [{ type: 'text' as const, text: result }],
                },
                { type: 'text' as const, text: 'Thanks!' },
              ],
            },
          ],
          max_tokens: 24,
          tools: ANTHROPIC_TOOLS,
          tool_choice: { type: choice },
          ...sampling({ temperature: 0 }),
        }
        const answer = await anthropic.messages.create(params)
        const reference = await openai.chat.completions.create({
          model,
          messages: [
            question,
            {
              role: 'assistant',
              content: null,
              tool_calls: [
                {
                  id: use.id,
                  type: 'function',
                  function: { name: use.name, arguments: JSON.stringify(use.input) },
                },
              ],
            },
            { role: 'tool', tool_call_id: use.id, content: result },
            { role: 'user', content: 'Thanks!' },
          ],
          tools: OPENAI_TOOLS,
          tool_choice: choice,
          max_tokens: 24,
          temperature: 0,
        })
        const expected = reference.choices[0]!.message
        expect(expected.tool_calls, `${model}, ${choice}`).toBeUndefined()
        // (The call's id is random and some templates show it: the answer may end early or not.)
        expect(answer).toMatchObject({
          content: [{ type: 'text', text: expected.content }],
          stop_reason: reference.choices[0]!.finish_reason === 'length' ? 'max_tokens' : 'end_turn',
          usage: {
            input_tokens: reference.usage!.prompt_tokens,
            output_tokens: reference.usage!.completion_tokens,
          },
        })
        const streamed = await anthropic.messages.stream(params).finalMessage()
        expect(streamed.content.map(clean)).toEqual(answer.content)
        expect(backend.requests.at(-1)!.prompt).toContain(result)
      }
    }
  })

  const bad: [Record<string, unknown>, RegExp][] = [
    [{ max_tokens: undefined }, /^max_tokens: Field required$/],
    [{ max_tokens: '10' }, /^max_tokens: Input should be a valid integer$/],
    [{ max_tokens: 0 }, /^max_tokens: Input should be greater than or equal to 1$/],
    [{ model: undefined }, /^model: Field required$/],
    [{ messages: [] }, /^messages: List should have at least 1 item$/],
    [{ messages: 'Hi' }, /^messages: Input should be a valid list$/],
    [
      { messages: [{ role: 'robot', content: 'Hi' }] },
      /^messages\.0\.role: Input should be 'user' or 'assistant'$/,
    ],
    [
      { messages: [{ role: 'user', content: 7 }] },
      /^messages\.0\.content: Input should be a valid string or a list/,
    ],
    [
      {
        messages: [{ role: 'user', content: [{ type: 'image', source: { type: 'base64', data: 'aGk=' } }] }],
      },
      /^messages\.0\.content\.0\.type: only 'text', 'tool_use' and 'tool_result' content blocks are supported by this server, not 'image'$/,
    ],
    [
      { messages: [{ role: 'user', content: [{ type: 'text', text: 1 }] }] },
      /^messages\.0\.content\.0\.text: Input/,
    ],
    [
      { messages: [{ role: 'user', content: 'Hi', name: 'me' }] },
      /^messages\.0: name: Extra inputs are not permitted$/,
    ],
    [
      { messages: Array.from({ length: 5000 }, () => ({ role: 'user', content: '' })) },
      /^messages: List should have at most 4096 items$/,
    ],
    [{ temperature: 1.5 }, /^temperature: Input should be less than or equal to 1$/],
    [{ top_k: 2.5 }, /^top_k: Input should be a valid integer$/],
    [{ stop_sequences: 'END' }, /^stop_sequences: Input should be a valid list$/],
    [
      { stop_sequences: Array.from({ length: 17 }, (_, i) => `s${i}`) },
      /^stop_sequences: List should have at most 16/,
    ],
    [{ system: [{ type: 'text' }] }, /^system\.0\.text: Field required$/],
    [
      { system: [{ type: 'tool_result', tool_use_id: 'toolu_1' }] },
      /^system\.0\.type: only 'text' content blocks/,
    ],
    [
      {
        tools: [
          {
            name: 'get_weather',
            input_schema: { type: 'object', properties: { city: { type: 'string', pattern: '^[A-Z]' } } },
          },
        ],
      },
      /^tools\.0\.input_schema: tool get_weather schema at \/properties\/city: "pattern" is not supported/,
    ],
    [
      { tools: [{ type: 'web_search_20250305', name: 'web_search', max_uses: 3 }] },
      /^tools\.0\.type: only custom tools \(name, description, input_schema\) are supported by this server, not 'web_search_20250305'$/,
    ],
    [
      { tools: [{ name: 'get weather', input_schema: { type: 'object' } }] },
      /^tools\.0\.name: String should match pattern/,
    ],
    [
      { tools: [{ name: 'f', input_schema: { type: 'array' } }] },
      /^tools\.0\.input_schema\.type: Input should be 'object'$/,
    ],
    [{ tools: [{ name: 'f' }] }, /^tools\.0\.input_schema: Field required$/],
    [
      {
        tools: [
          { name: 'f', input_schema: { type: 'object' } },
          { name: 'f', input_schema: { type: 'object' } },
        ],
      },
      /^tools: Tool names must be unique: 'f' is given twice$/,
    ],
    [{ tool_choice: { type: 'any' } }, /^tool_choice: tool_choice of type 'any' needs tools/],
    [
      { tools: [{ name: 'f', input_schema: { type: 'object' } }], tool_choice: { type: 'tool', name: 'g' } },
      /^tool_choice\.name: 'g' is not among the tools \(f\)$/,
    ],
    [
      { tool_choice: { type: 'sometimes' } },
      /^tool_choice(\.type)?: Input tag should be 'auto', 'any', 'tool' or 'none'$/,
    ],
    [
      { messages: [{ role: 'user', content: [{ type: 'tool_use', id: 'toolu_1', name: 'f', input: {} }] }] },
      /^messages\.0\.content\.0\.type: 'tool_use' blocks are only allowed in assistant messages$/,
    ],
    [
      {
        messages: [
          { role: 'user', content: 'Hi' },
          { role: 'assistant', content: [{ type: 'tool_use', id: 'toolu_1', name: 'f', input: 'x' }] },
        ],
      },
      /^messages\.1\.content\.0\.input: Input should be a valid dictionary$/,
    ],
    [
      {
        messages: [
          { role: 'user', content: [{ type: 'tool_result', tool_use_id: 'toolu_9', content: '1' }] },
        ],
      },
      /^messages\.0: unexpected `tool_use_id` found in `tool_result` blocks: toolu_9\. Each `tool_result` block must have a corresponding `tool_use` block in the previous message\.$/,
    ],
    [
      {
        messages: [
          { role: 'user', content: 'Hi' },
          { role: 'assistant', content: [{ type: 'tool_use', id: 'toolu_1', name: 'f', input: {} }] },
          { role: 'user', content: 'Go on' },
        ],
      },
      /^messages\.1: `tool_use` ids were found without `tool_result` blocks immediately after: toolu_1\./,
    ],
    [
      {
        messages: [
          { role: 'user', content: 'Hi' },
          { role: 'assistant', content: [{ type: 'tool_use', id: 'toolu_1', name: 'f', input: {} }] },
          {
            role: 'user',
            content: [
              { type: 'tool_result', tool_use_id: 'toolu_1', content: [{ type: 'image', source: {} }] },
            ],
          },
        ],
      },
      /^messages\.2\.content\.0\.content: Input should be a valid string or a list of text blocks/,
    ],
    [{ thinking: { type: 'enabled', budget_tokens: 2048 } }, /^thinking: extended thinking is not supported/],
    [{ n: 2 }, /^n: Extra inputs are not permitted$/],
    [
      { metadata: { user_id: { a: { a: { a: {} } } } } },
      /^metadata\.user_id: Input should be a valid string$/,
    ],
  ]

  it.each(bad.map(([change, message]) => [Object.keys(change).join(', '), change, message] as const))(
    'answers 400 in Anthropic’s shape to a bad %s',
    async (_field, change, message) => {
      const response = await post('/v1/messages', {
        model: 'tiny',
        messages: [{ role: 'user', content: 'Hi' }],
        max_tokens: 4,
        ...change,
      })
      expect(response.status).toBe(400)
      const body = (await response.json()) as { type: string; error: { type: string; message: string } }
      expect(body.type).toBe('error')
      expect(body.error.type).toBe('invalid_request_error')
      expect(body.error.message).toMatch(message)
    },
  )

  it('raises the client’s own errors, and keeps serving', async () => {
    const missing = await anthropic.messages
      .create({ model: 'claude-opus-4-8', messages: [{ role: 'user', content: 'Hi' }], max_tokens: 4 })
      .catch((e: unknown) => e)
    expect(missing).toBeInstanceOf(Anthropic.NotFoundError)
    expect(missing).toMatchObject({
      status: 404,
      error: { type: 'error', error: { type: 'not_found_error' } },
    })
    const invalid = await anthropic.messages
      .create({
        model: 'tiny',
        messages: [{ role: 'user', content: 'Hi' }],
        max_tokens: 4,
        ...sampling({ top_p: 0 }),
      })
      .catch((e: unknown) => e)
    expect(invalid).toBeInstanceOf(Anthropic.BadRequestError)
    expect((invalid as Error).message).toMatch(/top_p: Input should be greater than 0/)
    for (const [body, status, type] of [
      ['{"model":', 400, 'invalid_request_error'],
      ['null', 400, 'invalid_request_error'],
      [
        `{"model":"tiny","max_tokens":4,"messages":[{"role":"user","content":"Hi"}],"foo":${'['.repeat(100_000)}${']'.repeat(100_000)}}`,
        400,
        'invalid_request_error',
      ],
      [
        JSON.stringify({
          model: 'tiny',
          max_tokens: 4,
          messages: [{ role: 'user', content: 'x'.repeat(MAX_OPENAI_BODY) }],
        }),
        413,
        'request_too_large',
      ],
    ] as const) {
      const response = await post('/v1/messages', body)
      expect(response.status).toBe(status)
      expect(((await response.json()) as { error: { type: string } }).error.type).toBe(type)
    }
    const method = await fetch(`${host}/v1/messages`)
    expect(method.status).toBe(405)
    expect(((await method.json()) as { type: string }).type).toBe('error')
    const count = await post('/v1/messages/count_tokens', { model: 'tiny', messages: [] })
    expect(count.status).toBe(404)
    expect(((await count.json()) as { error: { type: string } }).error.type).toBe('not_found_error')
    const ok = await anthropic.messages.create({
      model: 'tiny',
      messages: [{ role: 'user', content: 'Hi' }],
      max_tokens: 3,
    })
    expect(ok.usage.output_tokens).toBe(3)
  })
})

describe('both APIs', () => {
  it('need the API key when one is set: x-api-key for Anthropic, Authorization for Ollama', async () => {
    const keyedHost = `http://127.0.0.1:${keyed.port}`
    const messages = [{ role: 'user' as const, content: 'Hi' }]
    for (const client of [
      new Ollama({ host: keyedHost }),
      new Ollama({ host: keyedHost, headers: { Authorization: 'Bearer wrong' } }),
    ]) {
      const refused = await client.chat({ model: 'tiny', messages }).catch((e: unknown) => e)
      expect(refused).toMatchObject({ name: 'ResponseError', status_code: 401 })
      expect(await client.list().catch((e: unknown) => e)).toMatchObject({ status_code: 401 })
    }
    const ollamaKeyed = new Ollama({ host: keyedHost, headers: { Authorization: `Bearer ${API_KEY}` } })
    expect((await ollamaKeyed.list()).models).toHaveLength(4)
    expect(
      (await ollamaKeyed.chat({ model: 'tiny', messages, options: { num_predict: 3 } })).eval_count,
    ).toBe(3)

    const wrong = new Anthropic({ baseURL: keyedHost, apiKey: 'wrong', maxRetries: 0 })
    const refused = await wrong.messages
      .create({ model: 'tiny', messages, max_tokens: 3 })
      .catch((e: unknown) => e)
    expect(refused).toBeInstanceOf(Anthropic.AuthenticationError)
    const none = await fetch(`${keyedHost}/v1/messages`, {
      method: 'POST',
      body: JSON.stringify({ model: 'tiny', messages, max_tokens: 3 }),
    })
    expect(none.status).toBe(401)
    const right = new Anthropic({ baseURL: keyedHost, apiKey: API_KEY, maxRetries: 0 })
    expect(
      (await right.messages.create({ model: 'tiny', messages, max_tokens: 3 })).usage.output_tokens,
    ).toBe(3)
  })

  it('end with the model’s end of generation as end_turn and stop', async () => {
    const ending: CompletionBackend = {
      models: () => backend.models(),
      countTokens: (model, text) => backend.countTokens(model, text),
      async *generate() {
        yield { id: 1, text: 'Hello' }
        yield { id: 2, text: ' there' }
        return { promptTokens: 5, completionTokens: 3, stopReason: 'eog' }
      },
    }
    const server = await serve(ending)
    try {
      const at = `http://127.0.0.1:${server.port}`
      const messages = [{ role: 'user' as const, content: 'Hi' }]
      const message = await new Anthropic({ baseURL: at, apiKey: 'x', maxRetries: 0 }).messages.create({
        model: 'tiny',
        messages,
        max_tokens: 10,
      })
      expect(message).toMatchObject({
        content: [{ text: 'Hello there' }],
        stop_reason: 'end_turn',
        stop_sequence: null,
      })
      const chat = await new Ollama({ host: at }).chat({ model: 'tiny', messages })
      expect(chat).toMatchObject({ message: { content: 'Hello there' }, done_reason: 'stop', eval_count: 3 })
    } finally {
      await server.close()
    }
  })

  it('take the calls the model chose to write out of its text, streamed or not', async () => {
    // A model that chooses to call both tools after a sentence, as Qwen writes calls.
    const pieces = [
      'Let me',
      ' check.\n<tool_',
      'call>\n{"name": "get_weather", "arguments": {"city": "Paris", "unit": "celsius", "days": 2}}\n</tool_call>\n',
      '<tool_call>\n{"name": "get_time", "arguments": {}}\n</tool_call>',
    ]
    const calling: CompletionBackend = {
      models: () => backend.models(),
      countTokens: (model, text) => backend.countTokens(model, text),
      async *generate() {
        for (const [id, text] of pieces.entries()) yield { id, text }
        return { promptTokens: 5, completionTokens: pieces.length, stopReason: 'eog' }
      },
    }
    const weather = { name: 'get_weather', input: { city: 'Paris', unit: 'celsius', days: 2 } }
    const clock = { name: 'get_time', input: {} }
    const server = await serve(calling)
    try {
      const at = `http://127.0.0.1:${server.port}`
      const messages = [{ role: 'user' as const, content: ASK_WEATHER }]
      const client = new Anthropic({ baseURL: at, apiKey: 'x', maxRetries: 0 })
      const params = { model: 'tiny-qwen', messages, max_tokens: 50, tools: ANTHROPIC_TOOLS }
      const message = await client.messages.create(params)
      expect(message).toMatchObject({
        content: [
          { type: 'text', text: 'Let me check.\n' },
          { type: 'tool_use', id: expect.stringMatching(/^toolu_/), ...weather },
          { type: 'tool_use', ...clock },
        ],
        stop_reason: 'tool_use',
        stop_sequence: null,
      })
      const texts: string[] = []
      const streamed = await client.messages
        .stream(params)
        .on('text', (text) => texts.push(text))
        .finalMessage()
      expect(texts.join('')).toBe('Let me check.\n')
      expect(streamed.content.map(clean)).toEqual([
        { type: 'text', text: 'Let me check.\n' },
        { type: 'tool_use', id: expect.any(String), ...weather },
        { type: 'tool_use', id: expect.any(String), ...clock },
      ])
      expect(streamed.stop_reason).toBe('tool_use')
      const events = (
        await (
          await fetch(`${at}/v1/messages`, {
            method: 'POST',
            body: JSON.stringify({ ...params, stream: true }),
          })
        ).text()
      )
        .trimEnd()
        .split('\n\n')
        .map((event) => JSON.parse(event.split('\n')[1]!.slice('data: '.length)) as Record<string, unknown>)
      expect(events.map((e) => `${e.type}${'index' in e ? ` ${e.index}` : ''}`)).toEqual([
        'message_start',
        'ping',
        'content_block_start 0',
        ...Array(events.length - 12).fill('content_block_delta 0'),
        'content_block_stop 0',
        'content_block_start 1',
        'content_block_delta 1',
        'content_block_stop 1',
        'content_block_start 2',
        'content_block_delta 2',
        'content_block_stop 2',
        'message_delta',
        'message_stop',
      ])
      expect(events.find((e) => e.type === 'content_block_start' && e.index === 1)).toMatchObject({
        content_block: {
          type: 'tool_use',
          id: expect.stringMatching(/^toolu_/),
          name: 'get_weather',
          input: {},
        },
      })
      expect(events.find((e) => e.type === 'content_block_delta' && e.index === 1)).toMatchObject({
        delta: { type: 'input_json_delta', partial_json: JSON.stringify(weather.input) },
      })
      expect(events.at(-2)).toMatchObject({ delta: { stop_reason: 'tool_use', stop_sequence: null } })
      const one = await client.messages.create({
        ...params,
        tool_choice: { type: 'auto', disable_parallel_tool_use: true },
      })
      expect(one.content.slice(1)).toMatchObject([weather])
      // Without tools the text is only text.
      const plain = await client.messages.create({ model: 'tiny-qwen', messages, max_tokens: 50 })
      expect(plain).toMatchObject({
        content: [{ type: 'text', text: pieces.join('') }],
        stop_reason: 'end_turn',
      })

      const ollamaClient = new Ollama({ host: at })
      const ollamaCalls = [
        { function: { index: 0, name: 'get_weather', arguments: weather.input } },
        { function: { index: 1, name: 'get_time', arguments: {} } },
      ]
      const chat = await ollamaClient.chat({ model: 'tiny-qwen', messages, tools: OPENAI_TOOLS })
      expect(chat).toMatchObject({
        message: { role: 'assistant', content: 'Let me check.\n', tool_calls: ollamaCalls },
        done_reason: 'stop',
      })
      const parts = []
      for await (const part of await ollamaClient.chat({
        model: 'tiny-qwen',
        messages,
        tools: OPENAI_TOOLS,
        stream: true,
      })) {
        parts.push(part.message)
      }
      expect(parts.map((m) => m.content).join('')).toBe('Let me check.\n')
      expect(parts.flatMap((m) => m.tool_calls ?? [])).toMatchObject(ollamaCalls)
      expect(parts.at(-2)).toMatchObject({ content: '', tool_calls: ollamaCalls })
      // An answer's calls go back as they came.
      const again = await ollamaClient.chat({
        model: 'tiny-qwen',
        messages: [...messages, chat.message, { role: 'tool', content: '21', tool_name: 'get_weather' }],
        tools: OPENAI_TOOLS,
      })
      expect(again.done).toBe(true)
    } finally {
      await server.close()
    }
  })

  it('answer 503 in their own shapes when the backend is unavailable, 500 when it fails', async () => {
    const failing = (err: Error): CompletionBackend => ({
      models: () => backend.models(),
      countTokens: (model, text) => backend.countTokens(model, text),
      // biome-ignore lint/correctness/useYield: fails before its first token
      async *generate() {
        throw err
      },
    })
    for (const [err, status, type] of [
      [new BackendUnavailableError('no ring member holds tiny yet'), 503, 'overloaded_error'],
      [new Error('disk on fire'), 500, 'api_error'],
    ] as const) {
      const server = await serve(failing(err))
      try {
        const at = `http://127.0.0.1:${server.port}`
        const messages = [{ role: 'user', content: 'Hi' }]
        const anthropicAnswer = await fetch(`${at}/v1/messages`, {
          method: 'POST',
          body: JSON.stringify({ model: 'tiny', messages, max_tokens: 4, stream: true }),
        })
        expect(anthropicAnswer.status).toBe(status)
        const { error } = (await anthropicAnswer.json()) as { error: { type: string; message: string } }
        expect(error.type).toBe(type)
        const ollamaAnswer = await fetch(`${at}/api/chat`, {
          method: 'POST',
          body: JSON.stringify({ model: 'tiny', messages }),
        })
        expect(ollamaAnswer.status).toBe(status)
        const { error: message } = (await ollamaAnswer.json()) as { error: string }
        if (status === 503) expect(message).toContain('no ring member holds tiny yet')
        else expect(message).not.toContain('disk on fire')
      } finally {
        await server.close()
      }
    }
  })

  it('abort the generation when the client goes away mid-stream', async () => {
    for (const start of [
      async () => {
        const stream = await ollama.chat({
          model: 'tiny',
          messages: [{ role: 'user', content: 'Hello world' }],
          options: { num_predict: 480 },
          stream: true,
        })
        for await (const _ of stream) {
          stream.abort()
          break
        }
      },
      async () => {
        const stream = await anthropic.messages.create({
          model: 'tiny',
          messages: [{ role: 'user', content: 'Hello world' }],
          max_tokens: 480,
          stream: true,
        })
        for await (const event of stream) if (event.type === 'content_block_delta') break
      },
    ]) {
      const before = backend.outcomes.length
      await start()
      for (let i = 0; i < 200 && backend.outcomes.length === before; i++) {
        await new Promise((resolve) => setTimeout(resolve, 25))
      }
      const outcome = backend.outcomes[before]!
      expect(outcome.stopReason).toBe('abort')
      expect(outcome.completionTokens).toBeLessThan(480)
    }
  })
})

/** A text block as the streaming helper builds it (no `citations` unless sent). */
function clean(block: unknown): unknown {
  const { citations: _, ...rest } = block as { citations?: unknown }
  return rest
}
