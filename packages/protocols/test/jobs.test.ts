import { describe, expect, it } from 'vitest'
import {
  decodeJobRequest,
  encodeJobFrame,
  jobRequestSchema,
  MAX_JOB_MESSAGES,
  MAX_JOB_PROMPT_CHARS,
} from '../src/index.ts'

const problem = (request: unknown) => {
  const parsed = jobRequestSchema.safeParse(request)
  return parsed.success ? undefined : parsed.error.issues.map((i) => `${i.path.join('.')}: ${i.message}`)
}

describe('jobRequestSchema', () => {
  it('takes a prompt with maxTokens, or chat messages with or without maxTokens', () => {
    expect(problem({ prompt: 'Hi', maxTokens: 4 })).toBeUndefined()
    expect(
      problem({
        messages: [
          { role: 'system', content: '' },
          { role: 'user', content: 'Hi', name: 'ann' },
        ],
      }),
    ).toBeUndefined()
    expect(problem({ messages: [{ role: 'tool', content: '42' }], maxTokens: 8 })).toBeUndefined()
    expect(jobRequestSchema.parse({ messages: [{ role: 'user', content: 'Hi' }] })).toEqual({
      messages: [{ role: 'user', content: 'Hi' }],
      mode: 'auto',
      parseSpecial: false,
    })
  })

  it('takes exactly one of prompt and messages, and a prompt only with its maxTokens', () => {
    expect(problem({ maxTokens: 4 })).toEqual([': give a prompt or chat messages'])
    expect(problem({ prompt: 'Hi', messages: [{ role: 'user', content: 'Hi' }], maxTokens: 4 })).toEqual([
      'messages: give a prompt or chat messages, not both',
    ])
    expect(problem({ prompt: 'Hi' })).toEqual(['maxTokens: required with a prompt'])
  })

  it('refuses malformed messages, naming the field', () => {
    expect(problem({ messages: [] })?.[0]).toMatch(/^messages: /)
    expect(problem({ messages: [{ role: 'robot', content: 'Hi' }] })?.[0]).toMatch(/^messages\.0\.role: /)
    expect(problem({ messages: [{ role: 'user' }] })?.[0]).toMatch(/^messages\.0\.content: /)
    expect(problem({ messages: [{ role: 'user', content: 'Hi', tool_calls: [] }] })?.[0]).toMatch(
      /^messages\.0: /,
    )
    expect(
      problem({ messages: Array(MAX_JOB_MESSAGES + 1).fill({ role: 'user', content: 'x' }) })?.[0],
    ).toMatch(/^messages: /)
    const half = 'x'.repeat(MAX_JOB_PROMPT_CHARS / 2 + 1)
    expect(
      problem({
        messages: [
          { role: 'user', content: half },
          { role: 'user', content: half },
        ],
      }),
    ).toEqual([
      `messages: hold ${MAX_JOB_PROMPT_CHARS + 2} characters; at most ${MAX_JOB_PROMPT_CHARS} together`,
    ])
  })

  it('decodes a chat request frame, and names what is wrong with a bad one', () => {
    const messages = [{ role: 'user', content: 'Grüße 👋' }]
    expect(decodeJobRequest(encodeJobFrame({ v: 1, request: { messages } }))).toMatchObject({ messages })
    expect(() =>
      decodeJobRequest(encodeJobFrame({ v: 1, request: { messages: [{ role: 'user', content: 5 }] } })),
    ).toThrow(/^job request: request\.messages\.0\.content: /)
  })
})
