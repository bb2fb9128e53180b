import { fp16Table } from './f16.ts'
import { QK_K } from './ggml-types.ts'
import {
  avxWeights32,
  f,
  GROUP_MAX_EPS,
  makeQkx2Quants,
  maxByMagnitude,
  nearestInt,
  packScalesMinsK4,
  qkx2Min,
  readF16,
  scaleMinK4,
  TENTH,
  writeF16,
} from './quants-common.ts'

// K-quants Q2_K, Q3_K and Q5_K, bit-exact with ggml's quantize_row_q{2,3,5}_K_ref (no importance
// matrix) and dequantize_row_q{2,3,5}_K (see quants.ts; Q4_K and Q6_K are there).
//
// Block layouts (little-endian; "f16" is an IEEE half), super-blocks of 256:
//   Q2_K  84 B: scales u8[16] (low nibble: scale, high: min, per sub-block of 16) | qs u8[64] |
//               d f16 | dmin f16                           x = d*sc[s]*q - dmin*m[s], q in 0..3;
//               qs[32h+l] holds x[128h+l], x[128h+l+32], x[128h+l+64], x[128h+l+96] (2 bits each)
//   Q3_K 110 B: hmask u8[32] (bit b of hmask[l]: high bit of x[32b+l]) | qs u8[64] (low 2 bits,
//               as Q2_K) | scales u8[12] (16 x 6-bit scale, biased by 32) | d f16
//               x = d*(sc[s] - 32)*(q - 4), q in 0..7, sub-block s of 16
//   Q5_K 176 B: d f16 | dmin f16 | scales u8[12] (as Q4_K) | qh u8[32] | qs u8[128] (as Q4_K)
//               x = d*sc[s]*q - dmin*m[s], q in 0..31; bit 2c (2c+1) of qh[l] is the 5th bit of
//               x[64c+l] (x[64c+32+l])

const kL = new Uint8Array(QK_K)
const kL3 = new Int8Array(QK_K)
const kLaux = new Uint8Array(32)
const kWeights = new Float32Array(32)
const kScales = new Float32Array(QK_K / 16)
const kMins = new Float32Array(QK_K / 16)

/** Packs 2-bit levels `L` (256, each 0..3) into the 64 bytes at `y[qs]`, as Q2_K and Q3_K store them. */
function pack2Bit(L: Uint8Array | Int8Array, y: Uint8Array, qs: number): void {
  for (let j = 0; j < QK_K; j += 128) {
    for (let l = 0; l < 32; l++) {
      y[qs + j / 4 + l] =
        (L[j + l]! | (L[j + l + 32]! << 2) | (L[j + l + 64]! << 4) | (L[j + l + 96]! << 6)) & 0xff
    }
  }
}

// ------------------------------------------------------------------------------------------ Q2_K

export function quantizeQ2_K(x: Float32Array, y: Uint8Array, yo: number): void {
  const nb = x.length / QK_K
  const table = fp16Table()
  const q4scale = 15
  for (let i = 0; i < nb; i++) {
    const xb = i * QK_K
    const o = yo + i * 84
    let maxScale = 0
    let maxMin = 0
    for (let j = 0; j < QK_K / 16; j++) {
      for (let l = 0; l < 16; l++) kWeights[l] = Math.abs(x[xb + 16 * j + l]!)
      const scale = makeQkx2Quants(16, 3, x, xb + 16 * j, kWeights, kL, 16 * j, kLaux, -0.5, TENTH, 15, true)
      kScales[j] = scale
      kMins[j] = qkx2Min[0]!
      if (scale > maxScale) maxScale = scale
      if (kMins[j]! > maxMin) maxMin = kMins[j]!
    }
    if (maxScale > 0) {
      const iscale = f(q4scale / maxScale)
      for (let j = 0; j < QK_K / 16; j++) y[o + j] = nearestInt(f(iscale * kScales[j]!)) & 0xff
      writeF16(y, o + 80, f(maxScale / q4scale))
    } else {
      y.fill(0, o, o + 16)
      writeF16(y, o + 80, 0)
    }
    if (maxMin > 0) {
      const iscale = f(q4scale / maxMin)
      for (let j = 0; j < QK_K / 16; j++) y[o + j]! |= (nearestInt(f(iscale * kMins[j]!)) << 4) & 0xff
      writeF16(y, o + 82, f(maxMin / q4scale))
    } else {
      writeF16(y, o + 82, 0)
    }
    const dAll = readF16(y, o + 80, table)
    const dminAll = readF16(y, o + 82, table)
    for (let j = 0; j < QK_K / 16; j++) {
      const d = f(dAll * (y[o + j]! & 0x0f))
      if (d === 0) continue
      const dm = f(dminAll * (y[o + j]! >>> 4))
      for (let ii = 0; ii < 16; ii++) {
        const l = nearestInt(f(f(x[xb + 16 * j + ii]! + dm) / d))
        kL[16 * j + ii] = Math.max(0, Math.min(3, l))
      }
    }
    pack2Bit(kL, y, o + 16)
  }
}

export function dequantizeQ2_K(y: Uint8Array, n: number, out: Float32Array): void {
  const table = fp16Table()
  const nb = n / QK_K
  let yo = 0
  for (let i = 0; i < nb; i++) {
    const o = i * 84
    const d = readF16(y, o + 80, table)
    const min = readF16(y, o + 82, table)
    let q = o + 16
    let is = 0
    for (let c = 0; c < QK_K; c += 128) {
      for (let shift = 0; shift < 8; shift += 2) {
        for (let half = 0; half < 32; half += 16) {
          const sc = y[o + is++]!
          const dl = f(d * (sc & 0x0f))
          const ml = f(min * (sc >>> 4))
          for (let l = 0; l < 16; l++) out[yo++] = f(f(dl * ((y[q + half + l]! >>> shift) & 3)) - ml)
        }
      }
      q += 32
    }
  }
}

// ------------------------------------------------------------------------------------------ Q3_K

/**
 * ggml's make_q3_quants with do_rmse: a signed scale for `n` values at `x[xo]`, levels in
 * `[-nmax, nmax)` refined one at a time (up to 5 passes) to maximise (Σw·x·l)²/Σw·l², w = x².
 * Writes the levels plus `nmax` to `L[lo..]` (all 0 for an all-zero group); returns the scale.
 */
function makeQ3Quants(
  n: number,
  nmax: number,
  x: Float32Array,
  xo: number,
  L: Int8Array,
  lo: number,
): number {
  const max = maxByMagnitude(x, xo, n)
  if (Math.abs(max) < GROUP_MAX_EPS) {
    for (let i = 0; i < n; i++) L[lo + i] = 0
    return 0
  }
  const iscale = f(-nmax / max)
  let sumlx = 0
  let suml2 = 0
  for (let i = 0; i < n; i++) {
    const xi = x[xo + i]!
    const l = Math.max(-nmax, Math.min(nmax - 1, nearestInt(f(iscale * xi))))
    L[lo + i] = l
    const w = f(xi * xi)
    sumlx = f(sumlx + f(f(w * xi) * l))
    suml2 = f(suml2 + f(f(w * l) * l))
  }
  for (let itry = 0; itry < 5; itry++) {
    let changed = 0
    for (let i = 0; i < n; i++) {
      const xi = x[xo + i]!
      const li = L[lo + i]!
      const w = f(xi * xi)
      let slx = f(sumlx - f(f(w * xi) * li))
      if (slx > 0) {
        let sl2 = f(suml2 - f(f(w * li) * li))
        const newL = Math.max(-nmax, Math.min(nmax - 1, nearestInt(f(f(xi * sl2) / slx))))
        if (newL !== li) {
          slx = f(slx + f(f(w * xi) * newL))
          sl2 = f(sl2 + f(f(w * newL) * newL))
          if (sl2 > 0 && f(f(slx * slx) * suml2) > f(f(sumlx * sumlx) * sl2)) {
            L[lo + i] = newL
            sumlx = slx
            suml2 = sl2
            changed++
          }
        }
      }
    }
    if (changed === 0) break
  }
  for (let i = 0; i < n; i++) L[lo + i] = L[lo + i]! + nmax
  return suml2 > 0 ? f(sumlx / suml2) : 0
}

/** The 6-bit scale (0..63, biased by 32) of Q3_K sub-block `j` from the 12 bytes at `y[sc]`. */
function scaleQ3_K(y: Uint8Array, sc: number, j: number): number {
  const low = j < 8 ? y[sc + j]! & 0x0f : y[sc + j - 8]! >>> 4
  return low | (((y[sc + 8 + (j % 4)]! >>> (2 * (j >> 2))) & 3) << 4)
}

export function quantizeQ3_K(x: Float32Array, y: Uint8Array, yo: number): void {
  const nb = x.length / QK_K
  const table = fp16Table()
  for (let i = 0; i < nb; i++) {
    const xb = i * QK_K
    const o = yo + i * 110
    const sc = o + 96
    let maxScale = 0
    let amax = 0
    for (let j = 0; j < QK_K / 16; j++) {
      kScales[j] = makeQ3Quants(16, 4, x, xb + 16 * j, kL3, 16 * j)
      const scale = Math.abs(kScales[j]!)
      if (scale > amax) {
        amax = scale
        maxScale = kScales[j]!
      }
    }
    y.fill(0, sc, sc + 12)
    if (maxScale !== 0) {
      const iscale = f(-32 / maxScale)
      for (let j = 0; j < QK_K / 16; j++) {
        // int8_t l = nearest_int(...); l = MAX(-32, MIN(31, l)) + 32
        const l = Math.max(-32, Math.min(31, (nearestInt(f(iscale * kScales[j]!)) << 24) >> 24)) + 32
        if (j < 8) y[sc + j] = l & 0x0f
        else y[sc + j - 8]! |= (l & 0x0f) << 4
        y[sc + 8 + (j % 4)]! |= (l >> 4) << (2 * (j >> 2))
      }
      writeF16(y, o + 108, f(1 / iscale))
    } else {
      writeF16(y, o + 108, 0)
    }
    const dAll = readF16(y, o + 108, table)
    for (let j = 0; j < QK_K / 16; j++) {
      const d = f(dAll * (scaleQ3_K(y, sc, j) - 32))
      if (d === 0) continue
      for (let ii = 0; ii < 16; ii++) {
        const l = nearestInt(f(x[xb + 16 * j + ii]! / d))
        kL3[16 * j + ii] = Math.max(-4, Math.min(3, l)) + 4
      }
    }
    // The high bit of the first 32 levels goes to bit 0 of hmask[0..32), the next 32 to bit 1, ...
    y.fill(0, o, o + 32)
    for (let j = 0; j < QK_K; j++) {
      if (kL3[j]! > 3) {
        y[o + (j & 31)]! |= 1 << (j >> 5)
        kL3[j] = kL3[j]! - 4
      }
    }
    pack2Bit(kL3, y, o + 32)
  }
}

export function dequantizeQ3_K(y: Uint8Array, n: number, out: Float32Array): void {
  const table = fp16Table()
  const nb = n / QK_K
  let yo = 0
  for (let i = 0; i < nb; i++) {
    const o = i * 110
    const dAll = readF16(y, o + 108, table)
    let q = o + 32
    let is = 0
    let m = 1
    for (let c = 0; c < QK_K; c += 128) {
      for (let shift = 0; shift < 8; shift += 2) {
        for (let half = 0; half < 32; half += 16) {
          const dl = f(dAll * (scaleQ3_K(y, o + 96, is++) - 32))
          for (let l = 0; l < 16; l++) {
            const low = (y[q + half + l]! >>> shift) & 3
            out[yo++] = f(dl * (low - (y[o + half + l]! & m ? 0 : 4)))
          }
        }
        m <<= 1
      }
      q += 32
    }
  }
}

// ------------------------------------------------------------------------------------------ Q5_K

export function quantizeQ5_K(x: Float32Array, y: Uint8Array, yo: number): void {
  const nb = x.length / QK_K
  const table = fp16Table()
  for (let i = 0; i < nb; i++) {
    const xb = i * QK_K
    const o = yo + i * 176
    let maxScale = 0
    let maxMin = 0
    for (let j = 0; j < QK_K / 32; j++) {
      avxWeights32(x, xb + 32 * j, kWeights)
      const scale = makeQkx2Quants(
        32,
        31,
        x,
        xb + 32 * j,
        kWeights,
        kL,
        32 * j,
        kLaux,
        -0.5,
        TENTH,
        15,
        false,
      )
      kScales[j] = scale
      kMins[j] = qkx2Min[0]!
      if (scale > maxScale) maxScale = scale
      if (kMins[j]! > maxMin) maxMin = kMins[j]!
    }
    const sc = o + 4
    packScalesMinsK4(y, sc, kScales, kMins, maxScale, maxMin)
    writeF16(y, o, f(maxScale / 63))
    writeF16(y, o + 2, f(maxMin / 63))
    const dAll = readF16(y, o, table)
    const dminAll = readF16(y, o + 2, table)
    for (let j = 0; j < QK_K / 32; j++) {
      const [s, m] = scaleMinK4(j, y, sc)
      const d = f(dAll * s)
      if (d === 0) continue
      const dm = f(dminAll * m)
      for (let ii = 0; ii < 32; ii++) {
        const l = nearestInt(f(f(x[xb + 32 * j + ii]! + dm) / d))
        kL[32 * j + ii] = Math.max(0, Math.min(31, l))
      }
    }
    const qh = o + 16
    y.fill(0, qh, qh + 32)
    let ql = o + 48
    for (let c = 0, m1 = 1; c < QK_K; c += 64, m1 <<= 2) {
      for (let j = 0; j < 32; j++) {
        let l1 = kL[c + j]!
        if (l1 > 15) {
          l1 -= 16
          y[qh + j]! |= m1
        }
        let l2 = kL[c + j + 32]!
        if (l2 > 15) {
          l2 -= 16
          y[qh + j]! |= m1 << 1
        }
        y[ql + j] = l1 | (l2 << 4)
      }
      ql += 32
    }
  }
}

export function dequantizeQ5_K(y: Uint8Array, n: number, out: Float32Array): void {
  const table = fp16Table()
  const nb = n / QK_K
  for (let i = 0; i < nb; i++) {
    const o = i * 176
    const d = readF16(y, o, table)
    const min = readF16(y, o + 2, table)
    const qh = o + 16
    let ql = o + 48
    let yo = i * QK_K
    for (let c = 0, is = 0, u1 = 1; c < QK_K; c += 64, is += 2, u1 <<= 2) {
      const [s1, m1] = scaleMinK4(is, y, o + 4)
      const [s2, m2] = scaleMinK4(is + 1, y, o + 4)
      const d1 = f(d * s1)
      const mm1 = f(min * m1)
      const d2 = f(d * s2)
      const mm2 = f(min * m2)
      for (let l = 0; l < 32; l++) {
        out[yo + l] = f(f(d1 * ((y[ql + l]! & 0x0f) + (y[qh + l]! & u1 ? 16 : 0))) - mm1)
      }
      for (let l = 0; l < 32; l++) {
        out[yo + 32 + l] = f(f(d2 * ((y[ql + l]! >>> 4) + (y[qh + l]! & (u1 << 1) ? 16 : 0))) - mm2)
      }
      ql += 32
      yo += 64
    }
  }
}
