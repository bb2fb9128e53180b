import { fp16ToFp32, fp32ToFp16, QK_K } from '@meshnet/gguf'

// ggml's CPU backend does not multiply weights by f32 activations: it first converts the
// activations to the weight type's `vec_dot_type` (Q8_0 for Q4_0/Q8_0, Q8_K for K-quants, F16 for
// F16) and then takes integer or f16 dot products. Rounding the activations the same way before the
// kernels run makes the Meshnet engine's logits agree with llama.cpp's to float rounding, whatever
// the kernels do inside (a kernel that quantizes again gets the same values back).

const f = Math.fround
const Q8_0 = 32

const CLASS: Record<number, 'f32' | 'f16' | 'q8_0' | 'q8_K'> = {
  0: 'f32',
  1: 'f16',
  2: 'q8_0', // Q4_0
  8: 'q8_0', // Q8_0
  12: 'q8_K', // Q4_K
  14: 'q8_K', // Q6_K
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
  const block = kind === 'q8_0' ? Q8_0 : QK_K
  if (cols % block !== 0) {
    dst.set(src.subarray(0, n))
    return
  }
  for (let b = 0; b < n; b += block) {
    if (kind === 'q8_0') roundQ8_0(src, dst, b, block)
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
