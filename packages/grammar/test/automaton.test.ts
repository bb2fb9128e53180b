import { describe, expect, it } from 'vitest'
import { json, match, spec } from './helpers.ts'

const person = json({
  type: 'object',
  properties: { name: { type: 'string' }, age: { type: 'integer' }, email: { type: 'string' } },
  required: ['name', 'age'],
  additionalProperties: false,
})

describe('objects', () => {
  it('accepts the properties in order, optional ones skipped, with whitespace between tokens', () => {
    expect(match(person, '{"name":"Ada","age":36}')).toBe('complete')
    expect(match(person, '{"name":"Ada","age":36,"email":"a@b.c"}')).toBe('complete')
    expect(match(person, ' \n{\n  "name" : "Ada",\n  "age": 36\n}')).toBe('complete')
  })

  it('rejects another property order, a missing required property and extra keys', () => {
    expect(match(person, '{"age":36,')).toBe('invalid')
    expect(match(person, '{"name":"Ada"}')).toBe('invalid')
    expect(match(person, '{"name":"Ada","email"')).toBe('invalid')
    expect(match(person, '{"name":"Ada","age":36,"other"')).toBe('invalid')
    expect(match(person, '{}')).toBe('invalid')
    expect(match(person, '{"name":"Ada","age":36,}')).toBe('invalid')
  })

  it('allows no more than 20 bytes of whitespace in a gap, and nothing after the value', () => {
    expect(match(person, `{${' '.repeat(20)}"name"`)).toBe('prefix')
    expect(match(person, `{${' '.repeat(21)}`)).toBe('invalid')
    expect(match(person, '{"name":"Ada","age":36} ')).toBe('invalid')
    expect(match(person, '{"name":"Ada","age":36}\n')).toBe('invalid')
  })

  it('generates no keys outside "properties", even when additionalProperties is absent', () => {
    const g = json({ type: 'object', properties: { a: { type: 'integer' } } })
    expect(match(g, '{}')).toBe('complete')
    expect(match(g, '{"a":1}')).toBe('complete')
    expect(match(g, '{"b"')).toBe('invalid')
  })

  it('puts required keys missing from "properties" after them, with any value', () => {
    const g = json({ type: 'object', properties: { a: { type: 'integer' } }, required: ['z'] })
    expect(match(g, '{"z":[1,{"q":null}]}')).toBe('complete')
    expect(match(g, '{"a":1,"z":"x"}')).toBe('complete')
    expect(match(g, '{"a":1}')).toBe('invalid')
  })

  it('takes any object without a schema (json_object), and only objects', () => {
    const g = json()
    expect(match(g, '{"a":[1,2.5e-3,"x",true,null,{"b":{}}],"c":"\\u00e9"}')).toBe('complete')
    expect(match(g, '{}')).toBe('complete')
    expect(match(g, '[1]')).toBe('invalid')
    expect(match(g, '"x"')).toBe('invalid')
  })

  it('bounds the nesting of free values at 32 levels', () => {
    const g = json()
    expect(match(g, `{"a":${'['.repeat(31)}${']'.repeat(31)}}`)).toBe('complete')
    expect(match(g, `{"a":${'['.repeat(32)}`)).toBe('invalid')
  })
})

describe('strings', () => {
  const str = (schema: object = {}) => json({ type: 'string', ...schema })

  it('accepts JSON escapes and UTF-8, rejects bad escapes, raw control bytes and surrogate escapes', () => {
    const g = str()
    expect(match(g, '"a\\"b\\\\c\\/\\b\\f\\n\\r\\t\\u00e9\\uABCD é 日本 🎉"')).toBe('complete')
    expect(match(g, '"\\x')).toBe('invalid')
    expect(match(g, '"\\u12"')).toBe('invalid')
    expect(match(g, '"\\ud83d')).toBe('invalid')
    expect(match(g, '"a\nb"')).toBe('invalid')
    expect(match(g, '"a\tb"')).toBe('invalid')
  })

  it('rejects invalid UTF-8: stray continuation, overlong, surrogate, past U+10FFFF, truncated', () => {
    const g = str()
    const bytes = (...b: number[]) => Uint8Array.of(0x22, ...b)
    expect(match(g, bytes(0xc3, 0xa9, 0x22))).toBe('complete')
    expect(match(g, bytes(0xf0, 0x9f, 0x8e, 0x89, 0x22))).toBe('complete')
    expect(match(g, bytes(0x80))).toBe('invalid')
    expect(match(g, bytes(0xc0, 0x80))).toBe('invalid')
    expect(match(g, bytes(0xe0, 0x80))).toBe('invalid')
    expect(match(g, bytes(0xed, 0xa0))).toBe('invalid')
    expect(match(g, bytes(0xf4, 0x90))).toBe('invalid')
    expect(match(g, bytes(0xf5))).toBe('invalid')
    expect(match(g, bytes(0xc3, 0x22))).toBe('invalid')
  })

  it('counts minLength and maxLength in code points (an escape is one)', () => {
    const g = str({ minLength: 2, maxLength: 3 })
    expect(match(g, '"日本"')).toBe('complete')
    expect(match(g, '"🎉\\n語"')).toBe('complete')
    expect(match(g, '"日本語x')).toBe('invalid')
    expect(match(g, '"a"')).toBe('invalid')
  })
})

describe('numbers', () => {
  it('accepts JSON numbers with bounded digits and rejects what JSON does not allow', () => {
    const g = json({ type: 'number' })
    for (const ok of ['0', '-0', '12', '-3.25', '1e5', '1E+10', '2.5e-3', '1234567890123456']) {
      expect(match(g, ok)).toBe('complete')
    }
    for (const bad of ['01', '+1', '.5', '1.e3', '--1', '12345678901234567', '1e1234', 'NaN']) {
      expect(match(g, bad)).toBe('invalid')
    }
    expect(match(g, '-')).toBe('prefix')
    expect(match(g, '1.')).toBe('prefix')
    expect(match(g, '1e')).toBe('prefix')
  })

  it('keeps integers to digits', () => {
    const g = json({ type: 'integer' })
    expect(match(g, '-42')).toBe('complete')
    expect(match(g, '1.')).toBe('invalid')
    expect(match(g, '1e')).toBe('invalid')
  })

  it('enforces integer bounds digit by digit', () => {
    const g = json({ type: 'integer', minimum: 10, maximum: 20 })
    expect(match(g, '1')).toBe('prefix')
    expect(match(g, '15')).toBe('complete')
    expect(match(g, '20')).toBe('complete')
    expect(match(g, '21')).toBe('invalid')
    expect(match(g, '9')).toBe('invalid')
    expect(match(g, '-')).toBe('invalid')
    const negative = json({ type: 'integer', exclusiveMinimum: -5, exclusiveMaximum: -1 })
    expect(match(negative, '-4')).toBe('complete')
    expect(match(negative, '-2')).toBe('complete')
    expect(match(negative, '-1')).toBe('invalid')
    expect(match(negative, '-5')).toBe('invalid')
    expect(match(negative, '0')).toBe('invalid')
  })

  it('allows a fraction of a bounded number only where every fraction is in range', () => {
    const unit = json({ type: 'number', minimum: 0, exclusiveMaximum: 1 })
    expect(match(unit, '0.999')).toBe('complete')
    expect(match(unit, '0')).toBe('complete')
    expect(match(unit, '1')).toBe('invalid')
    expect(match(unit, '-0.5')).toBe('invalid')
    expect(match(unit, '0e1')).toBe('invalid')
    const g = json({ type: 'number', minimum: -2.5, maximum: 3 })
    expect(match(g, '-1.75')).toBe('complete')
    expect(match(g, '-2')).toBe('complete')
    expect(match(g, '-2.')).toBe('invalid')
    expect(match(g, '2.5')).toBe('complete')
    expect(match(g, '3')).toBe('complete')
    expect(match(g, '3.')).toBe('invalid')
  })
})

describe('values, arrays and alternatives', () => {
  it('matches enum and const values as compact JSON', () => {
    const g = json({ enum: ['red', 'green', 42, null, { a: [1] }] })
    for (const ok of ['"red"', '"green"', '42', 'null', '{"a":[1]}']) expect(match(g, ok)).toBe('complete')
    expect(match(g, '"blue"')).toBe('invalid')
    expect(match(g, '{"a": [1]}')).toBe('invalid')
    expect(match(json({ const: 'x' }), '"x"')).toBe('complete')
    expect(match(json({ type: 'string', enum: ['a', 1] }), '1')).toBe('invalid')
  })

  it('keeps arrays within minItems..maxItems, with prefixItems first', () => {
    const g = json({ type: 'array', items: { type: 'integer' }, minItems: 1, maxItems: 2 })
    expect(match(g, '[]')).toBe('invalid')
    expect(match(g, '[1, 2]')).toBe('complete')
    expect(match(g, '[1,2,')).toBe('invalid')
    const tuple = json({
      type: 'array',
      prefixItems: [{ type: 'string' }, { type: 'boolean' }],
      items: false,
    })
    expect(match(tuple, '["a",true]')).toBe('complete')
    expect(match(tuple, '["a"]')).toBe('complete')
    expect(match(tuple, '[true')).toBe('invalid')
    expect(match(tuple, '["a",true,')).toBe('invalid')
  })

  it('takes any alternative of anyOf and of a type list', () => {
    const g = json({
      anyOf: [{ type: 'string', maxLength: 1 }, { type: 'integer' }, { type: 'string', minLength: 3 }],
    })
    expect(match(g, '"a"')).toBe('complete')
    expect(match(g, '"abc"')).toBe('complete')
    expect(match(g, '"ab"')).toBe('invalid')
    expect(match(g, '7')).toBe('complete')
    const nullable = json({ type: ['string', 'null'] })
    expect(match(nullable, 'null')).toBe('complete')
    expect(match(nullable, '"x"')).toBe('complete')
    expect(match(nullable, '1')).toBe('invalid')
  })

  it('follows recursive $refs within the nesting bound', () => {
    const g = json({
      $defs: {
        node: {
          type: 'object',
          properties: { v: { type: 'integer' }, kids: { type: 'array', items: { $ref: '#/$defs/node' } } },
          required: ['v'],
        },
      },
      $ref: '#/$defs/node',
    })
    expect(match(g, '{"v":1,"kids":[{"v":2},{"v":3,"kids":[{"v":4,"kids":[]}]}]}')).toBe('complete')
    expect(match(g, '{"v":1,"kids":[{}]}')).toBe('invalid')
    const deep = (n: number): string => (n === 0 ? '{"v":0}' : `{"v":${n},"kids":[${deep(n - 1)}]}`)
    expect(match(g, deep(15))).toBe('complete')
    expect(match(g, deep(16))).toBe('invalid')
  })
})

describe('parts', () => {
  it('matches literals around a JSON value, and nothing after the last part', () => {
    const g = spec(
      { type: 'literal', text: '<tool_call>\n' },
      { type: 'json', schema: { type: 'object', properties: { name: { const: 'f' } }, required: ['name'] } },
      { type: 'literal', text: '\n</tool_call>' },
    )
    expect(match(g, '<tool_call>\n{"name": "f"}\n</tool_call>')).toBe('complete')
    expect(match(g, '<tool_call>\n{"name": "f"}\n</tool_call>\n')).toBe('invalid')
    expect(match(g, '<tool_call> ')).toBe('invalid')
    expect(match(g, '<tool_call>\n{"name": "f"}')).toBe('prefix')
  })
})
