import { mkdtemp, rm } from 'node:fs/promises'
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

// The Ollama and Anthropic APIs beside the OpenAI one, on a real engine, through their official
// clients: the same greedy text as the OpenAI API for the same conversation, the same counts as the
// tokenizer, and each API's own error shapes for what it refuses.

// ChatML, as Qwen's GGUFs carry it (its markers are plain text in the test vocabulary), refusing
// tool messages as some templates do.
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
  await generateModel({
    out: plain,
    layers: 2,
    embd: 256,
    heads: 4,
    kvHeads: 2,
    ff: 512,
    vocab: 1000,
    type: 'Q8_0',
    context: 512,
    seed: 11,
  })
  // One file under two ids: 'tiny-chat' with a chat template, as a GGUF's tokenizer.chat_template gives it.
  const engines = await engineBackend([
    { id: 'tiny', modelPath: plain },
    { id: 'tiny-chat', modelPath: plain },
  ])
  backend = {
    ...engines,
    models: () =>
      engines.models().map((m) => (m.id === 'tiny-chat' ? { ...m, chatTemplate: CHAT_TEMPLATE } : m)),
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

describe('the Ollama API', () => {
  it('lists the served models and its version, and shows a model', async () => {
    const { models } = await ollama.list()
    expect(models.map((m) => m.name)).toEqual(['tiny', 'tiny-chat'])
    expect(models[0]).toMatchObject({ model: 'tiny', details: { format: 'gguf' } })
    expect(Date.parse(String(models[0]!.modified_at))).toBeGreaterThan(Date.parse('2020-01-01'))
    expect((await ollama.version()).version).toMatch(/^\d+\.\d+\.\d+$/)
    const shown = await ollama.show({ model: 'tiny-chat' })
    expect(shown).toMatchObject({
      template: CHAT_TEMPLATE,
      parameters: 'num_ctx 512',
      capabilities: ['completion'],
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
      options: { num_predict: 20 },
    })
    expect(raw).toMatchObject({ response: completion.text, done_reason: 'length', eval_count: 20 })
    expect(raw.prompt_eval_count).toBe(completion.usage.prompt_tokens)
    let streamed = ''
    for await (const part of await ollama.generate({
      model: 'tiny',
      prompt: 'Hello world',
      raw: true,
      stream: true,
      options: { num_predict: 20 },
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
      options: { num_predict: 30, stop: ['never-appears', stop] },
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
      options: { num_predict: 12 },
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
      { model: 'tiny-chat', messages: [{ role: 'tool', content: '42', tool_name: 'answer' }] },
      /chat template rejected the messages: tool messages are not supported/,
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
      { tools: [{ type: 'function', function: { name: 'f' } }] },
      /^tools: tools are not supported/,
    ],
    ['/api/chat', { format: 'json' }, /^format: structured outputs/],
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
    expect((notFound as Error).message).toMatch(/model 'llama3' not found: this agent serves tiny, tiny-chat/)
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
    })
    expect(combined.content).toEqual(blocks.content)
    expect(combined.usage).toEqual(blocks.usage)
  })

  it('streams deltas that concatenate to the message, with messages.stream and stream: true', async () => {
    const params = {
      model: 'tiny',
      messages: [{ role: 'user' as const, content: 'Hello world' }],
      max_tokens: 20,
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
    })
    expect(continued.content).toEqual([{ type: 'text', text: prefill.text }])

    // max_tokens beyond the context (512) is capped to what the prompt leaves.
    const long = await anthropic.messages.create({
      model: 'tiny',
      messages: [{ role: 'user', content: 'Hello world' }],
      max_tokens: 4096,
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
      /^messages\.0\.content\.0\.type: only 'text' content blocks are supported by this server, not 'image'$/,
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
      { tools: [{ name: 'get_weather', input_schema: { type: 'object' } }] },
      /^tools: tools are not supported by this server yet/,
    ],
    [{ tool_choice: { type: 'any' } }, /^tool_choice: tools are not supported/],
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
    expect((await ollamaKeyed.list()).models).toHaveLength(2)
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
