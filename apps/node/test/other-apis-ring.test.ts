import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import Anthropic from '@anthropic-ai/sdk'
import { readShardModelFacts } from '@meshnet/shards'
import {
  type AgentProcess,
  agentRequest,
  beaconPort,
  createModel,
  eventually,
  startAgentProcess,
} from '@meshnet/test-harness'
import { Ollama } from 'ollama'
import OpenAI from 'openai'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { DEMO_MODEL } from '../src/commands/demo.ts'
import { apiPort, offerFor, ringOfThree, ringStatus } from './mesh-fixture.ts'
import { ANTHROPIC_TOOLS, CLOCK_INPUT, PERSON, validFor, WEATHER_INPUT } from './tool-fixtures.ts'

// The Ollama and Anthropic clients against real `mesh start` agents: one that runs the whole model
// on its own llama.cpp, and a ring of three whose members each offer too little memory for the model,
// so every job is split over them (a pipeline). Every answer must be llama.cpp's greedy answer on
// the whole model: what the single agent's OpenAI chat endpoint gives. Forced tool calls and
// structured output, whose grammar the ring's sampler keeps to, must be the single agent's too.

const MAX_TOKENS = 16
const MESSAGES = [{ role: 'user' as const, content: 'A ring of laptops holds the model' }]

let root: string
const agents: AgentProcess[] = []
/** The API base URL and data dir of the single agent and of the ring's first member. */
let single: { url: string; dataDir: string }
let ring: { url: string; dataDir: string }
/** llama.cpp's greedy answer to MESSAGES, on the whole model. */
let reference: string

beforeAll(async () => {
  root = await mkdtemp(join(tmpdir(), 'meshnet-other-apis-ring-'))
  const model = join(root, 'model.gguf')
  // The demo's model: F32, so the split run's greedy tokens are exactly llama.cpp's.
  await createModel(model, DEMO_MODEL)
  const api = ['--api-port', '0', '--json']
  // Room for four of the eight layers each: no member can hold the model, the three together can.
  const memory = ['--memory', String(offerFor(await readShardModelFacts(model), 4))]
  const made = await ringOfThree(root, model, [...memory, ...api])
  agents.push(...made.agents.values())
  const alone = await startAgentProcess(join(root, 'S'), [
    '--local-only',
    '--beacon-port',
    beaconPort(),
    '--model',
    model,
    '--threads',
    '1',
    ...api,
  ])
  agents.push(alone)
  single = { url: `http://127.0.0.1:${await apiPort(alone)}`, dataDir: join(root, 'S') }
  ring = { url: `http://127.0.0.1:${await apiPort(made.agents.get('A')!)}`, dataDir: made.dir('A') }
  await eventually(
    'every member to load its shard',
    async () => ((await ringStatus(made.dir('A'), made.poolId)).ready ? true : undefined),
    30_000,
  )
  reference = await openaiChat(single.url)
}, 90_000)

afterAll(async () => {
  await Promise.all(agents.splice(0).map((a) => a.stop()))
  if (root !== undefined) await rm(root, { recursive: true, force: true })
})

async function openaiChat(url: string): Promise<string> {
  const client = new OpenAI({ baseURL: `${url}/v1`, apiKey: 'none', maxRetries: 0 })
  // The agent may load its model after it starts: wait until it lists one.
  await eventually('the API to list the model', async () =>
    (await client.models.list()).data.length > 0 ? true : undefined,
  )
  const completion = await client.chat.completions.create({
    model: (await client.models.list()).data[0]!.id,
    messages: MESSAGES,
    max_tokens: MAX_TOKENS,
    temperature: 0,
  })
  return completion.choices[0]!.message.content!
}

/** The answers of both clients, streamed and not, to MESSAGES. */
async function answers(url: string): Promise<Record<string, string>> {
  const ollama = new Ollama({ host: url })
  const anthropic = new Anthropic({ baseURL: url, apiKey: 'none', maxRetries: 0 })
  const model = (await ollama.list()).models[0]!.name
  const options = { temperature: 0, num_predict: MAX_TOKENS }
  const chat = await ollama.chat({ model, messages: MESSAGES, options })
  expect(chat).toMatchObject({ done_reason: 'length', eval_count: MAX_TOKENS })
  let chatStreamed = ''
  for await (const part of await ollama.chat({ model, messages: MESSAGES, options, stream: true })) {
    chatStreamed += part.message.content
  }
  const generated = await ollama.generate({ model, prompt: MESSAGES[0]!.content, options })
  // Greedy: Anthropic's default temperature is 1.
  const greedy = { temperature: 0 } as Record<string, number>
  const message = await anthropic.messages.create({
    model,
    messages: MESSAGES,
    max_tokens: MAX_TOKENS,
    ...greedy,
  })
  expect(message).toMatchObject({ stop_reason: 'max_tokens', usage: { output_tokens: MAX_TOKENS } })
  const streamed = await anthropic.messages
    .stream({ model, messages: MESSAGES, max_tokens: MAX_TOKENS, ...greedy })
    .finalMessage()
  const text = (m: Anthropic.Message) => (m.content[0] as Anthropic.TextBlock).text
  return {
    'ollama chat': chat.message.content,
    'ollama chat, streamed': chatStreamed,
    'ollama generate': generated.response ?? '',
    'anthropic messages': text(message),
    'anthropic messages, streamed': text(streamed),
  }
}

/** The jobs an agent ran: each completed, with MAX_TOKENS tokens. */
async function jobsOf(dataDir: string): Promise<Array<{ mode: string; bytesMoved: number }>> {
  const { jobs } = await agentRequest<{
    jobs: Array<{ mode: string; status: string; tokens: number; bytesMoved: number }>
  }>(dataDir, '/jobs')
  for (const job of jobs) expect(job).toMatchObject({ status: 'completed', tokens: MAX_TOKENS })
  return jobs
}

describe('the Ollama and Anthropic APIs of a running agent', () => {
  it("give llama.cpp's greedy answer on one agent's whole model", async () => {
    expect(reference.length).toBeGreaterThan(0)
    const got = await answers(single.url)
    for (const [client, text] of Object.entries(got)) expect(text, client).toBe(reference)
    // The reference and the five answers, each a job on this agent's own llama.cpp.
    expect((await jobsOf(single.dataDir)).map((j) => j.mode)).toEqual(Array(6).fill('single'))
  }, 60_000)

  it("give llama.cpp's greedy answer when the model is split over a ring of three", async () => {
    expect(await openaiChat(ring.url)).toBe(reference)
    const got = await answers(ring.url)
    for (const [client, text] of Object.entries(got)) expect(text, client).toBe(reference)
    // The OpenAI chat and the five answers, each split over the ring, moving activations between members.
    const jobs = await jobsOf(ring.dataDir)
    expect(jobs.map((j) => j.mode)).toEqual(Array(6).fill('pipeline'))
    expect(jobs.every((j) => j.bytesMoved > 0)).toBe(true)
  }, 60_000)
})

/** Runs `ask` on the single agent and on the ring; the ring's jobs were each split over it. */
async function onBoth<T>(requests: number, ask: (url: string) => Promise<T>): Promise<{ one: T; split: T }> {
  const jobs = async () => (await agentRequest<{ jobs: Array<{ mode: string }> }>(ring.dataDir, '/jobs')).jobs
  const before = (await jobs()).length
  const [one, split] = await Promise.all([ask(single.url), ask(ring.url)])
  const after = await jobs()
  expect(after).toHaveLength(before + requests)
  expect(after.every((job) => job.mode === 'pipeline')).toBe(true)
  return { one, split }
}

describe('tools and structured output on the Ollama and Anthropic APIs of a running agent', () => {
  it('Anthropic: a forced tool call valid for its schema, the same on the ring as on one agent, streamed or not', async () => {
    const { one, split } = await onBoth(2, async (url) => {
      const anthropic = new Anthropic({ baseURL: url, apiKey: 'none', maxRetries: 0 })
      const params = {
        model: (await new Ollama({ host: url }).list()).models[0]!.name,
        messages: [{ role: 'user' as const, content: 'What is the weather in Paris for the next two days?' }],
        max_tokens: 80,
        tools: ANTHROPIC_TOOLS,
        tool_choice: { type: 'any' as const },
        ...({ temperature: 0 } as Record<string, number>),
      }
      const message = await anthropic.messages.create(params)
      const streamed = await anthropic.messages.stream(params).finalMessage()
      return [message, streamed].map((m) => {
        expect(m.stop_reason).toBe('tool_use')
        expect(m.content).toHaveLength(1)
        const { type, name, input } = m.content[0] as Anthropic.ToolUseBlock
        return { type, name, input }
      })
    })
    for (const use of [...one, ...split]) {
      const schema = use.name === 'get_weather' ? WEATHER_INPUT : CLOCK_INPUT
      expect(validFor(schema, use.input), JSON.stringify(use.input)).toBe(true)
    }
    expect(one[1]).toEqual(one[0])
    expect(split).toEqual(one)
  }, 60_000)

  it('Ollama: format output valid for its schema, the same on the ring as on one agent, streamed or not', async () => {
    const { one, split } = await onBoth(3, async (url) => {
      const ollama = new Ollama({ host: url })
      const model = (await ollama.list()).models[0]!.name
      const options = { temperature: 0, num_predict: 80 }
      const chat = await ollama.chat({ model, messages: MESSAGES, format: PERSON, options })
      let streamed = ''
      for await (const part of await ollama.chat({
        model,
        messages: MESSAGES,
        format: PERSON,
        options,
        stream: true,
      })) {
        streamed += part.message.content
      }
      const generated = await ollama.generate({
        model,
        prompt: MESSAGES[0]!.content,
        format: PERSON,
        options,
      })
      return [chat.message.content, streamed, generated.response ?? '']
    })
    for (const text of [...one, ...split]) expect(validFor(PERSON, JSON.parse(text)), text).toBe(true)
    // /api/generate renders the prompt as one user message: the chat's answer.
    expect(new Set(one).size).toBe(1)
    expect(split).toEqual(one)
  }, 60_000)
})
