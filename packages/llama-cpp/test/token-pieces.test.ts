import { spmTokenizerFromGGUF } from '@meshnet/engine'
import { LLAMA_TOKEN_TYPE, openGGUF } from '@meshnet/gguf'
import { modelDir } from '@meshnet/test-harness'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { acquireLlama, type LlamaRuntime } from '../src/runtime.ts'
import { decodeGpt2Token, tokenPieces } from '../src/token-pieces.ts'
import { LlamaCppTokenizer } from '../src/tokenizer.ts'

const text = (bytes: Uint8Array) => new TextDecoder().decode(bytes)

describe('GGUF token pieces', () => {
  it('decodes GPT-2 byte-mapped tokens to their bytes', () => {
    expect(text(decodeGpt2Token('Ġhello'))).toBe(' hello')
    expect(text(decodeGpt2Token('Ċ'))).toBe('\n')
    expect(text(decodeGpt2Token('ĉĠ{"'))).toBe('\t {"')
    // "é" is two bytes, each stored as its own mapped character: each half alone is not UTF-8.
    expect([...decodeGpt2Token('Ã©')]).toEqual([0xc3, 0xa9])
    expect([...decodeGpt2Token('Ã')]).toEqual([0xc3])
  })

  it('renders a gpt2 vocabulary as llama.cpp does, control and user-defined tokens as text', () => {
    const { NORMAL, CONTROL, USER_DEFINED } = LLAMA_TOKEN_TYPE
    const pieces = tokenPieces(
      'gpt2',
      ['Ġworld', '<|im_end|>', '<tool_call>', 'Ġ{"'],
      [NORMAL, CONTROL, USER_DEFINED, NORMAL],
    )
    expect(pieces.map((p) => [text(p.bytes), p.control])).toEqual([
      [' world', false],
      ['<|im_end|>', true],
      ['<tool_call>', false],
      [' {"', false],
    ])
  })

  it('renders a SentencePiece vocabulary with spaces and byte tokens', () => {
    const { NORMAL, CONTROL, BYTE } = LLAMA_TOKEN_TYPE
    const pieces = tokenPieces('llama', ['</s>', '<0x0A>', '▁the', '<0xE2>'], [CONTROL, BYTE, NORMAL, BYTE])
    expect(pieces.map((p) => [[...p.bytes], p.control])).toEqual([
      [[...new TextEncoder().encode('</s>')], true],
      [[0x0a], false],
      [[0x20, 0x74, 0x68, 0x65], false],
      [[0xe2], false],
    ])
  })
})

describe('LlamaCppTokenizer.piece', () => {
  let models: Awaited<ReturnType<typeof modelDir>>
  let runtime: LlamaRuntime

  beforeAll(async () => {
    models = await modelDir()
    runtime = await acquireLlama()
  })

  afterAll(async () => {
    await runtime?.release()
    await models?.cleanup()
  })

  it('gives the pieces of the Meshnet tokenizer, whose bytes make the detokenized text', async () => {
    const path = await models.model('vocab-1000', {
      layers: 1,
      embd: 32,
      heads: 1,
      ff: 32,
      vocab: 1000,
      type: 'F32',
    })
    const file = await openGGUF(path)
    const ours = spmTokenizerFromGGUF(file)
    await file.close()
    const model = await runtime.llama.loadModel({ modelPath: path, vocabOnly: true })
    try {
      const theirs = new LlamaCppTokenizer(model, 1000)
      for (let id = 0; id < 1000; id++) expect(theirs.piece(id), `token ${id}`).toEqual(ours.piece(id))
      const tokens = theirs.tokenize('Once upon a time: naïve café — 日本語 🎉')
      const bytes = tokens.flatMap((id) => [...theirs.piece(id).bytes])
      expect(text(Uint8Array.from(bytes))).toBe(` ${theirs.detokenize(tokens)}`)
    } finally {
      await model.dispose()
    }
  })
})
