import { createHash } from 'node:crypto'
import { describe, expect, it } from 'vitest'
import { fp16ToFp32, fp32ToFp16 } from '../src/f16.ts'
import { GGML_TYPE, ggmlTypeInfo, QUANTIZABLE_TYPES, rowByteLength } from '../src/ggml-types.ts'
import { fillTriangular, seededUint32 } from '../src/prng.ts'
import { dequantizeRow, quantizeRow } from '../src/quants.ts'
import { GGML_GOLDEN, goldenInput } from './ggml-golden.ts'

const fp32FromBits = (u: number) => new Float32Array(new Uint32Array([u]).buffer)[0]!
const sha256 = (bytes: Uint8Array) => createHash('sha256').update(bytes).digest('hex')
const f32bytes = (x: Float32Array) => new Uint8Array(x.buffer, x.byteOffset, x.byteLength)

describe('ggml type table', () => {
  it('has ggml block and type sizes', () => {
    const sizes = QUANTIZABLE_TYPES.map((t) => [t, ggmlTypeInfo(t).blockSize, ggmlTypeInfo(t).typeSize])
    expect(sizes).toEqual([
      ['F32', 1, 4],
      ['F16', 1, 2],
      ['BF16', 1, 2],
      ['Q8_0', 32, 34],
      ['Q4_0', 32, 18],
      ['Q4_1', 32, 20],
      ['Q5_0', 32, 22],
      ['Q5_1', 32, 24],
      ['Q2_K', 256, 84],
      ['Q3_K', 256, 110],
      ['Q4_K', 256, 144],
      ['Q5_K', 256, 176],
      ['Q6_K', 256, 210],
      ['IQ4_NL', 32, 18],
      ['IQ4_XS', 256, 136],
    ])
    expect(ggmlTypeInfo(GGML_TYPE.Q5_K)).toMatchObject({ name: 'Q5_K', blockSize: 256, typeSize: 176 })
    expect(ggmlTypeInfo('q4_k').type).toBe(12)
    expect(ggmlTypeInfo('iq4_xs').type).toBe(23)
    for (const t of QUANTIZABLE_TYPES) expect(ggmlTypeInfo(t).quantizable).toBe(true)
    for (const t of ['Q8_1', 'Q8_K', 'IQ2_XS', 'IQ3_S', 'TQ1_0', 'MXFP4', 'I8', 'F64']) {
      expect(ggmlTypeInfo(t).quantizable).toBe(false)
    }
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

describe('bf16', () => {
  const bf16 = (x: number) => {
    const q = quantizeRow('BF16', new Float32Array([x]))
    return q[0]! | (q[1]! << 8)
  }
  const bits = (h: number) => {
    const u = new Uint32Array(dequantizeRow('BF16', new Uint8Array([h & 0xff, h >>> 8]), 1).buffer)
    return u[0]!
  }

  it('is the top half of the float32, rounded to nearest even', () => {
    expect(bf16(1)).toBe(0x3f80)
    expect(bf16(-2)).toBe(0xc000)
    expect(bf16(1 + 2 ** -8)).toBe(0x3f80) // tie, to even
    expect(bf16(1 + 3 * 2 ** -8)).toBe(0x3f82) // tie, to even (up)
    expect(bf16(1 + 2 ** -8 + 2 ** -20)).toBe(0x3f81)
    expect(bf16(-0)).toBe(0x8000)
    expect(bf16(2 ** -130)).toBe(0x0008) // subnormals are kept, not flushed
    expect(bf16(3.4028234663852886e38)).toBe(0x7f80) // FLT_MAX rounds up to infinity
    expect(bf16(Number.NEGATIVE_INFINITY)).toBe(0xff80)
    expect(bf16(Number.NaN) & 0x7fc0).toBe(0x7fc0)
  })

  it('quiets NaNs and keeps their payload; dequantizes every pattern exactly', () => {
    const signalling = new Float32Array(new Uint32Array([0x7f812345, 0xff800001]).buffer)
    const q = quantizeRow('BF16', signalling)
    expect([q[0]! | (q[1]! << 8), q[2]! | (q[3]! << 8)]).toEqual([0x7fc1, 0xffc0])
    for (let h = 0; h < 0x10000; h++) {
      expect(bits(h)).toBe((h << 16) >>> 0)
      const nan = (h & 0x7f80) === 0x7f80 && (h & 0x7f) !== 0
      expect(bf16(fp32FromBits((h << 16) >>> 0))).toBe(nan ? h | 0x40 : h)
    }
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
  // 256 values: F16 keeps 11 significant bits and BF16 8; Q8_0 rounds to steps of amax/127; Q4_0 has
  // steps of amax/8 and clamps the far side to -7/8 amax, Q5_0 steps of amax/16 (clamped likewise);
  // Q4_1/Q5_1 round to half a step of (max - min)/15 or /31 (plus the f16 rounding of d and m); the
  // K-quants fit 2 (Q2_K: 4 levels with a 4-bit scale and min per 16), 3 (signed, per 16), 4, 5 or 6
  // bits per value, and IQ4_NL/IQ4_XS round to 16 non-linear levels 9..24 steps of d/127 apart.
  it.each([
    ['F16', 2 ** -11],
    ['BF16', 2 ** -8],
    ['Q8_0', 0.5 / 127 + 1e-3],
    ['Q4_0', 1 / 8 + 1e-3],
    ['Q4_1', 0.075],
    ['Q5_0', 1 / 16 + 1e-3],
    ['Q5_1', 1 / 31 + 4e-3],
    ['Q2_K', 0.4],
    ['Q3_K', 0.25],
    ['Q4_K', 0.1],
    ['Q5_K', 0.05],
    ['Q6_K', 0.025],
    ['IQ4_NL', 0.12],
    ['IQ4_XS', 0.125],
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

  it.each(QUANTIZABLE_TYPES)(
    '%s quantizes one block into typeSize bytes, ignoring what the buffer held',
    (type) => {
      const { blockSize, typeSize } = ggmlTypeInfo(type)
      expect(quantizeRow(type, new Float32Array(blockSize)).length).toBe(typeSize)
      const x = goldenInput().subarray(0, 1024)
      const fresh = quantizeRow(type, x)
      const dirty = new Uint8Array(fresh.length + 8).fill(0xa5)
      expect(quantizeRow(type, x, dirty)).toEqual(fresh)
      expect(dirty.subarray(fresh.length)).toEqual(new Uint8Array(8).fill(0xa5))
    },
  )

  it('needs rows that are whole blocks', () => {
    const x = new Float32Array(320)
    expect(() => quantizeRow('Q4_K', x)).toThrow(
      'Q4_K needs a row length that is a multiple of 256, got 320 (K-quant super-blocks of 256 elements)',
    )
    expect(() => dequantizeRow('Q6_K', new Uint8Array(1000), 100)).toThrow(/multiple of 256, got 100/)
    expect(() => quantizeRow('Q8_0', new Float32Array(33))).toThrow(/multiple of 32, got 33/)
    expect(() => quantizeRow('IQ4_NL', new Float32Array(48))).toThrow(
      'IQ4_NL needs a row length that is a multiple of 32, got 48 (blocks of 32 elements)',
    )
    for (const type of QUANTIZABLE_TYPES) {
      const { blockSize } = ggmlTypeInfo(type)
      if (blockSize === 1) continue
      const n = blockSize + (blockSize === 32 ? 16 : 32)
      const err = new RegExp(`^${type} needs a row length that is a multiple of ${blockSize}, got ${n} `)
      expect(() => quantizeRow(type, new Float32Array(n)), type).toThrow(err)
      expect(() => dequantizeRow(type, new Uint8Array(4096), n), type).toThrow(err)
    }
    expect(() => dequantizeRow('BF16', new Uint8Array(8), 2.5)).toThrow(/not a non-negative integer/)
  })

  it('rejects types without a codec and buffers that are too small', () => {
    for (const type of ['IQ2_XS', 'TQ1_0', 'Q8_1', 'MXFP4']) {
      expect(() => quantizeRow(type, new Float32Array(256)), type).toThrow(
        expect.objectContaining({ name: 'UnsupportedQuantTypeError' }),
      )
    }
    expect(() => quantizeRow('Q8_0', new Float32Array(64), new Uint8Array(67))).toThrow(/too small/)
    expect(() => dequantizeRow('Q8_0', new Uint8Array(33), 32)).toThrow(/need 34 bytes/)
    expect(() => quantizeRow('IQ4_XS', new Float32Array(512), new Uint8Array(271))).toThrow(/too small/)
    expect(() => dequantizeRow('Q3_K', new Uint8Array(219), 512)).toThrow(/need 220 bytes/)
    expect(() => dequantizeRow('Q5_1', new Uint8Array(24), 32, new Float32Array(31))).toThrow(/too small/)
  })

  it('gives an all-zero IQ4_NL block the levels ggml leaves in place', () => {
    // ggml stores d = 0 and keeps the previous block's levels (uninitialized ones for a row's first
    // block: here the level nearest 0, index 8); every such block dequantizes to zeros.
    const x = new Float32Array(96)
    x.set(goldenInput().subarray(0, 32), 32)
    const q = quantizeRow('IQ4_NL', x)
    expect(Array.from(q.subarray(0, 18))).toEqual([0, 0, ...new Array(16).fill(0x88)])
    expect(Array.from(q.subarray(38, 54))).toEqual(Array.from(q.subarray(20, 36)))
    expect(Array.from(q.subarray(36, 38))).toEqual([0, 0])
    const y = dequantizeRow('IQ4_NL', q, 96)
    expect(Array.from(y.subarray(0, 32)).every((v) => v === 0)).toBe(true)
    expect(Array.from(y.subarray(64, 96)).every((v) => v === 0)).toBe(true)
  })
})
