// The other K-quant super-blocks of 256 values: Q5_K, Q3_K, Q2_K and IQ4_XS (Q4_K and Q6_K are in
// kernels.ts). All of them meet q8_K activations, as in ggml's CPU backend: i8 values with one f32
// scale per 256 and i16 sums per 16 and per 32 values (`bsums`), which give the min and offset
// terms without touching the values again. IQ4_XS also reads |q| and sign(q).
//
// The unsigned 2- to 5-bit values are the 7-bit operand of relaxed i8×i7 dot products into i16
// pairs (i16x8.relaxed_dot_i8x16_i7x16_s: one pmaddubsw), and a pair-wise i16 dot with the splat
// sub-block scale sums them into i32 lanes (pmaddwd), as ggml's AVX2 kernels do with maddubs and
// madd. Signed values are made unsigned with an offset paid through the bsums: Q3_K's value - 4.

import {
  f16,
  hsum,
  hsum4,
  K_BIT2,
  K_BIT4,
  K_BIT5,
  K_IQ4,
  K_IQ4XS_512,
  K_IQ4XS_HI,
  K_IQ4XS_IDX,
  K_IQ4XS_LO,
  K_IQ4XS_M1,
  K_IQ4XS_M2,
  K_LOW2,
  K_LOW4,
  K_M1E,
  Q2_K,
  Q3_K,
  Q5_K,
  q4_KQuad,
  scales256x4,
  scalesMinsK4,
  splatB,
  splatW,
  superBlock,
  ZERO,
} from './common'

// Activation layout offsets (see kernels.ts): the f32 scale per 256 at 3·cols, i16 Σq per 16 at
// 3·cols + cols/8, i16 Σq per 32 at 3·cols + cols/4.

// ---------------------------------------------------------------------------------------------
// Q5_K: super-block of 256 = f16 d, f16 dmin, u8 scales[12] (as Q4_K), u8 qh[32], u8 qs[128] (176
// bytes). Value 64j + l (l < 32) is the low nibble of qs[32j + l] with bit 2j of qh[l] as its fifth
// bit, value 64j + 32 + l the high nibble with bit 2j + 1; value = d·scale·q5 - dmin·min, scale and
// min of sub-block 2j or 2j + 1. The fifth bits are shifted to bit 4 of each byte (i16 lane shifts
// keep a byte's bits in place for the bits kept) and ORed onto the nibbles: q5 ≤ 31 is an i7.

// Σ over one chunk of 64 (j: qs at qp, x at xp): hl/hh the qh bytes shifted so that bit 2j / 2j + 1
// is bit 4.
function q5_KChunk(
  qp: usize,
  xp: usize,
  hl0: v128,
  hl1: v128,
  hh0: v128,
  hh1: v128,
  sLo: v128,
  sHi: v128,
  low4: v128,
  bit4: v128,
): v128 {
  const q0 = v128.load(qp)
  const q1 = v128.load(qp, 16)
  return q4_KQuad(
    xp,
    v128.or(v128.and(q0, low4), v128.and(hl0, bit4)),
    v128.or(v128.and(q1, low4), v128.and(hl1, bit4)),
    v128.or(v128.and(i16x8.shr_u(q0, 4), low4), v128.and(hh0, bit4)),
    v128.or(v128.and(i16x8.shr_u(q1, 4), low4), v128.and(hh1, bit4)),
    sLo,
    sHi,
  )
}

function dotQ5_K(w: usize, xq: usize, cols: usize, ctrl: usize): f32 {
  const low4 = v128.load(ctrl, K_LOW4)
  const bit4 = v128.load(ctrl, K_BIT4)
  const nb = cols >> 8
  const xd = xq + 3 * cols
  const xs32 = xd + (cols >> 2)
  let acc = f32x4.splat(0)
  for (let b: usize = 0; b < nb; b++) {
    const bp = w + b * 176
    const xp = xq + (b << 8)
    const sm = scalesMinsK4(bp + 4, ctrl)
    const h0 = v128.load(bp, 16)
    const h1 = v128.load(bp, 32)
    let isum = q5_KChunk(
      bp + 48,
      xp,
      i16x8.shl(h0, 4),
      i16x8.shl(h1, 4),
      i16x8.shl(h0, 3),
      i16x8.shl(h1, 3),
      splatB(sm, ctrl, 0),
      splatB(sm, ctrl, 1),
      low4,
      bit4,
    )
    isum = i32x4.add(
      isum,
      q5_KChunk(
        bp + 80,
        xp + 64,
        i16x8.shl(h0, 2),
        i16x8.shl(h1, 2),
        i16x8.shl(h0, 1),
        i16x8.shl(h1, 1),
        splatB(sm, ctrl, 2),
        splatB(sm, ctrl, 3),
        low4,
        bit4,
      ),
    )
    isum = i32x4.add(
      isum,
      q5_KChunk(
        bp + 112,
        xp + 128,
        h0,
        h1,
        i16x8.shr_u(h0, 1),
        i16x8.shr_u(h1, 1),
        splatB(sm, ctrl, 4),
        splatB(sm, ctrl, 5),
        low4,
        bit4,
      ),
    )
    isum = i32x4.add(
      isum,
      q5_KChunk(
        bp + 144,
        xp + 192,
        i16x8.shr_u(h0, 2),
        i16x8.shr_u(h1, 2),
        i16x8.shr_u(h0, 3),
        i16x8.shr_u(h1, 3),
        splatB(sm, ctrl, 6),
        splatB(sm, ctrl, 7),
        low4,
        bit4,
      ),
    )
    const mins = i32x4.dot_i16x8_s(i16x8.extend_high_i8x16_u(sm), v128.load(xs32 + (b << 4)))
    const dh = load<u32>(bp)
    const dx = load<f32>(xd + (b << 2))
    acc = superBlock(acc, isum, mins, f16(dh & 0xffff) * dx, f16(dh >> 16) * dx)
  }
  return f32x4.extract_lane(acc, 0)
}

// The four-row kernel reads the high nibbles doubled, 2·nibble + 32·bit, which takes bit 2j + 1 of
// qh from the same shifted copy as the low nibbles' bit 2j (at bit 5 instead of 4); their sums come
// out doubled, so the low nibbles' sub-block scales are doubled too and the integer sum is halved
// (exactly: it is even) at the end. 2·q5 ≤ 62 is still an i7, and two i16 pair sums, 2 · 2 · 62 · 127, stay below 2^15.

// qh shifted so that bit 2j of each byte is its bit 4 (and bit 2j + 1 its bit 5).
function chunkBits(h: v128, j: i32): v128 {
  return j < 2 ? i16x8.shl(h, 4 - 2 * j) : i16x8.shr_u(h, 2 * j - 4)
}

// [dot(w, x_0), …, dot(w, x_3)] of one Q5_K row and four activation rows `xStride` bytes apart:
// each chunk of weights is unpacked once for the four rows.
function dot4Q5_K(w: usize, x: usize, xStride: usize, cols: usize, ctrl: usize): v128 {
  const low4 = v128.load(ctrl, K_LOW4)
  const bit4 = v128.load(ctrl, K_BIT4)
  const bit5 = v128.load(ctrl, K_BIT5)
  const m1e = v128.load(ctrl, K_M1E)
  const nb = cols >> 8
  const xs32 = cols * 3 + (cols >> 2)
  let acc = f32x4.splat(0)
  for (let b: usize = 0; b < nb; b++) {
    const bp = w + b * 176
    const a = load<u32>(bp, 4)
    const m = load<u32>(bp, 8)
    const c = load<u32>(bp, 12)
    const sc03 = a & 0x3f3f3f3f
    const sc47 = (c & 0x0f0f0f0f) | (((a >> 6) & 0x03030303) << 4)
    let mins = i32x4.splat(m & 0x3f3f3f3f)
    mins = i32x4.replace_lane(mins, 1, ((c >> 4) & 0x0f0f0f0f) | (((m >> 6) & 0x03030303) << 4))
    const mn = i16x8.extend_low_i8x16_u(mins)
    const h0 = v128.load(bp, 16)
    const h1 = v128.load(bp, 32)
    const x0 = x + (b << 8)
    const x1 = x0 + xStride
    const x2 = x1 + xStride
    const x3 = x2 + xStride
    let i0 = ZERO
    let i1 = ZERO
    let i2 = ZERO
    let i3 = ZERO
    for (let k: usize = 0; k < 4; k++) {
      const word = k < 2 ? sc03 : sc47
      const shift = (<u32>(k & 1)) << 4
      const sLo = i16x8.splat(<i16>(((word >> shift) & 0xff) << 1))
      const sHi = i16x8.splat(<i16>((word >> (shift + 8)) & 0xff))
      const q0 = v128.load(bp + 48 + (k << 5))
      const q1 = v128.load(bp + 48 + (k << 5), 16)
      const s0 = chunkBits(h0, <i32>k)
      const s1 = chunkBits(h1, <i32>k)
      const l0 = v128.or(v128.and(q0, low4), v128.and(s0, bit4))
      const l1 = v128.or(v128.and(q1, low4), v128.and(s1, bit4))
      const u0 = v128.or(v128.and(i16x8.shr_u(q0, 3), m1e), v128.and(s0, bit5))
      const u1 = v128.or(v128.and(i16x8.shr_u(q1, 3), m1e), v128.and(s1, bit5))
      const o = k << 6
      i0 = i32x4.add(i0, q4_KQuad(x0 + o, l0, l1, u0, u1, sLo, sHi))
      i1 = i32x4.add(i1, q4_KQuad(x1 + o, l0, l1, u0, u1, sLo, sHi))
      i2 = i32x4.add(i2, q4_KQuad(x2 + o, l0, l1, u0, u1, sLo, sHi))
      i3 = i32x4.add(i3, q4_KQuad(x3 + o, l0, l1, u0, u1, sLo, sHi))
    }
    const bs = x + xs32 + (b << 4)
    const mn4 = hsum4(
      i32x4.dot_i16x8_s(mn, v128.load(bs)),
      i32x4.dot_i16x8_s(mn, v128.load(bs + xStride)),
      i32x4.dot_i16x8_s(mn, v128.load(bs + 2 * xStride)),
      i32x4.dot_i16x8_s(mn, v128.load(bs + 3 * xStride)),
    )
    const dx = scales256x4(x, xStride, cols, b)
    const dh = load<u32>(bp)
    // The sums are even: halved exactly, they are what dotQ5_K sums.
    acc = f32x4.relaxed_madd(
      f32x4.convert_i32x4_s(i32x4.shr_s(hsum4(i0, i1, i2, i3), 1)),
      f32x4.mul(dx, f32x4.splat(f16(dh & 0xffff))),
      acc,
    )
    acc = f32x4.relaxed_nmadd(f32x4.convert_i32x4_s(mn4), f32x4.mul(dx, f32x4.splat(f16(dh >> 16))), acc)
  }
  return acc
}

// ---------------------------------------------------------------------------------------------
// Q2_K: super-block of 256 = u8 scales[16] (low nibble a scale, high nibble a min), u8 qs[64], f16 d,
// f16 dmin (84 bytes). In half k of 128 values (qs += 32), value 32j + l (j < 4, l < 32) is bits
// 2j, 2j + 1 of qs[l], with scale and min 8k + 2j (l < 16) or 8k + 2j + 1;
// value = d·scale·q2 - dmin·min.

// Σ over 32 values of q2·x·scale: u0 for x[0, 16) with scale s0, u1 for x[16, 32) with s1.
function q2Pair(xp: usize, u0: v128, u1: v128, s0: v128, s1: v128): v128 {
  return i32x4.add(
    i32x4.dot_i16x8_s(i16x8.relaxed_dot_i8x16_i7x16_s(v128.load(xp), u0), s0),
    i32x4.dot_i16x8_s(i16x8.relaxed_dot_i8x16_i7x16_s(v128.load(xp, 16), u1), s1),
  )
}

// Σ over one half of 128 values (qs at qp, x at xp, its eight scales as i16 in s).
function q2_KHalf(qp: usize, xp: usize, s: v128, low2: v128, ctrl: usize): v128 {
  const a0 = v128.load(qp)
  const a1 = v128.load(qp, 16)
  let r = q2Pair(xp, v128.and(a0, low2), v128.and(a1, low2), splatW(s, ctrl, 0), splatW(s, ctrl, 1))
  r = i32x4.add(
    r,
    q2Pair(
      xp + 32,
      v128.and(i16x8.shr_u(a0, 2), low2),
      v128.and(i16x8.shr_u(a1, 2), low2),
      splatW(s, ctrl, 2),
      splatW(s, ctrl, 3),
    ),
  )
  r = i32x4.add(
    r,
    q2Pair(
      xp + 64,
      v128.and(i16x8.shr_u(a0, 4), low2),
      v128.and(i16x8.shr_u(a1, 4), low2),
      splatW(s, ctrl, 4),
      splatW(s, ctrl, 5),
    ),
  )
  return i32x4.add(
    r,
    q2Pair(
      xp + 96,
      v128.and(i16x8.shr_u(a0, 6), low2),
      v128.and(i16x8.shr_u(a1, 6), low2),
      splatW(s, ctrl, 6),
      splatW(s, ctrl, 7),
    ),
  )
}

function dotQ2_K(w: usize, xq: usize, cols: usize, low2: v128, low4: v128, ctrl: usize): f32 {
  const nb = cols >> 8
  const xd = xq + 3 * cols
  const xs16 = xd + (cols >> 3)
  let acc = f32x4.splat(0)
  for (let b: usize = 0; b < nb; b++) {
    const bp = w + b * 84
    const xp = xq + (b << 8)
    const sm = v128.load(bp)
    const sc = v128.and(sm, low4)
    const mn = v128.and(i16x8.shr_u(sm, 4), low4)
    const isum = i32x4.add(
      q2_KHalf(bp + 16, xp, i16x8.extend_low_i8x16_u(sc), low2, ctrl),
      q2_KHalf(bp + 48, xp + 128, i16x8.extend_high_i8x16_u(sc), low2, ctrl),
    )
    const bs = xs16 + (b << 5)
    const mins = i32x4.add(
      i32x4.dot_i16x8_s(i16x8.extend_low_i8x16_u(mn), v128.load(bs)),
      i32x4.dot_i16x8_s(i16x8.extend_high_i8x16_u(mn), v128.load(bs, 16)),
    )
    const dh = load<u32>(bp, 80)
    const dx = load<f32>(xd + (b << 2))
    acc = f32x4.relaxed_madd(f32x4.convert_i32x4_s(isum), f32x4.splat(f16(dh & 0xffff) * dx), acc)
    acc = f32x4.relaxed_nmadd(f32x4.convert_i32x4_s(mins), f32x4.splat(f16(dh >> 16) * dx), acc)
  }
  return hsum(acc)
}

// ---------------------------------------------------------------------------------------------
// Q3_K: super-block of 256 = u8 hmask[32], u8 qs[64], u8 scales[12] (sixteen 6-bit scales, less
// 32), f16 d (110 bytes). In half k of 128 values (qs += 32), value 32j + l is bits 2j, 2j + 1 of
// qs[l], minus 4 unless bit 4k + j of hmask[l] is set, with scale 8k + 2j (l < 16) or 8k + 2j + 1.
// q3 + 4 = q2 | hbit << 2 is in [0, 7]; Σ scale·(q3 + 4)·x - 4·Σ scale·bsum gives Σ scale·q3·x.

// Σ over one half of 128 values: qs at qp, the half's hmask bits at bits 0-3 of h0 (bytes 0-15)
// and h1 (bytes 16-31), its eight scales as i16 in s.
function q3_KHalf(
  qp: usize,
  xp: usize,
  h0: v128,
  h1: v128,
  s: v128,
  low2: v128,
  bit2: v128,
  ctrl: usize,
): v128 {
  const a0 = v128.load(qp)
  const a1 = v128.load(qp, 16)
  let r = q2Pair(
    xp,
    v128.or(v128.and(a0, low2), v128.and(i16x8.shl(h0, 2), bit2)),
    v128.or(v128.and(a1, low2), v128.and(i16x8.shl(h1, 2), bit2)),
    splatW(s, ctrl, 0),
    splatW(s, ctrl, 1),
  )
  r = i32x4.add(
    r,
    q2Pair(
      xp + 32,
      v128.or(v128.and(i16x8.shr_u(a0, 2), low2), v128.and(i16x8.shl(h0, 1), bit2)),
      v128.or(v128.and(i16x8.shr_u(a1, 2), low2), v128.and(i16x8.shl(h1, 1), bit2)),
      splatW(s, ctrl, 2),
      splatW(s, ctrl, 3),
    ),
  )
  r = i32x4.add(
    r,
    q2Pair(
      xp + 64,
      v128.or(v128.and(i16x8.shr_u(a0, 4), low2), v128.and(h0, bit2)),
      v128.or(v128.and(i16x8.shr_u(a1, 4), low2), v128.and(h1, bit2)),
      splatW(s, ctrl, 4),
      splatW(s, ctrl, 5),
    ),
  )
  return i32x4.add(
    r,
    q2Pair(
      xp + 96,
      v128.or(v128.and(i16x8.shr_u(a0, 6), low2), v128.and(i16x8.shr_u(h0, 1), bit2)),
      v128.or(v128.and(i16x8.shr_u(a1, 6), low2), v128.and(i16x8.shr_u(h1, 1), bit2)),
      splatW(s, ctrl, 6),
      splatW(s, ctrl, 7),
    ),
  )
}

function dotQ3_K(w: usize, xq: usize, cols: usize, low2: v128, bit2: v128, ctrl: usize): f32 {
  const nb = cols >> 8
  const xd = xq + 3 * cols
  const xs16 = xd + (cols >> 3)
  let acc = f32x4.splat(0)
  for (let b: usize = 0; b < nb; b++) {
    const bp = w + b * 110
    const xp = xq + (b << 8)
    // The sixteen 6-bit scales, as ggml's kernels unpack them: low nibbles in bytes 0-7 (low then
    // high nibbles of bytes 96-103), their top two bits in the 2-bit fields of bytes 104-107.
    const a0 = load<u32>(bp, 96)
    const a1 = load<u32>(bp, 100)
    const t = load<u32>(bp, 104)
    let sv = i32x4.splat((a0 & 0x0f0f0f0f) | ((t & 0x03030303) << 4))
    sv = i32x4.replace_lane(sv, 1, (a1 & 0x0f0f0f0f) | (((t >> 2) & 0x03030303) << 4))
    sv = i32x4.replace_lane(sv, 2, ((a0 >> 4) & 0x0f0f0f0f) | (((t >> 4) & 0x03030303) << 4))
    sv = i32x4.replace_lane(sv, 3, ((a1 >> 4) & 0x0f0f0f0f) | (((t >> 6) & 0x03030303) << 4))
    sv = i8x16.sub(sv, i8x16.splat(32))
    const s0 = i16x8.extend_low_i8x16_s(sv)
    const s1 = i16x8.extend_high_i8x16_s(sv)
    const h0 = v128.load(bp)
    const h1 = v128.load(bp, 16)
    let isum = i32x4.add(
      q3_KHalf(bp + 32, xp, h0, h1, s0, low2, bit2, ctrl),
      q3_KHalf(bp + 64, xp + 128, i16x8.shr_u(h0, 4), i16x8.shr_u(h1, 4), s1, low2, bit2, ctrl),
    )
    const bs = xs16 + (b << 5)
    const offset = i32x4.add(i32x4.dot_i16x8_s(s0, v128.load(bs)), i32x4.dot_i16x8_s(s1, v128.load(bs, 16)))
    isum = i32x4.sub(isum, i32x4.shl(offset, 2))
    const d = f16(load<u16>(bp, 108)) * load<f32>(xd + (b << 2))
    acc = f32x4.relaxed_madd(f32x4.convert_i32x4_s(isum), f32x4.splat(d), acc)
  }
  return hsum(acc)
}

// ---------------------------------------------------------------------------------------------
// IQ4_XS: super-block of 256 = f16 d, u16 scales_h, u8 scales_l[4], u8 qs[128] (136 bytes). Sub-block
// i of 32 has the 6-bit scale ls = nibble i of scales_l | bits 2i, 2i + 1 of scales_h << 4, and its
// values j < 16 and 16 + j are d·(ls - 32)·kvalues_iq4nl[low / high nibble of qs[16i + j]]. The
// kvalues (-127 to 113) come from a table lookup (a swizzle); as for IQ4_NL, the sign of x moves
// onto them and |x| is the 7-bit operand.

// The eight sub-block scales ls - 32 as i16 lanes.
function iq4xsScales(bp: usize, ctrl: usize): v128 {
  // Lanes [l0, l0, l1, l1, …] (the scales_l bytes) × [16, 1, 16, 1, …], masked to 0xf0: each nibble
  // of scales_l at bits 4-7 of its lane.
  const pairs = i8x16.relaxed_swizzle(v128.load32_zero(bp, 4), v128.load(ctrl, K_IQ4XS_IDX))
  const nib = v128.and(i16x8.mul(pairs, v128.load(ctrl, K_IQ4XS_LO)), v128.load(ctrl, K_IQ4XS_M1))
  // scales_h × [2^14, 2^12, …, 1] puts bits 2i, 2i + 1 at 14, 15 of lane i; moved to bits 8, 9.
  const top = i16x8.mul(i16x8.splat(load<u16>(bp, 2)), v128.load(ctrl, K_IQ4XS_HI))
  const ls = v128.or(nib, v128.and(i16x8.shr_u(top, 6), v128.load(ctrl, K_IQ4XS_M2)))
  // (16·ls - 16·32) >> 4.
  return i16x8.shr_s(i16x8.sub(ls, v128.load(ctrl, K_IQ4XS_512)), 4)
}

// Σ kvalue·q·scale over one sub-block of 32 (qs at qp, |q| at xa, sign(q) at xs, scale splat s).
function iq4xsBlock(qp: usize, xa: usize, xs: usize, s: v128, table: v128, low4: v128): v128 {
  const q = v128.load(qp)
  const w0 = i8x16.relaxed_swizzle(table, v128.and(q, low4))
  const w1 = i8x16.relaxed_swizzle(table, v128.and(i16x8.shr_u(q, 4), low4))
  const m0 = v128.load(xs)
  const m1 = v128.load(xs, 16)
  const p0 = i16x8.relaxed_dot_i8x16_i7x16_s(i8x16.sub(v128.xor(w0, m0), m0), v128.load(xa))
  const p1 = i16x8.relaxed_dot_i8x16_i7x16_s(i8x16.sub(v128.xor(w1, m1), m1), v128.load(xa, 16))
  return i32x4.add(i32x4.dot_i16x8_s(p0, s), i32x4.dot_i16x8_s(p1, s))
}

function dotIQ4_XS(w: usize, xq: usize, cols: usize, ctrl: usize): f32 {
  const low4 = v128.load(ctrl, K_LOW4)
  const table = v128.load(ctrl, K_IQ4)
  const nb = cols >> 8
  const xa = xq + cols
  const xs = xq + 2 * cols
  const xd = xq + 3 * cols
  let acc = f32x4.splat(0)
  for (let b: usize = 0; b < nb; b++) {
    const bp = w + b * 136
    const o = b << 8
    const s = iq4xsScales(bp, ctrl)
    let isum = iq4xsBlock(bp + 8, xa + o, xs + o, splatW(s, ctrl, 0), table, low4)
    isum = i32x4.add(isum, iq4xsBlock(bp + 24, xa + o + 32, xs + o + 32, splatW(s, ctrl, 1), table, low4))
    isum = i32x4.add(isum, iq4xsBlock(bp + 40, xa + o + 64, xs + o + 64, splatW(s, ctrl, 2), table, low4))
    isum = i32x4.add(isum, iq4xsBlock(bp + 56, xa + o + 96, xs + o + 96, splatW(s, ctrl, 3), table, low4))
    isum = i32x4.add(isum, iq4xsBlock(bp + 72, xa + o + 128, xs + o + 128, splatW(s, ctrl, 4), table, low4))
    isum = i32x4.add(isum, iq4xsBlock(bp + 88, xa + o + 160, xs + o + 160, splatW(s, ctrl, 5), table, low4))
    isum = i32x4.add(isum, iq4xsBlock(bp + 104, xa + o + 192, xs + o + 192, splatW(s, ctrl, 6), table, low4))
    isum = i32x4.add(isum, iq4xsBlock(bp + 120, xa + o + 224, xs + o + 224, splatW(s, ctrl, 7), table, low4))
    const d = f16(load<u16>(bp)) * load<f32>(xd + (b << 2))
    acc = f32x4.relaxed_madd(f32x4.convert_i32x4_s(isum), f32x4.splat(d), acc)
  }
  return hsum(acc)
}

// ---------------------------------------------------------------------------------------------
// Entry points for kernels.ts

// out[r] = dot(W row r, x) for r in [r0, r1), W rows `rb` bytes apart and x the q8_K activations.
export function rowsKQuant(
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
  const low4 = v128.load(ctrl, K_LOW4)
  const low2 = v128.load(ctrl, K_LOW2)
  if (type === Q5_K) {
    for (let r = r0; r < r1; r++) store<f32>(out + (r << 2), dotQ5_K(w + r * rb, x, cols, ctrl))
  } else if (type === Q3_K) {
    const bit2 = v128.load(ctrl, K_BIT2)
    for (let r = r0; r < r1; r++) store<f32>(out + (r << 2), dotQ3_K(w + r * rb, x, cols, low2, bit2, ctrl))
  } else if (type === Q2_K) {
    for (let r = r0; r < r1; r++) store<f32>(out + (r << 2), dotQ2_K(w + r * rb, x, cols, low2, low4, ctrl))
  } else {
    for (let r = r0; r < r1; r++) store<f32>(out + (r << 2), dotIQ4_XS(w + r * rb, x, cols, ctrl))
  }
}

// [dot(W row r, x_0), …, dot(W row r, x_3)] for the K-quants with a four-row kernel (Q5_K).
export function dot4KQuant(ctrl: usize, w: usize, x: usize, xStride: usize, cols: usize): v128 {
  return dot4Q5_K(w, x, xStride, cols, ctrl)
}
