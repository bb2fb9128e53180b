import { mkdtemp, readdir, readFile, rm, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { GGML_TYPE } from '../src/ggml-types.ts'
import type { GGUFValueInput } from '../src/metadata.ts'
import { fillTriangular, seededUint32 } from '../src/prng.ts'
import { dequantizeRow, quantizeRow } from '../src/quants.ts'
import { openGGUF } from '../src/reader.ts'
import { type GGUFTensorInput, writeGGUF } from '../src/writer.ts'

let dir: string
beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'meshnet-gguf-'))
})
afterAll(async () => {
  await rm(dir, { recursive: true, force: true })
})

const METADATA = new Map<string, GGUFValueInput>([
  ['general.architecture', { type: 'string', value: 'llama' }],
  ['t.uint8', { type: 'uint8', value: 255 }],
  ['t.int8', { type: 'int8', value: -128 }],
  ['t.uint16', { type: 'uint16', value: 65535 }],
  ['t.int16', { type: 'int16', value: -32768 }],
  ['t.uint32', { type: 'uint32', value: 4294967295 }],
  ['t.int32', { type: 'int32', value: -2147483648 }],
  ['t.float32', { type: 'float32', value: 0.15625 }],
  ['t.float64', { type: 'float64', value: Math.PI }],
  ['t.uint64', { type: 'uint64', value: 18446744073709551615n }],
  ['t.int64', { type: 'int64', value: -9223372036854775808n }],
  ['t.bool', { type: 'bool', value: true }],
  ['t.string', { type: 'string', value: 'ünïcode ▁word 🦙' }],
  ['t.empty', { type: 'string', value: '' }],
  ['a.uint8', { type: 'array', itemType: 'uint8', value: new Uint8Array([0, 1, 255]) }],
  ['a.int8', { type: 'array', itemType: 'int8', value: new Int8Array([-128, 0, 127]) }],
  ['a.uint16', { type: 'array', itemType: 'uint16', value: new Uint16Array([1, 65535]) }],
  ['a.int16', { type: 'array', itemType: 'int16', value: new Int16Array([-32768, 5]) }],
  ['a.uint32', { type: 'array', itemType: 'uint32', value: new Uint32Array([7, 4294967295]) }],
  ['a.int32', { type: 'array', itemType: 'int32', value: new Int32Array([-1, 2, 3]) }],
  ['a.float32', { type: 'array', itemType: 'float32', value: new Float32Array([0.5, -1e-3, 3e38]) }],
  ['a.float64', { type: 'array', itemType: 'float64', value: new Float64Array([Math.E, -0]) }],
  ['a.uint64', { type: 'array', itemType: 'uint64', value: new BigUint64Array([0n, 2n ** 64n - 1n]) }],
  ['a.int64', { type: 'array', itemType: 'int64', value: new BigInt64Array([-(2n ** 63n), 9n]) }],
  ['a.bool', { type: 'array', itemType: 'bool', value: [true, false, true] }],
  ['a.string', { type: 'array', itemType: 'string', value: ['<s>', '', '▁the', '🦙'.repeat(40)] }],
  ['a.empty', { type: 'array', itemType: 'float32', value: new Float32Array(0) }],
  // Larger than the writer's first buffer and the reader's 1 MiB window.
  [
    'a.many',
    { type: 'array', itemType: 'string', value: Array.from({ length: 80000 }, (_, i) => `▁tok${i}`) },
  ],
])

function values(n: number, label: string): Float32Array {
  const x = new Float32Array(n)
  fillTriangular(seededUint32(3, label), x, 0, 1)
  return x
}

function tensors(): GGUFTensorInput[] {
  const raw = new Uint8Array(176 * 2).map((_, i) => (i * 37) & 0xff)
  return [
    { name: 'f32.matrix', dims: [5, 3], type: 'F32', data: quantizeRow('F32', values(15, 'a')) },
    { name: 'f32.scalar', dims: [], type: 'F32', data: quantizeRow('F32', values(1, 'b')) },
    { name: 'f16.vector', dims: [7], type: 'F16', data: quantizeRow('F16', values(7, 'c')) },
    { name: 'q8_0', dims: [64, 3], type: 'Q8_0', data: quantizeRow('Q8_0', values(192, 'd')) },
    { name: 'q4_0.3d', dims: [32, 2, 2], type: GGML_TYPE.Q4_0, data: quantizeRow('Q4_0', values(128, 'e')) },
    { name: 'q4_k', dims: [256, 2], type: 'Q4_K', data: quantizeRow('Q4_K', values(512, 'f')) },
    { name: 'q6_k.4d', dims: [512, 1, 1, 1], type: 'Q6_K', data: quantizeRow('Q6_K', values(512, 'g')) },
    // A type without a codec here is still carried byte for byte.
    { name: 'q5_k.raw', dims: [256, 2], type: 'Q5_K', data: raw },
  ]
}

describe('writeGGUF + openGGUF', () => {
  it('reads back exactly what was written: every value type, tensor infos and data', async () => {
    const path = join(dir, 'roundtrip.gguf')
    const written = await writeGGUF(path, { metadata: METADATA, tensors: tensors(), sha256: true })
    const file = await openGGUF(path)
    try {
      expect(file.version).toBe(3)
      expect(file.alignment).toBe(32)
      expect(file.fileSize).toBe(written.bytes)
      expect(file.dataOffset).toBe(written.dataOffset)
      expect([...file.metadata.keys()]).toEqual([...METADATA.keys()])
      for (const [key, value] of METADATA) expect(file.metadata.get(key), key).toEqual(value)
      const expected = tensors()
      expect(file.tensors.map((t) => [t.name, t.dims, t.typeName])).toEqual(
        expected.map((t) => [t.name, t.dims, t.name === 'q4_0.3d' ? 'Q4_0' : t.type]),
      )
      for (const t of expected) {
        const info = file.tensor(t.name)!
        expect(info.offset % 32).toBe(0)
        expect(await file.readTensor(t.name)).toEqual(t.data)
      }
      expect(file.tensor('q4_k')).toMatchObject({
        rows: 2,
        rowByteLength: 144,
        byteLength: 288,
        elements: 512,
      })
      expect(file.tensor('q4_0.3d')).toMatchObject({ rows: 4, rowByteLength: 18, elements: 128 })
      expect(file.tensor('f32.scalar')).toMatchObject({ dims: [], rows: 1, byteLength: 4 })
      const bytes = await readFile(path)
      const { createHash } = await import('node:crypto')
      expect(written.sha256).toBe(createHash('sha256').update(bytes).digest('hex'))
    } finally {
      await file.close()
    }
  })

  it('writes back a file it read (metadata map and tensors) to the same bytes', async () => {
    const a = join(dir, 'copy-a.gguf')
    const b = join(dir, 'copy-b.gguf')
    await writeGGUF(a, { metadata: METADATA, tensors: tensors(), alignment: 64 })
    const file = await openGGUF(a)
    const copied = await Promise.all(
      file.tensors.map(async (t) => ({
        name: t.name,
        dims: t.dims,
        type: t.type,
        data: await file.readTensor(t.name),
      })),
    )
    await writeGGUF(b, { metadata: file.metadata, tensors: copied })
    await file.close()
    expect(await readFile(b)).toEqual(await readFile(a))
  })

  it('reads row ranges, into caller memory, and as floats', async () => {
    const path = join(dir, 'rows.gguf')
    const x = values(64 * 5, 'rows')
    await writeGGUF(path, {
      tensors: [{ name: 'w', dims: [64, 5], type: 'Q8_0', data: quantizeRow('Q8_0', x) }],
    })
    const file = await openGGUF(path)
    try {
      const whole = await file.readTensor('w')
      expect(await file.readTensorRows('w', 1, 3)).toEqual(whole.subarray(68, 204))
      expect(await file.readTensorRows('w', 2, 2)).toEqual(new Uint8Array(0))
      const memory = new Uint8Array(1000).fill(0xee)
      expect(await file.readTensorInto('w', memory.subarray(100), { rowStart: 3 })).toBe(136)
      expect(memory.subarray(100, 236)).toEqual(whole.subarray(204))
      expect(memory[99]).toBe(0xee)
      expect(memory[236]).toBe(0xee)
      const floats = await file.readTensorRowsF32('w', 4, 5)
      expect(floats).toEqual(dequantizeRow('Q8_0', whole.subarray(272), 64))
      await expect(file.readTensorRows('w', 4, 6)).rejects.toThrow(
        "rows [4, 6) are out of range for tensor 'w', which has 5 rows",
      )
      await expect(file.readTensorInto('w', new Uint8Array(10))).rejects.toThrow(/too small/)
      await expect(file.readTensor('nope')).rejects.toMatchObject({ name: 'TensorNotFoundError' })
    } finally {
      await file.close()
    }
  })

  it('honours general.alignment and writes GGUF v2', async () => {
    const path = join(dir, 'aligned.gguf')
    await writeGGUF(path, { tensors: tensors(), alignment: 256, version: 2 })
    const file = await openGGUF(path)
    expect(file.version).toBe(2)
    expect(file.alignment).toBe(256)
    expect(file.metadata.get('general.alignment')).toEqual({ type: 'uint32', value: 256 })
    for (const t of file.tensors) expect(t.offset % 256).toBe(0)
    expect(await file.readTensor('q4_k')).toEqual(tensors()[5]!.data)
    await file.close()
  })

  it('streams tensor data from a generator that reuses one buffer', async () => {
    const path = join(dir, 'stream.gguf')
    const rows = 100
    const row = new Float32Array(32)
    const chunk = new Uint8Array(34 * 7)
    function* source(): Generator<Uint8Array> {
      const next = seededUint32(9, 'stream')
      for (let r = 0; r < rows; r += 7) {
        const n = Math.min(7, rows - r)
        for (let k = 0; k < n; k++) {
          fillTriangular(next, row, 0, 1)
          quantizeRow('Q8_0', row, chunk.subarray(k * 34))
        }
        yield chunk.subarray(0, n * 34)
      }
    }
    await writeGGUF(path, { tensors: [{ name: 'w', dims: [32, rows], type: 'Q8_0', data: source }] })
    const expected = new Uint8Array(34 * rows)
    const next = seededUint32(9, 'stream')
    for (let r = 0; r < rows; r++) {
      fillTriangular(next, row, 0, 1)
      quantizeRow('Q8_0', row, expected.subarray(r * 34))
    }
    const file = await openGGUF(path)
    expect(await file.readTensor('w')).toEqual(expected)
    await file.close()
  })

  it('leaves the old file in place and no temporary file when a write fails', async () => {
    const path = join(dir, 'atomic', 'model.gguf')
    await writeGGUF(path, { metadata: { k: { type: 'string', value: 'old' } } })
    const before = await readFile(path)
    await expect(
      writeGGUF(path, {
        tensors: [
          {
            name: 'short',
            dims: [32, 4],
            type: 'F32',
            data: function* () {
              yield new Uint8Array(100)
            },
          },
        ],
      }),
    ).rejects.toThrow("tensor 'short' gave 100 bytes of data, its shape and type need 512")
    const aborted = new AbortController()
    aborted.abort(new Error('stop'))
    await expect(writeGGUF(path, { tensors: tensors(), signal: aborted.signal })).rejects.toThrow('stop')
    expect(await readFile(path)).toEqual(before)
    expect(await readdir(join(dir, 'atomic'))).toEqual(['model.gguf'])
  })

  it('rejects metadata and tensors that ggml could not load', async () => {
    const path = join(dir, 'bad.gguf')
    const f32 = (name: string, dims: number[]): GGUFTensorInput => ({
      name,
      dims,
      type: 'F32',
      data: new Uint8Array(4),
    })
    await expect(writeGGUF(path, { metadata: { k: { type: 'uint8', value: 256 } } })).rejects.toThrow(
      "metadata 'k': 256 is not a uint8",
    )
    await expect(
      writeGGUF(path, { metadata: { k: { type: 'uint64', value: 1 as unknown as bigint } } }),
    ).rejects.toThrow(/give a bigint/)
    await expect(
      writeGGUF(path, { metadata: { k: { type: 'array', itemType: 'int8', value: [1, 300] } } }),
    ).rejects.toThrow("metadata 'k[1]': 300 is not a int8")
    await expect(writeGGUF(path, { tensors: [f32('a', [1]), f32('a', [1])] })).rejects.toThrow(/listed twice/)
    await expect(writeGGUF(path, { tensors: [f32('x'.repeat(64), [1])] })).rejects.toThrow(/1 to 63 bytes/)
    await expect(writeGGUF(path, { tensors: [f32('a', [1, 1, 1, 1, 1])] })).rejects.toThrow(/0 to 4/)
    await expect(
      writeGGUF(path, { tensors: [{ name: 'q', dims: [48], type: 'Q8_0', data: new Uint8Array(0) }] }),
    ).rejects.toThrow(/rows of 48 elements, not a multiple of its block size 32/)
    await expect(writeGGUF(path, { alignment: 48 })).rejects.toThrow(/not a power of 2/)
    await expect(readdir(dir)).resolves.not.toContain('bad.gguf')
  })

  it('types its metadata getters', async () => {
    const path = join(dir, 'getters.gguf')
    await writeGGUF(path, { metadata: METADATA })
    const file = await openGGUF(path)
    expect(file.getString('general.architecture')).toBe('llama')
    expect(file.getNumber('t.int16')).toBe(-32768)
    expect(file.getNumber('t.float32')).toBe(0.15625)
    expect(file.getBoolean('t.bool')).toBe(true)
    expect(file.getNumber('missing')).toBeUndefined()
    expect(() => file.getNumber('t.uint64')).toThrow(/should be a number that fits 53 bits, found uint64/)
    expect(() => file.getString('t.uint8')).toThrow(
      expect.objectContaining({
        name: 'GGUFFormatError',
        message: expect.stringMatching(/at byte \d+: key 't.uint8' should be a string, found uint8/),
      }),
    )
    await file.close()
  })

  it('reports a missing file as a FileAccessError', async () => {
    await expect(openGGUF(join(dir, 'absent.gguf'))).rejects.toMatchObject({ name: 'FileAccessError' })
    await writeFile(join(dir, 'empty.gguf'), '')
    await expect(openGGUF(join(dir, 'empty.gguf'))).rejects.toMatchObject({ name: 'GGUFFormatError' })
  })
})
