import { mkdtemp, readFile, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { generateModel } from '@meshnet/gguf'
import { withChatTemplate } from '@meshnet/test-harness'
import type OpenAI from 'openai'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { apiTestServer, type EngineBackend } from '../openai-backend.ts'
import { CLOCK, CLOCK_INPUT, PERSON, validFor, WEATHER, WEATHER_INPUT } from '../tool-fixtures.ts'

// Tools and structured output through the official `openai` client against the API on real engines
// (the Meshnet engine and llama.cpp), with one random model under the real chat templates of four
// tool-call families: the calls a request forces are written in the family's own syntax, constrained
// to the tool's schema, and parsed back into `tool_calls`, streamed or not.

const TEMPLATES = {
  qwen: 'Qwen-Qwen2.5-7B-Instruct.jinja',
  llama3: 'meta-llama-Llama-3.1-8B-Instruct.jinja',
  mistral: 'mistralai-Mistral-Nemo-Instruct-2407.jinja',
  generic: 'google-gemma-2-2b-it.jinja',
} as const

const MESSAGES: OpenAI.ChatCompletionMessageParam[] = [
  { role: 'user', content: 'What is the weather in Oslo?' },
]

/** What each family's forced call has in its grammar. */
const SYNTAX = { qwen: '<tool_call>', llama3: 'parameters', mistral: '[TOOL_CALLS]', generic: 'tool_calls' }

let dir: string
let backend: EngineBackend
let close: (() => Promise<void>) | undefined
let client: OpenAI

beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'meshnet-openai-tools-'))
  const plain = join(dir, 'plain.gguf')
  await generateModel({
    out: plain,
    layers: 2,
    embd: 128,
    heads: 4,
    ff: 256,
    vocab: 600,
    type: 'Q8_0',
    context: 4096,
    seed: 5,
  })
  const fixtures = join(import.meta.dirname, '..', 'fixtures', 'chat-templates')
  const models = []
  for (const [family, file] of Object.entries(TEMPLATES)) {
    const path = await withChatTemplate(
      plain,
      join(dir, `${family}.gguf`),
      await readFile(join(fixtures, file), 'utf8'),
    )
    models.push({ id: family, modelPath: path, contextSize: 4096 })
  }
  // One family on llama.cpp too: the constraint drives both engines' samplers alike.
  models.push({
    id: 'qwen-llama-cpp',
    modelPath: join(dir, 'qwen.gguf'),
    engine: 'llama-cpp' as const,
    contextSize: 4096,
  })
  ;({ backend, client, close } = await apiTestServer(models))
}, 60_000)

afterAll(async () => {
  await close?.()
  await rm(dir, { recursive: true, force: true })
})

type Call = OpenAI.ChatCompletionMessageFunctionToolCall
const functions = (c: OpenAI.ChatCompletion) =>
  (c.choices[0]!.message.tool_calls ?? []).map((t) => (t as Call).function)

describe.each(Object.keys(TEMPLATES))('tools with the %s family', (family) => {
  it('a required call: in the family’s syntax, arguments valid for the schema, the same streamed', async () => {
    const request = {
      model: family,
      messages: MESSAGES,
      tools: [WEATHER, CLOCK],
      tool_choice: 'required' as const,
      temperature: 0,
      max_tokens: 120,
    }
    const full = await client.chat.completions.create(request)
    expect(full.choices[0]!.finish_reason).toBe('tool_calls')
    // The call was forced in the family's own syntax.
    expect(JSON.stringify(backend.requests.at(-1)!.grammar)).toContain(SYNTAX[family as keyof typeof SYNTAX])
    const [fn] = functions(full)
    const schema = fn!.name === 'get_weather' ? WEATHER_INPUT : CLOCK_INPUT
    expect(validFor(schema, JSON.parse(fn!.arguments)), fn!.arguments).toBe(true)
    const streamed = await client.chat.completions.stream({ ...request, stream: true }).finalChatCompletion()
    expect(functions(streamed)).toEqual(functions(full))
    expect(streamed.choices[0]!.finish_reason).toBe('tool_calls')
  })

  it('a named call, seeded, and its result fed back through the template', async () => {
    const named = await client.chat.completions.create({
      model: family,
      messages: MESSAGES,
      tools: [CLOCK, WEATHER],
      tool_choice: { type: 'function', function: { name: 'get_weather' } },
      seed: 11,
      max_tokens: 120,
    })
    const call = named.choices[0]!.message.tool_calls![0] as Call
    expect(call.function.name).toBe('get_weather')
    expect(validFor(WEATHER_INPUT, JSON.parse(call.function.arguments))).toBe(true)
    const back = await client.chat.completions.create({
      model: family,
      messages: [
        ...MESSAGES,
        { role: 'assistant', content: null, tool_calls: [call] },
        { role: 'tool', tool_call_id: call.id, content: '{"sky": "clear", "temperature": 21}' },
      ],
      tools: [CLOCK, WEATHER],
      tool_choice: 'none',
      temperature: 0,
      max_tokens: 4,
    })
    expect(back.choices[0]!.message.tool_calls).toBeUndefined()
    // With tool_choice none the model is not told of the tools: the call and its result made the prompt longer.
    const without = await client.chat.completions.create({
      model: family,
      messages: MESSAGES,
      tools: [CLOCK, WEATHER],
      tool_choice: 'none',
      max_tokens: 1,
    })
    expect(back.usage!.prompt_tokens).toBeGreaterThan(without.usage!.prompt_tokens + 10)
  })
})

describe('structured output', () => {
  it.each(['qwen', 'qwen-llama-cpp'])(
    'json_schema on %s: n seeded choices, each parsing and valid, with log-probabilities',
    async (model) => {
      const answer = await client.chat.completions.create({
        model,
        messages: MESSAGES,
        response_format: {
          type: 'json_schema',
          json_schema: { name: 'person', schema: PERSON, strict: true },
        },
        n: 3,
        seed: 2,
        logprobs: true,
        max_tokens: 80,
      })
      for (const choice of answer.choices) {
        expect(validFor(PERSON, JSON.parse(choice.message.content!)), choice.message.content!).toBe(true)
        // The log-probabilities are the model's, before the constraint (as OpenAI reports them).
        const logprobs = choice.logprobs!.content!.map((t) => t.logprob)
        expect(logprobs.length).toBeGreaterThan(0)
        for (const logprob of logprobs) expect(logprob).toBeLessThanOrEqual(0)
      }
    },
  )

  it('the same greedy JSON on the Meshnet engine and on llama.cpp', async () => {
    const ask = (model: string) =>
      client.chat.completions.create({
        model,
        messages: MESSAGES,
        response_format: { type: 'json_schema', json_schema: { name: 'person', schema: PERSON } },
        temperature: 0,
        max_tokens: 80,
      })
    const [meshnet, llama] = await Promise.all([ask('qwen'), ask('qwen-llama-cpp')])
    expect(meshnet.choices[0]!.message.content).toBe(llama.choices[0]!.message.content)
  })

  it('json_object: a JSON object whatever the budget', async () => {
    for (const max_tokens of [3, 8, 40]) {
      const answer = await client.chat.completions.create({
        model: 'generic',
        messages: MESSAGES,
        response_format: { type: 'json_object' },
        seed: max_tokens,
        max_tokens,
      })
      const value = JSON.parse(answer.choices[0]!.message.content!)
      expect(typeof value === 'object' && value !== null && !Array.isArray(value)).toBe(true)
    }
  })
})
