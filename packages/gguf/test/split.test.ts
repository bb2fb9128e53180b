import { mkdtemp, rename, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { generateModel, openGGUF, splitGGUF } from '../src/index.ts'

const SHAPE = { layers: 2, embd: 64, heads: 4, ff: 128, vocab: 300, type: 'Q8_0' } as const

let dir: string
let whole: string

beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'meshnet-gguf-split-'))
  whole = join(dir, 'model.gguf')
  await generateModel({ ...SHAPE, out: whole })
})

afterAll(async () => {
  await rm(dir, { recursive: true, force: true })
})

describe('split models', () => {
  it('opens from the first part as one model: the metadata of the first, the tensors of all', async () => {
    const parts = await splitGGUF(whole, { parts: 3, prefix: join(dir, 'three') })
    const one = await openGGUF(whole)
    const split = await openGGUF(parts[0]!)
    try {
      expect(split.parts).toEqual(parts)
      expect(split.tensors.map((t) => t.name)).toEqual(one.tensors.map((t) => t.name))
      expect(split.getNumber('llama.block_count')).toBe(2)
      expect(split.getNumber('split.count')).toBe(3)
      for (const t of one.tensors) {
        expect(await split.readTensor(t.name)).toEqual(await one.readTensor(t.name))
      }
      const name = 'blk.1.ffn_down.weight'
      const slice = new Uint8Array(10)
      await split.readTensorBytesInto(name, slice, 40)
      expect(slice).toEqual((await one.readTensor(name)).subarray(40, 50))
    } finally {
      await split.close()
      await one.close()
    }
  })

  it('names a missing part, and refuses a part that is not the first', async () => {
    const parts = await splitGGUF(whole, { parts: 2, prefix: join(dir, 'two') })
    await expect(openGGUF(parts[1]!)).rejects.toThrow('is not the first part of its split model')
    await rename(parts[1]!, `${parts[1]}.moved`)
    await expect(openGGUF(parts[0]!)).rejects.toThrow(`part 2 of 2 of ${parts[0]} is missing: ${parts[1]}`)
    const renamed = join(dir, 'renamed.gguf')
    await rename(parts[0]!, renamed)
    await expect(openGGUF(renamed)).rejects.toThrow('is not named like its first part')
  })

  it('refuses a part count that does not fit the tensors', async () => {
    await expect(splitGGUF(whole, { parts: 1 })).rejects.toThrow('into 1 parts')
    await expect(splitGGUF(whole, { parts: 1000 })).rejects.toThrow('into 1000 parts')
  })
})
