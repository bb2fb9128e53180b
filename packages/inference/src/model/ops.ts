import { fp16ToFp32 } from '@meshnet/gguf'
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
): void {
  const thetaScale = f(base ** f(-2 / headDim))
  let theta = f(pos)
  for (let i = 0; i < headDim / 2; i++) {
    const ff = freqFactors ? freqFactors[i]! : 1
    const t = f(freqScale * f(theta / ff))
    out[2 * i] = Math.cos(t)
    out[2 * i + 1] = Math.sin(t)
    theta = f(theta * thetaScale)
  }
}

/** Rotates `heads` heads of `headDim` values at `x[off]` in place with a cache from `ropeCache`. */
export function applyRope(
  x: Float32Array,
  off: number,
  heads: number,
  headDim: number,
  cache: Float32Array,
  type: RopeType,
): void {
  const half = headDim / 2
  for (let h = 0; h < heads; h++) {
    const base = off + h * headDim
    for (let i = 0; i < half; i++) {
      const c = cache[2 * i]!
      const s = cache[2 * i + 1]!
      const a = type === 'normal' ? base + 2 * i : base + i
      const b = type === 'normal' ? a + 1 : a + half
      const x0 = x[a]!
      const x1 = x[b]!
      x[a] = f(x0 * c) - f(x1 * s)
      x[b] = f(x0 * s) + f(x1 * c)
    }
  }
}

/** `gate[i] = silu(gate[i]) * up[i]` for `n` values (ggml swiglu). */
export function swiglu(gate: Float32Array, up: Float32Array, n: number): void {
  for (let i = 0; i < n; i++) {
    const g = gate[i]!
    gate[i] = f(g / f(1 + f(Math.exp(-g)))) * up[i]!
  }
}

/** Adds `n` values of `b` into `a`. */
export function addInto(a: Float32Array, b: Float32Array, n: number): void {
  for (let i = 0; i < n; i++) a[i] = a[i]! + b[i]!
}

/** IEEE binary16 rounding of a number (round to nearest, ties to even), as ggml converts to F16. */
export const f16round: (x: number) => number = (Math as unknown as { f16round(x: number): number }).f16round

/** f32 values of every binary16 bit pattern. */
export const F16_TABLE: Float32Array = Float32Array.from({ length: 65536 }, (_, h) => fp16ToFp32(h))

/**
 * One query head over `ctx` cached positions of one KV head of an F16 cache (`stride` values per
 * position, the head at `kvOff`), as llama.cpp's classic attention computes it: q and the softmax
 * weights rounded to F16, `softmax(scale · q·k)`, then the weighted sum of v into `out[outOff]`.
 */
export function attendF16(
  q: Float32Array,
  qOff: number,
  k: Uint16Array,
  v: Uint16Array,
  kvOff: number,
  stride: number,
  ctx: number,
  d: number,
  scale: number,
  scores: Float64Array,
  qh: Float32Array,
  acc: Float64Array,
  out: Float32Array,
  outOff: number,
): void {
  const table = F16_TABLE
  for (let j = 0; j < d; j++) qh[j] = f16round(q[qOff + j]!)
  let max = Number.NEGATIVE_INFINITY
  for (let t = 0; t < ctx; t++) {
    const base = t * stride + kvOff
    let dot = 0
    for (let j = 0; j < d; j++) dot += qh[j]! * table[k[base + j]!]!
    const score = f(f(dot) * scale)
    scores[t] = score
    if (score > max) max = score
  }
  let sum = 0
  for (let t = 0; t < ctx; t++) {
    const e = f(Math.exp(f(scores[t]! - max)))
    scores[t] = e
    sum += e
  }
  const inv = f(1 / sum)
  acc.fill(0, 0, d)
  for (let t = 0; t < ctx; t++) {
    const w = f16round(f(scores[t]! * inv))
    const base = t * stride + kvOff
    for (let j = 0; j < d; j++) acc[j] = acc[j]! + w * table[v[base + j]!]!
  }
  for (let j = 0; j < d; j++) out[outOff + j] = acc[j]!
}

/** `attendF16` for an F32 cache: no F16 rounding anywhere. */
export function attendF32(
  q: Float32Array,
  qOff: number,
  k: Float32Array,
  v: Float32Array,
  kvOff: number,
  stride: number,
  ctx: number,
  d: number,
  scale: number,
  scores: Float64Array,
  acc: Float64Array,
  out: Float32Array,
  outOff: number,
): void {
  let max = Number.NEGATIVE_INFINITY
  for (let t = 0; t < ctx; t++) {
    const base = t * stride + kvOff
    let dot = 0
    for (let j = 0; j < d; j++) dot += q[qOff + j]! * k[base + j]!
    const score = f(f(dot) * scale)
    scores[t] = score
    if (score > max) max = score
  }
  let sum = 0
  for (let t = 0; t < ctx; t++) {
    const e = f(Math.exp(f(scores[t]! - max)))
    scores[t] = e
    sum += e
  }
  const inv = f(1 / sum)
  acc.fill(0, 0, d)
  for (let t = 0; t < ctx; t++) {
    const w = f(scores[t]! * inv)
    const base = t * stride + kvOff
    for (let j = 0; j < d; j++) acc[j] = acc[j]! + w * v[base + j]!
  }
  for (let j = 0; j < d; j++) out[outOff + j] = acc[j]!
}
