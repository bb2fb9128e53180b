import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { GGUF_VALUE_TYPE } from '../src/metadata.ts'
import { openGGUF } from '../src/reader.ts'
import { writeGGUF } from '../src/writer.ts'

let dir: string
beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'meshnet-gguf-corrupt-'))
})
afterAll(async () => {
  await rm(dir, { recursive: true, force: true })
})

/** Builds GGUF bytes by hand, so a test can say exactly what is wrong and where. */
class Raw {
  private bytes: number[] = []
  get length(): number {
    return this.bytes.length
  }
  raw(...b: number[]): this {
    this.bytes.push(...b)
    return this
  }
  u32(v: number): this {
    const b = new Uint8Array(4)
    new DataView(b.buffer).setUint32(0, v, true)
    return this.raw(...b)
  }
  u64(v: number | bigint): this {
    const b = new Uint8Array(8)
    new DataView(b.buffer).setBigUint64(0, BigInt(v), true)
    return this.raw(...b)
  }
  str(s: string): this {
    const b = new TextEncoder().encode(s)
    return this.u64(b.length).raw(...b)
  }
  /** magic, version, tensor count, key count */
  header(tensors: number | bigint, kvs: number | bigint, version = 3): this {
    return this.raw(0x47, 0x47, 0x55, 0x46).u32(version).u64(tensors).u64(kvs)
  }
  kvU32(key: string, v: number): this {
    return this.str(key).u32(GGUF_VALUE_TYPE.uint32).u32(v)
  }
  tensor(name: string, dims: number[], type: number, offset: number): this {
    this.str(name).u32(dims.length)
    for (const d of dims) this.u64(d)
    return this.u32(type).u64(offset)
  }
  pad(to: number): this {
    while (this.bytes.length % to !== 0) this.bytes.push(0)
    return this
  }
  build(): Uint8Array {
    return new Uint8Array(this.bytes)
  }
}

let n = 0
async function openBytes(bytes: Uint8Array, options?: Parameters<typeof openGGUF>[1]) {
  const path = join(dir, `case-${n++}.gguf`)
  await writeFile(path, bytes)
  return { path, result: openGGUF(path, options) }
}

/** Opens `bytes` and expects a GGUFFormatError whose message names the file, `offset` and `problem`. */
async function expectFormatError(bytes: Uint8Array, offset: number, problem: string | RegExp) {
  const { path, result } = await openBytes(bytes)
  const err = await result.then(
    () => undefined,
    (e: unknown) => e as Error & { details: Record<string, unknown> },
  )
  expect(err, 'open should fail').toBeDefined()
  expect(err!.name).toBe('GGUFFormatError')
  expect(err!.message.startsWith(`${path}: at byte ${offset}: `), err!.message).toBe(true)
  expect(err!.message).toMatch(problem)
  expect(err!.details).toMatchObject({ file: path, offset })
}

describe('openGGUF on bad input', () => {
  it('rejects a bad magic', async () => {
    await expectFormatError(
      new Raw().raw(0x47, 0x47, 0x4d, 0x4c).u32(3).build(),
      0,
      'bad magic "GGML" (47 47 4d 4c), expected "GGUF"',
    )
  })

  it('rejects unsupported versions and big-endian files', async () => {
    await expectFormatError(new Raw().header(0, 0, 1).build(), 4, 'unsupported GGUF version 1')
    await expectFormatError(
      new Raw().header(0, 0, 4).build(),
      4,
      'unsupported GGUF version 4 (supported: 2 and 3)',
    )
    const bigEndian = new Raw().raw(0x47, 0x47, 0x55, 0x46, 0, 0, 0, 3).u64(0).u64(0).build()
    await expectFormatError(bigEndian, 4, 'big-endian GGUF file')
  })

  it('names the byte where any truncated prefix of a valid file ends', async () => {
    const path = join(dir, 'whole.gguf')
    await writeGGUF(path, {
      metadata: {
        'general.name': { type: 'string', value: 'tiny' },
        list: { type: 'array', itemType: 'string', value: ['a', 'bc'] },
        nums: { type: 'array', itemType: 'int32', value: [1, 2, 3] },
      },
      tensors: [{ name: 'w', dims: [32, 2], type: 'Q8_0', data: new Uint8Array(68).fill(1) }],
    })
    const whole = new Uint8Array(await readFile(path))
    const file = await openGGUF(path)
    const w = file.tensor('w')!
    await file.close()
    // Every byte up to the end of the last tensor matters; the padding after it does not.
    expect(w.offset + w.byteLength).toBe(whole.length - 28)
    for (let cut = 0; cut < w.offset + w.byteLength; cut++) {
      const { path: cutPath, result } = await openBytes(whole.subarray(0, cut))
      const err = await result.then(
        () => undefined,
        (e: Error) => e,
      )
      expect(err?.name, `prefix of ${cut} bytes`).toBe('GGUFFormatError')
      expect(err!.message).toMatch(
        new RegExp(`^${cutPath.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}: at byte \\d+: `),
      )
      expect(err!.message).toMatch(
        /file ends at byte|runs past the end|too short|past the end of the file|cannot fit/,
      )
    }
  })

  it('rejects a string whose length runs past the end of the file', async () => {
    const bytes = new Raw()
      .header(0, 1)
      .u64(1_000_000)
      .raw(...new Uint8Array(20))
      .build()
    await expectFormatError(bytes, 24, 'key 0 has length 1000000, past the end of the file (20 bytes remain)')
  })

  it('caps lengths and counts before allocating', async () => {
    const filler = new Uint8Array(64)
    await expectFormatError(
      new Raw()
        .header(0, 1)
        .u64(2n ** 40n)
        .raw(...filler)
        .build(),
      24,
      /more than the 16777216-byte limit/,
    )
    await expectFormatError(
      new Raw().header(2n ** 40n, 0).build(),
      8,
      /tensor count is 1099511627776, more than the limit/,
    )
    await expectFormatError(new Raw().header(0, 1000).build(), 8, /cannot fit in a file of 24 bytes/)
    const huge = new Raw().header(0, 1).str('tokens').u32(GGUF_VALUE_TYPE.array).u32(GGUF_VALUE_TYPE.string)
    const hugeAt = huge.length
    await expectFormatError(
      huge.u64(2n ** 31n).build(),
      hugeAt,
      /length of array 'tokens' is 2147483648, more than the limit of 16777216/,
    )
    const liar = new Raw().header(0, 1).str('scores').u32(GGUF_VALUE_TYPE.array).u32(GGUF_VALUE_TYPE.float32)
    const liarAt = liar.length
    await expectFormatError(
      liar.u64(1_000_000).build(),
      liarAt,
      "array 'scores' claims 1000000 float32 items, past the end of the file",
    )
    const small = new Raw().header(0, 1).str('k').u32(GGUF_VALUE_TYPE.string).str('x'.repeat(100)).build()
    const { result } = await openBytes(small, { limits: { maxStringLength: 10 } })
    await expect(result).rejects.toThrow(/the value of 'k' has length 100, more than the 10-byte limit/)
  })

  it('rejects unknown value types, nested arrays, bad bools and duplicate keys', async () => {
    const filler = new Uint8Array(16)
    const unknown = new Raw().header(0, 1).str('k')
    const unknownAt = unknown.length
    await expectFormatError(
      unknown
        .u32(13)
        .raw(...filler)
        .build(),
      unknownAt,
      "key 'k' has unknown value type 13",
    )
    const nested = new Raw().header(0, 1).str('k').u32(GGUF_VALUE_TYPE.array)
    const nestedAt = nested.length
    await expectFormatError(
      nested.u32(GGUF_VALUE_TYPE.array).u64(0).build(),
      nestedAt,
      "array 'k' holds arrays",
    )
    const bool = new Raw().header(0, 1).str('k').u32(GGUF_VALUE_TYPE.bool)
    const boolAt = bool.length
    await expectFormatError(bool.raw(2).build(), boolAt, "the value of 'k' is a bool stored as 2")
    const dup = new Raw().header(0, 2).kvU32('k', 1)
    const dupAt = dup.length
    await expectFormatError(dup.kvU32('k', 2).build(), dupAt, "duplicate key 'k' (first at byte 24)")
  })

  it('checks general.alignment', async () => {
    await expectFormatError(
      new Raw().header(0, 1).kvU32('general.alignment', 48).build(),
      24,
      'general.alignment is 48, not a power of 2',
    )
    const wrongType = new Raw().header(0, 1).str('general.alignment').u32(GGUF_VALUE_TYPE.uint64).u64(32)
    await expectFormatError(wrongType.build(), 24, 'general.alignment must be uint32, found uint64')
  })

  it('rejects bad tensor infos', async () => {
    const filler = new Uint8Array(64)
    // name (8 + 1 bytes) at 24, n_dims at 33, dims from 37, then the type and the offset.
    await expectFormatError(
      new Raw().header(1, 0).tensor('w', [32], 4, 0).build(),
      45,
      "tensor 'w' has unknown ggml type 4",
    )
    await expectFormatError(
      new Raw().header(1, 0).tensor('w', [1, 1, 1, 1, 1], 0, 0).build(),
      33,
      "tensor 'w' has 5 dimensions",
    )
    await expectFormatError(
      new Raw().header(1, 0).tensor('w', [48, 2], 8, 0).build(),
      53,
      "tensor 'w' of type Q8_0 has rows of 48 elements, not a multiple of its block size 32",
    )
    await expectFormatError(
      new Raw()
        .header(1, 0)
        .tensor('n'.repeat(64), [1], 0, 0)
        .raw(...filler)
        .build(),
      24,
      /is 64 bytes, ggml allows at most 63/,
    )
    const dup = new Raw().header(2, 0).tensor('w', [8], 0, 0)
    const dupAt = dup.length
    await expectFormatError(
      dup.tensor('w', [8], 0, 32).build(),
      dupAt,
      "duplicate tensor name 'w' (tensors 0 and 1)",
    )
    // The offset field of a one-dimensional tensor starts at 24 + 9 + 4 + 8 + 4 = 49.
    const gap = new Raw()
      .header(1, 0)
      .tensor('w', [8], 0, 32)
      .pad(32)
      .raw(...filler)
    await expectFormatError(gap.build(), 49, "tensor 'w' has data offset 32, expected 0")
  })

  it('rejects tensor data past the end of the file', async () => {
    // The two-dimensional info ends at 67; data starts at the next multiple of 32.
    const bytes = new Raw()
      .header(1, 0)
      .tensor('big', [1024, 1024], 0, 0)
      .pad(32)
      .raw(...new Uint8Array(100))
      .build()
    await expectFormatError(
      bytes,
      96,
      "the data of tensor 'big' (4194304 bytes at byte 96) runs past the end of the file (196 bytes)",
    )
  })
})
