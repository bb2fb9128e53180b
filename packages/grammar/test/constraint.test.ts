import { describe, expect, it } from 'vitest'
import { createTokenConstraint, type GrammarConstraint } from '../src/constraint.ts'
import type { Grammar } from '../src/grammar.ts'
import type { ConstraintVocabulary } from '../src/vocabulary.ts'
import { json, prng, spec, syntheticVocabulary } from './helpers.ts'

const vocab = syntheticVocabulary()
const id = (piece: string) => {
  const found = vocab.ids.get(piece)
  if (found === undefined) throw new Error(`no token ${piece}`)
  return found
}
const EOG = vocab.eog[0]!
const allowedIds = (c: GrammarConstraint) =>
  [...c.allowedMask().keys()].filter((i) => c.allowedMask()[i] === 1)

/** Accepts `text` one token per character-piece (single bytes). */
function write(c: GrammarConstraint, text: string): void {
  for (const b of new TextEncoder().encode(text)) c.accept(b)
}

/** A seeded walk choosing uniformly among the allowed tokens until EOG (or `limit` steps). */
function walk(
  grammar: Grammar,
  seed: number,
  maxTokens?: number,
  vocabulary: ConstraintVocabulary = vocab,
): GrammarConstraint {
  const c = createTokenConstraint(grammar, vocabulary, maxTokens === undefined ? {} : { maxTokens })
  const random = prng(seed)
  for (let step = 0; step < 10_000; step++) {
    const allowed = allowedIds(c)
    expect(allowed.length).toBeGreaterThan(0)
    const next = allowed[Math.floor(random() * allowed.length)]!
    c.accept(next)
    if (vocabulary.eog.includes(next)) break
  }
  return c
}

const toolCall = spec(
  { type: 'literal', text: '<tool_call>\n' },
  {
    type: 'json',
    schema: {
      type: 'object',
      properties: {
        name: { const: 'get_weather' },
        arguments: {
          type: 'object',
          properties: { city: { type: 'string' }, unit: { enum: ['celsius', 'fahrenheit'] } },
          required: ['city', 'unit'],
        },
      },
      required: ['name', 'arguments'],
    },
  },
  { type: 'literal', text: '\n</tool_call>' },
)

describe('createTokenConstraint', () => {
  it('allows end-of-generation only when complete, and alone when nothing else may follow', () => {
    const c = createTokenConstraint(
      json({ type: 'object', properties: { n: { type: 'integer' } }, required: ['n'] }),
      vocab,
    )
    expect(c.allows(EOG)).toBe(false)
    write(c, '{"n":12')
    expect(c.complete).toBe(false)
    write(c, '}')
    expect(c.complete).toBe(true)
    expect(allowedIds(c)).toEqual([EOG])
    c.accept(EOG)
    expect(c.text).toBe('{"n":12}')
    expect(allowedIds(c)).toEqual([])
    expect(c.allows(EOG)).toBe(false)
  })

  it('allows both more digits and end-of-generation after a number that may go on', () => {
    const c = createTokenConstraint(json({ type: 'integer' }), vocab)
    write(c, '4')
    expect(c.complete).toBe(true)
    expect(c.allows(EOG)).toBe(true)
    expect(c.allows(id('12'))).toBe(true)
    expect(c.allows(id(' '))).toBe(false)
  })

  it('throws a clear error on a token that is not allowed', () => {
    const c = createTokenConstraint(json(), vocab)
    expect(() => c.accept(id('['))).toThrowError(
      expect.objectContaining({ name: 'TokenNotAllowedError', code: 'ERR_GRAMMAR_TOKEN' }),
    )
    expect(() => c.accept(id('['))).toThrow(/token \d+ \("\["\) is not allowed by the grammar after ""/)
    c.accept(id('{}'))
    c.accept(EOG)
    expect(() => c.accept(id('{'))).toThrow(/after the end-of-generation token/)
  })

  it('writes a literal with the control token of its text or with its characters', () => {
    const byControl = createTokenConstraint(toolCall, vocab)
    expect(byControl.allows(id('control:<tool_call>'))).toBe(true)
    expect(byControl.allows(id('<tool_call>'))).toBe(true)
    expect(byControl.allows(id('<tool'))).toBe(true)
    expect(byControl.allows(id('control:<|im_start|>'))).toBe(false)
    byControl.accept(id('control:<tool_call>'))
    write(byControl, '\n{"name": "get_weather", "arguments": {"city": "Paris", "unit": "celsius"}}\n')
    byControl.accept(id('control:</tool_call>'))
    byControl.accept(EOG)
    expect(byControl.text).toBe(
      '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris", "unit": "celsius"}}\n</tool_call>',
    )
    const byText = createTokenConstraint(toolCall, vocab)
    byText.accept(id('<tool'))
    // A control token must match the literal whole: not from the middle of it.
    expect(byText.allows(id('control:<tool_call>'))).toBe(false)
    byText.accept(id('_call>'))
    expect(byText.text).toBe('<tool_call>')
  })

  it('never allows a control token inside a JSON value, even one whose text fits', () => {
    const c = createTokenConstraint(json(), vocab)
    expect(c.allows(id('control:{'))).toBe(false)
    expect(c.allows(id('{'))).toBe(true)
    write(c, '{"a": "')
    expect(c.allows(id('control:<tool_call>'))).toBe(false)
    expect(c.allows(id('<tool_call>'))).toBe(true)
  })

  it('ends every walk complete and parseable within maxTokens, however small', () => {
    const grammars = [
      toolCall,
      json({
        type: 'object',
        properties: { a: { type: 'array', items: { type: 'string' }, minItems: 2 } },
        required: ['a'],
      }),
      json(),
    ]
    for (const grammar of grammars) {
      for (let seed = 0; seed < 30; seed++) {
        const maxTokens = grammar.minBytes + 1 + (seed % 6)
        const c = walk(grammar, seed, maxTokens)
        expect(c.complete).toBe(true)
        expect(c.accepted).toBeLessThanOrEqual(maxTokens)
        const text = c.text.replace(/^<tool_call>\n/, '').replace(/\n<\/tool_call>$/, '')
        expect(() => JSON.parse(text)).not.toThrow()
      }
    }
  })

  it('writes a shortest text when maxTokens leaves no room for more', () => {
    // Single bytes only, so that each token is one byte.
    const bytes = { size: 257, piece: vocab.piece, eog: [256] }
    const pieces = Array.from({ length: 257 }, (_, i) => (i < 256 ? vocab.piece(i) : vocab.piece(EOG)))
    bytes.piece = (i: number) => pieces[i]!
    const grammar = json({
      type: 'object',
      properties: { a: { type: 'string', minLength: 2 }, b: { type: 'integer', minimum: 100 } },
      required: ['a', 'b'],
    })
    const c = walk(grammar, 1, grammar.minBytes + 1, bytes)
    expect(c.text).toHaveLength(grammar.minBytes)
    expect(c.accepted).toBe(grammar.minBytes + 1)
    expect(Object.keys(JSON.parse(c.text))).toEqual(['a', 'b'])
  })

  it('still moves toward completion when maxTokens is below what the grammar needs', () => {
    const grammar = json({ type: 'object', properties: { name: { type: 'string' } }, required: ['name'] })
    const c = createTokenConstraint(grammar, vocab, { maxTokens: 3 })
    for (let i = 0; i < 8 && !c.complete; i++) c.accept(allowedIds(c)[0]!)
    expect(c.complete).toBe(true)
    expect(JSON.parse(c.text)).toEqual({ name: '' })
  })

  it('has allowedMask agree with allows for every token along random walks', () => {
    const grammars = [
      toolCall,
      json(),
      json({ type: 'array', items: { type: 'number', minimum: 0, maximum: 9 }, maxItems: 3 }),
    ]
    for (const grammar of grammars) {
      for (let seed = 0; seed < 10; seed++) {
        const c = createTokenConstraint(grammar, vocab, { maxTokens: grammar.minBytes + 1 + 3 * seed })
        const random = prng(seed)
        for (let step = 0; step < 200; step++) {
          const mask = c.allowedMask()
          for (let t = 0; t < vocab.size; t++)
            expect(c.allows(t), `token ${t} after ${c.text}`).toBe(mask[t] === 1)
          const allowed = allowedIds(c)
          const next = allowed[Math.floor(random() * allowed.length)]!
          c.accept(next)
          if (next === EOG) break
        }
      }
    }
  })

  it('lists the allowed ids when they are few, and says when they are more, as allowedMask marks them', () => {
    for (const grammar of [toolCall, json()]) {
      for (let seed = 0; seed < 6; seed++) {
        // A fresh constraint per question, so the mask is not known to it beforehand.
        const steps: number[] = []
        const random = prng(seed)
        const fresh = () => {
          const c = createTokenConstraint(grammar, vocab, { maxTokens: grammar.minBytes + 4 + 5 * seed })
          for (const t of steps) c.accept(t)
          return c
        }
        for (let step = 0; step < 120; step++) {
          const expected = allowedIds(fresh()).sort((a, b) => a - b)
          for (const most of [1, 8, expected.length, vocab.size]) {
            const listed = fresh().allowedIds(most)
            if (expected.length <= most) expect(listed?.sort((a, b) => a - b)).toEqual(expected)
            else expect(listed).toBeUndefined()
          }
          const next = expected[Math.floor(random() * expected.length)]!
          steps.push(next)
          if (next === EOG) break
        }
      }
    }
  })

  it('checks its options', () => {
    expect(() => createTokenConstraint(json(), vocab, { maxTokens: 0 })).toThrow(/maxTokens/)
  })
})
