import type { RopeType } from './config.ts'

// The element-wise parts of the llama forward pass, written to round like ggml's CPU ops: f32
// values, sums of squares and softmax denominators in f64.

const f = Math.fround

/** RMSNorm of `n` values at `x[xOff]`, times `weight`, into `out[outOff]` (ggml rms_norm + mul). */
export function rmsNorm(
  x: Float32Array,
  xOff: number,
  n: number,
  weight: Float32Array,
  eps: number,
  out: Float32Array,
  outOff: number,
): void {
  let sum = 0
  for (let i = 0; i < n; i++) {
    const v = x[xOff + i]!
    sum += f(v * v)
  }
  const mean = f(sum / n)
  const scale = f(1 / f(Math.sqrt(f(mean + eps))))
  for (let i = 0; i < n; i++) out[outOff + i] = f(x[xOff + i]! * scale) * weight[i]!
}

/** cos/sin of each rotated pair at one position, as ggml_rope_cache_init computes them. */
export function ropeCache(
  pos: number,
  headDim: number,
  base: number,
  freqScale: number,
  freqFactors: Float32Array | undefined,
  out: Float32Array,
  outOff = 0,
): void {
  const thetaScale = f(base ** f(-2 / headDim))
  let theta = f(pos)
  for (let i = 0; i < headDim / 2; i++) {
    const ff = freqFactors ? freqFactors[i]! : 1
    const t = f(freqScale * f(theta / ff))
    out[outOff + 2 * i] = Math.cos(t)
    out[outOff + 2 * i + 1] = Math.sin(t)
    theta = f(theta * thetaScale)
  }
}

/**
 * Rotates `heads` heads of `headDim` values at `x[off]` in place with the cos/sin `ropeCache` wrote
 * at `cache[cacheOff]`.
 */
export function applyRope(
  x: Float32Array,
  off: number,
  heads: number,
  headDim: number,
  cache: Float32Array,
  type: RopeType,
  cacheOff = 0,
): void {
  const half = headDim / 2
  for (let h = 0; h < heads; h++) {
    const base = off + h * headDim
    for (let i = 0; i < half; i++) {
      const c = cache[cacheOff + 2 * i]!
      const s = cache[cacheOff + 2 * i + 1]!
      const a = type === 'normal' ? base + 2 * i : base + i
      const b = type === 'normal' ? a + 1 : a + half
      const x0 = x[a]!
      const x1 = x[b]!
      x[a] = f(x0 * c) - f(x1 * s)
      x[b] = f(x0 * s) + f(x1 * c)
    }
  }
}

const EXP_TABLE = Float64Array.from({ length: 32 }, (_, j) => 2 ** (j / 32))
/** 2^e for e in [-160, 140). */
const EXP_SCALE = Float64Array.from({ length: 300 }, (_, e) => 2 ** (e - 160))
const EXP_INV = 32 / Math.LN2
const EXP_LN2_HI = 0.6931471803691238 / 32
const EXP_LN2_LO = 1.9082149292705877e-10 / 32
/** Adding and subtracting 1.5 · 2^52 rounds a double to an integer (ties to even). */
const ROUND = 6755399441055744

/**
 * `x[i] = e^x[i]` (rounded to f32) for i in `[from, to)`. Equal to `Math.fround(Math.exp(x[i]))`
 * for every f32 input (checked over [-110, 95) in steps of 1e-4) and a quarter faster:
 * e^x = 2^(k/32) · e^r with |r| ≤ ln 2 / 64, 2^(k/32) from tables, e^r from its Taylor polynomial
 * to r^5 (error < 2e-13). A loop over an array rather than a function per value: V8's mid tier
 * boxes the double a non-inlined call returns, one allocation per value.
 */
export function expInPlace(x: Float32Array, from: number, to: number): void {
  for (let i = from; i < to; i++) {
    const v = x[i]!
    if (v > -104 && v < 88) {
      const kf = v * EXP_INV + ROUND - ROUND
      const k = kf | 0
      const r = v - kf * EXP_LN2_HI - kf * EXP_LN2_LO
      const p = 1 + r * (1 + r * (0.5 + r * (1 / 6 + r * (1 / 24 + r * (1 / 120)))))
      x[i] = EXP_SCALE[(k >> 5) + 160]! * EXP_TABLE[k & 31]! * p
    } else {
      x[i] = Math.exp(v)
    }
  }
}

/** `gate[i] = silu(gate[i]) * up[i]` for `n` values (ggml swiglu); `scratch` holds `n` floats. */
export function swiglu(gate: Float32Array, up: Float32Array, n: number, scratch: Float32Array): void {
  for (let i = 0; i < n; i++) scratch[i] = -gate[i]!
  expInPlace(scratch, 0, n)
  for (let i = 0; i < n; i++) {
    const g = gate[i]!
    gate[i] = f(g / f(1 + scratch[i]!)) * up[i]!
  }
}

/** Adds `n` values of `b` into `a`. */
export function addInto(a: Float32Array, b: Float32Array, n: number): void {
  for (let i = 0; i < n; i++) a[i] = a[i]! + b[i]!
}

/**
 * Attention weights from raw scores, in place, as ggml's soft_max_ext with llama.cpp's causal mask
 * computes them: `rows` rows of `width` scores q·k, row r may see its first `visible(r)` positions;
 * each becomes `softmax(scale · q·k)` (sum in f64), and the masked tail 0.
 */
export function softmaxRows(
  scores: Float32Array,
  rows: number,
  width: number,
  scale: number,
  visible: (row: number) => number,
): void {
  for (let r = 0; r < rows; r++) {
    const base = r * width
    const end = base + visible(r)
    let max = Number.NEGATIVE_INFINITY
    for (let t = base; t < end; t++) {
      const s = f(scores[t]! * scale)
      scores[t] = s
      if (s > max) max = s
    }
    for (let t = base; t < end; t++) scores[t] = scores[t]! - max
    expInPlace(scores, base, end)
    let sum = 0
    for (let t = base; t < end; t++) sum += scores[t]!
    const inv = f(1 / sum)
    for (let t = base; t < end; t++) scores[t] = scores[t]! * inv
    scores.fill(0, end, base + width)
  }
}
