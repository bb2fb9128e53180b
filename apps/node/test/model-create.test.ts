import { mkdtemp, rm, stat, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { openGGUF } from '@meshnet/gguf'
import { runMesh } from '@meshnet/test-harness'
import { afterEach, beforeEach, describe, expect, it } from 'vitest'

let dir: string
beforeEach(async () => {
  dir = await mkdtemp(join(tmpdir(), 'meshnet-model-'))
})
afterEach(async () => {
  await rm(dir, { recursive: true, force: true })
})

describe('mesh model-create', () => {
  it('writes a llama GGUF of the asked shape that the reader opens', async () => {
    const out = join(dir, 'm.gguf')
    const args = ['--json', 'model-create', '--out', out, '--layers', '2', '--embd', '256', '--heads', '4']
    const result = await runMesh([
      ...args,
      '--kv-heads',
      '2',
      '--vocab',
      '1000',
      '--type',
      'Q8_0',
      '--seed',
      '7',
    ])
    expect(result.code, result.stderr).toBe(0)
    const report = JSON.parse(result.stdout)
    expect(report).toMatchObject({ path: out, type: 'Q8_0', bytes: (await stat(out)).size })
    expect(report.sha256).toMatch(/^[0-9a-f]{64}$/)
    const gguf = await openGGUF(out)
    try {
      expect(gguf.getNumber('llama.block_count')).toBe(2)
      expect(gguf.getNumber('llama.attention.head_count_kv')).toBe(2)
      expect(gguf.tensor('blk.1.ffn_down.weight')).toBeDefined()
    } finally {
      await gguf.close()
    }
    // Deterministic: the same flags give the same bytes.
    const again = await runMesh([
      ...args,
      '--kv-heads',
      '2',
      '--vocab',
      '1000',
      '--type',
      'Q8_0',
      '--seed',
      '7',
      '--out',
      join(dir, 'n.gguf'),
    ])
    expect(JSON.parse(again.stdout).sha256).toBe(report.sha256)
  })

  it('names the flag when a shape does not fit whole blocks', async () => {
    const result = await runMesh([
      'model-create',
      '--out',
      join(dir, 'k.gguf'),
      '--type',
      'Q4_K',
      '--embd',
      '48',
    ])
    expect(result.code).toBe(1)
    expect(result.stderr).toContain('--embd 48: must be a multiple of 32 for Q4_K')
    const arch = await runMesh(['model-create', '--out', join(dir, 'a.gguf'), '--arch', 'mamba'])
    expect(arch.code).toBe(1)
    expect(arch.stderr).toContain('--arch')
    expect(arch.stderr).toContain('llama, qwen2, qwen3, gemma2, gemma3, phi3')
  })

  it('writes another architecture in a llama-quantize mix (--arch qwen3 --type Q4_K_M --head-dim 64)', async () => {
    const out = join(dir, 'qwen3.gguf')
    const result = await runMesh([
      '--json',
      'model-create',
      '--out',
      out,
      '--arch',
      'qwen3',
      '--type',
      'q4_k_m',
      '--head-dim',
      '64',
      '--layers',
      '8',
      '--embd',
      '256',
      '--heads',
      '8',
      '--kv-heads',
      '2',
      '--vocab',
      '500',
    ])
    expect(result.code, result.stderr).toBe(0)
    const report = JSON.parse(result.stdout)
    // llama-quantize's Q4_K_M: Q6_K for the output and for attn_v / ffn_down of 4 of the 8 layers.
    expect(report).toMatchObject({
      arch: 'qwen3',
      type: 'Q4_K_M',
      headDim: 64,
      tensorTypes: { Q4_K: 49, Q6_K: 9 },
    })
    const gguf = await openGGUF(out)
    try {
      expect(gguf.getString('general.architecture')).toBe('qwen3')
      expect(gguf.getNumber('qwen3.attention.key_length')).toBe(64)
      expect(gguf.tensor('blk.0.attn_q_norm.weight')?.dims).toEqual([64])
    } finally {
      await gguf.close()
    }
  })

  it('refuses to overwrite an existing file without --force', async () => {
    const out = join(dir, 'exists.gguf')
    await writeFile(out, 'keep me')
    const result = await runMesh([
      'model-create',
      '--out',
      out,
      '--layers',
      '1',
      '--embd',
      '64',
      '--heads',
      '2',
      '--vocab',
      '300',
    ])
    expect(result.code).toBe(1)
    expect(result.stderr).toContain(out)
  })
})
