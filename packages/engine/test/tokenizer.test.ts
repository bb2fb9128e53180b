import { LLAMA_TOKEN_TYPE } from '@meshnet/gguf'
import { describe, expect, it } from 'vitest'
import { SpmTokenizer } from '../src/tokenizer.ts'

const bytes = Array.from({ length: 256 }, (_, b) => `<0x${b.toString(16).toUpperCase().padStart(2, '0')}>`)

/** <unk> <s> </s>, the byte tokens, then pieces with scores (higher merges first). */
function vocab(pieces: Array<[string, number]>): SpmTokenizer {
  const tokens = ['<unk>', '<s>', '</s>', ...bytes, ...pieces.map(([p]) => p)]
  const types = [
    LLAMA_TOKEN_TYPE.UNKNOWN,
    LLAMA_TOKEN_TYPE.CONTROL,
    LLAMA_TOKEN_TYPE.CONTROL,
    ...bytes.map(() => LLAMA_TOKEN_TYPE.BYTE),
    ...pieces.map(() => LLAMA_TOKEN_TYPE.NORMAL),
  ]
  const scores = [0, 0, 0, ...bytes.map(() => 0), ...pieces.map(([, s]) => s)]
  return new SpmTokenizer({ tokens, types, scores })
}

const id = (i: number) => 259 + i

describe('SpmTokenizer', () => {
  const t = vocab([
    ['▁', -1],
    ['a', -2],
    ['b', -3],
    ['ab', -4],
    ['▁ab', -5],
    ['▁a', -6],
    ['bb', -0.5],
  ])

  it('merges the highest-scoring pair first and prefixes a space', () => {
    // "▁ab": ▁+a (-6) and a+b (-4): ab wins, then ▁+ab (-5).
    expect(t.tokenize('ab')).toEqual([id(4)])
    // "▁abb": b+b (-0.5) beats a+b, leaving ▁a + bb.
    expect(t.tokenize('abb')).toEqual([id(5), id(6)])
  })

  it('adds BOS when asked, and turns control-token text into tokens only when asked', () => {
    expect(t.tokenize('ab', { addSpecial: true })).toEqual([1, id(4)])
    expect(t.tokenize('</s>ab', { parseSpecial: true })).toEqual([2, id(4)])
    expect(t.tokenize('</s>ab')).not.toContain(2)
  })

  it('falls back to UTF-8 byte tokens for characters no piece covers', () => {
    expect(t.tokenize('é')).toEqual([id(0), 3 + 0xc3, 3 + 0xa9])
    expect(t.detokenize(t.tokenize('é ab'))).toBe('é ab')
  })

  it('drops the leading space of a text but not of a continuation', () => {
    expect(t.detokenize([id(4)])).toBe('ab')
    expect(t.detokenize([id(4)], { context: [id(1)] })).toBe(' ab')
    expect(t.detokenize([1, id(4)])).toBe(' ab')
    expect(t.detokenize([1, id(4)], { renderSpecial: true })).toBe('<s> ab')
  })

  it('knows EOS and text-marked end-of-generation tokens', () => {
    expect(t.isEog(2)).toBe(true)
    expect(t.isEog(1)).toBe(false)
  })
})
