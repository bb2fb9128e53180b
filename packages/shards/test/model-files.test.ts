import { spawn } from 'node:child_process'
import { mkdtemp, readFile, rm, stat, utimes, writeFile } from 'node:fs/promises'
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

it('remembers a model hash across processes in a cache file, until the file changes', async () => {
  const model = join(dir, 'cached.gguf')
  await generateModel({ out: model, layers: 1, embd: 64, heads: 2, ff: 128, vocab: 300, seed: 4 })
  const cacheFile = join(dir, 'model-hashes.json')
  const real = (await modelSha256(model, { cacheFile })).sha256
  const cached = JSON.parse(await readFile(cacheFile, 'utf8')) as Record<string, { sha256: string }>
  expect(cached[model]!.sha256).toBe(real)
  // Another process takes the cache's word while size, mtime and inode are the same: put a fake
  // hash in and it comes back unread.
  const fake = 'f'.repeat(64)
  await writeFile(cacheFile, JSON.stringify({ [model]: { ...cached[model]!, sha256: fake } }))
  const inChild = () =>
    new Promise<string>((resolve, reject) => {
      const child = spawn(
        process.execPath,
        [
          '--conditions=meshnet-source',
          '--input-type=module',
          '-e',
          `import { modelSha256 } from ${JSON.stringify(join(import.meta.dirname, '../src/model-hash.ts'))}
           console.log((await modelSha256(process.argv[1], { cacheFile: process.argv[2] })).sha256)`,
          model,
          cacheFile,
        ],
        { stdio: ['ignore', 'pipe', 'inherit'] },
      )
      let out = ''
      child.stdout.on('data', (chunk) => (out += chunk))
      child.on('exit', (code) => (code === 0 ? resolve(out.trim()) : reject(new Error(`exit ${code}`))))
    })
  expect(await inChild()).toBe(fake)
  // A changed file (a new modification time) is hashed again, and the cache corrected.
  const later = new Date(Date.now() + 5_000)
  await utimes(model, later, later)
  expect(await inChild()).toBe(real)
  expect(
    (JSON.parse(await readFile(cacheFile, 'utf8')) as Record<string, { sha256: string }>)[model]!.sha256,
  ).toBe(real)
  // A damaged cache is no cache.
  await writeFile(cacheFile, '{not json')
  expect(await inChild()).toBe(real)
})
