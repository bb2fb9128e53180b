import { fp16ToFp32, fp32ToFp16, QK_K } from '@meshnet/gguf'

// ggml's CPU backend does not multiply weights by f32 activations: it first converts the
// activations to the weight type's `vec_dot_type` (Q8_0 for Q4_0/Q5_0/Q8_0/IQ4_NL, Q8_1 for
// Q4_1/Q5_1, Q8_K for the K-quants and IQ4_XS, F16 for F16, BF16 for BF16) and then takes integer or
// f16/bf16 dot products. Rounding the activations the same way before the kernels run makes the
// Meshnet engine's logits agree with llama.cpp's to float rounding, whatever the kernels do inside
// (a kernel that quantizes again gets the same values back). Q8_1 rounds the values as Q8_0 does;
// ggml's Q4_1/Q5_1 dot products also use each block's s = d·Σq rounded to a half for the min
// term, which rounded floats cannot carry: the reference kernels use Σ of the rounded values
// there, a difference of at most 2^-10·|m|·Σ|x| per block.

const f = Math.fround
const Q8_0 = 32

const CLASS: Record<number, 'f32' | 'f16' | 'bf16' | 'q8_0' | 'q8_1' | 'q8_K'> = {
  0: 'f32',
  1: 'f16',
  30: 'bf16', // BF16
  2: 'q8_0', // Q4_0
  3: 'q8_1', // Q4_1
  6: 'q8_0', // Q5_0
  7: 'q8_1', // Q5_1
  8: 'q8_0', // Q8_0
  20: 'q8_0', // IQ4_NL
  10: 'q8_K', // Q2_K
  11: 'q8_K', // Q3_K
  12: 'q8_K', // Q4_K
  13: 'q8_K', // Q5_K
  14: 'q8_K', // Q6_K
  23: 'q8_K', // IQ4_XS
}

const bits = new Uint32Array(1)
const bitsAsFloat = new Float32Array(bits.buffer)

/** v rounded to a bf16 as ggml's GGML_FP32_TO_BF16 does (nearest, ties to even; NaN stays NaN). */
function roundToBF16(v: number): number {
  bitsAsFloat[0] = v
  const u = bits[0]!
  bits[0] =
    (u & 0x7fffffff) > 0x7f800000 ? (u | 0x400000) & 0xffff0000 : (u + 0x7fff + ((u >>> 16) & 1)) & 0xffff0000
  return bitsAsFloat[0]!
}

/** Round half to even (the rounding of `_mm256_round_ps` and ggml's `nearest_int`). */
function rint(v: number): number {
  const r = Math.round(v)
  return r - v === 0.5 && r % 2 !== 0 ? r - 1 : r
}

/**
 * Writes `n` activations from `src` to `dst` as ggml would see them when multiplying by weights of
 * ggml `type` (`cols` per row; rows are quantized independently in whole blocks).
 */
export function roundActivations(
  type: number,
  src: Float32Array,
  n: number,
  cols: number,
  dst: Float32Array,
): void {
  const kind = CLASS[type] ?? 'f32'
  if (kind === 'f32') {
    dst.set(src.subarray(0, n))
    return
  }
  if (kind === 'f16') {
    for (let i = 0; i < n; i++) dst[i] = fp16ToFp32(fp32ToFp16(src[i]!))
    return
  }
  if (kind === 'bf16') {
    for (let i = 0; i < n; i++) dst[i] = roundToBF16(src[i]!)
    return
  }
  const block = kind === 'q8_K' ? QK_K : Q8_0
  if (cols % block !== 0) {
    dst.set(src.subarray(0, n))
    return
  }
  for (let b = 0; b < n; b += block) {
    if (kind !== 'q8_K') roundQ8_0(src, dst, b, block)
    else roundQ8_K(src, dst, b, block)
  }
}

function roundQ8_0(src: Float32Array, dst: Float32Array, at: number, block: number): void {
  let amax = 0
  for (let j = 0; j < block; j++) amax = Math.max(amax, Math.abs(src[at + j]!))
  const d = fp16ToFp32(fp32ToFp16(f(amax / 127)))
  const id = amax !== 0 ? f(127 / amax) : 0
  for (let j = 0; j < block; j++) dst[at + j] = f(rint(f(src[at + j]! * id)) * d)
}

function roundQ8_K(src: Float32Array, dst: Float32Array, at: number, block: number): void {
  let amax = 0
  let max = 0
  for (let j = 0; j < block; j++) {
    const v = src[at + j]!
    if (Math.abs(v) > amax) {
      amax = Math.abs(v)
      max = v
    }
  }
  if (amax === 0) {
    dst.fill(0, at, at + block)
    return
  }
  const iscale = f(-127 / max)
  const d = f(1 / iscale)
  for (let j = 0; j < block; j++) dst[at + j] = f(Math.min(127, rint(f(iscale * src[at + j]!))) * d)
}
