// BF16 weights. ggml multiplies them with activations rounded to bf16 (`vec_dot_type` BF16) and
// sums the products in f32: a bf16 × bf16 product is exact in f32, so only the order of the f32
// additions differs from ggml's. A bf16 is the top half of a float, so widening one is a shuffle
// with zeros, exact for every value (subnormals included, though f32 subnormals are slow).

import { hsum } from './common'

// The f32 bits of bf16 values: v rounded to the nearest bf16 (ties to even), as ggml's
// GGML_FP32_TO_BF16 does, with NaNs kept quiet NaNs.
export function roundToBF16(v: f32): f32 {
  const u = reinterpret<u32>(v)
  if ((u & 0x7fffffff) > 0x7f800000) return reinterpret<f32>((u | 0x400000) & 0xffff0000)
  return reinterpret<f32>((u + 0x7fff + ((u >> 16) & 1)) & 0xffff0000)
}

// The same for four floats.
export function roundToBF16x4(v: v128): v128 {
  const top = i32x4.splat(0xffff0000)
  const r = v128.and(
    i32x4.add(i32x4.add(v, i32x4.splat(0x7fff)), v128.and(i32x4.shr_u(v, 16), i32x4.splat(1))),
    top,
  )
  const nan = i32x4.gt_s(v128.and(v, i32x4.splat(0x7fffffff)), i32x4.splat(0x7f800000))
  return v128.bitselect(v128.and(v128.or(v, i32x4.splat(0x400000)), top), r, nan)
}

// Four bf16 weights (the low or high four of h) as floats.
function lowBF16(h: v128): v128 {
  return v128.shuffle<i16>(i32x4.splat(0), h, 0, 8, 1, 9, 2, 10, 3, 11)
}

function highBF16(h: v128): v128 {
  return v128.shuffle<i16>(i32x4.splat(0), h, 4, 12, 5, 13, 6, 14, 7, 15)
}

function dotBF16(w: usize, x: usize, cols: usize): f32 {
  let a0 = f32x4.splat(0)
  let a1 = f32x4.splat(0)
  let a2 = f32x4.splat(0)
  let a3 = f32x4.splat(0)
  const end16 = (cols >> 4) << 4
  let i: usize = 0
  for (; i < end16; i += 16) {
    const h0 = v128.load(w + (i << 1))
    const h1 = v128.load(w + (i << 1), 16)
    const xp = x + (i << 2)
    a0 = f32x4.relaxed_madd(lowBF16(h0), v128.load(xp), a0)
    a1 = f32x4.relaxed_madd(highBF16(h0), v128.load(xp, 16), a1)
    a2 = f32x4.relaxed_madd(lowBF16(h1), v128.load(xp, 32), a2)
    a3 = f32x4.relaxed_madd(highBF16(h1), v128.load(xp, 48), a3)
  }
  let s = hsum(f32x4.add(f32x4.add(a0, a1), f32x4.add(a2, a3)))
  for (; i < cols; i++) s += reinterpret<f32>((<u32>load<u16>(w + (i << 1))) << 16) * load<f32>(x + (i << 2))
  return s
}

// out[r] for r in [r0, r1): BF16 rows `rb` bytes apart, x the bf16-rounded activations as floats.
export function rowsBF16(w: usize, rb: usize, x: usize, out: usize, r0: usize, r1: usize, cols: usize): void {
  for (let r = r0; r < r1; r++) store<f32>(out + (r << 2), dotBF16(w + r * rb, x, cols))
}

// [dot(w, x0), …, dot(w, x3)] for one BF16 row and four activation rows: each group of eight
// weights is widened once for the four rows.
export function dot4BF16(w: usize, x0: usize, x1: usize, x2: usize, x3: usize, cols: usize): v128 {
  let a0 = f32x4.splat(0)
  let a1 = f32x4.splat(0)
  let a2 = f32x4.splat(0)
  let a3 = f32x4.splat(0)
  let b0 = f32x4.splat(0)
  let b1 = f32x4.splat(0)
  let b2 = f32x4.splat(0)
  let b3 = f32x4.splat(0)
  let i: usize = 0
  for (; i + 8 <= cols; i += 8) {
    const h = v128.load(w + (i << 1))
    const c0 = lowBF16(h)
    const c1 = highBF16(h)
    const o = i << 2
    a0 = f32x4.relaxed_madd(c0, v128.load(x0 + o), a0)
    b0 = f32x4.relaxed_madd(c1, v128.load(x0 + o, 16), b0)
    a1 = f32x4.relaxed_madd(c0, v128.load(x1 + o), a1)
    b1 = f32x4.relaxed_madd(c1, v128.load(x1 + o, 16), b1)
    a2 = f32x4.relaxed_madd(c0, v128.load(x2 + o), a2)
    b2 = f32x4.relaxed_madd(c1, v128.load(x2 + o, 16), b2)
    a3 = f32x4.relaxed_madd(c0, v128.load(x3 + o), a3)
    b3 = f32x4.relaxed_madd(c1, v128.load(x3 + o, 16), b3)
  }
  const s0 = f32x4.add(a0, b0)
  const s1 = f32x4.add(a1, b1)
  const s2 = f32x4.add(a2, b2)
  const s3 = f32x4.add(a3, b3)
  let r = f32x4.add(v128.shuffle<f32>(s0, s1, 0, 4, 1, 5), v128.shuffle<f32>(s0, s1, 2, 6, 3, 7))
  const t = f32x4.add(v128.shuffle<f32>(s2, s3, 0, 4, 1, 5), v128.shuffle<f32>(s2, s3, 2, 6, 3, 7))
  r = f32x4.add(v128.shuffle<f32>(r, t, 0, 1, 4, 5), v128.shuffle<f32>(r, t, 2, 3, 6, 7))
  for (; i < cols; i++) {
    const v = f32x4.splat(reinterpret<f32>((<u32>load<u16>(w + (i << 1))) << 16))
    let xs = f32x4.splat(load<f32>(x0 + (i << 2)))
    xs = f32x4.replace_lane(xs, 1, load<f32>(x1 + (i << 2)))
    xs = f32x4.replace_lane(xs, 2, load<f32>(x2 + (i << 2)))
    xs = f32x4.replace_lane(xs, 3, load<f32>(x3 + (i << 2)))
    r = f32x4.add(r, f32x4.mul(v, xs))
  }
  return r
}
