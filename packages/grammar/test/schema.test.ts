import { describe, expect, it } from 'vitest'
import { GrammarSchemaError } from '../src/errors.ts'
import { compileGrammar } from '../src/grammar.ts'
import { MAX_GRAMMAR_LITERAL, MAX_GRAMMAR_PARTS, MAX_GRAMMAR_SCHEMA_BYTES } from '../src/spec.ts'
import { json } from './helpers.ts'

function schemaError(run: () => unknown): GrammarSchemaError {
  try {
    run()
  } catch (err) {
    expect((err as Error).name).toBe('GrammarSchemaError')
    expect((err as GrammarSchemaError).code).toBe('ERR_GRAMMAR_SCHEMA')
    return err as GrammarSchemaError
  }
  throw new Error('expected a GrammarSchemaError')
}

describe('compileGrammar', () => {
  it('names the JSON pointer, the keyword and what is supported', () => {
    const err = schemaError(() =>
      json({ type: 'object', properties: { age: { type: 'string', pattern: '^[0-9]+$' } } }),
    )
    expect(err).toBeInstanceOf(GrammarSchemaError)
    expect(err.message).toMatch(
      /^response schema at \/properties\/age: "pattern" is not supported here; supported: type, properties, required, /,
    )
  })

  it.each([
    ['format', { type: 'string', format: 'date' }],
    ['multipleOf', { type: 'integer', multipleOf: 2 }],
    ['allOf', { allOf: [{ type: 'string' }] }],
    ['not', { not: { type: 'string' } }],
    ['if', { if: { type: 'string' }, else: {} }],
    ['patternProperties', { type: 'object', patternProperties: {} }],
    ['uniqueItems', { type: 'array', uniqueItems: true }],
    ['minProperties', { type: 'object', minProperties: 1 }],
    ['nullable', { type: 'string', nullable: true }],
  ])('rejects "%s"', (keyword, schema) => {
    expect(schemaError(() => json({ type: 'object', properties: { x: schema } })).message).toContain(
      `at /properties/x: "${keyword}" is not supported here`,
    )
  })

  it('ignores annotations', () => {
    expect(() =>
      json({
        $schema: 'https://json-schema.org/draft/2020-12/schema',
        $id: 'x',
        title: 't',
        description: 'd',
        $comment: 'c',
        type: 'object',
        properties: {
          a: {
            type: 'string',
            default: 'x',
            examples: ['y'],
            deprecated: true,
            readOnly: true,
            writeOnly: false,
          },
        },
        strict: true,
      }),
    ).not.toThrow()
  })

  it('names the schema of a part by its name', () => {
    const err = schemaError(() =>
      compileGrammar({ parts: [{ type: 'json', name: 'tool get_weather', schema: { type: 'thing' } }] }),
    )
    expect(err.message).toMatch(/^tool get_weather schema at \/type: unknown type "thing"/)
  })

  it('rejects keywords whose siblings would mean "all of"', () => {
    expect(schemaError(() => json({ type: 'object', anyOf: [{ type: 'object' }] })).message).toContain(
      '"anyOf" cannot be combined with "type"',
    )
    expect(
      schemaError(() => json({ $ref: '#/$defs/a', type: 'string', $defs: { a: {} } })).message,
    ).toContain('"$ref" cannot be combined with "type"')
    expect(schemaError(() => json({ enum: ['a'], minLength: 1 })).message).toContain(
      '"enum" cannot be combined with "minLength"',
    )
  })

  it('rejects $refs outside the schema, to nothing, and cycles without an object or array', () => {
    expect(schemaError(() => json({ $ref: 'https://example.com/s.json' })).message).toContain(
      'at /$ref: must point into',
    )
    expect(schemaError(() => json({ $ref: '#/$defs/missing' })).message).toContain('points to nothing')
    expect(
      schemaError(() =>
        json({ $defs: { a: { anyOf: [{ $ref: '#/$defs/a' }, { type: 'string' }] } }, $ref: '#/$defs/a' }),
      ).message,
    ).toContain('refers to itself without an object or array in between')
  })

  it('rejects schemas no value satisfies', () => {
    expect(
      schemaError(() =>
        json({
          $defs: { n: { type: 'object', properties: { n: { $ref: '#/$defs/n' } }, required: ['n'] } },
          $ref: '#/$defs/n',
        }),
      ).message,
    ).toContain('no JSON value satisfies it within 32 levels of nesting')
    expect(schemaError(() => json({ type: 'integer', minimum: 1.2, maximum: 1.8 })).message).toContain(
      'at /:',
    )
    expect(schemaError(() => json({ type: 'string', minLength: 3, maxLength: 2 })).message).toContain(
      '"minLength"',
    )
    expect(
      schemaError(() => json({ type: 'object', required: ['a'], additionalProperties: false })).message,
    ).toContain('"a" is required but not in "properties"')
  })

  it('rejects draft-04 boolean bounds, non-boolean additionalProperties and tuple "items"', () => {
    expect(schemaError(() => json({ type: 'number', minimum: 0, exclusiveMinimum: true })).message).toContain(
      'at /exclusiveMinimum: must be a number',
    )
    expect(
      schemaError(() => json({ type: 'object', additionalProperties: { type: 'string' } })).message,
    ).toContain('at /additionalProperties: only true or false')
    expect(schemaError(() => json({ type: 'array', items: [{ type: 'string' }] })).message).toContain(
      '"prefixItems"',
    )
  })

  it('checks the spec: parts, literal and schema sizes', () => {
    expect(schemaError(() => compileGrammar({ parts: [] })).message).toMatch(/^grammar parts/)
    expect(() =>
      compileGrammar({ parts: [{ type: 'literal', text: 'x'.repeat(MAX_GRAMMAR_LITERAL) }] }),
    ).not.toThrow()
    schemaError(() =>
      compileGrammar({ parts: [{ type: 'literal', text: 'x'.repeat(MAX_GRAMMAR_LITERAL + 1) }] }),
    )
    schemaError(() => compileGrammar({ parts: [{ type: 'literal', text: '' }] }))
    schemaError(() =>
      compileGrammar({
        parts: Array.from({ length: MAX_GRAMMAR_PARTS + 1 }, () => ({ type: 'literal' as const, text: 'x' })),
      }),
    )
    const big = { type: 'string', description: 'x'.repeat(MAX_GRAMMAR_SCHEMA_BYTES) }
    expect(schemaError(() => json(big)).message).toContain(`at most ${MAX_GRAMMAR_SCHEMA_BYTES} bytes`)
    schemaError(() => compileGrammar({ parts: [{ type: 'json', schema: {}, extra: 1 } as never] }))
  })
})
