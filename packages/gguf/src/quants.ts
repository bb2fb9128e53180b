import { InvalidArgumentError } from '@meshnet/core'
import { UnsupportedQuantTypeError } from './errors.ts'
import { fp16Table, fp32ToFp16 } from './f16.ts'
import { GGML_TYPE, type GGMLTypeInfo, ggmlTypeInfo, QK_K } from './ggml-types.ts'

// Reference quantization for F32, F16, Q8_0, Q4_0, Q4_K and Q6_K, written to give the same bytes as
// ggml's quantize_row_*_ref (ggml/src/ggml-quants.c, compiled without FMA contraction, as on x86-64)
// and the same floats as its dequantize_row_*. ggml computes in float32, so every arithmetic step
// below is rounded with Math.fround exactly where C rounds; the order of operations matters.

const f = Math.fround

// Block layouts (little-endian; "f16" is an IEEE half):
//   Q8_0  34 B / 32:  d f16 | qs int8[32]                      x = d * q
//   Q4_0  18 B / 32:  d f16 | qs u8[16] (low nibble: x[j], high: x[j+16])   x = d * (q - 8)
//   Q4_K 144 B / 256: d f16 | dmin f16 | scales u8[12] (8 x 6-bit scale + 8 x 6-bit min) | qs u8[128]
//                     x = d*sc[s]*q - dmin*m[s], sub-block s of 32; qs[32c+l] holds x[64c+l] (low)
//                     and x[64c+32+l] (high)
//   Q6_K 210 B / 256: ql u8[128] | qh u8[64] | scales int8[16] | d f16     x = d*sc[s]*(q - 32)

const GROUP_MAX_EPS = f(1e-15)
const TENTH = f(0.1)

/** ggml's nearest_int: round half to even via the float32 magic-number trick, for any input. */
function nearestInt(v: number): number {
  const r = f(v + 12582912) - 12582912
  if (r <= 4194303 && r >= -4194304) return r
  return nearestIntBits(v)
}

const scratchF32 = new Float32Array(1)
const scratchI32 = new Int32Array(scratchF32.buffer)

function nearestIntBits(v: number): number {
  scratchF32[0] = v + 12582912
  return (scratchI32[0]! & 0x007fffff) - 0x00400000
}

/** C's roundf: half away from zero. Math.round rounds halves up, so fix negative halves. */
function roundAway(x: number): number {
  const r = Math.round(x)
  return r - x === 0.5 && x < 0 ? r - 1 : r
}

function writeF16(y: Uint8Array, o: number, v: number): void {
  const h = fp32ToFp16(v)
  y[o] = h & 0xff
  y[o + 1] = h >>> 8
}

function readF16(y: Uint8Array, o: number, table: Float32Array): number {
  return table[y[o]! | (y[o + 1]! << 8)]!
}

// ----------------------------------------------------------------------------------- F32 / F16

const LITTLE_ENDIAN = new Uint8Array(new Uint16Array([1]).buffer)[0] === 1

function quantizeF32(x: Float32Array, y: Uint8Array, yo: number): void {
  const at = y.byteOffset + yo
  if (LITTLE_ENDIAN && at % 4 === 0) {
    new Float32Array(y.buffer, at, x.length).set(x)
    return
  }
  const view = new DataView(y.buffer, at, x.length * 4)
  for (let i = 0; i < x.length; i++) view.setFloat32(i * 4, x[i]!, true)
}

function dequantizeF32(y: Uint8Array, n: number, out: Float32Array): void {
  if (LITTLE_ENDIAN && y.byteOffset % 4 === 0) {
    out.set(new Float32Array(y.buffer, y.byteOffset, n))
    return
  }
  const view = new DataView(y.buffer, y.byteOffset, n * 4)
  for (let i = 0; i < n; i++) out[i] = view.getFloat32(i * 4, true)
}

function quantizeF16(x: Float32Array, y: Uint8Array, yo: number): void {
  for (let i = 0; i < x.length; i++) writeF16(y, yo + i * 2, x[i]!)
}

function dequantizeF16(y: Uint8Array, n: number, out: Float32Array): void {
  const table = fp16Table()
  for (let i = 0; i < n; i++) out[i] = readF16(y, i * 2, table)
}

// ------------------------------------------------------------------------------------------ Q8_0

function quantizeQ8_0(x: Float32Array, y: Uint8Array, yo: number): void {
  const nb = x.length / 32
  for (let i = 0; i < nb; i++) {
    const xb = i * 32
    const o = yo + i * 34
    let amax = 0
    for (let j = 0; j < 32; j++) {
      const v = Math.abs(x[xb + j]!)
      amax = Math.max(amax, v)
    }
    const d = f(amax / 127)
    const id = d !== 0 ? f(1 / d) : 0
    writeF16(y, o, d)
    for (let j = 0; j < 32; j++) y[o + 2 + j] = roundAway(f(x[xb + j]! * id)) & 0xff
  }
}

function dequantizeQ8_0(y: Uint8Array, n: number, out: Float32Array): void {
  const table = fp16Table()
  const nb = n / 32
  for (let i = 0; i < nb; i++) {
    const o = i * 34
    const d = readF16(y, o, table)
    for (let j = 0; j < 32; j++) out[i * 32 + j] = f(((y[o + 2 + j]! << 24) >> 24) * d)
  }
}

// ------------------------------------------------------------------------------------------ Q4_0

function quantizeQ4_0(x: Float32Array, y: Uint8Array, yo: number): void {
  const nb = x.length / 32
  for (let i = 0; i < nb; i++) {
    const xb = i * 32
    const o = yo + i * 18
    let amax = 0
    let max = 0
    for (let j = 0; j < 32; j++) {
      const v = x[xb + j]!
      if (amax < Math.abs(v)) {
        amax = Math.abs(v)
        max = v
      }
    }
    const d = f(max / -8)
    const id = d !== 0 ? f(1 / d) : 0
    writeF16(y, o, d)
    for (let j = 0; j < 16; j++) {
      const x0 = f(x[xb + j]! * id)
      const x1 = f(x[xb + 16 + j]! * id)
      // (int8_t)(x + 8.5f) truncates toward zero; NaN converts to 0 as on x86.
      const xi0 = Math.min(15, (Math.trunc(f(x0 + 8.5)) << 24) >> 24)
      const xi1 = Math.min(15, (Math.trunc(f(x1 + 8.5)) << 24) >> 24)
      y[o + 2 + j] = (xi0 & 0xff) | ((xi1 << 4) & 0xff)
    }
  }
}

function dequantizeQ4_0(y: Uint8Array, n: number, out: Float32Array): void {
  const table = fp16Table()
  const nb = n / 32
  for (let i = 0; i < nb; i++) {
    const o = i * 18
    const d = readF16(y, o, table)
    for (let j = 0; j < 16; j++) {
      const q = y[o + 2 + j]!
      out[i * 32 + j] = f(((q & 0x0f) - 8) * d)
      out[i * 32 + j + 16] = f(((q >>> 4) - 8) * d)
    }
  }
}

// ------------------------------------------------------------------------------------------ Q4_K

const kL = new Uint8Array(QK_K)
const kLaux = new Uint8Array(32)
const kWeights = new Float32Array(32)
const kScales = new Float32Array(QK_K / 16)
const kMins = new Float32Array(QK_K / 32)
const kMinOut = new Float32Array(1)

/**
 * ggml's make_qkx2_quants: a scale and a (negated) min for `n` values at `x[xo]`, fitted by
 * weighted least squares over `nstep + 1` candidate scales. Writes the levels to `L[lo..]` and the
 * min to `kMinOut[0]`; returns the scale.
 */
function makeQkx2Quants(
  n: number,
  nmax: number,
  x: Float32Array,
  xo: number,
  weights: Float32Array,
  L: Uint8Array,
  lo: number,
  Laux: Uint8Array,
  rmin: number,
  rdelta: number,
  nstep: number,
): number {
  let min = x[xo]!
  let max = x[xo]!
  let sumW = weights[0]!
  let sumX = f(sumW * x[xo]!)
  for (let i = 1; i < n; i++) {
    const xi = x[xo + i]!
    if (xi < min) min = xi
    if (xi > max) max = xi
    const w = weights[i]!
    sumW = f(sumW + w)
    sumX = f(sumX + f(w * xi))
  }
  if (min > 0) min = 0
  if (max === min) {
    for (let i = 0; i < n; i++) L[lo + i] = 0
    kMinOut[0] = -min
    return 0
  }
  // `min` moves to the best fit found so far, and later candidates are measured from it.
  let iscale = f(nmax / f(max - min))
  let scale = f(1 / iscale)
  let bestError = 0
  for (let i = 0; i < n; i++) {
    const xi = x[xo + i]!
    const l = Math.max(0, Math.min(nmax, nearestInt(f(iscale * f(xi - min)))))
    L[lo + i] = l
    const diff = f(f(f(scale * l) + min) - xi)
    bestError = f(bestError + f(weights[i]! * f(diff * diff)))
  }
  if (nstep < 1) {
    kMinOut[0] = -min
    return scale
  }
  for (let is = 0; is <= nstep; is++) {
    iscale = f(f(f(rmin + f(rdelta * is)) + nmax) / f(max - min))
    let sumL = 0
    let sumL2 = 0
    let sumXL = 0
    for (let i = 0; i < n; i++) {
      const xi = x[xo + i]!
      const l = Math.max(0, Math.min(nmax, nearestInt(f(iscale * f(xi - min)))))
      Laux[i] = l
      const wl = f(weights[i]! * l)
      sumL = f(sumL + wl)
      sumL2 = f(sumL2 + f(wl * l))
      sumXL = f(sumXL + f(wl * xi))
    }
    const D = f(f(sumW * sumL2) - f(sumL * sumL))
    if (D > 0) {
      let thisScale = f(f(f(sumW * sumXL) - f(sumX * sumL)) / D)
      let thisMin = f(f(f(sumL2 * sumX) - f(sumL * sumXL)) / D)
      if (thisMin > 0) {
        thisMin = 0
        thisScale = f(sumXL / sumL2)
      }
      let curError = 0
      for (let i = 0; i < n; i++) {
        const diff = f(f(f(thisScale * Laux[i]!) + thisMin) - x[xo + i]!)
        curError = f(curError + f(weights[i]! * f(diff * diff)))
      }
      if (curError < bestError) {
        for (let i = 0; i < n; i++) L[lo + i] = Laux[i]!
        bestError = curError
        scale = thisScale
        min = thisMin
      }
    }
  }
  kMinOut[0] = -min
  return scale
}

/** ggml's get_scale_min_k4: the 6-bit scale and min of sub-block `j` from the 12 packed bytes. */
function scaleMinK4(j: number, q: Uint8Array, qo: number): [number, number] {
  if (j < 4) return [q[qo + j]! & 63, q[qo + j + 4]! & 63]
  return [
    (q[qo + j + 4]! & 0x0f) | ((q[qo + j - 4]! >>> 6) << 4),
    (q[qo + j + 4]! >>> 4) | ((q[qo + j]! >>> 6) << 4),
  ]
}

function quantizeQ4_K(x: Float32Array, y: Uint8Array, yo: number): void {
  const nb = x.length / QK_K
  const table = fp16Table()
  for (let i = 0; i < nb; i++) {
    const xb = i * QK_K
    const o = yo + i * 144
    let maxScale = 0
    let maxMin = 0
    for (let j = 0; j < QK_K / 32; j++) {
      let sumX2 = 0
      for (let l = 0; l < 32; l++) {
        const v = x[xb + 32 * j + l]!
        sumX2 = f(sumX2 + f(v * v))
      }
      const avX = f(Math.sqrt(f(sumX2 / 32)))
      for (let l = 0; l < 32; l++) kWeights[l] = f(avX + Math.abs(x[xb + 32 * j + l]!))
      const scale = makeQkx2Quants(32, 15, x, xb + 32 * j, kWeights, kL, 32 * j, kLaux, -1, TENTH, 20)
      kScales[j] = scale
      kMins[j] = kMinOut[0]!
      if (scale > maxScale) maxScale = scale
      if (kMins[j]! > maxMin) maxMin = kMins[j]!
    }
    const invScale = maxScale > 0 ? f(63 / maxScale) : 0
    const invMin = maxMin > 0 ? f(63 / maxMin) : 0
    const sc = o + 4
    for (let j = 0; j < QK_K / 32; j++) {
      // uint8_t ls = nearest_int(...): the int is truncated to 8 bits before MIN(63, ...).
      const ls = Math.min(63, nearestInt(f(invScale * kScales[j]!)) & 0xff)
      const lm = Math.min(63, nearestInt(f(invMin * kMins[j]!)) & 0xff)
      if (j < 4) {
        y[sc + j] = ls
        y[sc + j + 4] = lm
      } else {
        y[sc + j + 4] = (ls & 0x0f) | ((lm & 0x0f) << 4)
        y[sc + j - 4]! |= (ls >>> 4) << 6
        y[sc + j]! |= (lm >>> 4) << 6
      }
    }
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
        kL[32 * j + ii] = Math.max(0, Math.min(15, l))
      }
    }
    const qs = o + 16
    for (let j = 0; j < QK_K; j += 64) {
      for (let l = 0; l < 32; l++) y[qs + j / 2 + l] = kL[j + l]! | (kL[j + l + 32]! << 4)
    }
  }
}

function dequantizeQ4_K(y: Uint8Array, n: number, out: Float32Array): void {
  const table = fp16Table()
  const nb = n / QK_K
  for (let i = 0; i < nb; i++) {
    const o = i * 144
    const d = readF16(y, o, table)
    const min = readF16(y, o + 2, table)
    let q = o + 16
    let yo = i * QK_K
    for (let j = 0, is = 0; j < QK_K; j += 64, is += 2) {
      const [s1, m1] = scaleMinK4(is, y, o + 4)
      const [s2, m2] = scaleMinK4(is + 1, y, o + 4)
      const d1 = f(d * s1)
      const mm1 = f(min * m1)
      const d2 = f(d * s2)
      const mm2 = f(min * m2)
      for (let l = 0; l < 32; l++) out[yo + l] = f(f(d1 * (y[q + l]! & 0x0f)) - mm1)
      for (let l = 0; l < 32; l++) out[yo + 32 + l] = f(f(d2 * (y[q + l]! >>> 4)) - mm2)
      q += 32
      yo += 64
    }
  }
}

// ------------------------------------------------------------------------------------------ Q6_K

const kL6 = new Int8Array(QK_K)

/** ggml's make_qx_quants with rmse_type 1 and no importance weights (as quantize_row_q6_K_ref). */
function makeQxQuants(
  n: number,
  nmax: number,
  x: Float32Array,
  xo: number,
  L: Int8Array,
  lo: number,
): number {
  let max = 0
  let amax = 0
  for (let i = 0; i < n; i++) {
    const ax = Math.abs(x[xo + i]!)
    if (ax > amax) {
      amax = ax
      max = x[xo + i]!
    }
  }
  if (amax < GROUP_MAX_EPS) {
    for (let i = 0; i < n; i++) L[lo + i] = 0
    return 0
  }
  let iscale = f(-nmax / max)
  let sumlx = 0
  let suml2 = 0
  for (let i = 0; i < n; i++) {
    const xi = x[xo + i]!
    const l = Math.max(-nmax, Math.min(nmax - 1, nearestInt(f(iscale * xi))))
    L[lo + i] = l + nmax
    const w = f(xi * xi)
    sumlx = f(sumlx + f(f(w * xi) * l))
    suml2 = f(suml2 + f(f(w * l) * l))
  }
  let scale = suml2 !== 0 ? f(sumlx / suml2) : 0
  let best = f(scale * sumlx)
  for (let is = -9; is <= 9; is++) {
    if (is === 0) continue
    iscale = f(-f(nmax + f(TENTH * is)) / max)
    sumlx = 0
    suml2 = 0
    for (let i = 0; i < n; i++) {
      const xi = x[xo + i]!
      const l = Math.max(-nmax, Math.min(nmax - 1, nearestInt(f(iscale * xi))))
      const w = f(xi * xi)
      sumlx = f(sumlx + f(f(w * xi) * l))
      suml2 = f(suml2 + f(f(w * l) * l))
    }
    if (suml2 > 0 && f(sumlx * sumlx) > f(best * suml2)) {
      for (let i = 0; i < n; i++) {
        const l = nearestInt(f(iscale * x[xo + i]!))
        L[lo + i] = nmax + Math.max(-nmax, Math.min(nmax - 1, l))
      }
      scale = f(sumlx / suml2)
      best = f(scale * sumlx)
    }
  }
  return scale
}

function quantizeQ6_K(x: Float32Array, y: Uint8Array, yo: number): void {
  const nb = x.length / QK_K
  const table = fp16Table()
  for (let i = 0; i < nb; i++) {
    const xb = i * QK_K
    const o = yo + i * 210
    let maxScale = 0
    let maxAbsScale = 0
    for (let ib = 0; ib < QK_K / 16; ib++) {
      const scale = makeQxQuants(16, 32, x, xb + 16 * ib, kL6, 16 * ib)
      kScales[ib] = scale
      const abs = Math.abs(scale)
      if (abs > maxAbsScale) {
        maxAbsScale = abs
        maxScale = scale
      }
    }
    if (maxAbsScale < GROUP_MAX_EPS) {
      y.fill(0, o, o + 210)
      continue
    }
    const iscale = f(-128 / maxScale)
    writeF16(y, o + 208, f(1 / iscale))
    const sc = o + 192
    for (let ib = 0; ib < QK_K / 16; ib++) {
      y[sc + ib] = Math.min(127, nearestInt(f(iscale * kScales[ib]!))) & 0xff
    }
    const dAll = readF16(y, o + 208, table)
    for (let j = 0; j < QK_K / 16; j++) {
      const d = f(dAll * ((y[sc + j]! << 24) >> 24))
      if (d === 0) continue
      for (let ii = 0; ii < 16; ii++) {
        const l = nearestInt(f(x[xb + 16 * j + ii]! / d))
        kL6[16 * j + ii] = Math.max(-32, Math.min(31, l)) + 32
      }
    }
    let ql = o
    let qh = o + 128
    for (let j = 0; j < QK_K; j += 128) {
      for (let l = 0; l < 32; l++) {
        const L0 = kL6[j + l]!
        const L1 = kL6[j + l + 32]!
        const L2 = kL6[j + l + 64]!
        const L3 = kL6[j + l + 96]!
        y[ql + l] = (L0 & 0x0f) | ((L2 & 0x0f) << 4)
        y[ql + l + 32] = (L1 & 0x0f) | ((L3 & 0x0f) << 4)
        y[qh + l] = (L0 >> 4) | ((L1 >> 4) << 2) | ((L2 >> 4) << 4) | ((L3 >> 4) << 6)
      }
      ql += 64
      qh += 32
    }
  }
}

function dequantizeQ6_K(y: Uint8Array, n: number, out: Float32Array): void {
  const table = fp16Table()
  const nb = n / QK_K
  for (let i = 0; i < nb; i++) {
    const o = i * 210
    const d = readF16(y, o + 208, table)
    let ql = o
    let qh = o + 128
    let sc = o + 192
    let yo = i * QK_K
    for (let c = 0; c < QK_K; c += 128) {
      for (let l = 0; l < 32; l++) {
        const is = l >> 4
        const h = y[qh + l]!
        const q1 = ((y[ql + l]! & 0x0f) | ((h & 3) << 4)) - 32
        const q2 = ((y[ql + l + 32]! & 0x0f) | (((h >> 2) & 3) << 4)) - 32
        const q3 = ((y[ql + l]! >> 4) | (((h >> 4) & 3) << 4)) - 32
        const q4 = ((y[ql + l + 32]! >> 4) | (((h >> 6) & 3) << 4)) - 32
        out[yo + l] = f(f(d * ((y[sc + is]! << 24) >> 24)) * q1)
        out[yo + l + 32] = f(f(d * ((y[sc + is + 2]! << 24) >> 24)) * q2)
        out[yo + l + 64] = f(f(d * ((y[sc + is + 4]! << 24) >> 24)) * q3)
        out[yo + l + 96] = f(f(d * ((y[sc + is + 6]! << 24) >> 24)) * q4)
      }
      yo += 128
      ql += 64
      qh += 32
      sc += 8
    }
  }
}

// ------------------------------------------------------------------------------------ dispatch

type Quantizer = (x: Float32Array, y: Uint8Array, yo: number) => void
type Dequantizer = (y: Uint8Array, n: number, out: Float32Array) => void

const CODECS = new Map<number, readonly [Quantizer, Dequantizer]>([
  [GGML_TYPE.F32, [quantizeF32, dequantizeF32]],
  [GGML_TYPE.F16, [quantizeF16, dequantizeF16]],
  [GGML_TYPE.Q8_0, [quantizeQ8_0, dequantizeQ8_0]],
  [GGML_TYPE.Q4_0, [quantizeQ4_0, dequantizeQ4_0]],
  [GGML_TYPE.Q4_K, [quantizeQ4_K, dequantizeQ4_K]],
  [GGML_TYPE.Q6_K, [quantizeQ6_K, dequantizeQ6_K]],
])

function codec(type: number | string): [GGMLTypeInfo, Quantizer, Dequantizer] {
  const info = ggmlTypeInfo(type)
  const pair = CODECS.get(info.type)
  if (pair === undefined) {
    throw new UnsupportedQuantTypeError(`ggml type ${info.name} has no quantizer or dequantizer here`, {
      details: { type: info.type },
      hint: 'supported types are F32, F16, Q8_0, Q4_0, Q4_K and Q6_K',
    })
  }
  return [info, pair[0], pair[1]]
}

function checkRowLength(info: GGMLTypeInfo, n: number): number {
  if (!Number.isSafeInteger(n) || n < 0) {
    throw new InvalidArgumentError(`row length ${n} is not a non-negative integer`)
  }
  if (n % info.blockSize !== 0) {
    const what = info.blockSize === QK_K ? 'K-quant super-blocks' : 'blocks'
    throw new InvalidArgumentError(
      `${info.name} needs a row length that is a multiple of ${info.blockSize}, got ${n} (${what} of ${info.blockSize} elements)`,
      {
        hint: `pad the row, or pick a type whose block fits (Q8_0/Q4_0 need multiples of 32, F32/F16 any length)`,
      },
    )
  }
  return (n / info.blockSize) * info.typeSize
}

/**
 * Quantizes `src` (any whole number of blocks; a tensor row is `ne[0]` elements) to `type`, giving
 * the same bytes as ggml's `quantize_row_<type>_ref`. Writes into `out` (at its start) when given,
 * which must hold `rowByteLength(type, src.length)` bytes; returns the written bytes.
 */
export function quantizeRow(type: number | string, src: Float32Array, out?: Uint8Array): Uint8Array {
  const [info, quantize] = codec(type)
  const bytes = checkRowLength(info, src.length)
  let target: Uint8Array
  if (out === undefined) {
    target = new Uint8Array(bytes)
  } else {
    if (out.length < bytes) {
      throw new InvalidArgumentError(
        `output buffer of ${out.length} bytes is too small for ${src.length} ${info.name} elements (${bytes} bytes)`,
      )
    }
    target = out.subarray(0, bytes)
  }
  quantize(src, target, 0)
  return target
}

/**
 * Dequantizes `n` elements of `type` from the start of `bytes` into floats, giving the same values
 * as ggml's `dequantize_row_<type>`. Writes into `out` (at its start) when given; returns the
 * `n` floats written.
 */
export function dequantizeRow(
  type: number | string,
  bytes: Uint8Array,
  n: number,
  out?: Float32Array,
): Float32Array {
  const [info, , dequantize] = codec(type)
  const need = checkRowLength(info, n)
  if (bytes.length < need) {
    throw new InvalidArgumentError(
      `${n} ${info.name} elements need ${need} bytes, only ${bytes.length} were given`,
    )
  }
  let target: Float32Array
  if (out === undefined) {
    target = new Float32Array(n)
  } else {
    if (out.length < n) {
      throw new InvalidArgumentError(`output array of ${out.length} floats is too small for ${n} elements`)
    }
    target = out.subarray(0, n)
  }
  dequantize(bytes, n, target)
  return target
}
