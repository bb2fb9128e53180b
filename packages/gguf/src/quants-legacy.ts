import { fp16Table } from './f16.ts'
import { FLT_MAX, f, maxByMagnitude, readF16, truncInt8, writeF16 } from './quants-common.ts'

// ggml's "legacy" 32-element quants with a min or a fifth bit: Q4_1, Q5_0 and Q5_1, bit-exact with
// quantize_row_q{4_1,5_0,5_1}_ref and dequantize_row_q{4_1,5_0,5_1} (see quants.ts).
//
// Block layouts (little-endian; "f16" is an IEEE half):
//   Q4_1  20 B / 32:  d f16 | m f16 | qs u8[16] (low nibble: x[j], high: x[j+16])   x = d*q + m
//   Q5_0  22 B / 32:  d f16 | qh u32 (bit j: 5th bit of x[j]) | qs u8[16]           x = d*(q - 16)
//   Q5_1  24 B / 32:  d f16 | m f16 | qh u32 | qs u8[16]                            x = d*q + m

/** The min and max of the 32 values at `x[xb]`, as ggml's loop from FLT_MAX / -FLT_MAX finds them. */
function minMax32(x: Float32Array, xb: number): [number, number] {
  let min = FLT_MAX
  let max = -FLT_MAX
  for (let j = 0; j < 32; j++) {
    const v = x[xb + j]!
    if (v < min) min = v
    if (v > max) max = v
  }
  return [min, max]
}

function writeU32(y: Uint8Array, o: number, v: number): void {
  y[o] = v & 0xff
  y[o + 1] = (v >>> 8) & 0xff
  y[o + 2] = (v >>> 16) & 0xff
  y[o + 3] = v >>> 24
}

function readU32(y: Uint8Array, o: number): number {
  return (y[o]! | (y[o + 1]! << 8) | (y[o + 2]! << 16) | (y[o + 3]! << 24)) >>> 0
}

// ------------------------------------------------------------------------------------------ Q4_1

export function quantizeQ4_1(x: Float32Array, y: Uint8Array, yo: number): void {
  const nb = x.length / 32
  for (let i = 0; i < nb; i++) {
    const xb = i * 32
    const o = yo + i * 20
    const [min, max] = minMax32(x, xb)
    const d = f(f(max - min) / 15)
    const id = d !== 0 ? f(1 / d) : 0
    writeF16(y, o, d)
    writeF16(y, o + 2, min)
    for (let j = 0; j < 16; j++) {
      const x0 = f(f(x[xb + j]! - min) * id)
      const x1 = f(f(x[xb + 16 + j]! - min) * id)
      // uint8_t xi = MIN(15, (int8_t)(x + 0.5f))
      const xi0 = Math.min(15, truncInt8(f(x0 + 0.5))) & 0xff
      const xi1 = Math.min(15, truncInt8(f(x1 + 0.5))) & 0xff
      y[o + 4 + j] = (xi0 | (xi1 << 4)) & 0xff
    }
  }
}

export function dequantizeQ4_1(y: Uint8Array, n: number, out: Float32Array): void {
  const table = fp16Table()
  const nb = n / 32
  for (let i = 0; i < nb; i++) {
    const o = i * 20
    const d = readF16(y, o, table)
    const m = readF16(y, o + 2, table)
    for (let j = 0; j < 16; j++) {
      const q = y[o + 4 + j]!
      out[i * 32 + j] = f(f((q & 0x0f) * d) + m)
      out[i * 32 + j + 16] = f(f((q >>> 4) * d) + m)
    }
  }
}

// ------------------------------------------------------------------------------------------ Q5_0

export function quantizeQ5_0(x: Float32Array, y: Uint8Array, yo: number): void {
  const nb = x.length / 32
  for (let i = 0; i < nb; i++) {
    const xb = i * 32
    const o = yo + i * 22
    const max = maxByMagnitude(x, xb, 32)
    const d = f(max / -16)
    const id = d !== 0 ? f(1 / d) : 0
    writeF16(y, o, d)
    let qh = 0
    for (let j = 0; j < 16; j++) {
      const x0 = f(x[xb + j]! * id)
      const x1 = f(x[xb + 16 + j]! * id)
      // uint8_t xi = MIN(31, (int8_t)(x + 16.5f))
      const xi0 = Math.min(31, truncInt8(f(x0 + 16.5))) & 0xff
      const xi1 = Math.min(31, truncInt8(f(x1 + 16.5))) & 0xff
      y[o + 6 + j] = (xi0 & 0x0f) | ((xi1 & 0x0f) << 4)
      qh |= ((xi0 & 0x10) >>> 4) << j
      qh |= ((xi1 & 0x10) >>> 4) << (j + 16)
    }
    writeU32(y, o + 2, qh)
  }
}

export function dequantizeQ5_0(y: Uint8Array, n: number, out: Float32Array): void {
  const table = fp16Table()
  const nb = n / 32
  for (let i = 0; i < nb; i++) {
    const o = i * 22
    const d = readF16(y, o, table)
    const qh = readU32(y, o + 2)
    for (let j = 0; j < 16; j++) {
      const q = y[o + 6 + j]!
      const xh0 = ((qh >>> j) << 4) & 0x10
      const xh1 = (qh >>> (j + 12)) & 0x10
      out[i * 32 + j] = f((((q & 0x0f) | xh0) - 16) * d)
      out[i * 32 + j + 16] = f((((q >>> 4) | xh1) - 16) * d)
    }
  }
}

// ------------------------------------------------------------------------------------------ Q5_1

export function quantizeQ5_1(x: Float32Array, y: Uint8Array, yo: number): void {
  const nb = x.length / 32
  for (let i = 0; i < nb; i++) {
    const xb = i * 32
    const o = yo + i * 24
    const [min, max] = minMax32(x, xb)
    const d = f(f(max - min) / 31)
    const id = d !== 0 ? f(1 / d) : 0
    writeF16(y, o, d)
    writeF16(y, o + 2, min)
    let qh = 0
    for (let j = 0; j < 16; j++) {
      const x0 = f(f(x[xb + j]! - min) * id)
      const x1 = f(f(x[xb + 16 + j]! - min) * id)
      // (uint8_t)(x + 0.5f): x86-64 truncates to int32 and keeps the low byte.
      const xi0 = truncInt8(f(x0 + 0.5)) & 0xff
      const xi1 = truncInt8(f(x1 + 0.5)) & 0xff
      y[o + 8 + j] = (xi0 & 0x0f) | ((xi1 & 0x0f) << 4)
      qh |= ((xi0 & 0x10) >>> 4) << j
      qh |= ((xi1 & 0x10) >>> 4) << (j + 16)
    }
    writeU32(y, o + 4, qh)
  }
}

export function dequantizeQ5_1(y: Uint8Array, n: number, out: Float32Array): void {
  const table = fp16Table()
  const nb = n / 32
  for (let i = 0; i < nb; i++) {
    const o = i * 24
    const d = readF16(y, o, table)
    const m = readF16(y, o + 2, table)
    const qh = readU32(y, o + 4)
    for (let j = 0; j < 16; j++) {
      const q = y[o + 8 + j]!
      const xh0 = ((qh >>> j) << 4) & 0x10
      const xh1 = (qh >>> (j + 12)) & 0x10
      out[i * 32 + j] = f(f(((q & 0x0f) | xh0) * d) + m)
      out[i * 32 + j + 16] = f(f(((q >>> 4) | xh1) * d) + m)
    }
  }
}
