// What the kernel files share: ggml type ids, the vector constants in the control block, half
// conversion and horizontal sums.

// ggml type ids.
export const F32: i32 = 0
export const F16: i32 = 1
export const Q4_0: i32 = 2
export const Q4_1: i32 = 3
export const Q5_0: i32 = 6
export const Q5_1: i32 = 7
export const Q8_0: i32 = 8
export const Q2_K: i32 = 10
export const Q3_K: i32 = 11
export const Q4_K: i32 = 12
export const Q5_K: i32 = 13
export const Q6_K: i32 = 14
export const IQ4_NL: i32 = 20
export const IQ4_XS: i32 = 23
export const BF16: i32 = 30
// Meshnet's packed layouts (see `pack`): four rows interleaved, ids 256 + the ggml type.
export const PACKED: i32 = 256
export const Q4_0X4: i32 = PACKED + Q4_0
// (PACKED + Q8_0 is the packed Q8_0 layout: every packed type other than Q4_0X4.)

// Vector constants live in the control block and are loaded once per row range: V8 re-creates a
// v128 constant at each use inside a loop (three instructions), while a loaded one stays in a
// register. `init` writes them.
export const K_LOW4: usize = 256
export const K_BITS45: usize = 272
export const K_ONES16: usize = 288
export const K_F16_MASK: usize = 304
export const K_F16_SCALE: usize = 320
export const K_M127: usize = 336
export const K_H_EM: usize = 352
export const K_H_BIAS: usize = 368
export const K_H_TINY: usize = 384
export const K_H_NORMAL: usize = 400
export const K_F32_EXP: usize = 416
export const K_PACK_SCALE: usize = 432
export const K_BIT4: usize = 448 // i8 0x10
export const K_LOW2: usize = 464 // i8 0x03
export const K_BIT2: usize = 480 // i8 0x04
export const K_IQ4: usize = 496 // kvalues_iq4nl: the 16 IQ4_NL / IQ4_XS values, i8
export const K_BYTE_BITS: usize = 512 // i8 1, 2, 4, …, 128, twice
export const K_IQ4XS_LO: usize = 528 // i16 16, 1, 16, 1, …: moves either nibble of a byte to bits 4-7
export const K_IQ4XS_HI: usize = 544 // i16 2^14, 2^12, …, 1: moves bits 2k, 2k + 1 of lane k to 14, 15
// 8 swizzle indices, 16 bytes each: [k, 0x80] eight times for k < 8, which widen byte k of a vector
// to i16 and splat it in one relaxed swizzle (an index with its top bit set gives 0).
export const K_SPLAT16: usize = 560
// 8 swizzle indices: [2k, 2k + 1] eight times, which splat i16 lane k.
export const K_SPLATW: usize = 688
// Swizzle indices and masks of scalesMinsK4.
export const K_SM_A: usize = 816
export const K_SM_B: usize = 832
export const K_SM_H: usize = 848
export const K_SM_MASK: usize = 864
export const K_SM_TOP: usize = 880
// IQ4_XS scale unpacking (iq4xsScales in kquants.ts): swizzle [0, -, 0, -, 1, -, 1, -, …] and masks.
export const K_IQ4XS_IDX: usize = 896
export const K_IQ4XS_M1: usize = 912 // i16 0xf0
export const K_IQ4XS_M2: usize = 928 // i16 0x300
export const K_IQ4XS_512: usize = 944 // i16 512
// Swizzle indices that copy byte 0 of a Q5_0 / Q5_1 qh to lanes 0-7 and byte 1 to lanes 8-15
// (values 0-15), and bytes 2, 3 likewise (values 16-31).
export const K_Q5_LO: usize = 960
export const K_Q5_HI: usize = 976
export const K_BIT5: usize = 992 // i8 0x20
export const K_M1E: usize = 1008 // i8 0x1e

export const ZERO: v128 = i32x4.splat(0)

/** Writes the vector constants above into the control block at ctrl (kernels.ts `init`). */
export function writeConstants(ctrl: usize): void {
  v128.store(ctrl, i8x16.splat(0x0f), K_LOW4)
  v128.store(ctrl, i8x16.splat(0x30), K_BITS45)
  v128.store(ctrl, i16x8.splat(1), K_ONES16)
  v128.store(ctrl, i32x4.splat(0x8fffe000), K_F16_MASK)
  v128.store(ctrl, f32x4.splat(reinterpret<f32>(0x77800000)), K_F16_SCALE) // 2^112
  v128.store(ctrl, i8x16.splat(-127), K_M127)
  v128.store(ctrl, i32x4.splat(0x7fff), K_H_EM)
  v128.store(ctrl, i32x4.splat(0x38000000), K_H_BIAS)
  v128.store(ctrl, f32x4.splat(reinterpret<f32>(0x33800000)), K_H_TINY) // 2^-24
  v128.store(ctrl, i32x4.splat(0x400), K_H_NORMAL)
  v128.store(ctrl, i32x4.splat(0x7f800000), K_F32_EXP)
  v128.store(ctrl, f32x4.splat(reinterpret<f32>(0x72800000)), K_PACK_SCALE) // 2^102
  v128.store(ctrl, i8x16.splat(0x10), K_BIT4)
  v128.store(ctrl, i8x16.splat(0x03), K_LOW2)
  v128.store(ctrl, i8x16.splat(0x04), K_BIT2)
  // ggml's kvalues_iq4nl.
  v128.store(ctrl, i8x16(-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113), K_IQ4)
  v128.store(ctrl, i8x16(1, 2, 4, 8, 16, 32, 64, -128, 1, 2, 4, 8, 16, 32, 64, -128), K_BYTE_BITS)
  v128.store(ctrl, i16x8(16, 1, 16, 1, 16, 1, 16, 1), K_IQ4XS_LO)
  v128.store(ctrl, i16x8(1 << 14, 1 << 12, 1 << 10, 1 << 8, 1 << 6, 1 << 4, 1 << 2, 1), K_IQ4XS_HI)
  for (let k: i32 = 0; k < 8; k++)
    v128.store(ctrl + K_SPLAT16 + ((<usize>k) << 4), i16x8.splat(<i16>(0x8000 | k)))
  for (let k: i32 = 0; k < 8; k++)
    v128.store(ctrl + K_SPLATW + ((<usize>k) << 4), i16x8.splat(<i16>(((2 * k + 1) << 8) | (2 * k))))
  v128.store(ctrl, i8x16(0, 1, 2, 3, 8, 9, 10, 11, 4, 5, 6, 7, -128, -128, -128, -128), K_SM_A)
  v128.store(
    ctrl,
    i8x16(-128, -128, -128, -128, -128, -128, -128, -128, -128, -128, -128, -128, 8, 9, 10, 11),
    K_SM_B,
  )
  v128.store(ctrl, i8x16(-128, -128, -128, -128, 0, 1, 2, 3, -128, -128, -128, -128, 4, 5, 6, 7), K_SM_H)
  v128.store(ctrl, i8x16(63, 63, 63, 63, 15, 15, 15, 15, 63, 63, 63, 63, 15, 15, 15, 15), K_SM_MASK)
  v128.store(ctrl, i8x16.splat(0x30), K_SM_TOP)
  v128.store(ctrl, i8x16(0, -128, 0, -128, 1, -128, 1, -128, 2, -128, 2, -128, 3, -128, 3, -128), K_IQ4XS_IDX)
  v128.store(ctrl, i16x8.splat(0xf0), K_IQ4XS_M1)
  v128.store(ctrl, i16x8.splat(0x300), K_IQ4XS_M2)
  v128.store(ctrl, i16x8.splat(512), K_IQ4XS_512)
  v128.store(ctrl, i8x16(0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1), K_Q5_LO)
  v128.store(ctrl, i8x16(2, 2, 2, 2, 2, 2, 2, 2, 3, 3, 3, 3, 3, 3, 3, 3), K_Q5_HI)
  v128.store(ctrl, i8x16.splat(0x20), K_BIT5)
  v128.store(ctrl, i8x16.splat(0x1e), K_M1E)
}

// ---------------------------------------------------------------------------------------------
// Helpers

// IEEE half -> float, exact for every half and without arithmetic on float subnormals, which costs
// x86 a microcode assist per operation (and block scales are often half subnormals: a Q6_K d of a
// layer with weights below 0.25 is): a normal half by re-biasing its exponent in the integer bits,
// a subnormal one as its integer mantissa × 2^-24.
export function f16(h: u32): f32 {
  const em = h & 0x7fff
  const sign = (h & 0x8000) << 16
  if (em - 0x400 < 0x7800) return reinterpret<f32>(sign | ((em << 13) + 0x38000000)) // normal
  if (em < 0x400) return reinterpret<f32>(sign | reinterpret<u32>(<f32>em * reinterpret<f32>(0x33800000)))
  return reinterpret<f32>(sign | (em << 13) | 0x7f800000) // infinity, NaN
}

// The same for the four (finite) halves in the low 16 bits of each i32 lane of h.
export function f16x4(h: v128, ctrl: usize): v128 {
  const em = v128.and(h, v128.load(ctrl, K_H_EM))
  const normal = i32x4.add(i32x4.shl(em, 13), v128.load(ctrl, K_H_BIAS))
  const tiny = f32x4.mul(f32x4.convert_i32x4_s(em), v128.load(ctrl, K_H_TINY))
  const v = v128.bitselect(tiny, normal, i32x4.lt_s(em, v128.load(ctrl, K_H_NORMAL)))
  return v128.or(v, i32x4.shl(v128.xor(h, em), 16))
}

// IEEE half -> float for four halves in the top 16 bits of each i32 lane of h, in three operations
// for F16 weights: an arithmetic shift right by 3 puts sign, exponent and mantissa where a float has
// them (the exponent still biased by 15; copies of the sign in bits 28-30 are masked off), and
// × 2^112 re-biases the exponent. Exact for finite halves, but a subnormal half is a float
// subnormal in that product (slow, and rare in weights); infinities and NaNs come out finite.
export function f16x4Fast(h: v128, mask: v128, scale: v128): v128 {
  return f32x4.mul(v128.and(i32x4.shr_s(h, 3), mask), scale)
}

export function hsum(v: v128): f32 {
  const s = f32x4.add(v, v128.shuffle<f32>(v, v, 2, 3, 0, 1))
  return f32x4.extract_lane(s, 0) + f32x4.extract_lane(s, 1)
}

// [hsum(s0), hsum(s1), hsum(s2), hsum(s3)], each as hsum adds: (v0 + v2) + (v1 + v3).
export function hsumLanes(s0: v128, s1: v128, s2: v128, s3: v128): v128 {
  const r = f32x4.add(v128.shuffle<f32>(s0, s1, 0, 4, 1, 5), v128.shuffle<f32>(s0, s1, 2, 6, 3, 7))
  const t = f32x4.add(v128.shuffle<f32>(s2, s3, 0, 4, 1, 5), v128.shuffle<f32>(s2, s3, 2, 6, 3, 7))
  return f32x4.add(v128.shuffle<f32>(r, t, 0, 1, 4, 5), v128.shuffle<f32>(r, t, 2, 3, 6, 7))
}

// [Σ a, Σ b, Σ c, Σ d] of four i32x4 vectors.
export function hsum4(a: v128, b: v128, c: v128, d: v128): v128 {
  const ab = i32x4.add(v128.shuffle<i32>(a, b, 0, 4, 1, 5), v128.shuffle<i32>(a, b, 2, 6, 3, 7))
  const cd = i32x4.add(v128.shuffle<i32>(c, d, 0, 4, 1, 5), v128.shuffle<i32>(c, d, 2, 6, 3, 7))
  return i32x4.add(v128.shuffle<i32>(ab, cd, 0, 1, 4, 5), v128.shuffle<i32>(ab, cd, 2, 3, 6, 7))
}

// The f16 scales at the start of four consecutive blocks of `size` bytes, as floats: the fast
// conversion unless a scale is zero or subnormal.
export function scales4(p: usize, size: usize, ctrl: usize, mask: v128, expBits: v128, scale: v128): v128 {
  let h = v128.load16_lane(p, ZERO, 1)
  h = v128.load16_lane(p + size, h, 3)
  h = v128.load16_lane(p + 2 * size, h, 5)
  h = v128.load16_lane(p + 3 * size, h, 7)
  const t = v128.and(i32x4.shr_s(h, 3), mask)
  if (v128.any_true(i32x4.eq(v128.and(t, expBits), ZERO))) return f16x4(i32x4.shr_u(h, 16), ctrl)
  return f32x4.mul(t, scale)
}

// The four rows' f32 scales of super-block b (K-quant layout: one scale per 256 at 3·cols).
export function scales256x4(x: usize, xStride: usize, cols: usize, b: usize): v128 {
  const p = x + 3 * cols + (b << 2)
  let v = f32x4.splat(load<f32>(p))
  v = f32x4.replace_lane(v, 1, load<f32>(p + xStride))
  v = f32x4.replace_lane(v, 2, load<f32>(p + 2 * xStride))
  return f32x4.replace_lane(v, 3, load<f32>(p + 3 * xStride))
}

// Σ over 64 values of one Q4_K chunk (low nibbles × x[0..32) × sLo, high × x[32..64) × sHi).
export function q4_KQuad(xp: usize, l0: v128, l1: v128, h0: v128, h1: v128, sLo: v128, sHi: v128): v128 {
  const lo = i16x8.add(
    i16x8.relaxed_dot_i8x16_i7x16_s(v128.load(xp), l0),
    i16x8.relaxed_dot_i8x16_i7x16_s(v128.load(xp, 16), l1),
  )
  const hi = i16x8.add(
    i16x8.relaxed_dot_i8x16_i7x16_s(v128.load(xp, 32), h0),
    i16x8.relaxed_dot_i8x16_i7x16_s(v128.load(xp, 48), h1),
  )
  return i32x4.add(i32x4.dot_i16x8_s(lo, sLo), i32x4.dot_i16x8_s(hi, sHi))
}

// i16 lane k of s in every lane: one relaxed swizzle (pshufb) with an index vector from the
// control block, where a v128.shuffle of that pattern takes two instructions.
export function splatW(s: v128, ctrl: usize, k: usize): v128 {
  return i8x16.relaxed_swizzle(s, v128.load(ctrl + K_SPLATW + (k << 4)))
}

// Byte k (< 8) of s, zero-extended to i16, in every i16 lane.
export function splatB(s: v128, ctrl: usize, k: usize): v128 {
  return i8x16.relaxed_swizzle(s, v128.load(ctrl + K_SPLAT16 + (k << 4)))
}

// The eight 6-bit scales (bytes 0-7) and eight 6-bit mins (bytes 8-15) of a Q4_K / Q5_K
// super-block whose 12 scale bytes are at p, unpacked as ggml's get_scale_min_k4: bytes 0-3 hold
// scales 0-3 (and the top bits of scales 4-7), bytes 4-7 mins 0-3 (and the top bits of mins 4-7),
// bytes 8-11 the low nibbles of scales and mins 4-7. Reads 16 bytes from p.
export function scalesMinsK4(p: usize, ctrl: usize): v128 {
  const v = v128.load(p)
  // [a, c, m, 0] and [0, 0, 0, c >> 4] (a = bytes 0-3, m = 4-7, c = 8-11), masked to 6 and 4 bits.
  const a = i8x16.relaxed_swizzle(v, v128.load(ctrl, K_SM_A))
  const c = i8x16.relaxed_swizzle(i16x8.shr_u(v, 4), v128.load(ctrl, K_SM_B))
  // The top two bits of a and m at bits 4, 5 of groups 1 and 3.
  const h = i8x16.relaxed_swizzle(i16x8.shr_u(v, 2), v128.load(ctrl, K_SM_H))
  return v128.or(v128.and(v128.or(a, c), v128.load(ctrl, K_SM_MASK)), v128.and(h, v128.load(ctrl, K_SM_TOP)))
}

// A K-quant super-block's share of one row's dot product as the one-row and four-row kernels both
// take it, so that a row gives the same bits alone and in a batch: acc + S·d − M·dmin in f32 (two
// fused multiply-adds), S and M the sums of the i32 lanes of isum and mins (exact). Every lane of
// the result holds it; the four-row kernels do the same with one row per lane.
export function superBlock(acc: v128, isum: v128, mins: v128, d: f32, dmin: f32): v128 {
  // [S, S, M, M], then S and M in every lane.
  const t = i32x4.add(v128.shuffle<i32>(isum, mins, 0, 1, 4, 5), v128.shuffle<i32>(isum, mins, 2, 3, 6, 7))
  const f = f32x4.convert_i32x4_s(i32x4.add(t, v128.shuffle<i32>(t, t, 1, 0, 3, 2)))
  const r = f32x4.relaxed_madd(v128.shuffle<f32>(f, f, 0, 0, 0, 0), f32x4.splat(d), acc)
  return f32x4.relaxed_nmadd(v128.shuffle<f32>(f, f, 2, 2, 2, 2), f32x4.splat(dmin), r)
}

// The same without a min term (Q6_K): acc + S·d.
export function superBlockNoMin(acc: v128, isum: v128, d: f32): v128 {
  const t = i32x4.add(isum, v128.shuffle<i32>(isum, isum, 2, 3, 0, 1))
  const s = i32x4.add(t, v128.shuffle<i32>(t, t, 1, 0, 3, 2))
  return f32x4.relaxed_madd(f32x4.convert_i32x4_s(s), f32x4.splat(d), acc)
}
