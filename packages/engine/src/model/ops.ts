import { fp16ToFp32, fp32ToFp16 } from '@meshnet/gguf'
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

/**
 * `x[i] = cap · tanh(x[i] / cap)` for i in `[from, to)`: Gemma's soft-capping, as ggml computes it
 * (scale by 1/cap, tanh, scale by cap, each rounded to f32).
 */
export function softcap(x: Float32Array, from: number, to: number, cap: number): void {
  const inv = f(1 / cap)
  for (let i = from; i < to; i++) x[i] = f(cap * f(Math.tanh(f(x[i]! * inv))))
}

/** ggml's tanh-approximated GELU in f32 (`ggml_gelu_f32`). */
function geluF32(x: number): number {
  const inner = f(f(SQRT_2_OVER_PI * x) * f(1 + f(f(GELU_COEF_A * x) * x)))
  return f(f(f(0.5 * x) * f(1 + f(Math.tanh(inner)))))
}
const GELU_COEF_A = f(0.044715)
const SQRT_2_OVER_PI = f(0.7978845608028654)
let geluTable: Float32Array | undefined

/**
 * `gate[i] = gelu(gate[i]) * up[i]` for `n` values, as ggml's CPU GeGLU computes it: the input
 * rounded to a half and looked up in a table of halves (`ggml_table_gelu_f16`), 0 below -10 and the
 * identity above 10.
 */
export function geglu(gate: Float32Array, up: Float32Array, n: number): void {
  geluTable ??= Float32Array.from({ length: 65536 }, (_, h) => fp16ToFp32(fp32ToFp16(geluF32(fp16ToFp32(h)))))
  const table = geluTable
  for (let i = 0; i < n; i++) {
    const x = gate[i]!
    if (x <= -10) gate[i] = 0
    else if (x >= 10) gate[i] = x * up[i]!
    else gate[i] = table[fp32ToFp16(x)]! * up[i]!
  }
}

/** Adds `n` values of `b` into `a`. */
export function addInto(a: Float32Array, b: Float32Array, n: number): void {
  for (let i = 0; i < n; i++) a[i] = a[i]! + b[i]!
}

/**
 * Attention weights from raw scores, in place, as ggml's soft_max_ext with llama.cpp's causal mask
 * computes them: `rows` rows of `width` scores q·k, row r may see its first `visible(r)` positions
 * (and with a sliding `window` > 0 only the last `window` of those); each becomes
 * `softmax(scale · q·k)` (sum in f64), and the masked positions 0. A `softcapping` > 0 first caps
 * every score to `c · tanh(q·k / c)` (Gemma 2).
 */
export function softmaxRows(
  scores: Float32Array,
  rows: number,
  width: number,
  scale: number,
  visible: (row: number) => number,
  window = 0,
  softcapping = 0,
): void {
  for (let r = 0; r < rows; r++) {
    const base = r * width
    const seen = visible(r)
    const end = base + seen
    const start = window > 0 && seen > window ? end - window : base
    if (softcapping > 0) softcap(scores, start, end, softcapping)
    let max = Number.NEGATIVE_INFINITY
    for (let t = start; t < end; t++) {
      const s = f(scores[t]! * scale)
      scores[t] = s
      if (s > max) max = s
    }
    for (let t = start; t < end; t++) scores[t] = scores[t]! - max
    expInPlace(scores, start, end)
    let sum = 0
    for (let t = start; t < end; t++) sum += scores[t]!
    const inv = f(1 / sum)
    for (let t = start; t < end; t++) scores[t] = scores[t]! * inv
    scores.fill(0, base, start)
    scores.fill(0, end, base + width)
  }
}
