import { fp32ToFp16 } from './f16.ts'

// Helpers shared by the quantizers in quants.ts, quants-legacy.ts, quants-k.ts and quants-iq.ts.
// ggml computes in float32, so every arithmetic step is rounded with Math.fround (`f`) exactly where
// C rounds; the order of operations matters (ggml is compiled without FMA contraction on x86-64).

export const f = Math.fround

/** Quantizes the floats `x` (whole blocks) into `y` from byte `yo`. */
export type Quantizer = (x: Float32Array, y: Uint8Array, yo: number) => void
/** Dequantizes `n` elements (whole blocks) from the start of `y` into `out`. */
export type Dequantizer = (y: Uint8Array, n: number, out: Float32Array) => void

export const GROUP_MAX_EPS = f(1e-15)
export const TENTH = f(0.1)
export const FLT_MAX = 3.4028234663852886e38

/**
 * The value of largest magnitude among `n` values from `x[from]`, sign kept (the first of equals; 0
 * for all zeros): the `max` ggml's quantizers scale by.
 */
export function maxByMagnitude(x: Float32Array, from: number, n: number): number {
  let amax = 0
  let max = 0
  for (let i = from; i < from + n; i++) {
    const v = x[i]!
    if (amax < Math.abs(v)) {
      amax = Math.abs(v)
      max = v
    }
  }
  return max
}

/** ggml's nearest_int: round half to even via the float32 magic-number trick, for any input. */
export function nearestInt(v: number): number {
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
export function roundAway(x: number): number {
  const r = Math.round(x)
  return r - x === 0.5 && x < 0 ? r - 1 : r
}

/** C's `(int8_t)x` for a float on x86-64: truncate toward zero, keep the low 8 bits; NaN gives 0. */
export function truncInt8(x: number): number {
  return (Math.trunc(x) << 24) >> 24
}

export function writeF16(y: Uint8Array, o: number, v: number): void {
  const h = fp32ToFp16(v)
  y[o] = h & 0xff
  y[o + 1] = h >>> 8
}

export function readF16(y: Uint8Array, o: number, table: Float32Array): number {
  return table[y[o]! | (y[o + 1]! << 8)]!
}

/** The `-min` that makeQkx2Quants found (ggml's `*the_min`). */
export const qkx2Min = new Float32Array(1)

/**
 * ggml's make_qkx2_quants: a scale and a (negated) min for `n` values at `x[xo]`, fitted by
 * weighted least squares over `nstep + 1` candidate scales; errors are squared, or absolute when
 * `useMad`. Writes the levels to `L[lo..]` and the min to `qkx2Min[0]`; returns the scale.
 */
export function makeQkx2Quants(
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
  useMad: boolean,
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
    qkx2Min[0] = -min
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
    bestError = f(bestError + f(weights[i]! * (useMad ? Math.abs(diff) : f(diff * diff))))
  }
  if (nstep < 1) {
    qkx2Min[0] = -min
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
        curError = f(curError + f(weights[i]! * (useMad ? Math.abs(diff) : f(diff * diff))))
      }
      if (curError < bestError) {
        for (let i = 0; i < n; i++) L[lo + i] = Laux[i]!
        bestError = curError
        scale = thisScale
        min = thisMin
      }
    }
  }
  qkx2Min[0] = -min
  return scale
}

/** ggml's get_scale_min_k4: the 6-bit scale and min of sub-block `j` from the 12 packed bytes. */
export function scaleMinK4(j: number, q: Uint8Array, qo: number): [number, number] {
  if (j < 4) return [q[qo + j]! & 63, q[qo + j + 4]! & 63]
  return [
    (q[qo + j + 4]! & 0x0f) | ((q[qo + j - 4]! >>> 6) << 4),
    (q[qo + j + 4]! >>> 4) | ((q[qo + j]! >>> 6) << 4),
  ]
}

/**
 * Q4_K's and Q5_K's scale packing: the 8 sub-block scales and mins as 6-bit levels of `maxScale/63`
 * and `maxMin/63`, into the 12 bytes at `y[sc]`, as get_scale_min_k4 reads them.
 */
export function packScalesMinsK4(
  y: Uint8Array,
  sc: number,
  scales: Float32Array,
  mins: Float32Array,
  maxScale: number,
  maxMin: number,
): void {
  const invScale = maxScale > 0 ? f(63 / maxScale) : 0
  const invMin = maxMin > 0 ? f(63 / maxMin) : 0
  for (let j = 0; j < 8; j++) {
    // uint8_t ls = nearest_int(...): the int is truncated to 8 bits before MIN(63, ...).
    const ls = Math.min(63, nearestInt(f(invScale * scales[j]!)) & 0xff)
    const lm = Math.min(63, nearestInt(f(invMin * mins[j]!)) & 0xff)
    if (j < 4) {
      y[sc + j] = ls
      y[sc + j + 4] = lm
    } else {
      y[sc + j + 4] = (ls & 0x0f) | ((lm & 0x0f) << 4)
      y[sc + j - 4]! |= (ls >>> 4) << 6
      y[sc + j]! |= (lm >>> 4) << 6
    }
  }
}

/** ggml's `w_l = av_x + |x_l|` weights for a sub-block of 32 (Q4_K, Q5_K), into `weights[0..32)`. */
export function avxWeights32(x: Float32Array, xo: number, weights: Float32Array): void {
  let sumX2 = 0
  for (let l = 0; l < 32; l++) {
    const v = x[xo + l]!
    sumX2 = f(sumX2 + f(v * v))
  }
  const avX = f(Math.sqrt(f(sumX2 / 32)))
  for (let l = 0; l < 32; l++) weights[l] = f(avX + Math.abs(x[xo + l]!))
}
