import { mkdtemp, rm } from 'node:fs/promises'
import { request } from 'node:http'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { silentLogger } from '@meshnet/core'
import { generateModel } from '@meshnet/gguf'
import { withChatTemplate } from '@meshnet/test-harness'
import OpenAI from 'openai'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { startOpenAiApi } from '../../src/agent/openai-api.ts'
import {
  BackendUnavailableError,
  type CompletionBackend,
  MAX_OPENAI_BODY,
  type OpenAiApi,
} from '../../src/agent/openai-types.ts'
import { type EngineBackend, engineBackend } from '../openai-backend.ts'

// A template in the style of Zephyr: BOS first (dropped, since the tokenizer adds it), role markers
// that are plain text in the test vocabulary, and a refusal of unknown roles.
const CHAT_TEMPLATE =
  '{{ bos_token }}{% for message in messages %}' +
  "{% if message['role'] not in ['system', 'user', 'assistant'] %}{{ raise_exception('role ' + message['role'] + ' is not supported') }}{% endif %}" +
  "{{ '<|' + message['role'] + '|>\\n' + message['content'] + '\\n' }}{% endfor %}" +
  "{% if add_generation_prompt %}{{ '<|assistant|>\\n' }}{% endif %}"

const API_KEY = 'sk-meshnet-test-key'

let dir: string
let backend: EngineBackend
let api: OpenAiApi
let keyed: OpenAiApi
let client: OpenAI
let base: string

beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'meshnet-openai-'))
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
  const templated = await withChatTemplate(plain, join(dir, 'tiny-chat.gguf'), CHAT_TEMPLATE)
  backend = await engineBackend([
    { id: 'tiny', modelPath: plain },
    { id: 'tiny-chat', modelPath: templated },
  ])
  api = await startOpenAiApi({ backend, port: 0, logger: silentLogger() })
  keyed = await startOpenAiApi({ backend, port: 0, apiKey: API_KEY, logger: silentLogger() })
  base = `http://127.0.0.1:${api.port}/v1`
  client = new OpenAI({ baseURL: base, apiKey: 'unused', maxRetries: 0 })
})

afterAll(async () => {
  await api?.close()
  await keyed?.close()
  await backend?.dispose()
  await rm(dir, { recursive: true, force: true })
})

/** The engine's own generation of `prompt`, and the text of each streamed piece. */
async function reference(
  model: string,
  prompt: string,
  options: { maxTokens: number; temperature?: number; topP?: number; topK?: number; seed?: number },
) {
  const engine = backend.engine(model)
  const pieces: string[] = []
  const result = await engine.generate(prompt, { ...options, onToken: (t) => pieces.push(t.text) })
  return { ...result, pieces, promptTokens: engine.tokenizer.tokenize(prompt, { addSpecial: true }).length }
}

const post = (path: string, body: unknown, init: RequestInit = {}) =>
  fetch(`${base}${path}`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: typeof body === 'string' ? body : JSON.stringify(body),
    ...init,
  })

/** The `data:` payloads of a server-sent event stream. */
function events(body: string): string[] {
  expect(body.endsWith('\n\n')).toBe(true)
  return body
    .slice(0, -2)
    .split('\n\n')
    .map((event) => {
      expect(event).toMatch(/^data: /)
      return event.slice('data: '.length)
    })
}

interface ErrorBody {
  error: { message: string; type: string; param: string | null; code: string | null }
}

describe('GET /v1/models', () => {
  it('lists the served models, with the official client and raw fetch', async () => {
    const listed = []
    for await (const model of client.models.list()) listed.push(model)
    expect(listed.map((m) => m.id)).toEqual(['tiny', 'tiny-chat'])
    expect(listed[0]).toMatchObject({ object: 'model', owned_by: 'meshnet' })
    expect(listed[0]!.created).toBeGreaterThan(1_600_000_000)

    const response = await fetch(`${base}/models`)
    expect(response.status).toBe(200)
    expect(response.headers.get('content-type')).toBe('application/json')
    expect(await response.json()).toEqual({ object: 'list', data: listed.map((m) => ({ ...m })) })

    expect((await client.models.retrieve('tiny-chat')).id).toBe('tiny-chat')
    const missing = await client.models.retrieve('gpt-4').catch((err: unknown) => err)
    expect(missing).toBeInstanceOf(OpenAI.NotFoundError)
    expect(missing).toMatchObject({ status: 404, param: 'model', code: 'model_not_found' })
  })
})

describe('POST /v1/completions', () => {
  it("answers with the engine's greedy text and the tokenizer's counts", async () => {
    const expected = await reference('tiny', 'Hello world', { maxTokens: 24 })
    expect(expected.stopReason).toBe('maxTokens')
    const completion = await client.completions.create({
      model: 'tiny',
      prompt: 'Hello world',
      max_tokens: 24,
      temperature: 0,
    })
    expect(completion.object).toBe('text_completion')
    expect(completion.model).toBe('tiny')
    expect(completion.id).toMatch(/^cmpl-/)
    expect(completion.choices).toHaveLength(1)
    expect(completion.choices[0]).toMatchObject({ index: 0, text: expected.text, finish_reason: 'length' })
    expect(completion.usage).toEqual({
      prompt_tokens: expected.promptTokens,
      completion_tokens: 24,
      total_tokens: expected.promptTokens + 24,
    })
  })

  it('gives max_tokens 16 by default, as OpenAI does', async () => {
    const completion = await client.completions.create({
      model: 'tiny',
      prompt: 'Hello world',
      temperature: 0,
    })
    expect(completion.usage?.completion_tokens).toBe(16)
    expect(completion.choices[0]!.text).toBe((await reference('tiny', 'Hello world', { maxTokens: 16 })).text)
  })

  it('samples with temperature, top_p and seed as the engine does, reproducibly', async () => {
    // The API has no top-k unless asked (top_k 0: the whole vocabulary), as OpenAI.
    const expected = await reference('tiny', 'The river', {
      maxTokens: 20,
      temperature: 0.9,
      topP: 0.9,
      topK: 0,
      seed: 7,
    })
    const ask = () =>
      client.completions.create({
        model: 'tiny',
        prompt: 'The river',
        max_tokens: 20,
        temperature: 0.9,
        top_p: 0.9,
        seed: 7,
      })
    expect((await ask()).choices[0]!.text).toBe(expected.text)
    expect((await ask()).choices[0]!.text).toBe(expected.text)
    const greedy = await reference('tiny', 'The river', { maxTokens: 20 })
    expect(expected.text).not.toBe(greedy.text)
  })

  it('streams chunks that concatenate to the non-streamed text, then usage and [DONE]', async () => {
    const full = await client.completions.create({
      model: 'tiny',
      prompt: 'Hello world',
      max_tokens: 24,
      temperature: 0,
    })
    const stream = await client.completions.create({
      model: 'tiny',
      prompt: 'Hello world',
      max_tokens: 24,
      temperature: 0,
      stream: true,
      stream_options: { include_usage: true },
    })
    let text = ''
    const finishes: (string | null)[] = []
    let usage: OpenAI.CompletionUsage | null | undefined
    let chunks = 0
    for await (const chunk of stream) {
      chunks++
      expect(chunk.id).toMatch(/^cmpl-/)
      if (chunk.usage) usage = chunk.usage
      for (const choice of chunk.choices) {
        text += choice.text
        finishes.push(choice.finish_reason)
      }
    }
    expect(chunks).toBeGreaterThan(5)
    expect(text).toBe(full.choices[0]!.text)
    expect(finishes.at(-1)).toBe('length')
    expect(finishes.slice(0, -1).every((f) => f === null)).toBe(true)
    expect(usage).toEqual(full.usage)

    // On the wire: every event is `data: {json}`, usage is null on all but the last, then [DONE].
    const response = await post('/completions', {
      model: 'tiny',
      prompt: 'Hello world',
      max_tokens: 24,
      temperature: 0,
      stream: true,
      stream_options: { include_usage: true },
    })
    expect(response.status).toBe(200)
    expect(response.headers.get('content-type')).toMatch(/^text\/event-stream/)
    const data = events(await response.text())
    expect(data.at(-1)).toBe('[DONE]')
    const bodies = data
      .slice(0, -1)
      .map((d) => JSON.parse(d) as { usage: unknown; choices: { text: string }[] })
    expect(bodies.slice(0, -1).every((b) => b.usage === null)).toBe(true)
    expect(bodies.at(-1)).toMatchObject({ choices: [], usage: full.usage })
    expect(bodies.flatMap((b) => b.choices.map((c) => c.text)).join('')).toBe(full.choices[0]!.text)

    // Without stream_options, no usage at all.
    const plain = events(
      await (await post('/completions', { model: 'tiny', prompt: 'Hi', max_tokens: 4, stream: true })).text(),
    )
    expect(plain.at(-1)).toBe('[DONE]')
    for (const d of plain.slice(0, -1)) expect(JSON.parse(d)).not.toHaveProperty('usage')
  })

  it('cuts the text before a stop sequence that spans tokens, and aborts the generation', async () => {
    const maxTokens = 40
    const expected = await reference('tiny', 'Hello world', { maxTokens })
    // A stop sequence made of the end of one streamed piece and the start of the next.
    const at = expected.pieces.findIndex(
      (p, i) => i >= 6 && p.length >= 2 && (expected.pieces[i + 1]?.length ?? 0) >= 2,
    )
    expect(at).toBeGreaterThan(0)
    const stop = expected.pieces[at]!.slice(-2) + expected.pieces[at + 1]!.slice(0, 2)
    const cut = expected.text.indexOf(stop)
    expect(cut).toBeGreaterThan(0)
    const before = backend.outcomes.length

    const completion = await client.completions.create({
      model: 'tiny',
      prompt: 'Hello world',
      max_tokens: maxTokens,
      temperature: 0,
      stop: ['never-appears', stop],
    })
    expect(completion.choices[0]!.text).toBe(expected.text.slice(0, cut))
    expect(completion.choices[0]!.finish_reason).toBe('stop')
    expect(completion.usage!.completion_tokens).toBeLessThan(maxTokens)
    expect(backend.outcomes[before]).toMatchObject({ stopReason: 'abort' })
    expect(backend.outcomes[before]!.completionTokens).toBe(completion.usage!.completion_tokens)

    // Streamed, the text held back while it might be the stop sequence never comes out.
    const stream = await client.completions.create({
      model: 'tiny',
      prompt: 'Hello world',
      max_tokens: maxTokens,
      temperature: 0,
      stop,
      stream: true,
    })
    let text = ''
    let finish: string | null = null
    for await (const chunk of stream) {
      text += chunk.choices[0]?.text ?? ''
      finish = chunk.choices[0]?.finish_reason ?? finish
    }
    expect(text).toBe(expected.text.slice(0, cut))
    expect(finish).toBe('stop')
  })

  it("refuses a prompt longer than the model's context", async () => {
    const response = await post('/completions', { model: 'tiny', prompt: 'the '.repeat(600), max_tokens: 4 })
    expect(response.status).toBe(400)
    expect(((await response.json()) as ErrorBody).error).toMatchObject({
      type: 'invalid_request_error',
      param: 'prompt',
      code: 'context_length_exceeded',
      message: expect.stringContaining('512'),
    })
  })
})

describe('POST /v1/chat/completions', () => {
  it('renders the chat template from the GGUF (tokenizer.chat_template)', async () => {
    const prompt = '<|system|>\nBe brief.\n<|user|>\nHello world\n<|assistant|>\n'
    const expected = await reference('tiny-chat', prompt, { maxTokens: 24 })
    const completion = await client.chat.completions.create({
      model: 'tiny-chat',
      messages: [
        { role: 'system', content: 'Be brief.' },
        { role: 'user', content: 'Hello world' },
      ],
      max_completion_tokens: 24,
      temperature: 0,
    })
    expect(completion.object).toBe('chat.completion')
    expect(completion.id).toMatch(/^chatcmpl-/)
    expect(completion.choices[0]).toMatchObject({
      index: 0,
      message: { role: 'assistant', content: expected.text },
      finish_reason: 'length',
    })
    // One BOS only: the template's leading bos_token was dropped, the tokenizer added its own.
    expect(completion.usage).toEqual({
      prompt_tokens: expected.promptTokens,
      completion_tokens: 24,
      total_tokens: expected.promptTokens + 24,
    })
  })

  it('folds tool calls and results into text for a template without a tool role, which would refuse them', async () => {
    const ask = async (messages: unknown[]) => {
      const response = await post('/chat/completions', {
        model: 'tiny-chat',
        messages,
        max_tokens: 1,
        temperature: 0,
      })
      expect(response.status).toBe(200)
      return ((await response.json()) as { usage: { prompt_tokens: number } }).usage.prompt_tokens
    }
    const question = { role: 'user', content: 'Weather?' }
    const call = {
      id: 'call_1',
      type: 'function',
      function: { name: 'get_weather', arguments: '{"city":"Oslo"}' },
    }
    const alone = await ask([question])
    const withResult = await ask([
      question,
      { role: 'assistant', content: null, tool_calls: [call] },
      { role: 'tool', tool_call_id: 'call_1', content: 'sunny, 21 degrees' },
    ])
    expect(withResult).toBeGreaterThan(alone + 10)
    // A tool message must say which call it answers.
    const response = await post('/chat/completions', {
      model: 'tiny-chat',
      messages: [{ role: 'tool', content: 'x' }],
    })
    expect(response.status).toBe(400)
    expect(((await response.json()) as ErrorBody).error.param).toBe('messages[0].tool_call_id')
  })

  it('uses the plain fallback template when the model has none, and text content parts', async () => {
    const expected = await reference('tiny', 'System: Be brief.\n\nUser: Hello\nworld\n\nAssistant:', {
      maxTokens: 12,
    })
    const completion = await client.chat.completions.create({
      model: 'tiny',
      messages: [
        { role: 'developer', content: 'Be brief.' },
        {
          role: 'user',
          content: [
            { type: 'text', text: 'Hello' },
            { type: 'text', text: 'world' },
          ],
        },
      ],
      max_tokens: 12,
      temperature: 0,
    })
    expect(completion.choices[0]!.message.content).toBe(expected.text)
    expect(completion.usage!.prompt_tokens).toBe(expected.promptTokens)
  })

  it('streams a role chunk, content deltas equal to the whole answer, the finish, usage and [DONE]', async () => {
    const messages = [{ role: 'user' as const, content: 'Hello world' }]
    const full = await client.chat.completions.create({
      model: 'tiny',
      messages,
      max_tokens: 20,
      temperature: 0,
    })
    const stream = await client.chat.completions.create({
      model: 'tiny',
      messages,
      max_tokens: 20,
      temperature: 0,
      stream: true,
      stream_options: { include_usage: true },
    })
    const deltas: OpenAI.ChatCompletionChunk.Choice[] = []
    let usage: OpenAI.CompletionUsage | null | undefined
    for await (const chunk of stream) {
      expect(chunk.object).toBe('chat.completion.chunk')
      deltas.push(...chunk.choices)
      if (chunk.usage) usage = chunk.usage
    }
    expect(deltas[0]!.delta).toEqual({ role: 'assistant', content: '' })
    expect(deltas.map((d) => d.delta.content ?? '').join('')).toBe(full.choices[0]!.message.content)
    expect(deltas.at(-1)).toMatchObject({ delta: {}, finish_reason: 'length' })
    expect(usage).toEqual(full.usage)
  })

  it('stops at a stop sequence in a chat', async () => {
    const messages = [{ role: 'user' as const, content: 'Hello world' }]
    const full = await client.chat.completions.create({
      model: 'tiny',
      messages,
      max_tokens: 30,
      temperature: 0,
    })
    const text = full.choices[0]!.message.content!
    const stop = text.slice(10, 13)
    const cut = await client.chat.completions.create({
      model: 'tiny',
      messages,
      max_tokens: 30,
      temperature: 0,
      stop,
    })
    expect(cut.choices[0]!.message.content).toBe(text.slice(0, text.indexOf(stop)))
    expect(cut.choices[0]!.finish_reason).toBe('stop')
  })
})

describe('errors', () => {
  const bad: [string, string, Record<string, unknown>, RegExp?][] = [
    ['/completions', 'temperature', { temperature: 3 }, /at most 2/],
    ['/completions', 'n', { n: 9 }, /at most 8/],
    ['/completions', 'n', { n: 1.5 }, /whole number/],
    ['/completions', 'stop', { stop: ['a', 'b', 'c', 'd', 'e'] }, /at most 4/],
    ['/completions', 'max_tokens', { max_tokens: 0 }],
    ['/completions', 'seed', { seed: 1.5 }],
    ['/completions', 'top_p', { top_p: 0 }],
    ['/completions', 'prompt', { prompt: [1, 2, 3] }, /token arrays/],
    ['/completions', 'echo', { echo: true }, /not supported/],
    ['/completions', 'presence_penalty', { presence_penalty: 2.5 }, /at most 2/],
    ['/completions', 'frequency_penalty', { frequency_penalty: -3 }, /at least -2/],
    ['/completions', 'logprobs', { logprobs: 21 }, /at most 20/],
    ['/completions', 'best_of', { best_of: 2 }, /only 1 is supported/],
    ['/chat/completions', 'top_logprobs', { logprobs: true, top_logprobs: 21 }, /at most 20/],
    ['/chat/completions', 'top_logprobs', { top_logprobs: 2 }, /needs 'logprobs' to be true/],
    ['/chat/completions', 'logprobs', { logprobs: 5 }],
    ['/completions', 'stream_options', { stream_options: { include_usage: true } }, /'stream'/],
    ['/completions', 'foo', { foo: 1 }, /Unrecognized request argument supplied: foo/],
    ['/chat/completions', 'messages', { messages: [] }, /at least one/],
    ['/chat/completions', 'messages[0].role', { messages: [{ role: 'robot', content: 'x' }] }],
    [
      '/chat/completions',
      'messages[0].content[0].type',
      { messages: [{ role: 'user', content: [{ type: 'image_url', image_url: { url: 'x' } }] }] },
      /only 'text'/,
    ],
    [
      '/chat/completions',
      'tools[0].function.name',
      { tools: [{ type: 'function', function: { name: 'get weather' } }] },
      /letters, digits/,
    ],
    [
      '/chat/completions',
      'response_format',
      {
        response_format: {
          type: 'json_schema',
          json_schema: { name: 'x', schema: { type: 'string', format: 'email' } },
        },
      },
      /"format"/,
    ],
  ]

  it.each(bad)('%s answers 400 naming %s', async (path, param, change, message) => {
    const body =
      path === '/completions'
        ? { model: 'tiny', prompt: 'Hi', ...change }
        : { model: 'tiny', messages: [{ role: 'user', content: 'Hi' }], ...change }
    const response = await post(path, body)
    expect(response.status).toBe(400)
    const { error } = (await response.json()) as ErrorBody
    expect(error).toMatchObject({ type: 'invalid_request_error', param })
    expect(error.message).toContain(param)
    if (message) expect(error.message).toMatch(message)
  })

  it('names a missing parameter, also through the official client', async () => {
    const response = await post('/completions', { prompt: 'Hi' })
    expect(response.status).toBe(400)
    expect(((await response.json()) as ErrorBody).error).toMatchObject({
      param: 'model',
      code: 'missing_required_parameter',
    })
    const err = await client.chat.completions
      .create({ model: 'tiny', messages: [{ role: 'user', content: 'Hi' }], n: 9 })
      .catch((e: unknown) => e)
    expect(err).toBeInstanceOf(OpenAI.BadRequestError)
    expect(err).toMatchObject({ status: 400, param: 'n', type: 'invalid_request_error' })
  })

  it('answers 400 to a body that is not JSON', async () => {
    const response = await post('/completions', '{"model": "tiny",')
    expect(response.status).toBe(400)
    expect(((await response.json()) as ErrorBody).error).toMatchObject({
      type: 'invalid_request_error',
      code: 'invalid_json',
    })
  })

  it('answers 404 to an unknown model and an unknown route, 405 to a wrong method', async () => {
    const model = await post('/completions', { model: 'gpt-4', prompt: 'Hi' })
    expect(model.status).toBe(404)
    expect(((await model.json()) as ErrorBody).error).toMatchObject({
      type: 'invalid_request_error',
      param: 'model',
      code: 'model_not_found',
      message: expect.stringContaining('tiny, tiny-chat'),
    })
    const route = await post('/embeddings', { model: 'tiny', input: 'x' })
    expect(route.status).toBe(404)
    expect(((await route.json()) as ErrorBody).error).toMatchObject({ code: 'unknown_url' })
    const method = await fetch(`${base}/completions`)
    expect(method.status).toBe(405)
    expect(method.headers.get('allow')).toBe('POST')
  })

  it('answers 413 to a body over 1 MiB', async () => {
    const response = await post('/completions', { model: 'tiny', prompt: 'x'.repeat(MAX_OPENAI_BODY) })
    expect(response.status).toBe(413)
    expect(((await response.json()) as ErrorBody).error).toMatchObject({ code: 'request_too_large' })
  })

  it('needs the bearer key when one is configured', async () => {
    const url = `http://127.0.0.1:${keyed.port}/v1/models`
    for (const authorization of [undefined, 'Bearer wrong-key', API_KEY, `Basic ${API_KEY}`]) {
      const response = await fetch(url, authorization === undefined ? {} : { headers: { authorization } })
      expect(response.status).toBe(401)
      expect(response.headers.get('www-authenticate')).toBe('Bearer')
      expect(((await response.json()) as ErrorBody).error).toMatchObject({
        type: 'invalid_request_error',
        code: 'invalid_api_key',
      })
    }
    expect((await fetch(url, { headers: { authorization: `Bearer ${API_KEY}` } })).status).toBe(200)

    const wrong = new OpenAI({ baseURL: `http://127.0.0.1:${keyed.port}/v1`, apiKey: 'nope', maxRetries: 0 })
    const err = await wrong.completions.create({ model: 'tiny', prompt: 'Hi' }).catch((e: unknown) => e)
    expect(err).toBeInstanceOf(OpenAI.AuthenticationError)
    const right = new OpenAI({ baseURL: `http://127.0.0.1:${keyed.port}/v1`, apiKey: API_KEY, maxRetries: 0 })
    const completion = await right.completions.create({ model: 'tiny', prompt: 'Hi', max_tokens: 3 })
    expect(completion.usage?.completion_tokens).toBe(3)
  })

  it('refuses a request addressed to another host name, as a DNS-rebinding page sends it', async () => {
    const asked = (host: string) =>
      new Promise<number>((resolve, reject) => {
        const req = request(
          { host: '127.0.0.1', port: api.port, path: '/v1/models', headers: { host } },
          (res) => {
            res.resume()
            resolve(res.statusCode!)
          },
        )
        req.on('error', reject)
        req.end()
      })
    expect(await asked(`attacker.example:${api.port}`)).toBe(421)
    expect(await asked('attacker.example')).toBe(421)
    for (const host of [`127.0.0.1:${api.port}`, `localhost:${api.port}`, 'localhost', `[::1]:${api.port}`]) {
      expect(await asked(host), host).toBe(200)
    }
  })

  it('answers 503 when the backend is unavailable and 500 when it fails', async () => {
    const failing = (err: Error): CompletionBackend => ({
      models: () => backend.models(),
      countTokens: (model, text) => backend.countTokens(model, text),
      // biome-ignore lint/correctness/useYield: fails before its first token
      async *generate() {
        throw err
      },
    })
    for (const [err, status, type] of [
      [new BackendUnavailableError('no ring member holds tiny yet'), 503, 'server_error'],
      [new Error('disk on fire'), 500, 'server_error'],
    ] as const) {
      const server = await startOpenAiApi({ backend: failing(err), port: 0, logger: silentLogger() })
      try {
        const response = await fetch(`http://127.0.0.1:${server.port}/v1/completions`, {
          method: 'POST',
          body: JSON.stringify({ model: 'tiny', prompt: 'Hi', stream: true }),
        })
        expect(response.status).toBe(status)
        const { error } = (await response.json()) as ErrorBody
        expect(error.type).toBe(type)
        if (status === 503) expect(error.message).toContain('no ring member holds tiny yet')
        else expect(error.message).not.toContain('disk on fire')
      } finally {
        await server.close()
      }
    }
  })
})

describe('cancellation', () => {
  it('aborts the generation when the client disconnects mid-stream', async () => {
    const before = backend.outcomes.length
    const controller = new AbortController()
    const response = await post(
      '/chat/completions',
      { model: 'tiny', messages: [{ role: 'user', content: 'Hello world' }], temperature: 0, stream: true },
      { signal: controller.signal },
    )
    expect(response.status).toBe(200)
    const reader = response.body!.getReader()
    let received = ''
    while (!received.includes('"content":"') || received.split('\n\n').length < 4) {
      const { value } = await reader.read()
      received += new TextDecoder().decode(value)
    }
    controller.abort()
    await reader.cancel().catch(() => {})
    for (let i = 0; i < 200 && backend.outcomes.length === before; i++) {
      await new Promise((resolve) => setTimeout(resolve, 25))
    }
    const outcome = backend.outcomes[before]!
    expect(outcome.stopReason).toBe('abort')
    // Without max_tokens a chat may fill the context (512 tokens); it stopped long before.
    expect(outcome.completionTokens).toBeLessThan(512 - outcome.promptTokens)
  })

  it('aborts running generations when the API closes', async () => {
    const server = await startOpenAiApi({ backend, port: 0, logger: silentLogger() })
    const before = backend.outcomes.length
    const response = await fetch(`http://127.0.0.1:${server.port}/v1/completions`, {
      method: 'POST',
      body: JSON.stringify({
        model: 'tiny',
        prompt: 'Hello world',
        max_tokens: 480,
        temperature: 0,
        stream: true,
      }),
    })
    const reader = response.body!.getReader()
    await reader.read()
    await server.close()
    // close() waited for the generation to end.
    expect(backend.outcomes[before]).toMatchObject({ stopReason: 'abort' })
    await reader.cancel().catch(() => {})
  })
})
