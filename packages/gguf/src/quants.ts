import { InvalidArgumentError } from '@meshnet/core'
import { UnsupportedQuantTypeError } from './errors.ts'
import { fp16Table } from './f16.ts'
import { GGML_TYPE, type GGMLTypeInfo, ggmlTypeInfo, QK_K, QUANTIZABLE_TYPES } from './ggml-types.ts'
import {
  avxWeights32,
  type Dequantizer,
  f,
  GROUP_MAX_EPS,
  makeQkx2Quants,
  maxByMagnitude,
  nearestInt,
  packScalesMinsK4,
  type Quantizer,
  qkx2Min,
  readF16,
  roundAway,
  scaleMinK4,
  TENTH,
  writeF16,
} from './quants-common.ts'
import { dequantizeIQ4_NL, dequantizeIQ4_XS, quantizeIQ4_NL, quantizeIQ4_XS } from './quants-iq.ts'
import {
  dequantizeQ2_K,
  dequantizeQ3_K,
  dequantizeQ5_K,
  quantizeQ2_K,
  quantizeQ3_K,
  quantizeQ5_K,
} from './quants-k.ts'
import {
  dequantizeQ4_1,
  dequantizeQ5_0,
  dequantizeQ5_1,
  quantizeQ4_1,
  quantizeQ5_0,
  quantizeQ5_1,
} from './quants-legacy.ts'

// Reference quantization for F32, F16, BF16, Q8_0, Q4_0, Q4_K and Q6_K, and the entry points for
// every quantizable type (Q4_1/Q5_0/Q5_1 are in quants-legacy.ts, Q2_K/Q3_K/Q5_K in quants-k.ts,
// IQ4_NL/IQ4_XS in quants-iq.ts). Each gives the same bytes as ggml's quantize_row_*_ref
// (ggml/src/ggml-quants.c, compiled without FMA contraction, as on x86-64) and the same floats as
// its dequantize_row_*. ggml computes in float32, so every arithmetic step below is rounded with
// Math.fround exactly where C rounds; the order of operations matters.

// Block layouts (little-endian; "f16" is an IEEE half, "bf16" the top half of a float32):
//   BF16   2 B / 1:   bf16                                        x = bf16
//   Q8_0  34 B / 32:  d f16 | qs int8[32]                      x = d * q
//   Q4_0  18 B / 32:  d f16 | qs u8[16] (low nibble: x[j], high: x[j+16])   x = d * (q - 8)
//   Q4_K 144 B / 256: d f16 | dmin f16 | scales u8[12] (8 x 6-bit scale + 8 x 6-bit min) | qs u8[128]
//                     x = d*sc[s]*q - dmin*m[s], sub-block s of 32; qs[32c+l] holds x[64c+l] (low)
//                     and x[64c+32+l] (high)
//   Q6_K 210 B / 256: ql u8[128] | qh u8[64] | scales int8[16] | d f16     x = d*sc[s]*(q - 32)

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

// ------------------------------------------------------------------------------------------ BF16

/** ggml_compute_fp32_to_bf16: round to nearest even on the bits; NaN stays NaN (made quiet). */
function quantizeBF16(x: Float32Array, y: Uint8Array, yo: number): void {
  const bits = new Uint32Array(x.buffer, x.byteOffset, x.length)
  for (let i = 0; i < x.length; i++) {
    const u = bits[i]!
    const h =
      (u & 0x7fffffff) > 0x7f800000 ? (u >>> 16) | 64 : ((u + (0x7fff + ((u >>> 16) & 1))) >>> 16) & 0xffff
    y[yo + i * 2] = h & 0xff
    y[yo + i * 2 + 1] = h >>> 8
  }
}

/** ggml_bf16_to_fp32_row: the bf16 bits become the top half of the float32 (NaN payloads kept). */
function dequantizeBF16(y: Uint8Array, n: number, out: Float32Array): void {
  const bits = new Uint32Array(out.buffer, out.byteOffset, n)
  for (let i = 0; i < n; i++) bits[i] = ((y[i * 2]! | (y[i * 2 + 1]! << 8)) << 16) >>> 0
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
    const max = maxByMagnitude(x, xb, 32)
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

function quantizeQ4_K(x: Float32Array, y: Uint8Array, yo: number): void {
  const nb = x.length / QK_K
  const table = fp16Table()
  for (let i = 0; i < nb; i++) {
    const xb = i * QK_K
    const o = yo + i * 144
    let maxScale = 0
    let maxMin = 0
    for (let j = 0; j < QK_K / 32; j++) {
      avxWeights32(x, xb + 32 * j, kWeights)
      const scale = makeQkx2Quants(32, 15, x, xb + 32 * j, kWeights, kL, 32 * j, kLaux, -1, TENTH, 20, false)
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
  const max = maxByMagnitude(x, xo, n)
  if (Math.abs(max) < GROUP_MAX_EPS) {
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

const CODECS = new Map<number, readonly [Quantizer, Dequantizer]>([
  [GGML_TYPE.F32, [quantizeF32, dequantizeF32]],
  [GGML_TYPE.F16, [quantizeF16, dequantizeF16]],
  [GGML_TYPE.BF16, [quantizeBF16, dequantizeBF16]],
  [GGML_TYPE.Q8_0, [quantizeQ8_0, dequantizeQ8_0]],
  [GGML_TYPE.Q4_0, [quantizeQ4_0, dequantizeQ4_0]],
  [GGML_TYPE.Q4_1, [quantizeQ4_1, dequantizeQ4_1]],
  [GGML_TYPE.Q5_0, [quantizeQ5_0, dequantizeQ5_0]],
  [GGML_TYPE.Q5_1, [quantizeQ5_1, dequantizeQ5_1]],
  [GGML_TYPE.Q2_K, [quantizeQ2_K, dequantizeQ2_K]],
  [GGML_TYPE.Q3_K, [quantizeQ3_K, dequantizeQ3_K]],
  [GGML_TYPE.Q4_K, [quantizeQ4_K, dequantizeQ4_K]],
  [GGML_TYPE.Q5_K, [quantizeQ5_K, dequantizeQ5_K]],
  [GGML_TYPE.Q6_K, [quantizeQ6_K, dequantizeQ6_K]],
  [GGML_TYPE.IQ4_NL, [quantizeIQ4_NL, dequantizeIQ4_NL]],
  [GGML_TYPE.IQ4_XS, [quantizeIQ4_XS, dequantizeIQ4_XS]],
])

function codec(type: number | string): [GGMLTypeInfo, Quantizer, Dequantizer] {
  const info = ggmlTypeInfo(type)
  const pair = CODECS.get(info.type)
  if (pair === undefined) {
    throw new UnsupportedQuantTypeError(`ggml type ${info.name} has no quantizer or dequantizer here`, {
      details: { type: info.type },
      hint: `supported types are ${QUANTIZABLE_TYPES.join(', ')}`,
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
        hint: `pad the row, or pick a type whose block fits (Q8_0/Q4_0/Q4_1/Q5_0/Q5_1/IQ4_NL need multiples of 32, F32/F16/BF16 any length)`,
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
