import type { SpmTokenizer } from '@meshnet/engine'
import { spmTokenizerFromGGUF } from '@meshnet/engine'
import { openGGUF } from '@meshnet/gguf'
import { modelDir } from '@meshnet/test-harness'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { acquireLlama, type LlamaRuntime } from '../src/runtime.ts'
import { LlamaCppTokenizer } from '../src/tokenizer.ts'

// The Meshnet SentencePiece tokenizer against llama.cpp's own (a vocab-only load), on the
// generated vocabularies: the same ids for every text, the same text back.

const TEXTS = [
  '',
  ' ',
  'a',
  'Hello world',
  'Once upon a time, in a land far away, there lived a',
  '  two leading spaces and two trailing  ',
  'tabs\tand\nnew\n\nlines\r\n',
  'naïve café — 日本語のテキスト 🎉👩‍👩‍👧 ∑∫√',
  'the the the thethethe therefore theory',
  'UPPER lower MiXeD 12345 3.14159 $%^&*()',
  '<s> and </s> and <unk> inside text',
  'x'.repeat(300),
]

/** Deterministic mixed text: vocabulary words, punctuation, and code points from several planes. */
function randomTexts(count: number, seed: number): string[] {
  let s = seed >>> 0
  const next = () => {
    s = (Math.imul(s, 1664525) + 1013904223) >>> 0
    return s / 2 ** 32
  }
  const words = ['the', 'of', 'and', 'time', 'world', 'picture', 'mountain', 'question', ' ', '  ', '\n']
  const ranges: Array<[number, number]> = [
    [0x20, 0x7e],
    [0xa0, 0x24f],
    [0x370, 0x3ff],
    [0x4e00, 0x4fff],
    [0x1f300, 0x1f64f],
  ]
  return Array.from({ length: count }, () => {
    let text = ''
    const parts = 1 + Math.floor(next() * 12)
    for (let i = 0; i < parts; i++) {
      if (next() < 0.5) text += words[Math.floor(next() * words.length)]!
      else {
        const [lo, hi] = ranges[Math.floor(next() * ranges.length)]!
        text += String.fromCodePoint(lo + Math.floor(next() * (hi - lo)))
      }
      if (next() < 0.4) text += ' '
    }
    return text
  })
}

let models: Awaited<ReturnType<typeof modelDir>>
let runtime: LlamaRuntime

beforeAll(async () => {
  models = await modelDir()
  runtime = await acquireLlama()
})

afterAll(async () => {
  await runtime?.release()
  await models.cleanup()
})

describe.each([259, 1000, 4097])('a %i-token SentencePiece vocabulary', (vocab) => {
  let ours: SpmTokenizer
  let theirs: LlamaCppTokenizer
  let dispose: () => Promise<void>

  beforeAll(async () => {
    const path = await models.model(`vocab-${vocab}`, {
      layers: 1,
      embd: 32,
      heads: 1,
      ff: 32,
      vocab,
      type: 'F32',
    })
    const file = await openGGUF(path)
    ours = spmTokenizerFromGGUF(file)
    await file.close()
    const model = await runtime.llama.loadModel({ modelPath: path, vocabOnly: true })
    theirs = new LlamaCppTokenizer(model, vocab)
    dispose = () => model.dispose()
  })

  afterAll(async () => {
    await dispose?.()
  })

  it('tokenizes like llama.cpp, with and without BOS and special-token parsing', () => {
    for (const text of [...TEXTS, ...randomTexts(200, vocab)]) {
      for (const addSpecial of [false, true]) {
        for (const parseSpecial of [false, true]) {
          const options = { addSpecial, parseSpecial }
          expect(ours.tokenize(text, options), JSON.stringify({ text, ...options })).toEqual(
            theirs.tokenize(text, options),
          )
        }
      }
    }
  })

  it('detokenizes like llama.cpp, as a whole and as a continuation', () => {
    for (const text of [...TEXTS, ...randomTexts(100, vocab + 1)]) {
      const tokens = theirs.tokenize(text, { addSpecial: true })
      expect(ours.detokenize(tokens)).toBe(theirs.detokenize(tokens))
      expect(ours.detokenize(tokens.slice(1))).toBe(theirs.detokenize(tokens.slice(1)))
      expect(ours.detokenize(tokens.slice(2), { context: tokens.slice(0, 2) })).toBe(
        theirs.detokenize(tokens.slice(2), { context: tokens.slice(0, 2) }),
      )
      expect(ours.detokenize(tokens, { renderSpecial: true })).toBe(
        theirs.detokenize(tokens, { renderSpecial: true }),
      )
    }
  })

  it('knows the same special tokens', () => {
    expect([ours.bos, ours.eos, ours.addBos]).toEqual([theirs.bos, theirs.eos, theirs.addBos])
    for (let id = 0; id < Math.min(vocab, 300); id++) expect(ours.isEog(id)).toBe(theirs.isEog(id))
  })
})
