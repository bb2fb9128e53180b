import { dequantizeRow, fp16ToFp32, fp32ToFp16, GGML_TYPE, quantizeRow } from '@meshnet/gguf'
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

  it('rounds to bf16 for BF16 weights as ggml does (nearest, ties to even)', () => {
    const out = new Float32Array(512)
    roundActivations(GGML_TYPE.BF16, values, 512, 512, out)
    // quantizeRow('BF16') is ggml's fp32 -> bf16; dequantizing gives the bf16 back as a float.
    expect(out).toEqual(dequantizeRow('BF16', quantizeRow('BF16', values), 512))
    // Ties go to even: 1 + 2^-8 is halfway between 1 and 1 + 2^-7.
    const tie = new Float32Array([1 + 2 ** -8, 1 + 3 * 2 ** -8, -(1 + 2 ** -8)])
    const rounded = new Float32Array(3)
    roundActivations(GGML_TYPE.BF16, tie, 3, 3, rounded)
    expect(Array.from(rounded)).toEqual([1, 1 + 2 ** -6, -1])
  })

  it('rounds as q8_0 for Q5_0 and IQ4_NL and as q8_1 (the same values) for Q4_1 and Q5_1', () => {
    const q8 = new Float32Array(512)
    roundActivations(GGML_TYPE.Q8_0, values, 512, 256, q8)
    for (const type of [GGML_TYPE.Q5_0, GGML_TYPE.IQ4_NL, GGML_TYPE.Q4_1, GGML_TYPE.Q5_1]) {
      const out = new Float32Array(512)
      roundActivations(type, values, 512, 256, out)
      expect(out).toEqual(q8)
    }
  })

  it('quantizes to Q8_K blocks for every K-quant and IQ4_XS', () => {
    const q4k = new Float32Array(512)
    roundActivations(GGML_TYPE.Q4_K, values, 512, 512, q4k)
    for (const type of [GGML_TYPE.Q2_K, GGML_TYPE.Q3_K, GGML_TYPE.Q5_K, GGML_TYPE.IQ4_XS]) {
      const out = new Float32Array(512)
      roundActivations(type, values, 512, 512, out)
      expect(out).toEqual(q4k)
    }
  })
})
