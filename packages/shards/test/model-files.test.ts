import { mkdtemp, readFile, rm, stat, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { type GGUFTensorInput, generateModel, openGGUF, splitGGUF, writeGGUF } from '@meshnet/gguf'
import { afterAll, beforeAll, expect, it } from 'vitest'
import { fileSha256, modelSha256 } from '../src/model-hash.ts'
import { readShardModelFacts } from '../src/plan.ts'

let dir: string
let whole: string

beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'meshnet-model-hash-'))
  whole = join(dir, 'model.gguf')
  await generateModel({ out: whole, layers: 2, embd: 64, heads: 2, ff: 128, vocab: 300 })
})

afterAll(async () => {
  await rm(dir, { recursive: true, force: true })
})

it('hashes every part of a split model, so members agree only when all parts are the same', async () => {
  const parts = await splitGGUF(whole, { parts: 3, prefix: join(dir, 'split') })
  const first = await modelSha256(parts[0]!)
  expect(first.parts).toEqual(parts)
  let bytes = 0
  for (const p of parts) bytes += (await stat(p)).size
  expect(first.bytes).toBe(bytes)
  expect(first.sha256).not.toBe(await fileSha256(whole))
  // The same hash again from the cache; a changed last part changes it.
  expect((await modelSha256(parts[0]!)).sha256).toBe(first.sha256)
  const last = await readFile(parts[2]!)
  last[last.length - 1]! ^= 1
  await writeFile(parts[2]!, last)
  expect((await modelSha256(parts[0]!)).sha256).not.toBe(first.sha256)
})

it('marks a model the Meshnet engine cannot run as unsplittable, with the reason, and still plans it whole', async () => {
  expect((await readShardModelFacts(whole)).unsplittable).toBeUndefined()
  // The same model with one matrix in a type the engine has no kernel for (IQ2_XXS: 66 B / 256).
  const file = await openGGUF(whole)
  const tensors: GGUFTensorInput[] = []
  for (const t of file.tensors) {
    const odd = t.name === 'blk.1.ffn_up.weight'
    tensors.push({
      name: t.name,
      dims: odd ? [256, 64] : t.dims,
      type: odd ? 'IQ2_XXS' : t.type,
      data: odd ? new Uint8Array(66 * 64) : await file.readTensor(t.name),
    })
  }
  const odd = join(dir, 'odd.gguf')
  await writeGGUF(odd, { metadata: new Map(file.metadata), tensors })
  await file.close()
  const facts = await readShardModelFacts(odd)
  expect(facts.unsplittable).toBe(
    "tensor 'blk.1.ffn_up.weight' is IQ2_XXS, which the Meshnet engine does not compute with",
  )
  expect(facts.layers).toBe(2)
})
