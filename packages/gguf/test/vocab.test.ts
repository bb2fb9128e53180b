import { describe, expect, it } from 'vitest'
import { LLAMA_TOKEN_TYPE, llamaVocabulary, SPM_SPACE } from '../src/vocab.ts'

describe('llamaVocabulary', () => {
  it('starts with <unk>, <s>, </s> and the 256 byte tokens', () => {
    const v = llamaVocabulary(259)
    expect(v.tokens.slice(0, 4)).toEqual(['<unk>', '<s>', '</s>', '<0x00>'])
    expect(v.tokens[3 + 0x0a]).toBe('<0x0A>')
    expect(v.tokens[258]).toBe('<0xFF>')
    expect([v.unkId, v.bosId, v.eosId]).toEqual([0, 1, 2])
    expect(Array.from(v.tokenTypes.subarray(0, 4))).toEqual([
      LLAMA_TOKEN_TYPE.UNKNOWN,
      LLAMA_TOKEN_TYPE.CONTROL,
      LLAMA_TOKEN_TYPE.CONTROL,
      LLAMA_TOKEN_TYPE.BYTE,
    ])
    expect(v.tokenTypes.subarray(3, 259).every((t) => t === LLAMA_TOKEN_TYPE.BYTE)).toBe(true)
  })

  it.each([259, 260, 1000, 1001, 32000, 65537])('has exactly %i unique tokens', (size) => {
    const v = llamaVocabulary(size)
    expect(v.tokens).toHaveLength(size)
    expect(v.scores).toHaveLength(size)
    expect(v.tokenTypes).toHaveLength(size)
    expect(new Set(v.tokens).size).toBe(size)
    expect(v.tokenTypes.subarray(259).every((t) => t === LLAMA_TOKEN_TYPE.NORMAL)).toBe(true)
  })

  it('keeps ids stable across sizes and ranks common pieces first', () => {
    const small = llamaVocabulary(2000)
    const large = llamaVocabulary(32000)
    expect(large.tokens.slice(0, 2000)).toEqual(small.tokens)
    expect(small.tokens[259]).toBe(SPM_SPACE)
    for (const word of ['the', 'of', 'and', 'people', 'water', 'sentence']) {
      expect(small.tokens, word).toContain(`${SPM_SPACE}${word}`)
    }
    for (let i = 260; i < large.tokens.length; i++)
      expect(large.scores[i]!).toBeLessThan(large.scores[i - 1]!)
  })

  it('can reach every piece by merging two shorter pieces', () => {
    const v = llamaVocabulary(40000)
    const known = new Set(v.tokens)
    for (const piece of v.tokens.slice(259)) {
      const chars = [...piece]
      if (chars.length > 1) expect(known.has(chars.slice(0, -1).join('')), piece).toBe(true)
    }
  })

  it('rejects sizes below the byte tokens and above the cap', () => {
    expect(() => llamaVocabulary(258)).toThrow(/vocabulary size 258 is out of range; use 259/)
    expect(() => llamaVocabulary(262145)).toThrow(/out of range/)
    expect(() => llamaVocabulary(1000.5)).toThrow(/out of range/)
  })
})
