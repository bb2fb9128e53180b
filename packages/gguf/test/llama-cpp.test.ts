// Loads generated models into real llama.cpp (node-llama-cpp's prebuilt CPU binary; it must never
// download or build anything), tokenizes with the generated vocabulary and decodes greedily.
import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { getLlama, type Llama, LlamaLogLevel, readGgufFileInfo } from 'node-llama-cpp'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import {
  type GenerateModelOptions,
  generateModel,
  llamaVocabulary,
  MODEL_ARCHITECTURES,
  MODEL_WEIGHT_TYPES,
  openGGUF,
  SPM_SPACE,
} from '../src/index.ts'

let dir: string
let llama: Llama
const llamaLogs: string[] = []

beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'meshnet-gguf-llamacpp-'))
  llama = await getLlama({
    build: 'never',
    gpu: false,
    maxThreads: 2,
    logLevel: LlamaLogLevel.warn,
    logger: (level, message) => llamaLogs.push(`${level}: ${message}`),
  })
}, 120_000)

afterAll(async () => {
  await llama?.dispose()
  await rm(dir, { recursive: true, force: true })
})

type Shape = Omit<GenerateModelOptions, 'out'>

/** Loads `shape` into llama.cpp, tokenizes `text` and decodes `steps` tokens greedily, twice. */
async function runInLlamaCpp(name: string, shape: Shape, text: string, steps = 4) {
  const out = join(dir, `${name}.gguf`)
  const made = await generateModel({ ...shape, out })
  const model = await llama.loadModel({ modelPath: out })
  try {
    const tokens = model.tokenize(text)
    const detokenized = model.detokenize(tokens)
    const context = await model.createContext({ contextSize: 256, batchSize: 64 })
    try {
      const runs: Array<Array<{ token: number; top: Array<[number, number]> }>> = []
      for (let run = 0; run < 2; run++) {
        const sequence = context.getSequence()
        const generated: Array<{ token: number; top: Array<[number, number]> }> = []
        const input = [model.tokens.bos!, ...tokens]
        for await (const o of sequence.evaluateWithMetadata(
          input,
          { probabilities: true },
          { temperature: 0 },
        )) {
          generated.push({ token: o.token, top: [...o.probabilities.entries()].slice(0, 2) })
          if (generated.length === steps) break
        }
        runs.push(generated)
        sequence.dispose()
      }
      return { made, tokens, detokenized, runs }
    } finally {
      await context.dispose()
    }
  } finally {
    await model.dispose()
  }
}

const BASE: Shape = { layers: 2, embd: 256, heads: 4, kvHeads: 2, ff: 512, vocab: 1000, seed: 11 }

describe('generated models in llama.cpp', () => {
  it.each(MODEL_WEIGHT_TYPES)(
    'loads a %s model, tokenizes with its vocabulary and decodes greedily',
    async (type) => {
      const text = 'the people of the world'
      const { tokens, detokenized, runs, made } = await runInLlamaCpp(`gqa-${type}`, { ...BASE, type }, text)
      const vocab = llamaVocabulary(made.vocab)
      expect(tokens.map((t) => vocab.tokens[t])).toEqual(
        ['the', 'people', 'of', 'the', 'world'].map((w) => `${SPM_SPACE}${w}`),
      )
      expect(detokenized).toBe(text)
      // Same input, same greedy continuation; real distributions with a clear winner, not ties.
      expect(runs[1]!.map((g) => g.token)).toEqual(runs[0]!.map((g) => g.token))
      for (const { token, top } of runs[0]!) {
        expect(token).toBeGreaterThanOrEqual(0)
        expect(token).toBeLessThan(made.vocab)
        expect(top[0]![0]).toBe(token)
        expect(top[0]![1]).toBeGreaterThan(top[1]![1])
        expect(top[0]![1]).toBeGreaterThan(2 / made.vocab)
      }
    },
    120_000,
  )

  it.each(MODEL_ARCHITECTURES)(
    'loads a %s model (Q4_K_M) and decodes greedily',
    async (arch) => {
      const shape: Shape = {
        ...BASE,
        arch,
        type: 'Q4_K_M',
        ...(arch === 'qwen3' || arch === 'gemma3' ? { headDim: 128 } : {}),
      }
      const { runs, made } = await runInLlamaCpp(`arch-${arch}`, shape, 'the people of the world')
      expect(made.arch).toBe(arch)
      expect(runs[1]!.map((g) => g.token)).toEqual(runs[0]!.map((g) => g.token))
      for (const { token, top } of runs[0]!) {
        expect(top[0]![0]).toBe(token)
        expect(top[0]![1]).toBeGreaterThan(top[1]![1])
      }
    },
    120_000,
  )

  it.each([
    ['multi-query attention (1 KV head)', { ...BASE, kvHeads: 1, vocab: 32000, type: 'Q8_0' }],
    [
      'full multi-head attention, odd vocabulary, 3 layers',
      { layers: 3, embd: 512, heads: 8, ff: 1024, vocab: 1001, seed: 5, type: 'Q4_0' },
    ],
    [
      'K-quants with head size 128',
      { layers: 2, embd: 512, heads: 4, kvHeads: 2, ff: 768, vocab: 3001, seed: 6, type: 'Q6_K' },
    ],
  ] as const)(
    'runs %s',
    async (_, shape) => {
      const text = 'The quick brown fox jumps over the lazy dog.\n'
      const { tokens, detokenized, runs, made } = await runInLlamaCpp(
        `shape-${shapeName(shape)}`,
        shape,
        text,
        3,
      )
      expect(detokenized).toBe(text)
      const vocab = llamaVocabulary(made.vocab)
      // The newline falls back to its byte token, as SentencePiece does.
      expect(vocab.tokens[tokens.at(-1)!]).toBe('<0x0A>')
      expect(runs[0]).toHaveLength(3)
      expect(runs[1]!.map((g) => g.token)).toEqual(runs[0]!.map((g) => g.token))
      if (made.vocab === 32000) {
        expect(tokens.slice(0, 3).map((t) => vocab.tokens[t])).toEqual([
          `${SPM_SPACE}The`,
          `${SPM_SPACE}quick`,
          `${SPM_SPACE}brown`,
        ])
      }
    },
    120_000,
  )

  it('runs byte-only vocabularies', async () => {
    const text = 'héllo'
    const utf8 = (s: string) => [...new TextEncoder().encode(s)].map((b) => 3 + b)
    // 259 tokens: every character, the SentencePiece space mark "▁" included, is spelled in bytes,
    // so llama.cpp gives the mark back as text: "▁héllo".
    const only = await runInLlamaCpp('bytes', { ...BASE, vocab: 259, type: 'F16' }, text)
    expect(only.tokens).toEqual(utf8(`${SPM_SPACE}${text}`))
    expect(only.detokenized).toBe(`${SPM_SPACE}${text}`)
    expect(only.runs[0]).toHaveLength(4)
    // 260 tokens add "▁" itself, and text round-trips.
    const withSpace = await runInLlamaCpp('bytes-and-space', { ...BASE, vocab: 260, type: 'F16' }, text)
    expect(withSpace.tokens).toEqual([259, ...utf8(text)])
    expect(withSpace.detokenized).toBe(text)
  }, 120_000)

  it("agrees with node-llama-cpp's own GGUF parser on metadata and tensor infos", async () => {
    const out = join(dir, 'parsers.gguf')
    await generateModel({ ...BASE, out, type: 'Q4_K', ff: 768 })
    const theirs = await readGgufFileInfo(out, { logWarnings: false })
    const ours = await openGGUF(out)
    try {
      expect(theirs.version).toBe(ours.version)
      expect(
        theirs.tensorInfo?.map((t) => [t.name, t.dimensions.map(Number), t.ggmlType, Number(t.fileOffset)]),
      ).toEqual(ours.tensors.map((t) => [t.name, t.dims, t.type, t.offset]))
      const meta = theirs.metadata as unknown as {
        llama: Record<string, unknown>
        tokenizer: { ggml: Record<string, unknown> }
      }
      expect(meta.llama.embedding_length).toBe(ours.getNumber('llama.embedding_length'))
      expect(meta.tokenizer.ggml.tokens).toEqual(
        (ours.metadata.get('tokenizer.ggml.tokens') as { value: string[] }).value,
      )
    } finally {
      await ours.close()
    }
  }, 60_000)

  it('leaves llama.cpp with nothing to warn about', () => {
    // Only the 259-token model, whose "▁" cannot round-trip (see above), draws a warning.
    const warnings = llamaLogs.filter((line) => !/^(info|debug)/.test(line))
    expect(warnings.filter((line) => !line.includes('bytes.gguf'))).toEqual([])
  })
})

function shapeName(shape: Shape): string {
  return `${shape.layers}x${shape.embd}-${shape.heads}-${shape.kvHeads ?? shape.heads}-${shape.type}-${shape.vocab}`
}
