import { silentLogger } from '@meshnet/core'
import { ContextOverflowError, UnsupportedModelError } from '@meshnet/engine'
import { Ollama } from 'ollama'
import OpenAI from 'openai'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import {
  type EmbeddingBackend,
  MAX_EMBEDDINGS_BODY,
  MAX_EMBEDDINGS_INPUTS,
} from '../../src/agent/embeddings.ts'
import { startOpenAiApi } from '../../src/agent/openai-api.ts'
import type { CompletionBackend, OpenAiApi } from '../../src/agent/openai-types.ts'
import { otherApis } from '../../src/agent/other-apis.ts'

// The embeddings routes on a fake backend: what they accept, what they answer, and each API's own
// error shape for what they refuse. The real engines are in test/embeddings.test.ts.

const WIDTH = 8
const MODEL = 'tiny.gguf'
const API_KEY = 'sk-meshnet-embeddings'

/** A unit vector that depends on the text only. */
function vectorOf(text: string): Float32Array {
  const v = Float32Array.from({ length: WIDTH }, (_, i) =>
    Math.sin(text.length * 0.7 + i + text.charCodeAt(0)),
  )
  const norm = Math.hypot(...v)
  return v.map((x) => x / norm)
}

interface FakeCall {
  inputs: readonly string[]
  truncate: boolean
}

function fakeBackend(calls: FakeCall[]): CompletionBackend & EmbeddingBackend {
  return {
    models: () => [{ id: MODEL, created: 0, ownedBy: 'meshnet', contextLength: 64 }],
    countTokens: async (_model, text) => text.length,
    // biome-ignore lint/correctness/useYield: generation is not what these tests ask for
    async *generate() {
      throw new Error('no generation in this test')
    },
    embeddingWidth: () => WIDTH,
    async embed({ inputs, truncate }) {
      calls.push({ inputs, truncate })
      if (inputs.includes('reranker')) throw new UnsupportedModelError('this model makes no embeddings')
      if (!truncate && inputs.some((t) => t.length > 50)) {
        throw new ContextOverflowError('input 0 is 60 tokens long; an embedding input takes at most 50')
      }
      return { vectors: inputs.map(vectorOf), promptTokens: inputs.reduce((sum, t) => sum + t.length, 0) }
    },
  }
}

const calls: FakeCall[] = []
let api: OpenAiApi
let keyed: OpenAiApi
let bare: OpenAiApi
let url: string

const serve = (backend: CompletionBackend, apiKey?: string) =>
  startOpenAiApi({
    backend,
    port: 0,
    ...(apiKey === undefined ? {} : { apiKey }),
    apiRoutes: otherApis({ backend, logger: silentLogger() }),
    logger: silentLogger(),
  })

beforeAll(async () => {
  api = await serve(fakeBackend(calls))
  keyed = await serve(fakeBackend(calls), API_KEY)
  const { embed: _embed, embeddingWidth: _width, ...completionsOnly } = fakeBackend(calls)
  bare = await serve(completionsOnly)
  url = `http://127.0.0.1:${api.port}`
})

afterAll(async () => {
  await api?.close()
  await keyed?.close()
  await bare?.close()
})

async function post(path: string, body: unknown, base = url, headers: Record<string, string> = {}) {
  const res = await fetch(`${base}${path}`, {
    method: 'POST',
    headers: { 'content-type': 'application/json', ...headers },
    body: typeof body === 'string' ? body : JSON.stringify(body),
  })
  return { status: res.status, body: (await res.json()) as Record<string, unknown> }
}

describe('POST /v1/embeddings', () => {
  it('answers OpenAI’s shape: one embedding per input, in order, with the token usage', async () => {
    const { status, body } = await post('/v1/embeddings', { model: MODEL, input: ['a cat', 'two dogs'] })
    expect(status).toBe(200)
    expect(body).toEqual({
      object: 'list',
      data: [
        { object: 'embedding', index: 0, embedding: [...vectorOf('a cat')] },
        { object: 'embedding', index: 1, embedding: [...vectorOf('two dogs')] },
      ],
      model: MODEL,
      usage: { prompt_tokens: 13, total_tokens: 13 },
    })
    expect(calls.at(-1)).toEqual({ inputs: ['a cat', 'two dogs'], truncate: false })
  })

  it('gives the same floats through the OpenAI client, as floats and as base64', async () => {
    const client = new OpenAI({ baseURL: `${url}/v1`, apiKey: 'unused', maxRetries: 0 })
    const floats = await client.embeddings.create({ model: MODEL, input: 'a cat', encoding_format: 'float' })
    const decoded = await client.embeddings.create({ model: MODEL, input: 'a cat' })
    const raw = await client.embeddings.create({ model: MODEL, input: 'a cat', encoding_format: 'base64' })
    expect(floats.data[0]!.embedding).toEqual([...vectorOf('a cat')])
    expect(decoded.data[0]!.embedding).toEqual([...vectorOf('a cat')])
    const bytes = Buffer.from(raw.data[0]!.embedding as unknown as string, 'base64')
    expect([...new Float32Array(bytes.buffer, bytes.byteOffset, WIDTH)]).toEqual([...vectorOf('a cat')])
    expect(floats.usage).toEqual({ prompt_tokens: 5, total_tokens: 5 })
  })

  it.each([
    ['token arrays', { model: MODEL, input: [[1, 2, 3]] }, 'input', /token arrays are not supported/],
    ['one token array', { model: MODEL, input: [1, 2, 3] }, 'input', /token arrays are not supported/],
    ['an empty string', { model: MODEL, input: '' }, 'input', /must not be empty/],
    ['no inputs', { model: MODEL, input: [] }, 'input', /must not be empty/],
    ['a number among the inputs', { model: MODEL, input: ['ok', 7] }, 'input[1]', /must be a string/],
    ['an object input', { model: MODEL, input: { text: 'x' } }, 'input', /a string or an array of strings/],
    [
      'fewer dimensions',
      { model: MODEL, input: 'x', dimensions: 4 },
      'dimensions',
      /have 8 dimensions and cannot be shortened/,
    ],
    [
      'an unknown encoding',
      { model: MODEL, input: 'x', encoding_format: 'int8' },
      'encoding_format',
      /'float' or 'base64'/,
    ],
    [
      'an unknown argument',
      { model: MODEL, input: 'x', temperature: 1 },
      'temperature',
      /Unrecognized request argument/,
    ],
    ['no input', { model: MODEL }, 'input', /Missing required parameter: 'input'/],
    ['no model', { input: 'x' }, 'model', /Missing required parameter: 'model'/],
    [
      'too many inputs',
      { model: MODEL, input: Array.from({ length: MAX_EMBEDDINGS_INPUTS + 1 }, () => 'x') },
      'input',
      /at most 2048/,
    ],
  ])('refuses %s with a 400 naming the parameter', async (_what, request, param, message) => {
    const before = calls.length
    const { status, body } = await post('/v1/embeddings', request)
    expect(status).toBe(400)
    expect(body.error).toMatchObject({
      param,
      type: 'invalid_request_error',
      message: expect.stringMatching(message),
    })
    expect(calls.length).toBe(before)
  })

  it('accepts dimensions equal to the model’s width', async () => {
    const { status, body } = await post('/v1/embeddings', { model: MODEL, input: 'x', dimensions: WIDTH })
    expect(status).toBe(200)
    expect((body.data as unknown[]).length).toBe(1)
  })

  it('answers a model it does not serve, an input too long, a reranker and a bad body in OpenAI’s error shape', async () => {
    const missing = await post('/v1/embeddings', { model: 'gpt-4', input: 'x' })
    expect(missing.status).toBe(404)
    expect(missing.body.error).toMatchObject({ code: 'model_not_found' })
    const long = await post('/v1/embeddings', { model: MODEL, input: 'y'.repeat(60) })
    expect(long.status).toBe(400)
    expect(long.body.error).toMatchObject({ code: 'context_length_exceeded' })
    const reranker = await post('/v1/embeddings', { model: MODEL, input: 'reranker' })
    expect(reranker.status).toBe(400)
    expect(reranker.body.error).toMatchObject({ code: 'model_not_supported', param: 'model' })
    const json = await post('/v1/embeddings', '{"model":')
    expect(json.status).toBe(400)
    expect(json.body.error).toMatchObject({ code: 'invalid_json' })
    const big = await post('/v1/embeddings', { model: MODEL, input: 'z'.repeat(MAX_EMBEDDINGS_BODY) })
    expect(big.status).toBe(413)
    const get = await fetch(`${url}/v1/embeddings`)
    expect(get.status).toBe(405)
    expect(get.headers.get('allow')).toBe('POST')
    // And it goes on serving.
    expect((await post('/v1/embeddings', { model: MODEL, input: 'still here' })).status).toBe(200)
  })

  it('needs the API key when one is set, and answers 503 on a backend without embeddings', async () => {
    const base = `http://127.0.0.1:${keyed.port}`
    expect((await post('/v1/embeddings', { model: MODEL, input: 'x' }, base)).status).toBe(401)
    const ok = await post('/v1/embeddings', { model: MODEL, input: 'x' }, base, {
      authorization: `Bearer ${API_KEY}`,
    })
    expect(ok.status).toBe(200)
    const none = await post('/v1/embeddings', { model: MODEL, input: 'x' }, `http://127.0.0.1:${bare.port}`)
    expect(none.status).toBe(503)
    expect(none.body.error).toMatchObject({ code: 'backend_unavailable' })
  })
})

describe('POST /api/embed', () => {
  it('answers Ollama’s shape through the Ollama client, truncating long inputs unless told not to', async () => {
    const ollama = new Ollama({ host: url })
    const one = await ollama.embed({ model: MODEL, input: 'a cat' })
    expect(one).toMatchObject({
      model: MODEL,
      embeddings: [[...vectorOf('a cat')]],
      load_duration: 0,
      prompt_eval_count: 5,
    })
    expect(one.total_duration).toBeGreaterThan(0)
    expect(calls.at(-1)).toEqual({ inputs: ['a cat'], truncate: true })
    const two = await ollama.embed({ model: `${MODEL}:latest`, input: ['a cat', 'y'.repeat(60)] })
    expect(two.embeddings).toHaveLength(2)
    await expect(
      ollama.embed({ model: MODEL, input: 'y'.repeat(60), truncate: false }),
    ).rejects.toMatchObject({
      status_code: 400,
      error: expect.stringMatching(/at most 50/),
    })
  })

  it('refuses bad bodies with {"error": "..."} and the right status', async () => {
    for (const [request, status, message] of [
      [{ model: MODEL, input: [[1, 2]] }, 400, /token arrays are not supported/],
      [{ model: MODEL, input: 'x', options: { num_ctx: 8 } }, 400, /options are not supported/],
      [{ model: MODEL, input: 'x', dimensions: 3 }, 400, /cannot be shortened/],
      [{ model: MODEL, input: 'x', truncate: 'yes' }, 400, /truncate/],
      [{ model: MODEL, input: 'x', format: 'json' }, 400, /format/],
      [{ model: 'llama3', input: 'x' }, 404, /model 'llama3' not found/],
    ] as const) {
      const res = await post('/api/embed', request)
      expect(res.status).toBe(status)
      expect(Object.keys(res.body)).toEqual(['error'])
      expect(res.body.error).toMatch(message)
    }
    const ok = await post('/api/embed', { model: MODEL, input: 'x', keep_alive: '5m', dimensions: WIDTH })
    expect(ok.status).toBe(200)
  })
})
