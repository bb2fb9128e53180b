import { createHash } from 'node:crypto'
import { describe, expect, it } from 'vitest'
import { fp16ToFp32, fp32ToFp16 } from '../src/f16.ts'
import { GGML_TYPE, ggmlTypeInfo, QUANTIZABLE_TYPES, rowByteLength } from '../src/ggml-types.ts'
import { fillTriangular, seededUint32 } from '../src/prng.ts'
import { dequantizeRow, quantizeRow } from '../src/quants.ts'

const sha256 = (bytes: Uint8Array) => createHash('sha256').update(bytes).digest('hex')
const f32bytes = (x: Float32Array) => new Uint8Array(x.buffer, x.byteOffset, x.byteLength)

/**
 * A fixed input: bell-shaped super-blocks at nine scales, and awkward ones (zeros, a constant,
 * spikes, tiny, positive-only and huge values).
 */
function goldenInput(): Float32Array {
  const x = new Float32Array(256 * 64)
  fillTriangular(seededUint32(1, 'golden'), x, 0, 1)
  for (let i = 2048; i < x.length; i++) x[i] = x[i]! * 2 ** ((Math.floor(i / 256) % 9) - 4)
  x.fill(0, 256, 512)
  x.fill(0.75, 512, 768)
  for (let i = 768; i < 1024; i++) x[i] = i % 17 === 0 ? 40 - i / 10 : x[i]! * 0.001
  for (let i = 1024; i < 1280; i++) x[i] = x[i]! * 1e-6
  for (let i = 1280; i < 1536; i++) x[i] = Math.abs(x[i]!) + 0.5
  for (let i = 1536; i < 1792; i++) x[i] = x[i]! * 3000
  return x
}

// SHA-256 of what ggml's own quantize_row_<type>_ref and dequantize_row_<type> (libggml-base from
// node-llama-cpp 3.22.1, x86-64) produce for goldenInput(); test/ggml-bitexact.test.ts recomputes
// them from the library when a C compiler is present.
const GGML_GOLDEN: Record<string, { quantized: string; dequantized: string }> = {
  F16: {
    quantized: '08571c5e8f8094c5c52eab8ce8c4b92779c48a309ef8d6dd8f5666cf291a98ef',
    dequantized: '191ef16e9bfa9c276609d6c50d1de2a2bcdb9662867b829f7efd799fee10a306',
  },
  Q8_0: {
    quantized: '897e2b53320ad7732584ff3fdb7de54c51ea79b57fb8babec6a4ab1a201cb9b3',
    dequantized: 'd086e7eaba882090d7f1b0e7cf5ab6269b5c4b212e33bde315e1a15031708e08',
  },
  Q4_0: {
    quantized: 'd0e9616703bc59e37ac18f48f97388fbcbef24c78a8f14fbd077d234dc94258e',
    dequantized: '40208ccd9f0608ca08a2770fe4f9f69c8f27dd40992538e931517bc762fe5e21',
  },
  Q4_K: {
    quantized: 'a8a3480db693d99fcce09b9847fdafbb72d2bc2ebc8d954fdcf781d6f236d5b1',
    dequantized: 'ba227363a2a6247206fe7b9fa618c298c9c7488f01c1b26a8f0735b0df3d0d26',
  },
  Q6_K: {
    quantized: 'ee883f455286d833252f81415a312eb43fccfd99f54db89db5a8cf65b5157aa4',
    dequantized: '4954dfd6faf8682801c3372d77de7dcfcd40baa5a5e9c628a441651e5d400ec6',
  },
}

describe('ggml type table', () => {
  it('has ggml block and type sizes', () => {
    const sizes = QUANTIZABLE_TYPES.map((t) => [t, ggmlTypeInfo(t).blockSize, ggmlTypeInfo(t).typeSize])
    expect(sizes).toEqual([
      ['F32', 1, 4],
      ['F16', 1, 2],
      ['Q8_0', 32, 34],
      ['Q4_0', 32, 18],
      ['Q4_K', 256, 144],
      ['Q6_K', 256, 210],
    ])
    expect(ggmlTypeInfo(GGML_TYPE.Q5_K)).toMatchObject({ name: 'Q5_K', blockSize: 256, typeSize: 176 })
    expect(ggmlTypeInfo('q4_k').type).toBe(12)
  })

  it('gives row byte lengths and rejects partial blocks', () => {
    expect(rowByteLength('Q8_0', 4096)).toBe(4352)
    expect(rowByteLength(GGML_TYPE.Q4_K, 512)).toBe(288)
    expect(rowByteLength('F16', 3)).toBe(6)
    expect(() => rowByteLength('Q4_0', 48)).toThrow(/not a whole number of 32-element blocks/)
    expect(() => ggmlTypeInfo(4)).toThrow(/unknown ggml type 4/)
  })
})

describe('f16', () => {
  it('round-trips every non-NaN half exactly', () => {
    for (let h = 0; h < 0x10000; h++) {
      if ((h & 0x7c00) === 0x7c00 && (h & 0x3ff) !== 0) continue
      expect(fp32ToFp16(fp16ToFp32(h))).toBe(h)
    }
  })

  it('rounds to nearest even, overflows to infinity and keeps NaN', () => {
    expect(fp32ToFp16(1 + 2 ** -11)).toBe(0x3c00) // tie, to even
    expect(fp32ToFp16(1 + 3 * 2 ** -11)).toBe(0x3c02) // tie, to even (up)
    expect(fp32ToFp16(65520)).toBe(0x7c00)
    expect(fp32ToFp16(2 ** -25)).toBe(0) // half of the smallest subnormal: ties to 0
    expect(fp32ToFp16(-(2 ** -24))).toBe(0x8001)
    expect(fp32ToFp16(Number.NaN)).toBe(0x7e00)
  })
})

describe('quantizeRow / dequantizeRow', () => {
  it.each(Object.keys(GGML_GOLDEN))('%s gives the same bytes and floats as ggml', (type) => {
    const x = goldenInput()
    const q = quantizeRow(type, x)
    expect(sha256(q)).toBe(GGML_GOLDEN[type]!.quantized)
    expect(sha256(f32bytes(dequantizeRow(type, q, x.length)))).toBe(GGML_GOLDEN[type]!.dequantized)
  })

  it('is exact for F32', () => {
    const x = goldenInput()
    expect(dequantizeRow('F32', quantizeRow('F32', x), x.length)).toEqual(x)
  })

  // Bounds on |x - dequantize(quantize(x))| for bell-shaped data, relative to the max |x| of each
  // 256 values: F16 keeps 11 significant bits; Q8_0 rounds to steps of amax/127; Q4_0 has steps of
  // amax/8 and clamps the far side to -7/8 amax; Q4_K fits (range)/15 steps with 6-bit scales and
  // mins; Q6_K has steps of about amax/32.
  it.each([
    ['F16', 2 ** -11],
    ['Q8_0', 0.5 / 127 + 1e-3],
    ['Q4_0', 1 / 8 + 1e-3],
    ['Q4_K', 0.1],
    ['Q6_K', 0.025],
  ] as const)('%s round-trips within its step size', (type, bound) => {
    const n = 256 * 16
    const x = new Float32Array(n)
    fillTriangular(seededUint32(2, type), x, 0, 1)
    const y = dequantizeRow(type, quantizeRow(type, x), n)
    const block = ggmlTypeInfo(type).blockSize === 1 ? 1 : 256
    let sumSq = 0
    for (let b = 0; b < n; b += block) {
      let amax = 0
      for (let i = b; i < b + block; i++) amax = Math.max(amax, Math.abs(x[i]!))
      for (let i = b; i < b + block; i++) {
        expect(Math.abs(x[i]! - y[i]!)).toBeLessThanOrEqual(bound * amax + 1e-12)
        sumSq += (x[i]! - y[i]!) ** 2
      }
    }
    // And the overall error is small against the data's unit variance.
    expect(Math.sqrt(sumSq / n)).toBeLessThan(bound)
  })

  it('writes into a caller buffer and reads from an offset view', () => {
    const x = goldenInput().subarray(0, 512)
    const big = new Uint8Array(1000)
    const q = quantizeRow('Q4_K', x, big.subarray(100))
    expect(q.byteOffset).toBe(100)
    expect(q.length).toBe(288)
    const out = new Float32Array(600)
    const y = dequantizeRow('Q4_K', big.subarray(100), 512, out.subarray(50))
    expect(y.byteOffset).toBe(200)
    expect(Array.from(y)).toEqual(Array.from(dequantizeRow('Q4_K', q, 512)))
  })

  it('needs K-quant rows in multiples of 256', () => {
    const x = new Float32Array(320)
    expect(() => quantizeRow('Q4_K', x)).toThrow(
      'Q4_K needs a row length that is a multiple of 256, got 320 (K-quant super-blocks of 256 elements)',
    )
    expect(() => dequantizeRow('Q6_K', new Uint8Array(1000), 100)).toThrow(/multiple of 256, got 100/)
    expect(() => quantizeRow('Q8_0', new Float32Array(33))).toThrow(/multiple of 32, got 33/)
  })

  it('rejects types without a codec and buffers that are too small', () => {
    expect(() => quantizeRow('Q5_K', new Float32Array(256))).toThrow(
      expect.objectContaining({ name: 'UnsupportedQuantTypeError' }),
    )
    expect(() => quantizeRow('Q8_0', new Float32Array(64), new Uint8Array(67))).toThrow(/too small/)
    expect(() => dequantizeRow('Q8_0', new Uint8Array(33), 32)).toThrow(/need 34 bytes/)
  })
})
