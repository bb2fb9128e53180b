import { mkdtemp, readFile, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { readShardModelFacts } from '@meshnet/shards'
import {
  type AgentProcess,
  beaconPort,
  createModel,
  eventually,
  startAgentProcess,
  withChatTemplate,
} from '@meshnet/test-harness'
import OpenAI from 'openai'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { apiPort, offerFor, ringOfThree, ringStatus } from './mesh-fixture.ts'
import { CLOCK, CLOCK_INPUT, PERSON, validFor, WEATHER, WEATHER_INPUT } from './tool-fixtures.ts'

// OpenAI's sampling parameters through a real agent's OpenAI API when the job is split over a ring
// of three `mesh start` agents (each offers too little memory for the whole model: a pipeline, the
// coordinator samples from the output member's candidates), against the same requests to an agent
// that runs the whole model on its own llama.cpp. Penalized tokens and log-probabilities must agree.

const MODEL = { layers: 3, embd: 256, heads: 4, kvHeads: 2, ff: 512, vocab: 1000, type: 'F32', seed: 7 }
const MESSAGES = [{ role: 'user' as const, content: 'A ring of laptops holds the model' }]
const PENALTIES = { presence_penalty: 0.8, frequency_penalty: 1.5 }
/** Largest difference of a log-probability between the ring and the whole model. */
const LOGPROB_TOLERANCE = 1e-4

let root: string
const agents: AgentProcess[] = []
let ring: OpenAI
let whole: OpenAI
let model: string

beforeAll(async () => {
  root = await mkdtemp(join(tmpdir(), 'meshnet-openai-ring-'))
  const path = join(root, 'model.gguf')
  // A small F32 model, whose logits the Meshnet engine (the ring) and llama.cpp agree on to ~1e-5
  // (on the demo's, wider and deeper, to ~1e-4).
  await createModel(join(root, 'plain.gguf'), MODEL)
  // Qwen 2.5's own chat template, whose tool calls are `<tool_call>` blocks.
  await withChatTemplate(
    join(root, 'plain.gguf'),
    path,
    await readFile(
      join(import.meta.dirname, 'fixtures', 'chat-templates', 'Qwen-Qwen2.5-7B-Instruct.jinja'),
      'utf8',
    ),
  )
  const api = ['--api-port', '0', '--json']
  // Room for one of the three layers each: no member can hold the model, the three together can.
  const memory = ['--memory', String(offerFor(await readShardModelFacts(path), 1))]
  const [made, alone] = await Promise.all([
    ringOfThree(root, path, [...memory, ...api]),
    startAgentProcess(join(root, 'S'), [
      '--local-only',
      '--beacon-port',
      beaconPort(),
      '--model',
      path,
      '--threads',
      '1',
      ...api,
    ]),
  ])
  agents.push(...made.agents.values(), alone)
  await eventually(
    'every member to load its shard',
    async () => ((await ringStatus(made.dir('A'), made.poolId)).ready ? true : undefined),
    30_000,
  )
  ring = client(await apiPort(made.agents.get('A')!))
  whole = client(await apiPort(alone))
  for (const c of [ring, whole]) {
    await eventually('the API to list the model', async () =>
      (await c.models.list()).data.length > 0 ? true : undefined,
    )
  }
  model = (await ring.models.list()).data[0]!.id
}, 90_000)

afterAll(async () => {
  await Promise.all(agents.splice(0).map((a) => a.stop()))
  if (root !== undefined) await rm(root, { recursive: true, force: true })
})

const client = (port: number) =>
  new OpenAI({ baseURL: `http://127.0.0.1:${port}/v1`, apiKey: 'none', maxRetries: 0 })

type ChatParams = Partial<OpenAI.ChatCompletionCreateParamsNonStreaming>

/** The same chat on the ring and on the whole model; the ring's ran as a pipeline. */
async function both(params: ChatParams) {
  const ask = (c: OpenAI) =>
    c.chat.completions.create({ model, messages: MESSAGES, max_tokens: 24, ...params }) as Promise<
      OpenAI.ChatCompletion & { meshnet?: { mode: string; members: string[] } }
    >
  const [split, one] = await Promise.all([ask(ring), ask(whole)])
  expect(split.meshnet).toMatchObject({ mode: 'pipeline' })
  expect(split.meshnet?.members).toHaveLength(3)
  expect(one.meshnet).toMatchObject({ mode: 'single' })
  return { split, one }
}

/** The largest difference between two choices' log-probabilities, after checking they list the same tokens. */
function logprobGap(a: OpenAI.ChatCompletion.Choice, b: OpenAI.ChatCompletion.Choice): number {
  const ca = a.logprobs!.content!
  const cb = b.logprobs!.content!
  expect(ca.map((t) => t.bytes)).toEqual(cb.map((t) => t.bytes))
  let worst = 0
  for (const [i, t] of ca.entries()) {
    worst = Math.max(worst, Math.abs(t.logprob - cb[i]!.logprob))
    expect(t.top_logprobs.map((x) => x.bytes)).toEqual(cb[i]!.top_logprobs.map((x) => x.bytes))
    for (const [k, x] of t.top_logprobs.entries()) {
      worst = Math.max(worst, Math.abs(x.logprob - cb[i]!.top_logprobs[k]!.logprob))
    }
  }
  return worst
}

describe('sampling parameters on a ring', () => {
  it('penalizes the same tokens as the whole model, greedy', async () => {
    const plain = await both({ temperature: 0 })
    for (const penalties of [PENALTIES, { presence_penalty: -2, frequency_penalty: -1 }]) {
      const { split, one } = await both({ temperature: 0, ...penalties })
      expect(split.choices[0]!.message.content).toBe(one.choices[0]!.message.content)
      if (penalties.presence_penalty < 0) {
        expect(split.choices[0]!.message.content).not.toBe(plain.split.choices[0]!.message.content)
      }
    }
  })

  it.each([
    ['greedy, penalized', { temperature: 0, ...PENALTIES }],
    // OpenAI's defaults (temperature 1, no top-k): the output member sends the whole row.
    ['seeded at the defaults, penalized', { seed: 8, ...PENALTIES }],
    // Top-k 20: the output member sends 20 candidates and the log-sum-exp of its whole row.
    ['seeded with top_k 20', { seed: 10, top_k: 20 }],
    // With penalties, the whole row (they apply before top-k, to tokens of any rank).
    ['seeded with top_k 20, penalized', { seed: 9, top_k: 20, temperature: 0.8, ...PENALTIES }],
  ] as Array<[string, ChatParams]>)(
    '%s: the same tokens and log-probabilities as the whole model',
    async (_, params) => {
      const { split, one } = await both({ ...params, logprobs: true, top_logprobs: 5 })
      expect(split.choices[0]!.message.content).toBe(one.choices[0]!.message.content)
      expect(logprobGap(split.choices[0]!, one.choices[0]!)).toBeLessThan(LOGPROB_TOLERANCE)
    },
  )

  it('returns n choices, seed + i each, as the whole model does', async () => {
    const { split, one } = await both({ n: 2, seed: 30, max_tokens: 8 })
    expect(split.choices.map((c) => c.message.content)).toEqual(one.choices.map((c) => c.message.content))
    expect(split.usage).toEqual(one.usage)
  })
})

/** The same streamed chat on the ring and on the whole model, as the client assembles it. */
async function bothStreamed(params: ChatParams) {
  const ask = async (c: OpenAI) => {
    const stream = c.chat.completions.stream({
      model,
      messages: MESSAGES,
      max_tokens: 24,
      ...params,
      stream: true,
    })
    return stream.finalChatCompletion()
  }
  return Promise.all([ask(ring), ask(whole)])
}

describe('tools and structured output on a ring', () => {
  it.each([
    ['required, greedy', { tool_choice: 'required', temperature: 0 }],
    ['named, seeded', { tool_choice: { type: 'function', function: { name: 'get_weather' } }, seed: 4 }],
  ] as Array<[string, ChatParams]>)(
    'a call the model must make (%s): arguments valid for the schema, the same call as the whole model, streamed or not',
    async (_, params) => {
      const request = { tools: [WEATHER, CLOCK], max_tokens: 120, ...params }
      const { split, one } = await both(request)
      const [streamedSplit, streamedOne] = await bothStreamed(request)
      for (const answer of [split, one, streamedSplit, streamedOne]) {
        const choice = answer.choices[0]!
        expect(choice.finish_reason).toBe('tool_calls')
        const [call] = choice.message.tool_calls!
        expect(call!.type).toBe('function')
        const fn = (call as OpenAI.ChatCompletionMessageFunctionToolCall).function
        if ('tool_choice' in params && typeof params.tool_choice === 'object')
          expect(fn.name).toBe('get_weather')
        const schema = fn.name === 'get_weather' ? WEATHER_INPUT : CLOCK_INPUT
        expect(validFor(schema, JSON.parse(fn.arguments)), fn.arguments).toBe(true)
      }
      const calls = (a: OpenAI.ChatCompletion) =>
        a.choices[0]!.message.tool_calls!.map(
          (c) => (c as OpenAI.ChatCompletionMessageFunctionToolCall).function,
        )
      expect(calls(split)).toEqual(calls(one))
      expect(calls(streamedSplit)).toEqual(calls(one))
      expect(calls(streamedOne)).toEqual(calls(one))
    },
  )

  it('feeds a tool result back through the template, and answers as the whole model does', async () => {
    const { split } = await both({
      tools: [WEATHER],
      tool_choice: 'required',
      temperature: 0,
      max_tokens: 120,
    })
    const call = split.choices[0]!.message.tool_calls![0] as OpenAI.ChatCompletionMessageFunctionToolCall
    const messages: OpenAI.ChatCompletionMessageParam[] = [
      ...MESSAGES,
      { role: 'assistant', content: null, tool_calls: [call] },
      { role: 'tool', tool_call_id: call.id, content: '{"temperature": 21, "sky": "clear"}' },
    ]
    const round = await both({ messages, tools: [WEATHER], tool_choice: 'none', temperature: 0 })
    expect(round.split.choices[0]!.message.content).toBe(round.one.choices[0]!.message.content)
    expect(round.split.choices[0]!.message.tool_calls).toBeUndefined()
    // The call and its result are in the prompt: more tokens than the call alone.
    const without = await both({
      messages: messages.slice(0, 2),
      tools: [WEATHER],
      tool_choice: 'none',
      temperature: 0,
    })
    expect(round.split.usage!.prompt_tokens).toBeGreaterThan(without.split.usage!.prompt_tokens + 10)
  })

  it.each([
    ['greedy', { temperature: 0 }],
    ['seeded', { seed: 12 }],
  ] as Array<[string, ChatParams]>)(
    'json_schema output (%s) that parses and validates, the same as the whole model, streamed or not',
    async (_, params) => {
      const request: ChatParams = {
        response_format: {
          type: 'json_schema',
          json_schema: { name: 'person', schema: PERSON, strict: true },
        },
        max_tokens: 100,
        ...params,
      }
      const { split, one } = await both(request)
      const [streamedSplit, streamedOne] = await bothStreamed(request)
      for (const answer of [split, one, streamedSplit, streamedOne]) {
        const content = answer.choices[0]!.message.content!
        expect(validFor(PERSON, JSON.parse(content)), content).toBe(true)
      }
      expect(split.choices[0]!.message.content).toBe(one.choices[0]!.message.content)
      expect(streamedSplit.choices[0]!.message.content).toBe(one.choices[0]!.message.content)
    },
  )

  it('json_object output is a JSON object, even when max_tokens runs short', async () => {
    const { split, one } = await both({ response_format: { type: 'json_object' }, seed: 3, max_tokens: 12 })
    for (const answer of [split, one]) {
      const value = JSON.parse(answer.choices[0]!.message.content!)
      expect(typeof value === 'object' && value !== null && !Array.isArray(value)).toBe(true)
    }
    expect(split.choices[0]!.message.content).toBe(one.choices[0]!.message.content)
  })

  it('refuses a schema keyword it cannot keep to, naming it', async () => {
    const refused = ring.chat.completions.create({
      model,
      messages: MESSAGES,
      response_format: {
        type: 'json_schema',
        json_schema: { name: 'p', schema: { type: 'string', pattern: '^a+$' } },
      },
    })
    await expect(refused).rejects.toMatchObject({ status: 400, message: expect.stringMatching(/pattern/) })
  })
})
