import { initialState, type State, stepAll } from '../src/automaton.ts'
import { compileGrammar, type Grammar, grammarRoot } from '../src/grammar.ts'
import type { TokenPiece } from '../src/index.ts'
import type { GrammarSpec, JsonSchema } from '../src/spec.ts'
import type { ConstraintVocabulary } from '../src/vocabulary.ts'

const encoder = new TextEncoder()

/** How far a text gets in a grammar: all of it and complete, a valid prefix, or rejected. */
export function match(grammar: Grammar, text: string | Uint8Array): 'complete' | 'prefix' | 'invalid' {
  const bytes = typeof text === 'string' ? encoder.encode(text) : text
  const state = stepAll(initialState(grammarRoot(grammar)), bytes)
  return state === undefined ? 'invalid' : state.done ? 'complete' : 'prefix'
}

export function stateAfter(grammar: Grammar, text: string): State | undefined {
  return stepAll(initialState(grammarRoot(grammar)), encoder.encode(text))
}

export const json = (schema?: JsonSchema): Grammar =>
  compileGrammar({ parts: [schema === undefined ? { type: 'json' } : { type: 'json', schema }] })

export const spec = (...parts: GrammarSpec['parts']): Grammar => compileGrammar({ parts })

/**
 * A synthetic vocabulary: every single byte, a few hundred multi-byte pieces that JSON and text use
 * (structural runs, words, escapes, UTF-8 characters and their halves), some control tokens, and
 * an end-of-generation token.
 */
export function syntheticVocabulary(
  extra: readonly string[] = [],
): ConstraintVocabulary & { ids: Map<string, number> } {
  const pieces: TokenPiece[] = []
  const ids = new Map<string, number>()
  const add = (bytes: Uint8Array, control: boolean, name = new TextDecoder().decode(bytes)) => {
    ids.set(control ? `control:${name}` : name, pieces.length)
    pieces.push({ bytes, control })
  }
  for (let b = 0; b < 256; b++) add(Uint8Array.of(b), false)
  const words = [
    '{"',
    '"}',
    '":',
    '": ',
    '", "',
    '","',
    '":"',
    '": "',
    '{}',
    '[]',
    '[',
    '],',
    '},',
    '}}',
    ']}',
    '"]',
    '["',
    'true',
    'false',
    'null',
    'nul',
    ' true',
    ' false',
    ' null',
    '0',
    '12',
    '3.14',
    '-1',
    'e+10',
    '1e',
    '.5',
    '00',
    ' ',
    '  ',
    '    ',
    '\n',
    '\n  ',
    '\n    ',
    '\t',
    '\\n',
    '\\"',
    '\\u00e9',
    '\\u',
    '\\ud83d',
    '\\',
    'name',
    'age',
    'items',
    'type',
    'value',
    'hello',
    ' world',
    'the',
    ' the',
    'get_weather',
    'arguments',
    'city',
    'Paris',
    'unit',
    'celsius',
    '<tool_call>',
    '</tool_call>',
    '<tool',
    '_call>',
    'call',
    '\n<',
    'é',
    'ü',
    '日本',
    '🎉',
    '\u00c3',
    'a"',
    '"a',
    'b',
    'ab',
    'abc',
    '"name"',
    '"age": ',
    '": {"',
    '}\n',
  ]
  for (const w of [...words, ...extra]) add(encoder.encode(w), false)
  add(Uint8Array.of(0xe6, 0x97), false) // the first two bytes of 日
  add(Uint8Array.of(0xf0, 0x9f), false)
  add(encoder.encode('<tool_call>'), true)
  add(encoder.encode('</tool_call>'), true)
  add(encoder.encode('<|im_start|>'), true)
  add(encoder.encode('{'), true)
  const eog = pieces.length
  add(encoder.encode('<|im_end|>'), true)
  return { size: pieces.length, piece: (id) => pieces[id]!, eog: [eog], ids }
}

/** A small seeded PRNG (mulberry32). */
export function prng(seed: number): () => number {
  let a = seed >>> 0
  return () => {
    a = (a + 0x6d2b79f5) >>> 0
    let t = a
    t = Math.imul(t ^ (t >>> 15), t | 1)
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61)
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296
  }
}
