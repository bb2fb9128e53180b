import { mkdtemp, readdir, readFile, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { TILE_POOL_ROWS } from '../src/generator-fill.ts'
import { generateModel, readLlamaHyperparameters } from '../src/index.ts'
import { openGGUF } from '../src/reader.ts'

let dir: string
beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'meshnet-gguf-llama-'))
})
afterAll(async () => {
  await rm(dir, { recursive: true, force: true })
})

const SMALL = { layers: 2, embd: 256, heads: 8, kvHeads: 2, ff: 512, vocab: 1001, seed: 42 } as const

describe('generateModel', () => {
  it('writes llama hyperparameters, a vocabulary and tensors in llama.cpp shapes', async () => {
    const out = join(dir, 'gqa.gguf')
    const made = await generateModel({ ...SMALL, out, type: 'Q8_0', context: 512, ropeBase: 500000 })
    const file = await openGGUF(out)
    try {
      expect(made.bytes).toBe(file.fileSize)
      expect(file.getString('general.architecture')).toBe('llama')
      expect(file.getString('tokenizer.ggml.model')).toBe('llama')
      for (const [key, type] of [
        ['llama.context_length', 'uint32'],
        ['llama.embedding_length', 'uint32'],
        ['llama.block_count', 'uint32'],
        ['llama.feed_forward_length', 'uint32'],
        ['llama.attention.head_count', 'uint32'],
        ['llama.attention.head_count_kv', 'uint32'],
        ['llama.rope.dimension_count', 'uint32'],
        ['llama.rope.freq_base', 'float32'],
        ['llama.attention.layer_norm_rms_epsilon', 'float32'],
        ['llama.vocab_size', 'uint32'],
        ['tokenizer.ggml.bos_token_id', 'uint32'],
        ['tokenizer.ggml.add_bos_token', 'bool'],
      ]) {
        expect(file.metadata.get(key!)?.type, key).toBe(type)
      }
      expect(readLlamaHyperparameters(file)).toEqual({
        architecture: 'llama',
        contextLength: 512,
        embeddingLength: 256,
        blockCount: 2,
        feedForwardLength: 512,
        headCount: 8,
        headCountKv: 2,
        headDim: 32,
        ropeDimensionCount: 32,
        ropeFreqBase: 500000,
        rmsNormEpsilon: Math.fround(1e-5),
        vocabSize: 1001,
        bosTokenId: 1,
        eosTokenId: 2,
      })
      const tokens = file.metadata.get('tokenizer.ggml.tokens')
      expect(tokens?.type === 'array' && tokens.value.length).toBe(1001)
      const shapes = Object.fromEntries(file.tensors.map((t) => [t.name, [t.typeName, ...t.dims]]))
      expect(shapes).toEqual({
        'token_embd.weight': ['Q8_0', 256, 1001],
        ...Object.fromEntries(
          [0, 1].flatMap((i) => [
            [`blk.${i}.attn_norm.weight`, ['F32', 256]],
            [`blk.${i}.attn_q.weight`, ['Q8_0', 256, 256]],
            [`blk.${i}.attn_k.weight`, ['Q8_0', 256, 64]],
            [`blk.${i}.attn_v.weight`, ['Q8_0', 256, 64]],
            [`blk.${i}.attn_output.weight`, ['Q8_0', 256, 256]],
            [`blk.${i}.ffn_norm.weight`, ['F32', 256]],
            [`blk.${i}.ffn_gate.weight`, ['Q8_0', 256, 512]],
            [`blk.${i}.ffn_up.weight`, ['Q8_0', 256, 512]],
            [`blk.${i}.ffn_down.weight`, ['Q8_0', 512, 256]],
          ]),
        ),
        'output_norm.weight': ['F32', 256],
        'output.weight': ['Q8_0', 256, 1001],
      })
      expect(made.parameters).toBe(file.tensors.reduce((n, t) => n + t.elements, 0))
      expect(made.parameters).toBe(
        2 * 256 * 1001 + 256 + 2 * (2 * 256 + 2 * 256 * 256 + 2 * 256 * 64 + 3 * 256 * 512),
      )
    } finally {
      await file.close()
    }
  })

  it('scales weights by fan-in and keeps norms near 1', async () => {
    const out = join(dir, 'stats.gguf')
    await generateModel({ ...SMALL, out, type: 'F32', layers: 4 })
    const file = await openGGUF(out)
    const stats = async (name: string) => {
      const t = file.tensor(name)!
      const x = await file.readTensorRowsF32(name, 0, t.rows)
      const mean = x.reduce((a, b) => a + b, 0) / x.length
      const std = Math.sqrt(x.reduce((a, b) => a + (b - mean) ** 2, 0) / x.length)
      return { mean, std, max: x.reduce((a, b) => Math.max(a, Math.abs(b)), 0) }
    }
    const q = await stats('blk.1.attn_q.weight')
    expect(Math.abs(q.mean)).toBeLessThan(0.01)
    expect(q.std).toBeCloseTo(1 / 16, 2)
    const down = await stats('blk.3.ffn_down.weight')
    expect(down.std).toBeCloseTo(1 / Math.sqrt(512) / Math.sqrt(8), 2)
    const norm = await stats('output_norm.weight')
    expect(norm.mean).toBeCloseTo(1, 1)
    expect(norm.max).toBeLessThan(1.13)
    expect(norm.std).toBeGreaterThan(0.02)
    await file.close()
  })

  it('is deterministic per (seed, tensor name), whatever else is in the model', async () => {
    const a = await generateModel({ ...SMALL, out: join(dir, 'a.gguf'), sha256: true })
    const b = await generateModel({ ...SMALL, out: join(dir, 'b.gguf'), sha256: true })
    const c = await generateModel({ ...SMALL, out: join(dir, 'c.gguf'), seed: 43, sha256: true })
    const deeper = await generateModel({ ...SMALL, out: join(dir, 'd.gguf'), layers: 3 })
    expect(a.sha256).toMatch(/^[0-9a-f]{64}$/)
    expect(b.sha256).toBe(a.sha256)
    expect(c.sha256).not.toBe(a.sha256)
    expect(await readFile(join(dir, 'b.gguf'))).toEqual(await readFile(join(dir, 'a.gguf')))
    const fa = await openGGUF(a.path)
    const fd = await openGGUF(deeper.path)
    expect(await fd.readTensor('blk.1.ffn_up.weight')).toEqual(await fa.readTensor('blk.1.ffn_up.weight'))
    await Promise.all([fa.close(), fd.close()])
  })

  it('fills tiled weights deterministically, apart from random ones, with the same tensor table', async () => {
    const options = { ...SMALL, layers: 8, type: 'Q4_K_M', sha256: true } as const
    const random = await generateModel({ ...options, out: join(dir, 'random.gguf') })
    const tiled = await generateModel({ ...options, out: join(dir, 'tiled.gguf'), fill: 'tiled' })
    const again = await generateModel({ ...options, out: join(dir, 'tiled-again.gguf'), fill: 'tiled' })
    const other = await generateModel({
      ...options,
      out: join(dir, 'tiled-43.gguf'),
      fill: 'tiled',
      seed: 43,
    })
    expect(again.sha256).toBe(tiled.sha256)
    expect(tiled.sha256).not.toBe(random.sha256)
    expect(other.sha256).not.toBe(tiled.sha256)
    expect(await generateModel({ ...options, out: join(dir, 'r2.gguf'), fill: 'random' })).toMatchObject({
      sha256: random.sha256,
    })
    // Same report but for the fill (and the header's one more key, meshnet.test_model.fill).
    const report = ({ path, sha256, bytes, fill, ...rest }: typeof tiled) => rest
    expect(report(tiled)).toEqual(report(random))
    expect([tiled.fill, random.fill]).toEqual(['tiled', 'random'])
    const [fr, ft] = await Promise.all([openGGUF(random.path), openGGUF(tiled.path)])
    try {
      const table = (f: typeof fr) => f.tensors.map((t) => [t.name, t.typeName, ...t.dims])
      expect(table(ft)).toEqual(table(fr))
      expect(ft.getString('meshnet.test_model.fill')).toBe('tiled')
      expect(fr.metadata.has('meshnet.test_model.fill')).toBe(false)
      // Norms are drawn as in a random file; weight matrices are not.
      expect(await ft.readTensor('blk.3.ffn_norm.weight')).toEqual(
        await fr.readTensor('blk.3.ffn_norm.weight'),
      )
      expect(await ft.readTensor('blk.3.ffn_up.weight')).not.toEqual(
        await fr.readTensor('blk.3.ffn_up.weight'),
      )
    } finally {
      await Promise.all([fr.close(), ft.close()])
    }
  })

  it('builds tiled rows from tiles of at most TILE_POOL_ROWS pool rows, yet all distinct, with random statistics', async () => {
    // Output rows of 1024 F32 weights are 4 tiles of 256: each tile position takes one of the
    // pool's rows, so it holds at most TILE_POOL_ROWS distinct tiles, but no two rows are equal
    // (equal output rows would tie logits).
    const out = join(dir, 'tiled-pool.gguf')
    await generateModel({ ...SMALL, embd: 1024, vocab: 4000, out, fill: 'tiled', type: 'F32', layers: 1 })
    const file = await openGGUF(out)
    try {
      const distinct = (rows: Uint8Array, rowBytes: number, from: number, to: number) => {
        const seen = new Set<string>()
        for (let at = 0; at < rows.length; at += rowBytes) {
          seen.add(Buffer.from(rows.subarray(at + from, at + to)).toString('base64'))
        }
        return seen.size
      }
      const output = await file.readTensor('output.weight')
      const rowBytes = 1024 * 4
      expect(output.length).toBe(4000 * rowBytes)
      for (let s = 0; s < 4; s++) {
        const tiles = distinct(output, rowBytes, s * 1024, (s + 1) * 1024)
        expect(tiles).toBeLessThanOrEqual(TILE_POOL_ROWS)
        expect(tiles).toBeGreaterThan(TILE_POOL_ROWS / 2)
      }
      expect(distinct(output, rowBytes, 0, rowBytes)).toBe(4000)
      const x = await file.readTensorRowsF32('blk.0.attn_q.weight', 0, 1024)
      const mean = x.reduce((a, b) => a + b, 0) / x.length
      const std = Math.sqrt(x.reduce((a, b) => a + (b - mean) ** 2, 0) / x.length)
      expect(Math.abs(mean)).toBeLessThan(0.01)
      expect(std).toBeCloseTo(1 / 32, 2)
    } finally {
      await file.close()
    }
  })

  it.each([
    [{ ff: 400, type: 'Q6_K' }, 'generateModel ff 400: must be a multiple of 32 for Q6_K'],
    [
      { embd: 48, heads: 1, kvHeads: 1, type: 'Q8_0' },
      'generateModel embd 48: must be a multiple of 32 for Q8_0 (rows are whole blocks of 32)',
    ],
    [{ heads: 3 }, 'generateModel heads 3: must divide embd (256)'],
    [{ heads: 256 }, 'generateModel heads 256: gives an odd head size 1; RoPE needs an even one'],
    [{ kvHeads: 3 }, 'generateModel kvHeads 3: must divide heads (8)'],
    [{ vocab: 258 }, 'generateModel vocab 258:'],
    [{ type: 'Q7_K' }, 'generateModel type "Q7_K":'],
    [{ arch: 'mamba' }, 'generateModel arch "mamba":'],
    [{ arch: 'qwen2', headDim: 64 }, 'generateModel headDim 64: must be embd / heads for qwen2'],
    [{ layers: 0 }, 'generateModel layers 0:'],
  ])('rejects %o naming the option', async (change, message) => {
    const out = join(dir, 'rejected.gguf')
    await expect(generateModel({ ...SMALL, out, ...change } as never)).rejects.toThrow(message)
    await expect(readdir(dir)).resolves.not.toContain('rejected.gguf')
  })

  it('generates GQA-free, MQA, byte-only and K-quant models', async () => {
    for (const [name, change] of [
      ['mha', { kvHeads: 8 }],
      ['mqa', { kvHeads: 1 }],
      ['bytes', { vocab: 259 }],
      ['q4k', { type: 'Q4_K', ff: 768 }],
    ] as const) {
      const out = join(dir, `${name}.gguf`)
      const made = await generateModel({ ...SMALL, out, ...change })
      const file = await openGGUF(out)
      const h = readLlamaHyperparameters(file)
      expect(file.tensor('blk.0.attn_k.weight')!.dims).toEqual([256, 32 * h.headCountKv])
      expect(h.vocabSize).toBe(made.vocab)
      await file.close()
    }
  })

  it('writes a Q4_K_M mix as llama-quantize picks it, and falls back where rows are not super-blocks', async () => {
    const out = join(dir, 'q4km.gguf')
    const made = await generateModel({ ...SMALL, out, layers: 8, type: 'Q4_K_M' })
    const file = await openGGUF(out)
    const type = (name: string) => file.tensor(name)!.typeName
    // use_more_bits(i, 8): layers 0, 3, 6 and 7 get Q6_K for attn_v and ffn_down.
    expect([0, 1, 2, 3, 4, 5, 6, 7].map((l) => type(`blk.${l}.attn_v.weight`))).toEqual([
      'Q6_K',
      'Q4_K',
      'Q4_K',
      'Q6_K',
      'Q4_K',
      'Q4_K',
      'Q6_K',
      'Q6_K',
    ])
    expect(type('blk.3.ffn_down.weight')).toBe('Q6_K')
    expect(type('blk.1.ffn_down.weight')).toBe('Q4_K')
    expect(type('blk.1.attn_q.weight')).toBe('Q4_K')
    expect(type('output.weight')).toBe('Q6_K')
    expect(type('blk.0.attn_norm.weight')).toBe('F32')
    expect(file.getNumber('general.file_type')).toBe(15)
    expect(made.tensorTypes).toEqual({ Q4_K: 49, Q6_K: 9 })
    await file.close()
    // ffn_down rows of 320 are not whole 256-blocks: Q4_K falls back to Q5_0, Q6_K to Q8_0.
    const narrow = join(dir, 'narrow.gguf')
    await generateModel({ ...SMALL, out: narrow, ff: 320, type: 'Q4_K' })
    const f2 = await openGGUF(narrow)
    expect(f2.tensor('blk.0.ffn_down.weight')!.typeName).toBe('Q5_0')
    expect(f2.tensor('blk.0.ffn_up.weight')!.typeName).toBe('Q4_K')
    await f2.close()
  })

  it.each([
    ['qwen2', ['attn_q.bias', 'attn_k.bias', 'attn_v.bias']],
    ['qwen3', ['attn_q_norm.weight', 'attn_k_norm.weight']],
    ['gemma2', ['post_attention_norm.weight', 'post_ffw_norm.weight']],
    ['gemma3', ['attn_q_norm.weight', 'post_attention_norm.weight', 'post_ffw_norm.weight']],
    ['phi3', ['attn_qkv.weight']],
  ] as const)('writes %s with its own tensors and keys', async (arch, extra) => {
    const out = join(dir, `${arch}.gguf`)
    await generateModel({ ...SMALL, out, arch, ...(arch === 'qwen3' ? { headDim: 64 } : {}) })
    const file = await openGGUF(out)
    expect(file.getString('general.architecture')).toBe(arch)
    expect(file.getNumber(`${arch}.block_count`)).toBe(SMALL.layers)
    for (const name of extra) expect(file.tensor(`blk.0.${name}`)).toBeDefined()
    if (arch === 'phi3') {
      expect(file.tensor('blk.0.ffn_gate.weight')).toBeUndefined()
      expect(file.tensor('blk.0.ffn_up.weight')!.dims).toEqual([SMALL.embd, 2 * SMALL.ff])
    }
    if (arch === 'qwen3')
      expect(file.tensor('blk.0.attn_q.weight')!.dims).toEqual([SMALL.embd, 64 * SMALL.heads])
    if (arch.startsWith('gemma')) {
      expect(file.tensor('output.weight')).toBeUndefined()
      expect(file.getNumber(`${arch}.attention.sliding_window`)).toBeGreaterThan(0)
    }
    await file.close()
  })

  it('stops on abort and leaves no file', async () => {
    const controller = new AbortController()
    controller.abort()
    await expect(
      generateModel({ ...SMALL, out: join(dir, 'aborted.gguf'), signal: controller.signal }),
    ).rejects.toThrow()
    const left = await readdir(dir)
    expect(left.filter((f) => f.includes('aborted'))).toEqual([])
  })
})
