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

  it('writes a tiled model (--fill tiled) with the tensor table of a random one, and names a bad --fill', async () => {
    const args = [
      '--json',
      'model-create',
      '--layers',
      '2',
      '--embd',
      '256',
      '--heads',
      '4',
      '--vocab',
      '300',
    ]
    const random = await runMesh([...args, '--out', join(dir, 'random.gguf')])
    const tiled = await runMesh([...args, '--out', join(dir, 'tiled.gguf'), '--fill', 'tiled'])
    expect(tiled.code, tiled.stderr).toBe(0)
    const [r, t] = [JSON.parse(random.stdout), JSON.parse(tiled.stdout)]
    expect([r.fill, t.fill]).toEqual(['random', 'tiled'])
    expect(t.sha256).not.toBe(r.sha256)
    expect(t.tensorTypes).toEqual(r.tensorTypes)
    const [fr, ft] = await Promise.all([openGGUF(r.path), openGGUF(t.path)])
    try {
      const table = (f: typeof fr) => f.tensors.map((x) => [x.name, x.typeName, ...x.dims])
      expect(table(ft)).toEqual(table(fr))
      expect(ft.getString('meshnet.test_model.fill')).toBe('tiled')
    } finally {
      await Promise.all([fr.close(), ft.close()])
    }
    const bad = await runMesh([...args.slice(1), '--out', join(dir, 'bad.gguf'), '--fill', 'zeros'])
    expect(bad.code).toBe(1)
    expect(bad.stderr).toContain('--fill "zeros": must be random or tiled')
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
