import type { OpenedTokenizer } from '@meshnet/engine'
import type { GrammarSpec } from '@meshnet/grammar'
import { type JobMessage, type JobTool, jobRequestSchema, MAX_JOB_TOKENS } from '@meshnet/protocols'
import { describe, expect, it } from 'vitest'
import { prepareJobRequest } from '../src/jobs/request.ts'

// How the job service turns a request into what its runners take, over a tokenizer that makes one
// token of every character (and BOS, 1, first) and remembers how it was asked.

function charTokenizer() {
  const calls: Array<{ text: string; parseSpecial: boolean | undefined }> = []
  const tokenizer = {
    vocabSize: 256,
    bos: 1,
    eos: 2,
    addBos: true,
    tokenize(text: string, options?: { addSpecial?: boolean; parseSpecial?: boolean }) {
      calls.push({ text, parseSpecial: options?.parseSpecial })
      return [...(options?.addSpecial ? [1] : []), ...[...text].map((c) => c.charCodeAt(0) % 256)]
    },
    detokenize: () => '',
    isEog: (id: number) => id === 2,
    piece: (id: number) => ({ bytes: Uint8Array.of(id), control: id < 3 }),
  } satisfies OpenedTokenizer['tokenizer']
  return { tokenizer, calls }
}

const render = (messages: readonly JobMessage[]) =>
  `${messages.map((m) => `<|${m.role}|>${m.content}`).join('')}<|assistant|>`

describe('prepareJobRequest', () => {
  it('renders a chat with the injected template, parses its control-token text, and gives it the rest of the context', async () => {
    const { tokenizer, calls } = charTokenizer()
    const parsed = jobRequestSchema.parse({ messages: [{ role: 'user', content: 'Hi' }], temperature: 0 })
    const { request, promptTokens } = await prepareJobRequest(parsed, {
      tokenizer,
      contextSize: 64,
      renderChat: render,
    })
    expect(request).toMatchObject({ prompt: '<|user|>Hi<|assistant|>', parseSpecial: true, temperature: 0 })
    expect(request).not.toHaveProperty('messages')
    expect(calls).toEqual([{ text: '<|user|>Hi<|assistant|>', parseSpecial: true }])
    expect(promptTokens).toHaveLength(1 + 23)
    expect(request.maxTokens).toBe(64 - 24)

    const asked = jobRequestSchema.parse({ messages: [{ role: 'user', content: 'Hi' }], maxTokens: 5 })
    expect(
      (await prepareJobRequest(asked, { tokenizer, contextSize: 64, renderChat: render })).request.maxTokens,
    ).toBe(5)
    const big = await prepareJobRequest(parsed, { tokenizer, contextSize: 1 << 20, renderChat: render })
    expect(big.request.maxTokens).toBe(MAX_JOB_TOKENS)
  })

  it('keeps a prompt job as it was: its own parseSpecial and maxTokens', async () => {
    const { tokenizer, calls } = charTokenizer()
    const parsed = jobRequestSchema.parse({ prompt: '<s>Hi', maxTokens: 7 })
    const { request, promptTokens } = await prepareJobRequest(parsed, {
      tokenizer,
      contextSize: 64,
      renderChat: undefined,
    })
    expect(request).toMatchObject({ prompt: '<s>Hi', maxTokens: 7, parseSpecial: false })
    expect(calls).toEqual([{ text: '<s>Hi', parseSpecial: false }])
    expect(promptTokens).toHaveLength(6)
  })

  it('refuses a chat on a node that renders none, and one that leaves no room for a reply', async () => {
    const { tokenizer } = charTokenizer()
    const parsed = jobRequestSchema.parse({ messages: [{ role: 'user', content: 'Hello there' }] })
    await expect(
      prepareJobRequest(parsed, { tokenizer, contextSize: 64, renderChat: undefined }),
    ).rejects.toMatchObject({
      name: 'JobRefusedError',
      code: 'ERR_NO_CHAT_TEMPLATE',
      message: expect.stringContaining('this node takes prompts only, not chat messages'),
    })
    await expect(
      prepareJobRequest(parsed, { tokenizer, contextSize: 30, renderChat: render }),
    ).rejects.toMatchObject({
      name: 'JobRefusedError',
      code: 'ERR_CONTEXT_LENGTH',
      message: expect.stringContaining("the messages take 33 tokens of the model's 30"),
    })
    // What the template throws (it refused the messages) reaches the requester as it is.
    const refusing = () => {
      throw Object.assign(new Error('roles must alternate'), { name: 'ChatTemplateRenderError' })
    }
    await expect(
      prepareJobRequest(parsed, { tokenizer, contextSize: 64, renderChat: refusing }),
    ).rejects.toMatchObject({
      name: 'ChatTemplateRenderError',
    })
  })

  it('renders a chat’s tools, forces a call with the injected grammar, and tells the model of none with toolChoice none', async () => {
    const { tokenizer } = charTokenizer()
    const seen: Array<readonly JobTool[]> = []
    const renderChat = (messages: readonly JobMessage[], tools: readonly JobTool[]) => {
      seen.push(tools)
      return `${render(messages)}${tools.map((t) => t.name).join(',')}`
    }
    const forced: GrammarSpec = { parts: [{ type: 'literal', text: '<call>' }, { type: 'json' }] }
    const toolGrammar = (_tools: readonly JobTool[], choice: unknown) => {
      expect(choice).toEqual({ name: 'clock' })
      return forced
    }
    const tools = [{ name: 'clock' }, { name: 'weather', parameters: { type: 'object' } }]
    const ask = (toolChoice?: unknown) =>
      prepareJobRequest(
        jobRequestSchema.parse({
          messages: [{ role: 'user', content: 'Hi' }],
          tools,
          ...(toolChoice === undefined ? {} : { toolChoice }),
        }),
        { tokenizer, contextSize: 64, renderChat, toolGrammar },
      )
    const named = await ask({ name: 'clock' })
    expect(named.request.grammar).toEqual(forced)
    expect(named.request.prompt).toBe('<|user|>Hi<|assistant|>clock,weather')
    // auto: the model decides, nothing is forced.
    expect((await ask()).request.grammar).toBeUndefined()
    const none = await ask('none')
    expect(none.request.prompt).toBe('<|user|>Hi<|assistant|>')
    expect(seen.map((t) => t.length)).toEqual([2, 2, 0])
    // A node that cannot render tools refuses the job rather than run it without them.
    await expect(
      prepareJobRequest(jobRequestSchema.parse({ messages: [{ role: 'user', content: 'Hi' }], tools }), {
        tokenizer,
        contextSize: 64,
        renderChat,
      }),
    ).rejects.toMatchObject({ name: 'JobRefusedError', code: 'ERR_NO_TOOLS' })
  })

  it('refuses tools on a prompt job, tools of one name, and a tool choice that names none of them', () => {
    const chat = { messages: [{ role: 'user', content: 'Hi' }] }
    const bad = [
      { prompt: 'Hi', maxTokens: 4, tools: [{ name: 'a' }] },
      { ...chat, tools: [{ name: 'a' }, { name: 'a' }] },
      { ...chat, tools: [{ name: 'a' }], toolChoice: { name: 'b' } },
      { ...chat, tools: [{ name: 'a' }], grammar: { parts: [{ type: 'json' }] } },
      { ...chat, tools: [{ name: 'not a name' }] },
    ]
    for (const request of bad)
      expect(jobRequestSchema.safeParse(request).success, JSON.stringify(request)).toBe(false)
  })
})
