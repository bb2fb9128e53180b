import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import {
  type GenerateModelOptions,
  type GGUFTensorInput,
  type GGUFValueInput,
  generateModel,
  openGGUF,
  writeGGUF,
} from '@meshnet/gguf'
import {
  encodeJobFrame,
  frameStream,
  JOB_PROTOCOL,
  type JobReply,
  type JobToken,
  MAX_JOB_FRAME_BYTES,
} from '@meshnet/protocols'
import { withChatTemplate } from '@meshnet/test-harness'
import { multiaddr } from '@multiformats/multiaddr'
import { Ajv } from 'ajv'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { FabstirSDK } from '../src/sdk.ts'
import type { ChatMessage, ChatRequest } from '../src/types.ts'
import { type Agent, startAgent } from './agents.ts'

// Chats through the SDK against real agents (`mesh start --public --api-port 0` child processes on
// 127.0.0.1), each serving a generated GGUF: the node renders the messages with the model's chat
// template, and must give the very prompt its OpenAI-compatible API gives for the same messages.

// Zephyr-style: BOS first (dropped, since the tokenizer adds its own), role markers that are plain
// text in the test vocabulary, and a refusal of unknown roles and of two turns of one role in a row.
// (It has no tool role: tool calls and results are folded into text for it, as for any such template.)
const CHAT_TEMPLATE =
  '{{ bos_token }}{% for message in messages %}' +
  "{% if message['role'] not in ['system', 'user', 'assistant'] %}{{ raise_exception('role ' + message['role'] + ' is not supported') }}{% endif %}" +
  "{% if loop.index0 > 0 and message['role'] == messages[loop.index0 - 1]['role'] %}{{ raise_exception('roles must alternate') }}{% endif %}" +
  "{{ '<|' + message['role'] + '|>\\n' + message['content'] + '\\n' }}{% endfor %}" +
  "{% if add_generation_prompt %}{{ '<|assistant|>\\n' }}{% endif %}"

const MESSAGES: ChatMessage[] = [
  { role: 'system', content: 'Be brief.' },
  { role: 'user', content: 'Hello world' },
]

const SHAPE = { layers: 2, embd: 256, heads: 4, kvHeads: 2, ff: 512, vocab: 1000, type: 'Q8_0' } as const

let root: string
/** Serves chat.gguf: a random model with CHAT_TEMPLATE. */
let templated: Agent
/** Serves bytes.gguf: no template (the fallback), and a reply of multi-byte characters. */
let plain: Agent
/** Serves broken.gguf, whose template does not parse. */
let broken: Agent
const sdks: FabstirSDK[] = []

beforeAll(async () => {
  root = await mkdtemp(join(tmpdir(), 'meshnet-sdk-chat-'))
  const base = join(root, 'base.gguf')
  await generateModel({ out: base, ...SHAPE, context: 1024, seed: 7 })
  const chat = await withChatTemplate(base, join(root, 'chat.gguf'), CHAT_TEMPLATE)
  const bad = await withChatTemplate(
    base,
    join(root, 'broken.gguf'),
    '{% for message in messages %}{{ message',
  )
  const bytes = await euroModel(join(root, 'bytes.gguf'))
  const start = (name: string, model: string) =>
    startAgent(join(root, name), [
      '--local-only',
      '--model',
      model,
      '--public',
      '--no-beacons',
      '--api-port',
      '0',
      '--threads',
      '1',
      '--json',
    ])
  ;[templated, plain, broken] = await Promise.all([start('a', chat), start('b', bytes), start('c', bad)])
}, 90_000)

afterAll(async () => {
  await Promise.all(sdks.splice(0).map((sdk) => sdk.disconnect()))
  await Promise.all([templated?.stop(), plain?.stop(), broken?.stop()])
  await rm(root, { recursive: true, force: true })
})

/**
 * A model that answers anything with "€é€é…" one byte token at a time (E2 82 AC C3 A9): its layers
 * add nothing (zero output projections), so the logits are the head times the last token's
 * embedding, and each of those five tokens has an embedding axis of its own that the head maps to
 * the next byte. Every other token leads to E2.
 */
async function euroModel(out: string): Promise<string> {
  const shape = { layers: 1, embd: 64, heads: 2, ff: 128, vocab: 300, type: 'F32' } as const
  const base = `${out}.base`
  await generateModel({ out: base, ...shape, context: 64, seed: 1 } satisfies GenerateModelOptions)
  const { embd, vocab } = shape
  const byteToken = (byte: number) => 3 + byte // after <unk>, <s>, </s>
  const chain = [0xe2, 0x82, 0xac, 0xc3, 0xa9].map(byteToken)
  const embedding = new Float32Array(embd * vocab)
  for (let t = 0; t < vocab; t++) embedding[t * embd + chain.indexOf(t) + 1] = 10
  const head = new Float32Array(embd * vocab)
  head[chain[0]! * embd] = 1
  chain.forEach((_, i) => {
    head[chain[(i + 1) % chain.length]! * embd + i + 1] = 1
  })
  const file = await openGGUF(base)
  try {
    const tensors: GGUFTensorInput[] = []
    for (const t of file.tensors) {
      let data = await file.readTensor(t.name)
      if (t.name === 'token_embd.weight') data = new Uint8Array(embedding.buffer)
      else if (t.name === 'output.weight') data = new Uint8Array(head.buffer)
      else if (t.name === 'output_norm.weight') data = new Uint8Array(new Float32Array(embd).fill(1).buffer)
      else if (/attn_output|ffn_down/.test(t.name)) data = new Uint8Array(data.length)
      tensors.push({ name: t.name, dims: t.dims, type: t.type, data })
    }
    await writeGGUF(out, { metadata: new Map<string, GGUFValueInput>(file.metadata), tensors })
    return out
  } finally {
    await file.close()
    await rm(base, { force: true })
  }
}

async function connected(): Promise<FabstirSDK> {
  const sdk = new FabstirSDK({
    mode: 'development',
    p2pConfig: {
      localOnly: true,
      bootstrapNodes: [templated.addresses[0]!, plain.addresses[0]!, broken.addresses[0]!],
      dialTimeout: 5_000,
      requestTimeout: 30_000,
      retryDelay: 200,
    },
  })
  sdks.push(sdk)
  await sdk.connect()
  return sdk
}

/** A chat for `agent`'s model, straight to that agent. */
const on = (agent: Agent, model: string, request: Omit<ChatRequest, 'nodeId' | 'target'>): ChatRequest => ({
  target: 'public',
  nodeId: agent.nodeId,
  model,
  ...request,
})

interface OpenAiChat {
  choices: Array<{ message: { content: string }; finish_reason: string }>
  usage: { prompt_tokens: number; completion_tokens: number }
}

/** `POST /v1/chat/completions` on the agent's OpenAI-compatible API. */
async function openAiChat(agent: Agent, body: object): Promise<{ status: number; body: unknown }> {
  const { api } = await agent.request<{ api: { host: string; port: number } }>('/status')
  const response = await fetch(`http://${api.host}:${api.port}/v1/chat/completions`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify(body),
  })
  return { status: response.status, body: await response.json() }
}

async function drain(stream: AsyncIterable<JobToken>): Promise<JobToken[]> {
  const tokens: JobToken[] = []
  for await (const token of stream) tokens.push(token)
  return tokens
}

const WEATHER = {
  type: 'object',
  properties: {
    city: { type: 'string', minLength: 2, maxLength: 20 },
    days: { type: 'integer' },
  },
  required: ['city', 'days'],
  additionalProperties: false,
}
const PERSON = {
  type: 'object',
  properties: { name: { type: 'string', maxLength: 20 }, admin: { type: 'boolean' } },
  required: ['name', 'admin'],
  additionalProperties: false,
}
const ajv = new Ajv({ strict: false })

describe('FabstirSDK chat with tools and structured output', () => {
  it('a forced tool call comes back parsed and valid for its schema, as the OpenAI API makes it; its result goes back in', async () => {
    const sdk = await connected()
    const tools = [{ name: 'get_weather', description: 'The weather in a city', parameters: WEATHER }]
    const ask = { messages: MESSAGES, tools, temperature: 0, maxTokens: 80 }
    const called = await sdk.chat(on(templated, 'chat.gguf', { ...ask, toolChoice: 'required' }))
    expect(called.toolCalls).toHaveLength(1)
    const [call] = called.toolCalls!
    expect(call!.name).toBe('get_weather')
    expect(ajv.validate(WEATHER, JSON.parse(call!.arguments)), call!.arguments).toBe(true)
    const api = await openAiChat(templated, {
      model: 'chat.gguf',
      messages: MESSAGES,
      tools: tools.map((f) => ({ type: 'function', function: f })),
      tool_choice: 'required',
      temperature: 0,
      max_tokens: 80,
    })
    const apiCall = (
      api.body as { choices: Array<{ message: { tool_calls: Array<{ function: unknown }> } }> }
    ).choices[0]!.message.tool_calls[0]!.function
    expect(apiCall).toEqual({ name: call!.name, arguments: call!.arguments })

    // The call and its result, sent back, are rendered into the prompt (the template has no tool
    // role: they are folded into text).
    const answered = await sdk.chat(
      on(templated, 'chat.gguf', {
        ...ask,
        maxTokens: 8,
        messages: [
          ...MESSAGES,
          { role: 'assistant', content: '', toolCalls: [call!] },
          { role: 'tool', content: '{"temperature": 21}', toolCallId: call!.id! },
        ],
      }),
    )
    expect(answered.stats.promptTokens).toBeGreaterThan(called.stats.promptTokens + 10)
  })

  it('a JSON response format gives text that parses and validates, as the OpenAI API’s json_schema does', async () => {
    const sdk = await connected()
    const stream = sdk.streamChat(
      on(templated, 'chat.gguf', {
        messages: MESSAGES,
        responseFormat: { type: 'json', schema: PERSON },
        temperature: 0,
        maxTokens: 60,
      }),
    )
    const streamed = (await drain(stream)).map((t) => t.text).join('')
    const { text } = await stream.result
    expect(streamed).toBe(text)
    expect(ajv.validate(PERSON, JSON.parse(text)), text).toBe(true)
    const api = await openAiChat(templated, {
      model: 'chat.gguf',
      messages: MESSAGES,
      response_format: { type: 'json_schema', json_schema: { name: 'person', schema: PERSON } },
      temperature: 0,
      max_tokens: 60,
    })
    expect((api.body as OpenAiChat).choices[0]!.message.content).toBe(text)
  })
})

describe('FabstirSDK chat with real agents', () => {
  it("streams a chat rendered on the node as its OpenAI API renders it: the model's template, one BOS, the generation prompt", async () => {
    const sdk = await connected()
    const stream = sdk.streamChat(
      on(templated, 'chat.gguf', { messages: MESSAGES, maxTokens: 24, temperature: 0 }),
    )
    const streamed = await drain(stream)
    const result = await stream.result
    expect(result.text).toBe(streamed.map((t) => t.text).join(''))
    expect(result.stats.completionTokens).toBe(24)

    const api = await openAiChat(templated, {
      model: 'chat.gguf',
      messages: MESSAGES,
      max_tokens: 24,
      temperature: 0,
    })
    expect(api.status).toBe(200)
    const answer = api.body as OpenAiChat
    expect(result.text).toBe(answer.choices[0]!.message.content)
    expect(result.stats.promptTokens).toBe(answer.usage.prompt_tokens)

    // The prompt the template writes, sent as a prompt: the same job, token for token.
    const raw = await sdk.submitJob({
      target: 'public',
      nodeId: templated.nodeId,
      prompt: '<|system|>\nBe brief.\n<|user|>\nHello world\n<|assistant|>\n',
      parseSpecial: true,
      maxTokens: 24,
      temperature: 0,
    })
    expect(raw.tokens).toEqual(result.tokens)
    expect(raw.stats.promptTokens).toBe(result.stats.promptTokens)
  }, 40_000)

  it("answers with chat(), by default up to the end of the model's context as the OpenAI API's chat does", async () => {
    const sdk = await connected()
    const messages: ChatMessage[] = [{ role: 'user', content: 'Tell me a story' }]
    const result = await sdk.chat(on(templated, 'chat.gguf', { messages, temperature: 0 }))
    const api = await openAiChat(templated, { model: 'chat.gguf', messages, temperature: 0 })
    const answer = api.body as OpenAiChat
    expect(result.text).toBe(answer.choices[0]!.message.content)
    expect(result.stats.promptTokens).toBe(answer.usage.prompt_tokens)
    expect(result.stats.completionTokens).toBe(answer.usage.completion_tokens)
    // The model's context is 1024: the reply may take whatever the prompt leaves, unless the model
    // ends first, or llama.cpp's sequence fills first: node-llama-cpp gives each of the agent's 4
    // sequences the whole context on an AMD EPYC without AVX-512, and this test, written on another
    // machine, saw the reply end at 256, a quarter of it.
    const total = result.stats.promptTokens + result.stats.completionTokens
    if (result.stopReason === 'maxTokens') expect(total).toBe(1024)
    else if (result.stopReason === 'contextFull') expect(total).toBe(256)
    else expect(result.stopReason).toBe('eog')
  }, 40_000)

  it('uses the plain fallback template for a model without one, and streams a character split over tokens whole', async () => {
    const sdk = await connected()
    const messages: ChatMessage[] = [{ role: 'user', content: 'Hi' }]
    // "€" is three byte tokens and "é" two: ten tokens end on a character's last byte.
    const stream = sdk.streamChat(on(plain, 'bytes.gguf', { messages, maxTokens: 10 }))
    const streamed = await drain(stream)
    const result = await stream.result
    expect(result.text).toBe('€é€é')
    // A token that starts a character carries no text; the one that completes it carries all of it.
    expect(streamed.map((t) => t.text)).toEqual(['', '', '€', '', 'é', '', '', '€', '', 'é'])
    expect(streamed.map((t) => t.index)).toEqual([...Array(10).keys()])

    const api = await openAiChat(plain, { model: 'bytes.gguf', messages, max_tokens: 10, temperature: 0 })
    const answer = api.body as OpenAiChat
    expect(answer.choices[0]!.message.content).toBe('€é€é')
    expect(result.stats.promptTokens).toBe(answer.usage.prompt_tokens)
    const raw = await sdk.submitJob({
      target: 'public',
      nodeId: plain.nodeId,
      prompt: 'User: Hi\n\nAssistant:',
      maxTokens: 1,
    })
    expect(raw.stats.promptTokens).toBe(result.stats.promptTokens)
  }, 40_000)

  it('names why a chat is refused: messages the template rejects, or a template that does not parse', async () => {
    const sdk = await connected()
    await expect(
      sdk.chat(
        on(templated, 'chat.gguf', {
          messages: [
            { role: 'user', content: '4' },
            { role: 'user', content: '2' },
          ],
          maxTokens: 4,
        }),
      ),
    ).rejects.toMatchObject({
      name: 'JobFailedError',
      remoteName: 'ChatTemplateRenderError',
      code: 'ERR_CHAT_TEMPLATE_RENDER',
      message: expect.stringContaining('roles must alternate'),
    })
    await expect(
      sdk.chat(on(broken, 'broken.gguf', { messages: MESSAGES, maxTokens: 4 })),
    ).rejects.toMatchObject({
      name: 'JobFailedError',
      remoteName: 'ChatTemplateSyntaxError',
      code: 'ERR_CHAT_TEMPLATE_SYNTAX',
      message: expect.stringContaining('chat template does not parse'),
    })
    // The OpenAI API refuses the same chats.
    const rejected = await openAiChat(templated, {
      model: 'chat.gguf',
      messages: [
        { role: 'user', content: '4' },
        { role: 'user', content: '2' },
      ],
    })
    expect(rejected.status).toBe(400)
    expect((await openAiChat(broken, { model: 'broken.gguf', messages: MESSAGES })).status).toBe(500)
    // A prompt still runs on the node whose template is broken.
    const prompt = await sdk.submitJob({
      target: 'public',
      nodeId: broken.nodeId,
      prompt: 'Hello',
      maxTokens: 2,
    })
    expect(prompt.tokens).toHaveLength(2)
  }, 40_000)

  it('refuses malformed messages before sending them; an agent sent them answers with the problem and keeps serving', async () => {
    const sdk = await connected()
    const bad = [
      { messages: [{ role: 'robot', content: 'hi' }], problem: /^chat request messages\.0\.role: / },
      { messages: [], problem: /^chat request messages: / },
      { messages: [{ role: 'user' }], problem: /^chat request messages\.0\.content: / },
      { messages: undefined, problem: /^chat request messages: / },
    ]
    for (const { messages, problem } of bad) {
      const stream = sdk.streamChat(on(templated, 'chat.gguf', { messages: messages as ChatMessage[] }))
      await expect(drain(stream)).rejects.toMatchObject({
        name: 'InvalidRequestError',
        code: 'ERR_INVALID_REQUEST',
      })
      await expect(stream.result).rejects.toThrow(problem)
    }

    // The same mistakes, and a request with both a prompt and messages, sent as they are.
    const before = await templated.request<{ jobs: { badRequests: number } }>('/status')
    const requests = [
      { messages: [{ role: 'robot', content: 'hi' }] },
      { messages: [{ role: 'user', content: 5 }] },
      { prompt: 'Hi', messages: MESSAGES, maxTokens: 4 },
      { messages: Array(1025).fill({ role: 'user', content: 'x' }) },
    ]
    for (const request of requests) {
      const stream = await sdk.node!.libp2p.dialProtocol(multiaddr(templated.addresses[0]!), JOB_PROTOCOL)
      const frames = frameStream(stream, { maxFrameBytes: MAX_JOB_FRAME_BYTES })
      await frames.write(encodeJobFrame({ v: 1, request }))
      const reply = JSON.parse(new TextDecoder().decode(await frames.read())) as JobReply
      expect(reply).toMatchObject({
        type: 'error',
        error: {
          name: 'JobProtocolError',
          code: 'ERR_JOB_PROTOCOL',
          message: expect.stringMatching(/^job request: request\./),
        },
      })
      await stream.close().catch(() => {})
    }
    const after = await templated.request<{ jobs: { badRequests: number } }>('/status')
    expect(after.jobs.badRequests - before.jobs.badRequests).toBe(requests.length)

    const result = await sdk.chat(on(templated, 'chat.gguf', { messages: MESSAGES, maxTokens: 3 }))
    expect(result.tokens).toHaveLength(3)
  }, 40_000)
})
