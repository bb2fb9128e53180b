// The other types of 32-value blocks: Q4_1, Q5_0, Q5_1 and IQ4_NL (Q4_0 and Q8_0 are in
// kernels.ts). As in ggml's CPU backend, Q5_0 and IQ4_NL meet q8_0 activations and Q4_1 and Q5_1
// q8_1 ones (the same values, plus s = d·Σq rounded to a half per block, for the min term):
//   Q4_1  (20 bytes): f16 d, f16 m, u8 qs[16]; value j = d·(qs[j] & 15) + m, j + 16: qs[j] >> 4
//   Q5_0  (22 bytes): f16 d, u32 qh, u8 qs[16]; value j = d·((qs[j] & 15 | bit j of qh << 4) - 16)
//   Q5_1  (24 bytes): f16 d, f16 m, u32 qh, u8 qs[16]; value j = d·(qs[j] & 15 | bit j of qh << 4) + m
//   IQ4_NL (18 bytes): f16 d, u8 qs[16]; value j = d·kvalues_iq4nl[qs[j] & 15]
// (values j + 16 take the high nibbles and bits j + 16 of qh). The unsigned 4- and 5-bit values are
// the 7-bit operand of a relaxed i8×i7 dot product; Q5_0's offset comes back as the precomputed
// 16·d_x·Σq. IQ4_NL's values (-127 to 113) are signed: as for Q8_0, the sign of x moves onto them
// and |x| is the 7-bit operand. Four blocks go through one horizontal sum (hsum4) and one vector of
// block scales.
//
// Activation layout (see kernels.ts): q at [0, cols), |q| and sign(q) at cols and 2·cols (IQ4_NL),
// the f32 block scale per 32 at 3·cols, then per 32 at 3·cols + cols/8: 16·d·Σq (Q5_0) or s (q8_1).

import {
  f16,
  hsum,
  hsum4,
  K_BIT4,
  K_BYTE_BITS,
  K_F16_MASK,
  K_F16_SCALE,
  K_F32_EXP,
  K_IQ4,
  K_LOW4,
  K_ONES16,
  K_Q5_HI,
  K_Q5_LO,
  Q4_1,
  Q5_0,
  Q5_1,
  scales4,
} from './common'

// Σ i32 lanes of v.
function sumLanes(v: v128): i32 {
  return (
    i32x4.extract_lane(v, 0) + i32x4.extract_lane(v, 1) + i32x4.extract_lane(v, 2) + i32x4.extract_lane(v, 3)
  )
}

// Σ u·q over one block, as i32x4: u the low nibbles of the 16 bytes at qp for x[0, 16), the high
// nibbles for x[16, 32), each ORed with hLo / hHi (a Q5 block's fifth bits, or zero).
function nibbleDot(qp: usize, xp: usize, hLo: v128, hHi: v128, low4: v128, ones: v128): v128 {
  const q = v128.load(qp)
  const lo = v128.or(v128.and(q, low4), hLo)
  const hi = v128.or(v128.and(i16x8.shr_u(q, 4), low4), hHi)
  // Each i16 lane sums four products of at most 31·127: no overflow.
  const p = i16x8.add(
    i16x8.relaxed_dot_i8x16_i7x16_s(v128.load(xp), lo),
    i16x8.relaxed_dot_i8x16_i7x16_s(v128.load(xp, 16), hi),
  )
  return i32x4.dot_i16x8_s(p, ones)
}

// Q4_1: nibbleDot without fifth bits.
function nibble4Dot(qp: usize, xp: usize, low4: v128, ones: v128): v128 {
  const q = v128.load(qp)
  const p = i16x8.add(
    i16x8.relaxed_dot_i8x16_i7x16_s(v128.load(xp), v128.and(q, low4)),
    i16x8.relaxed_dot_i8x16_i7x16_s(v128.load(xp, 16), v128.and(i16x8.shr_u(q, 4), low4)),
  )
  return i32x4.dot_i16x8_s(p, ones)
}

// The fifth bits of a Q5 block (u32 qh at p) for values 0-15 (lo) or 16-31 (hi), as 0x10 or 0 per
// byte: byte j of qh is copied to eight lanes, each lane keeps its own bit and compares.
// (The swizzle indices [0 × 8, 1 × 8] and [2 × 8, 3 × 8] come from the control block.)
function fifthBits(h: v128, index: v128, byteBits: v128, bit4: v128): v128 {
  const v = i8x16.relaxed_swizzle(h, index)
  return v128.and(i8x16.eq(v128.and(v, byteBits), byteBits), bit4)
}

// Σ u·q of one Q5 block whose qh is at hp and qs at qp.
function q5Dot(hp: usize, qp: usize, xp: usize, low4: v128, ones: v128, bit4: v128, ctrl: usize): v128 {
  const h = v128.load32_zero(hp)
  const byteBits = v128.load(ctrl, K_BYTE_BITS)
  const lo = fifthBits(h, v128.load(ctrl, K_Q5_LO), byteBits, bit4)
  const hi = fifthBits(h, v128.load(ctrl, K_Q5_HI), byteBits, bit4)
  return nibbleDot(qp, xp, lo, hi, low4, ones)
}

// Σ kvalue·q of one IQ4_NL block (qs at qp) with the q8_0 activations' |q| at xa and sign at xs.
function iq4Dot(qp: usize, xa: usize, xs: usize, table: v128, low4: v128, ones: v128): v128 {
  const q = v128.load(qp)
  const w0 = i8x16.relaxed_swizzle(table, v128.and(q, low4))
  const w1 = i8x16.relaxed_swizzle(table, v128.and(i16x8.shr_u(q, 4), low4))
  const m0 = v128.load(xs)
  const m1 = v128.load(xs, 16)
  // w·sign(x) (no kvalue is -128) times |x|; a pair of products reaches 2·127² < 2^15.
  const s0 = i8x16.sub(v128.xor(w0, m0), m0)
  const s1 = i8x16.sub(v128.xor(w1, m1), m1)
  const p0 = i32x4.dot_i16x8_s(i16x8.relaxed_dot_i8x16_i7x16_s(s0, v128.load(xa)), ones)
  const p1 = i32x4.dot_i16x8_s(i16x8.relaxed_dot_i8x16_i7x16_s(s1, v128.load(xa, 16)), ones)
  return i32x4.add(p0, p1)
}

// Q4_1 and Q5_1 (q8_1 activations): Σ over blocks of d_w·d_x·Σu·q + m_w·s_x.
function dotQx_1(w: usize, xq: usize, cols: usize, five: bool, ctrl: usize): f32 {
  const low4 = v128.load(ctrl, K_LOW4)
  const ones = v128.load(ctrl, K_ONES16)
  const bit4 = v128.load(ctrl, K_BIT4)
  const mask = v128.load(ctrl, K_F16_MASK)
  const expBits = v128.load(ctrl, K_F32_EXP)
  const scale = v128.load(ctrl, K_F16_SCALE)
  const bb: usize = five ? 24 : 20
  const nb = cols >> 5
  const xd = xq + 3 * cols
  const xs = xd + (cols >> 3)
  let acc = f32x4.splat(0)
  let b: usize = 0
  for (; b + 4 <= nb; b += 4) {
    const wp = w + b * bb
    const xp = xq + (b << 5)
    let s: v128
    if (five) {
      s = hsum4(
        q5Dot(wp + 4, wp + 8, xp, low4, ones, bit4, ctrl),
        q5Dot(wp + 28, wp + 32, xp + 32, low4, ones, bit4, ctrl),
        q5Dot(wp + 52, wp + 56, xp + 64, low4, ones, bit4, ctrl),
        q5Dot(wp + 76, wp + 80, xp + 96, low4, ones, bit4, ctrl),
      )
    } else {
      s = hsum4(
        nibble4Dot(wp + 4, xp, low4, ones),
        nibble4Dot(wp + 24, xp + 32, low4, ones),
        nibble4Dot(wp + 44, xp + 64, low4, ones),
        nibble4Dot(wp + 64, xp + 96, low4, ones),
      )
    }
    const o = b << 2
    const d = f32x4.mul(scales4(wp, bb, ctrl, mask, expBits, scale), v128.load(xd + o))
    acc = f32x4.relaxed_madd(f32x4.convert_i32x4_s(s), d, acc)
    acc = f32x4.relaxed_madd(scales4(wp + 2, bb, ctrl, mask, expBits, scale), v128.load(xs + o), acc)
  }
  let tail: f32 = 0
  for (; b < nb; b++) {
    const wp = w + b * bb
    const xp = xq + (b << 5)
    const s = five ? q5Dot(wp + 4, wp + 8, xp, low4, ones, bit4, ctrl) : nibble4Dot(wp + 4, xp, low4, ones)
    const o = b << 2
    tail +=
      f16(load<u16>(wp)) * load<f32>(xd + o) * <f32>sumLanes(s) + f16(load<u16>(wp, 2)) * load<f32>(xs + o)
  }
  return hsum(acc) + tail
}

// Q5_0 (q8_0 activations): Σ over blocks of d_w·(d_x·Σu·q - 16·d_x·Σq).
function dotQ5_0(w: usize, xq: usize, cols: usize, ctrl: usize): f32 {
  const low4 = v128.load(ctrl, K_LOW4)
  const ones = v128.load(ctrl, K_ONES16)
  const bit4 = v128.load(ctrl, K_BIT4)
  const mask = v128.load(ctrl, K_F16_MASK)
  const expBits = v128.load(ctrl, K_F32_EXP)
  const scale = v128.load(ctrl, K_F16_SCALE)
  const nb = cols >> 5
  const xd = xq + 3 * cols
  const xs = xd + (cols >> 3)
  let acc = f32x4.splat(0)
  let b: usize = 0
  for (; b + 4 <= nb; b += 4) {
    const wp = w + b * 22
    const xp = xq + (b << 5)
    const s = hsum4(
      q5Dot(wp + 2, wp + 6, xp, low4, ones, bit4, ctrl),
      q5Dot(wp + 24, wp + 28, xp + 32, low4, ones, bit4, ctrl),
      q5Dot(wp + 46, wp + 50, xp + 64, low4, ones, bit4, ctrl),
      q5Dot(wp + 68, wp + 72, xp + 96, low4, ones, bit4, ctrl),
    )
    const o = b << 2
    const v = f32x4.sub(f32x4.mul(f32x4.convert_i32x4_s(s), v128.load(xd + o)), v128.load(xs + o))
    acc = f32x4.relaxed_madd(scales4(wp, 22, ctrl, mask, expBits, scale), v, acc)
  }
  let tail: f32 = 0
  for (; b < nb; b++) {
    const wp = w + b * 22
    const s = q5Dot(wp + 2, wp + 6, xq + (b << 5), low4, ones, bit4, ctrl)
    const o = b << 2
    tail += f16(load<u16>(wp)) * (<f32>sumLanes(s) * load<f32>(xd + o) - load<f32>(xs + o))
  }
  return hsum(acc) + tail
}

// IQ4_NL (q8_0 activations with |q| and sign): Σ over blocks of d_w·d_x·Σ kvalue·q.
function dotIQ4_NL(w: usize, xq: usize, cols: usize, ctrl: usize): f32 {
  const low4 = v128.load(ctrl, K_LOW4)
  const ones = v128.load(ctrl, K_ONES16)
  const table = v128.load(ctrl, K_IQ4)
  const mask = v128.load(ctrl, K_F16_MASK)
  const expBits = v128.load(ctrl, K_F32_EXP)
  const scale = v128.load(ctrl, K_F16_SCALE)
  const nb = cols >> 5
  const xa = xq + cols
  const xs = xq + 2 * cols
  const xd = xq + 3 * cols
  let acc = f32x4.splat(0)
  let b: usize = 0
  for (; b + 4 <= nb; b += 4) {
    const wp = w + b * 18
    const o = b << 5
    const s = hsum4(
      iq4Dot(wp + 2, xa + o, xs + o, table, low4, ones),
      iq4Dot(wp + 20, xa + o + 32, xs + o + 32, table, low4, ones),
      iq4Dot(wp + 38, xa + o + 64, xs + o + 64, table, low4, ones),
      iq4Dot(wp + 56, xa + o + 96, xs + o + 96, table, low4, ones),
    )
    const d = f32x4.mul(scales4(wp, 18, ctrl, mask, expBits, scale), v128.load(xd + (b << 2)))
    acc = f32x4.relaxed_madd(f32x4.convert_i32x4_s(s), d, acc)
  }
  let tail: f32 = 0
  for (; b < nb; b++) {
    const wp = w + b * 18
    const o = b << 5
    const s = iq4Dot(wp + 2, xa + o, xs + o, table, low4, ones)
    tail += f16(load<u16>(wp)) * load<f32>(xd + (b << 2)) * <f32>sumLanes(s)
  }
  return hsum(acc) + tail
}

// out[r] = dot(W row r, x) for r in [r0, r1), W rows `rb` bytes apart and x the rounded activations.
export function rowsLegacy(
  ctrl: usize,
  type: i32,
  w: usize,
  rb: usize,
  x: usize,
  out: usize,
  r0: usize,
  r1: usize,
  cols: usize,
): void {
  if (type === Q4_1 || type === Q5_1) {
    const five = type === Q5_1
    for (let r = r0; r < r1; r++) store<f32>(out + (r << 2), dotQx_1(w + r * rb, x, cols, five, ctrl))
  } else if (type === Q5_0) {
    for (let r = r0; r < r1; r++) store<f32>(out + (r << 2), dotQ5_0(w + r * rb, x, cols, ctrl))
  } else {
    for (let r = r0; r < r1; r++) store<f32>(out + (r << 2), dotIQ4_NL(w + r * rb, x, cols, ctrl))
  }
}
