import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { generateModel } from '@meshnet/gguf'
import type OpenAI from 'openai'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { apiTestServer, type EngineBackend } from '../openai-backend.ts'

// OpenAI's sampling parameters through the official client, on both engines of one generated F32
// model (their logits agree to ~1e-5): `meshnet` is the Meshnet engine, `llama` llama.cpp. The
// defaults (temperature 1, top_p 1, no top-k), `n`, presence and frequency penalties, logprobs.
// The engines render byte-fallback tokens differently (llama.cpp's text shows U+FFFD where a
// character's bytes span tokens), so they are compared by their tokens' bytes (from logprobs).

/** On this model, the greedy continuation of this prompt falls into a loop after 11 tokens. */
const PROMPT = 'The mesh'
const MESSAGES = [{ role: 'user' as const, content: 'Tell me a story about a mesh of laptops' }]
const PENALTIES = { presence_penalty: 0.6, frequency_penalty: 1.2 }
/** Largest difference of a log-probability between the engines. */
const LOGPROB_TOLERANCE = 1e-4

let dir: string
let backend: EngineBackend
let close: (() => Promise<void>) | undefined
let client: OpenAI

beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'meshnet-openai-sampling-'))
  const model = join(dir, 'f32.gguf')
  await generateModel({
    out: model,
    layers: 2,
    embd: 256,
    heads: 4,
    kvHeads: 2,
    ff: 512,
    vocab: 1000,
    type: 'F32',
    context: 512,
    seed: 11,
  })
  ;({ backend, client, close } = await apiTestServer([
    { id: 'meshnet', modelPath: model, engine: 'meshnet' },
    { id: 'llama', modelPath: model, engine: 'llama-cpp' },
  ]))
}, 60_000)

afterAll(async () => {
  await close?.()
  await rm(dir, { recursive: true, force: true })
})

type CompletionParams = Omit<OpenAI.CompletionCreateParamsNonStreaming, 'model' | 'prompt'> & {
  max_completion_tokens?: number
}

const complete = (model: string, params: CompletionParams = {}) =>
  client.completions.create({ model, prompt: PROMPT, max_tokens: 40, ...params })

const text = async (model: string, params: CompletionParams = {}) =>
  (await complete(model, params)).choices[0]!.text

/** The generated tokens as the bytes of each (a chat of the prompt, with logprobs). */
async function tokenBytes(
  model: string,
  params: Partial<OpenAI.ChatCompletionCreateParamsNonStreaming> = {},
) {
  const completion = await client.chat.completions.create({
    model,
    messages: [{ role: 'user', content: PROMPT }],
    max_tokens: 40,
    ...params,
    logprobs: true,
  })
  return completion.choices[0]!.logprobs!.content!.map((t) => t.bytes ?? [])
}

/** Distinct tokens among `tokens`. */
const distinct = (tokens: number[][]) => new Set(tokens.map((t) => t.join())).size

describe('defaults', () => {
  it('samples at temperature 1 and top_p 1 over the whole vocabulary when the request says nothing', async () => {
    const [a, b] = await Promise.all([text('meshnet'), text('meshnet')])
    // Unseeded: each request draws its own seed.
    expect(a).not.toBe(b)
    expect(backend.requests.at(-1)).toMatchObject({ temperature: 1, topP: 1, topK: 0 })
    expect(backend.requests.at(-1)?.seed).toBeUndefined()
    // Seeded: reproducible, and the engine's own draw at OpenAI's defaults.
    const seeded = await text('meshnet', { seed: 1234 })
    expect(await text('meshnet', { seed: 1234 })).toBe(seeded)
    const engine = backend.engine('meshnet')
    const prompt = engine.tokenizer.tokenize(PROMPT, { addSpecial: true })
    const own = await engine.generate(prompt, { maxTokens: 40, temperature: 1, topP: 1, topK: 0, seed: 1234 })
    expect(seeded).toBe(own.text)
    // The same seed on llama.cpp draws the same tokens, as long as the two engines' logits agree
    // closely enough: they come from different kernels (llama.cpp's depend on the CPU), so a draw
    // that falls next to a boundary between two tokens may go either way, and the two texts part
    // there (at token 28 of 40 on an AMD EPYC without AVX-512). Sixteen equal draws at temperature
    // 1 over the whole vocabulary do not happen by chance: the samplers and their seeds are the same.
    const llama = await tokenBytes('llama', { seed: 1234 })
    const meshnet = await tokenBytes('meshnet', { seed: 1234 })
    expect(meshnet.slice(0, 16)).toEqual(llama.slice(0, 16))
  })

  it('honours max_completion_tokens over max_tokens', async () => {
    const completion = await complete('llama', { max_tokens: 30, max_completion_tokens: 7, seed: 3 })
    expect(completion.usage?.completion_tokens).toBe(7)
    expect(completion.choices[0]!.finish_reason).toBe('length')
  })
})

describe('n', () => {
  it('returns n choices, each the generation of seed + i; usage counts the prompt once', async () => {
    const completion = await complete('meshnet', { n: 3, seed: 40, max_tokens: 12 })
    expect(completion.choices.map((c) => c.index)).toEqual([0, 1, 2])
    const alone = await Promise.all([40, 41, 42].map((seed) => complete('meshnet', { seed, max_tokens: 12 })))
    expect(completion.choices.map((c) => c.text)).toEqual(alone.map((c) => c.choices[0]!.text))
    expect(new Set(completion.choices.map((c) => c.text)).size).toBe(3)
    const prompt = alone[0]!.usage!.prompt_tokens
    expect(completion.usage).toEqual({
      prompt_tokens: prompt,
      completion_tokens: 36,
      total_tokens: prompt + 36,
    })
  })

  it('gives n equal choices at temperature 0', async () => {
    const completion = await complete('llama', { n: 2, temperature: 0, max_tokens: 10 })
    expect(completion.choices[0]!.text).toBe(completion.choices[1]!.text)
  })

  it('streams the choices interleaved, each chunk with its index, each choice its role and finish', async () => {
    const params = { model: 'meshnet', messages: MESSAGES, max_tokens: 16, seed: 9, n: 3 }
    const whole = await client.chat.completions.create(params)
    const stream = await client.chat.completions.create({
      ...params,
      stream: true,
      stream_options: { include_usage: true },
    })
    const texts = ['', '', '']
    const roles: number[] = []
    const finishes: number[] = []
    let usage: OpenAI.CompletionUsage | undefined
    for await (const chunk of stream) {
      if (chunk.usage) usage = chunk.usage
      expect(chunk.choices.length).toBeLessThanOrEqual(1)
      const choice = chunk.choices[0]
      if (choice === undefined) continue
      if (choice.delta.role === 'assistant') roles.push(choice.index)
      if (choice.delta.content) texts[choice.index] += choice.delta.content
      if (choice.finish_reason !== null) finishes.push(choice.index)
    }
    expect(roles).toEqual([0, 1, 2])
    expect(finishes.sort()).toEqual([0, 1, 2])
    expect(texts).toEqual(whole.choices.map((c) => c.message.content))
    expect(usage).toEqual(whole.usage)
  })
})

describe('presence and frequency penalties', () => {
  it('change a greedy continuation, the same way on the Meshnet engine and llama.cpp', async () => {
    const plain = await tokenBytes('llama', { temperature: 0 })
    const penalized = await tokenBytes('llama', { temperature: 0, ...PENALTIES })
    // The loop is gone: penalized, the continuation repeats itself less.
    expect(distinct(penalized)).toBeGreaterThan(distinct(plain))
    expect(await tokenBytes('meshnet', { temperature: 0, ...PENALTIES })).toEqual(penalized)
    // Negative penalties favour what was said.
    const favour = { temperature: 0, presence_penalty: -2, frequency_penalty: -1 }
    const favoured = await tokenBytes('llama', favour)
    expect(distinct(favoured)).toBeLessThan(distinct(plain))
    expect(await tokenBytes('meshnet', favour)).toEqual(favoured)
  })

  it('change a seeded sample, the same way on both engines', async () => {
    const params = { temperature: 0.9, seed: 77, ...PENALTIES }
    const penalized = await tokenBytes('llama', params)
    expect(penalized).not.toEqual(await tokenBytes('llama', { temperature: 0.9, seed: 77 }))
    expect(await tokenBytes('meshnet', params)).toEqual(penalized)
  })
})

/** `Σ exp(logprob)` of some alternatives: at most 1. */
const mass = (entries: ReadonlyArray<{ logprob: number }>) =>
  entries.reduce((sum, e) => sum + Math.exp(e.logprob), 0)

describe('logprobs', () => {
  const chat = (model: string, params: Partial<OpenAI.ChatCompletionCreateParamsNonStreaming> = {}) =>
    client.chat.completions.create({ model, messages: MESSAGES, max_tokens: 16, ...params })

  it('chat: each token with its logprob, bytes and top_logprobs; the greedy choice is the likeliest', async () => {
    const completion = await chat('meshnet', { temperature: 0, logprobs: true, top_logprobs: 5 })
    const choice = completion.choices[0]!
    const content = choice.logprobs!.content!
    expect(content).toHaveLength(16)
    // The tokens' bytes make the text (a character split over byte tokens: its bytes over them).
    expect(Buffer.from(content.flatMap((t) => t.bytes ?? [])).toString('utf8')).toBe(choice.message.content)
    for (const t of content) {
      expect(t.top_logprobs).toHaveLength(5)
      expect(t.logprob).toBeLessThanOrEqual(0)
      // Greedy: the chosen token is the first (likeliest) alternative.
      expect(t.top_logprobs[0]).toEqual({ token: t.token, logprob: t.logprob, bytes: t.bytes })
      expect(t.top_logprobs.every((a, i) => i === 0 || a.logprob <= t.top_logprobs[i - 1]!.logprob)).toBe(
        true,
      )
      expect(mass(t.top_logprobs)).toBeLessThanOrEqual(1 + 1e-9)
      if (!t.token.includes('\uFFFD')) expect(t.bytes).toEqual([...Buffer.from(t.token, 'utf8')])
    }
    // Without logprobs, none; without top_logprobs, no alternatives.
    expect((await chat('meshnet', { temperature: 0 })).choices[0]!.logprobs).toBeNull()
    const bare = await chat('meshnet', { temperature: 0, logprobs: true })
    expect(bare.choices[0]!.logprobs!.content![0]!.top_logprobs).toEqual([])
  })

  it.each([
    ['greedy', { temperature: 0 }],
    ['greedy, penalized', { temperature: 0, ...PENALTIES }],
    ['seeded', { seed: 21 }],
    [
      'seeded with top_k and top_p, penalized',
      { seed: 22, temperature: 0.8, top_k: 30, top_p: 0.9, ...PENALTIES },
    ],
  ])('%s: the same tokens and log-probabilities on both engines, within 1e-4', async (_, params) => {
    const [a, b] = await Promise.all(
      ['llama', 'meshnet'].map((model) => chat(model, { ...params, logprobs: true, top_logprobs: 4 })),
    )
    const ca = a!.choices[0]!.logprobs!.content!
    const cb = b!.choices[0]!.logprobs!.content!
    expect(cb.map((t) => t.bytes)).toEqual(ca.map((t) => t.bytes))
    let worst = 0
    for (const [i, t] of ca.entries()) {
      worst = Math.max(worst, Math.abs(t.logprob - cb[i]!.logprob))
      expect(cb[i]!.top_logprobs.map((x) => x.bytes)).toEqual(t.top_logprobs.map((x) => x.bytes))
      for (const [k, x] of t.top_logprobs.entries()) {
        worst = Math.max(worst, Math.abs(x.logprob - cb[i]!.top_logprobs[k]!.logprob))
      }
    }
    expect(worst).toBeLessThan(LOGPROB_TOLERANCE)
    // Asking for log-probabilities does not change what is drawn.
    for (const [model, asked] of [
      ['llama', a!],
      ['meshnet', b!],
    ] as const) {
      expect((await chat(model, params)).choices[0]!.message.content).toBe(asked.choices[0]!.message.content)
    }
  })

  it('completions: the legacy shape, with text offsets from the end of the prompt', async () => {
    const completion = await complete('meshnet', { temperature: 0, logprobs: 3, max_tokens: 12 })
    const choice = completion.choices[0]!
    const lp = choice.logprobs!
    expect(lp.tokens).toHaveLength(12)
    expect(lp.token_logprobs).toHaveLength(12)
    expect(lp.top_logprobs).toHaveLength(12)
    // Offsets count code points of the prompt and the text before each token.
    const all = [...(PROMPT + choice.text)]
    expect(lp.text_offset![0]).toBe(PROMPT.length)
    for (const [i, token] of lp.tokens!.entries()) {
      const offset = lp.text_offset![i]!
      if (i > 0) expect(offset).toBeGreaterThanOrEqual(lp.text_offset![i - 1]!)
      if (!token.includes('\uFFFD'))
        expect(all.slice(offset, offset + [...token].length).join('')).toBe(token)
      const top = lp.top_logprobs![i]!
      expect(Object.keys(top).length).toBeLessThanOrEqual(3)
      // Greedy: the chosen token is the likeliest alternative.
      expect(top[token]).toBe(lp.token_logprobs![i])
      expect(Math.max(...Object.values(top))).toBe(lp.token_logprobs![i])
      expect(mass(Object.values(top).map((logprob) => ({ logprob })))).toBeLessThanOrEqual(1 + 1e-9)
    }
  })

  it('streams each chunk with the log-probabilities of its tokens', async () => {
    const params = { model: 'meshnet', prompt: PROMPT, max_tokens: 12, seed: 5, logprobs: 2 }
    const whole = (await client.completions.create(params)).choices[0]!.logprobs!
    const tokens: string[] = []
    const logprobs: Array<number | null> = []
    for await (const chunk of await client.completions.create({ ...params, stream: true })) {
      const lp = chunk.choices[0]?.logprobs
      if (lp == null) continue
      tokens.push(...lp.tokens!)
      logprobs.push(...lp.token_logprobs!)
    }
    expect(tokens).toEqual(whole.tokens)
    expect(logprobs).toEqual(whole.token_logprobs)

    const chatParams = {
      model: 'meshnet',
      messages: MESSAGES,
      max_tokens: 12,
      seed: 5,
      logprobs: true,
      top_logprobs: 2,
    }
    const chatWhole = (await client.chat.completions.create(chatParams)).choices[0]!.logprobs!.content!
    const content: OpenAI.ChatCompletionTokenLogprob[] = []
    for await (const chunk of await client.chat.completions.create({ ...chatParams, stream: true })) {
      content.push(...(chunk.choices[0]?.logprobs?.content ?? []))
    }
    expect(content).toEqual(chatWhole)
  })

  it('reports no log-probabilities for the tokens a stop sequence cuts off', async () => {
    const params = { temperature: 0, max_tokens: 12, logprobs: 0 }
    const greedy = (await complete('meshnet', params)).choices[0]!
    const offsets = greedy.logprobs!.text_offset!.map((o) => o - PROMPT.length)
    // A stop sequence from the middle of the text: where it first appears, the text ends.
    const chars = [...greedy.text]
    const stop = chars.slice(offsets[6], offsets[6]! + 2).join('')
    const at = [...greedy.text.slice(0, greedy.text.indexOf(stop))].length
    const cut = (await complete('meshnet', { ...params, stop })).choices[0]!
    expect(cut.text).toBe(chars.slice(0, at).join(''))
    const kept = offsets.filter((o) => o < at).length
    expect(cut.logprobs!.tokens).toEqual(greedy.logprobs!.tokens!.slice(0, kept))
    expect(cut.logprobs!.token_logprobs).toEqual(greedy.logprobs!.token_logprobs!.slice(0, kept))
  })
})
