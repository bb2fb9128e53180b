import { SpmTokenizer } from '@meshnet/engine'
import { llamaVocabulary } from '@meshnet/gguf'
import { Ajv2020 } from 'ajv/dist/2020.js'
import fc from 'fast-check'
import { describe, expect, it } from 'vitest'
import { createTokenConstraint } from '../src/constraint.ts'
import { compileGrammar } from '../src/grammar.ts'
import type { JsonSchema } from '../src/spec.ts'
import { type ConstraintVocabulary, constraintVocabulary } from '../src/vocabulary.ts'
import { prng, syntheticVocabulary } from './helpers.ts'

// Random schemas, random walks: a seeded "sampler" draws a token from the whole vocabulary and,
// when the constraint refuses it, uniformly from allowedMask() (what the engine's sampler does with
// logits). Every walk must end with an end-of-generation token within maxTokens, and its text must
// parse and validate against the schema.

const key = fc.constantFrom('a', 'b', 'name', 'é', 'x y', 'q"', 'n\\', '日本')
const value = fc.jsonValue({ maxDepth: 1 })

const leaf: fc.Arbitrary<JsonSchema | boolean> = fc.oneof(
  fc.constant({ type: 'string' }),
  fc
    .tuple(fc.nat(3), fc.nat(6))
    .map(([min, extra]) => ({ type: 'string', minLength: min, maxLength: min + extra })),
  fc.constant({ type: 'integer' }),
  fc
    .tuple(fc.integer({ min: -60, max: 60 }), fc.nat(150))
    .map(([lo, w]) => ({ type: 'integer', minimum: lo, maximum: lo + w })),
  fc.constant({ type: 'number' }),
  fc.constant({ type: 'number', minimum: -1, exclusiveMaximum: 1 }),
  fc.constant({ type: 'boolean' }),
  fc.constant({ type: ['string', 'null'] }),
  fc
    .uniqueArray(value, { minLength: 1, maxLength: 4, selector: (v) => JSON.stringify(v) })
    .map((values) => ({ enum: values })),
  value.map((v) => ({ const: v })),
  fc.constant(true),
)

const { schema } = fc.letrec<{
  schema: JsonSchema | boolean
  object: JsonSchema
  array: JsonSchema
  anyOf: JsonSchema
}>((tie) => ({
  schema: fc.oneof(
    { maxDepth: 3, depthIdentifier: 'schema' },
    leaf,
    tie('object'),
    tie('array'),
    tie('anyOf'),
  ),
  object: fc
    .record({
      props: fc.uniqueArray(fc.tuple(key, tie('schema'), fc.boolean()), {
        maxLength: 4,
        selector: ([k]) => k,
      }),
      closed: fc.boolean(),
    })
    .map(({ props, closed }) => ({
      type: 'object',
      properties: Object.fromEntries(props.map(([k, s]) => [k, s])),
      required: props.filter(([, , r]) => r).map(([k]) => k),
      ...(closed ? { additionalProperties: false } : {}),
    })),
  array: fc
    .record({ items: tie('schema'), min: fc.nat(2), extra: fc.option(fc.nat(3), { nil: undefined }) })
    .map(({ items, min, extra }) => ({
      type: 'array',
      items,
      minItems: min,
      ...(extra === undefined ? {} : { maxItems: min + extra }),
    })),
  anyOf: fc.array(tie('schema'), { minLength: 1, maxLength: 3 }).map((options) => ({ anyOf: options })),
}))

/** A recursive tree whose nodes hold a random schema's value. */
const tree = schema.map((inner) => ({
  $defs: {
    node: {
      type: 'object',
      properties: { value: inner, kids: { type: 'array', items: { $ref: '#/$defs/node' }, maxItems: 2 } },
      required: ['value'],
    },
  },
  $ref: '#/$defs/node',
}))

const rootSchema = fc.oneof(
  schema.map((s) => (typeof s === 'boolean' ? { anyOf: [s] } : s)),
  tree,
)

const ajv = new Ajv2020({ strict: false })

function walkValidates(vocabulary: ConstraintVocabulary, runs: number): void {
  fc.assert(
    fc.property(rootSchema, fc.boolean(), fc.nat(120), fc.integer(), (root, asToolCall, slack, seed) => {
      const parts = asToolCall
        ? [
            { type: 'literal' as const, text: '<tool_call>\n' },
            { type: 'json' as const, schema: root },
            { type: 'literal' as const, text: '\n</tool_call>' },
          ]
        : [{ type: 'json' as const, schema: root }]
      const grammar = compileGrammar({ parts })
      const maxTokens = grammar.minBytes + 1 + slack
      const c = createTokenConstraint(grammar, vocabulary, { maxTokens })
      const random = prng(seed)
      let last = -1
      while (c.accepted < maxTokens) {
        let id = Math.floor(random() * vocabulary.size)
        if (!c.allows(id)) {
          const mask = c.allowedMask()
          const allowed = [...mask.keys()].filter((i) => mask[i] === 1)
          expect(allowed.length).toBeGreaterThan(0)
          id = allowed[Math.floor(random() * allowed.length)]!
        }
        c.accept(id)
        last = id
        if (vocabulary.eog.includes(id)) break
      }
      expect(vocabulary.eog).toContain(last)
      const text = asToolCall ? c.text.replace(/^<tool_call>\n/, '').replace(/\n<\/tool_call>$/, '') : c.text
      if (asToolCall) expect(c.text).toMatch(/^<tool_call>\n[\s\S]*\n<\/tool_call>$/)
      const parsed = JSON.parse(text)
      const validate = ajv.compile(root)
      expect(validate(parsed), `${text}\n${JSON.stringify(validate.errors)}`).toBe(true)
    }),
    { numRuns: runs },
  )
}

describe('random walks', () => {
  it('end with end-of-generation and validate, over a synthetic vocabulary', () => {
    walkValidates(syntheticVocabulary(), 150)
  })

  it('end with end-of-generation and validate, over a SentencePiece vocabulary', () => {
    const v = llamaVocabulary(1000)
    const tokenizer = new SpmTokenizer({
      tokens: v.tokens,
      scores: v.scores,
      types: v.tokenTypes,
      bos: v.bosId,
      eos: v.eosId,
      unk: v.unkId,
    })
    const vocabulary = constraintVocabulary(tokenizer)
    expect(constraintVocabulary(tokenizer)).toBe(vocabulary)
    expect(vocabulary.eog).toEqual([2])
    walkValidates(vocabulary, 60)
  })
})
