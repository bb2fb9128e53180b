import { fp16Table } from './f16.ts'
import { QK_K } from './ggml-types.ts'
import { f, GROUP_MAX_EPS, nearestInt, readF16, writeF16 } from './quants-common.ts'

// The 4-bit non-linear quants IQ4_NL and IQ4_XS, bit-exact with ggml's quantize_row_iq4_nl_ref /
// quantize_row_iq4_xs_ref (quantize_row_iq4_nl_impl without an importance matrix) and
// dequantize_row_iq4_nl / dequantize_row_iq4_xs (see quants.ts).
//
// Block layouts (little-endian; "f16" is an IEEE half); a 4-bit q indexes KVALUES_IQ4NL:
//   IQ4_NL  18 B / 32:  d f16 | qs u8[16] (low nibble: x[j], high: x[j+16])    x = d * kv[q]
//   IQ4_XS 136 B / 256: d f16 | scales_h u16 (2 high bits per sub-block of 32) |
//                       scales_l u8[4] (4 low bits per sub-block) | qs u8[128] (16 per sub-block,
//                       as IQ4_NL)                                         x = d*(ls[s] - 32) * kv[q]

/** ggml's kvalues_iq4nl: the 16 levels of IQ4_NL and IQ4_XS. */
export const KVALUES_IQ4NL: Int8Array = new Int8Array([
  -127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113,
])
const V = KVALUES_IQ4NL

/** ggml's best_index_int8 over KVALUES_IQ4NL: the index of the level nearest to `x` (ties up). */
function bestIndex(x: number): number {
  if (x <= V[0]!) return 0
  if (x >= V[15]!) return 15
  let ml = 0
  let mu = 15
  while (mu - ml > 1) {
    const mav = (ml + mu) >> 1
    if (x < V[mav]!) mu = mav
    else ml = mav
  }
  return f(x - V[mu - 1]!) < f(V[mu]! - x) ? mu - 1 : mu
}

// quantize_row_iq4_*_ref keep the levels in one array across the blocks of a row; IQ4_NL leaves
// the levels of an all-zero block as they were (see quantizeIQ4_NL), so this persists.
const kL = new Uint8Array(QK_K)
const kWeight = new Float32Array(32)
const kScales = new Float32Array(QK_K / 32)

/**
 * quantize_row_iq4_nl_impl for `superBlock` values at `x[xo]` in sub-blocks of 32, without an
 * importance matrix (weights x²), trying scales `(itry + kv[0]) / max` for itry in [-ntry, ntry].
 * Fills `kScales` and the levels `kL`; returns the signed scale of largest magnitude.
 */
function fitScales(superBlock: number, x: Float32Array, xo: number, ntry: number): number {
  let maxScale = 0
  let amaxScale = 0
  for (let ib = 0; ib < superBlock / 32; ib++) {
    const xb = xo + ib * 32
    const lb = ib * 32
    let amax = 0
    let max = 0
    for (let j = 0; j < 32; j++) {
      const v = x[xb + j]!
      kWeight[j] = f(v * v)
      const ax = Math.abs(v)
      if (ax > amax) {
        amax = ax
        max = v
      }
    }
    if (amax < GROUP_MAX_EPS) {
      kScales[ib] = 0
      continue
    }
    let d = ntry > 0 ? f(-max / V[0]!) : f(max / V[0]!)
    let id = f(1 / d)
    let sumqx = 0
    let sumq2 = 0
    for (let j = 0; j < 32; j++) {
      const xj = x[xb + j]!
      const l = bestIndex(f(id * xj))
      kL[lb + j] = l
      const q = V[l]!
      const wq = f(kWeight[j]! * q)
      sumqx = f(sumqx + f(wq * xj))
      sumq2 = f(sumq2 + f(wq * q))
    }
    d = sumq2 > 0 ? f(sumqx / sumq2) : 0
    let best = f(d * sumqx)
    for (let itry = -ntry; itry <= ntry; itry++) {
      id = f((itry + V[0]!) / max)
      sumqx = 0
      sumq2 = 0
      for (let j = 0; j < 32; j++) {
        const xj = x[xb + j]!
        const q = V[bestIndex(f(id * xj))]!
        const wq = f(kWeight[j]! * q)
        sumqx = f(sumqx + f(wq * xj))
        sumq2 = f(sumq2 + f(wq * q))
      }
      if (sumq2 > 0 && f(sumqx * sumqx) > f(best * sumq2)) {
        d = f(sumqx / sumq2)
        best = f(d * sumqx)
      }
    }
    kScales[ib] = d
    if (Math.abs(d) > amaxScale) {
      amaxScale = Math.abs(d)
      maxScale = d
    }
  }
  return maxScale
}

/** Packs the levels of `superBlock` values into nibbles at `y[qs]` (x[j] low, x[j+16] high). */
function packNibbles(superBlock: number, y: Uint8Array, qs: number): void {
  for (let i = 0; i < superBlock / 32; i++) {
    for (let j = 0; j < 16; j++) y[qs + 16 * i + j] = kL[32 * i + j]! | (kL[32 * i + 16 + j]! << 4)
  }
}

// ---------------------------------------------------------------------------------------- IQ4_NL

/**
 * quantize_row_iq4_nl_ref: one least-squares scale per block of 32 (ntry = -1: no scale search),
 * levels from the first guess `max / kv[0]`. For an all-zero block (max |x| < 1e-15) ggml stores
 * d = 0 and leaves its level array as it was: the previous block's levels, or uninitialized stack
 * for the first block of a row. Here the previous block's levels too, and for the first block of a
 * row the level nearest to zero (index 8, byte 0x88); every such block dequantizes to zeros anyway.
 */
export function quantizeIQ4_NL(x: Float32Array, y: Uint8Array, yo: number): void {
  const nb = x.length / 32
  kL.fill(8, 0, 32)
  for (let i = 0; i < nb; i++) {
    const o = yo + i * 18
    fitScales(32, x, i * 32, -1)
    writeF16(y, o, kScales[0]!)
    packNibbles(32, y, o + 2)
  }
}

export function dequantizeIQ4_NL(y: Uint8Array, n: number, out: Float32Array): void {
  const table = fp16Table()
  const nb = n / 32
  for (let i = 0; i < nb; i++) {
    const o = i * 18
    const d = readF16(y, o, table)
    for (let j = 0; j < 16; j++) {
      const q = y[o + 2 + j]!
      out[i * 32 + j] = f(d * V[q & 0x0f]!)
      out[i * 32 + j + 16] = f(d * V[q >>> 4]!)
    }
  }
}

// ---------------------------------------------------------------------------------------- IQ4_XS

/**
 * quantize_row_iq4_xs_ref: a scale per sub-block of 32 from 15 candidates (ntry = 7), stored as a
 * 6-bit multiple of the super-block's `d = -maxScale/32`; the levels are then recomputed from the
 * stored scale.
 */
export function quantizeIQ4_XS(x: Float32Array, y: Uint8Array, yo: number): void {
  const nb = x.length / QK_K
  for (let i = 0; i < nb; i++) {
    const xo = i * QK_K
    const o = yo + i * 136
    const maxScale = fitScales(QK_K, x, xo, 7)
    const d = f(-maxScale / 32)
    writeF16(y, o, d)
    const id = d !== 0 ? f(1 / d) : 0
    let scalesH = 0
    for (let ib = 0; ib < QK_K / 32; ib++) {
      let l = Math.max(-32, Math.min(31, nearestInt(f(id * kScales[ib]!))))
      const dl = f(d * l)
      const idl = dl !== 0 ? f(1 / dl) : 0
      const xb = xo + ib * 32
      for (let j = 0; j < 32; j++) kL[ib * 32 + j] = bestIndex(f(idl * x[xb + j]!))
      l += 32
      if (ib % 2 === 0) y[o + 4 + (ib >> 1)] = l & 0x0f
      else y[o + 4 + (ib >> 1)]! |= (l & 0x0f) << 4
      scalesH |= (l >> 4) << (2 * ib)
    }
    y[o + 2] = scalesH & 0xff
    y[o + 3] = scalesH >>> 8
    packNibbles(QK_K, y, o + 8)
  }
}

export function dequantizeIQ4_XS(y: Uint8Array, n: number, out: Float32Array): void {
  const table = fp16Table()
  const nb = n / QK_K
  let yo = 0
  for (let i = 0; i < nb; i++) {
    const o = i * 136
    const d = readF16(y, o, table)
    const scalesH = y[o + 2]! | (y[o + 3]! << 8)
    for (let ib = 0; ib < QK_K / 32; ib++) {
      const ls = ((y[o + 4 + (ib >> 1)]! >>> (4 * (ib % 2))) & 0x0f) | (((scalesH >>> (2 * ib)) & 3) << 4)
      const dl = f(d * (ls - 32))
      const qs = o + 8 + ib * 16
      for (let j = 0; j < 16; j++) {
        out[yo + j] = f(dl * V[y[qs + j]! & 0x0f]!)
        out[yo + j + 16] = f(dl * V[y[qs + j]! >>> 4]!)
      }
      yo += 32
    }
  }
}
