import { dequantizeRow, fp16ToFp32, fp32ToFp16, quantizeRow } from '@meshnet/gguf'
import { describe, expect, it } from 'vitest'
import { roundActivations } from '../../src/model/activations.ts'

const values = Float32Array.from({ length: 512 }, (_, i) => Math.sin(i * 0.37) * (1 + (i % 7)))

describe('roundActivations', () => {
  it('leaves activations for F32 weights alone and rounds them to f16 for F16 weights', () => {
    const out = new Float32Array(512)
    roundActivations(0, values, 512, 512, out)
    expect(out).toEqual(values)
    roundActivations(1, values, 512, 512, out)
    expect(out).toEqual(values.map((v) => fp16ToFp32(fp32ToFp16(v))))
  })

  it('quantizes to Q8_0 blocks for Q4_0/Q8_0 weights, as ggml’s quantize_row_q8_0 does', () => {
    const out = new Float32Array(512)
    roundActivations(8, values, 512, 256, out)
    // The reference quantizer differs only in how it breaks exact .5 ties.
    const ref = dequantizeRow('Q8_0', quantizeRow('Q8_0', values), 512)
    let differ = 0
    for (let i = 0; i < 512; i++) if (out[i] !== ref[i]) differ++
    expect(differ).toBeLessThan(3)
    // Rounding twice changes nothing: kernels that quantize again get the same values.
    const again = new Float32Array(512)
    roundActivations(8, out, 512, 256, again)
    expect(again).toEqual(out)
  })

  it('quantizes to Q8_K blocks of 256 for K-quant weights', () => {
    const out = new Float32Array(512)
    roundActivations(12, values, 512, 512, out)
    for (let b = 0; b < 2; b++) {
      const block = values.subarray(b * 256, (b + 1) * 256)
      const max = block.reduce((m, v) => (Math.abs(v) > Math.abs(m) ? v : m), 0)
      const d = 1 / (-127 / max)
      for (let i = 0; i < 256; i++) {
        const q = out[b * 256 + i]! / d
        expect(Math.abs(q - Math.round(q))).toBeLessThan(1e-3)
        expect(Math.abs(out[b * 256 + i]! - block[i]!)).toBeLessThanOrEqual(Math.abs(d) / 2 + 1e-6)
      }
    }
  })
})
